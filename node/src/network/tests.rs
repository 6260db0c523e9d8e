#![allow(clippy::unwrap_used)]

use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::*;

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn peer(k: &SigningKey) -> PeerId {
    peer_of_key(&k.verifying_key())
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

/// A network created by `key(1)`.
fn net() -> (Membership, SigningKey) {
    let c = key(1);
    (Membership::create("lab", &c, 1_000, &mut rng()).unwrap(), c)
}

/// An op signed without the local checks `make` does, as a misbehaving peer would.
fn raw(m: &Membership, k: &SigningKey, deps: Vec<OpId>, time_ms: u64, op: Op) -> SignedOp {
    SignedOp::sign(k, Some(m.network()), deps, time_ms, op).unwrap()
}

fn add(p: PeerId, role: Role) -> Op {
    Op::Add {
        peer: p,
        role,
        name: None,
        invite: None,
    }
}

fn snapshot(m: &Membership) -> Vec<Member> {
    m.members().cloned().collect()
}

/// A second replica holding the same ops.
fn replica(m: &Membership) -> Membership {
    let mut r = Membership::from_genesis(m.genesis().clone()).unwrap();
    for res in r.apply_all(m.ops().skip(1).cloned()) {
        res.unwrap();
    }
    r
}

/// `to` pulls everything `from` has, in bounded batches.
fn pull(to: &mut Membership, from: &Membership) {
    for _ in 0..100 {
        let batch = from.missing_for(&to.heads());
        let fresh: Vec<_> = batch
            .into_iter()
            .filter(|op| !to.ops().any(|o| o.id() == op.id()))
            .collect();
        if fresh.is_empty() {
            return;
        }
        to.apply_all(fresh);
    }
    panic!("sync did not finish");
}

#[test]
fn creator_is_first_admin() {
    let (m, c) = net();
    assert_eq!(m.role(&peer(&c)), Some(Role::Admin));
    assert_eq!(m.members().count(), 1);
    assert_eq!(m.heads(), vec![m.genesis().id()]);
    assert_eq!(m.network().0, m.genesis().id().0);
}

#[test]
fn admin_adds_promotes_and_members_name_themselves() {
    let (mut m, c) = net();
    let (a, b) = (key(2), key(3));
    m.make(&c, add(peer(&a), Role::Admin), 2_000).unwrap();
    m.make(&a, add(peer(&b), Role::Member), 3_000).unwrap();
    assert_eq!(m.role(&peer(&b)), Some(Role::Member));
    m.make(
        &b,
        Op::SetName {
            peer: peer(&b),
            name: "bee".into(),
        },
        4_000,
    )
    .unwrap();
    m.make(&a, Op::Promote { peer: peer(&b) }, 5_000).unwrap();
    let mb = m.member(&peer(&b)).unwrap();
    assert_eq!(mb.role, Role::Admin);
    assert_eq!(mb.name.as_deref(), Some("bee"));
    assert_eq!(mb.added_by, Some(peer(&a)));
    assert_eq!(mb.added_at_ms, Some(3_000));
    let lease = Lease::new(vec![100, 64, 0, 7]).unwrap();
    m.make(
        &b,
        Op::SetLease {
            peer: peer(&b),
            lease: lease.clone(),
        },
        6_000,
    )
    .unwrap();
    assert_eq!(m.member(&peer(&b)).unwrap().lease, Some(lease));
}

#[test]
fn forged_signature_is_rejected() {
    let (mut m, c) = net();
    let before = snapshot(&m);
    let op = raw(&m, &c, m.heads(), 2_000, add(peer(&key(2)), Role::Admin));
    let mut bytes = op.encoded().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1; // inside the signature
    assert_eq!(SignedOp::decode(&bytes), Err(OpError::BadSignature));
    // Another key signing as the creator: the signature is checked against the author.
    let mallory = key(9);
    let forged = raw(
        &m,
        &mallory,
        m.heads(),
        2_000,
        add(peer(&mallory), Role::Admin),
    );
    assert_eq!(m.apply(forged), Err(OpError::UnknownAuthor));
    // Any flipped byte in the body fails one check or another.
    for i in 0..op.encoded().len() {
        let mut b = op.encoded().to_vec();
        b[i] ^= 0x40;
        if let Ok(o) = SignedOp::decode(&b) {
            panic!("byte {i} flipped still decodes: {o:?}");
        }
    }
    assert_eq!(snapshot(&m), before);
}

#[test]
fn ops_by_non_admins_do_not_count() {
    let (mut m, c) = net();
    let (a, b, x) = (key(2), key(3), key(4));
    m.make(&c, add(peer(&a), Role::Admin), 2_000).unwrap();
    m.make(&c, add(peer(&b), Role::Member), 2_000).unwrap();
    let before = snapshot(&m);
    assert_eq!(
        m.make(&b, add(peer(&x), Role::Member), 3_000),
        Err(OpError::NotAuthorized)
    );
    for op in [
        add(peer(&x), Role::Admin),
        Op::Promote { peer: peer(&b) },
        Op::Revoke { peer: peer(&a) },
        Op::SetName {
            peer: peer(&a),
            name: "not yours".into(),
        },
    ] {
        let signed = raw(&m, &b, m.heads(), 3_000, op);
        assert!(matches!(
            m.apply(signed.clone()),
            Ok(Applied::Stored { .. })
        ));
        assert!(!m.is_effective(&signed.id()));
    }
    assert_eq!(snapshot(&m), before);
}

#[test]
fn strangers_ops_are_not_stored() {
    let (mut m, _) = net();
    let s = key(9);
    let op = raw(&m, &s, m.heads(), 2_000, add(peer(&s), Role::Admin));
    assert_eq!(m.apply(op), Err(OpError::UnknownAuthor));
    assert_eq!(m.len(), 1);
}

#[test]
fn concurrent_add_and_revoke_revoke_wins() {
    let (mut m, c) = net();
    let (a, b) = (key(2), key(3));
    m.make(&c, add(peer(&a), Role::Admin), 2_000).unwrap();
    m.make(&c, add(peer(&b), Role::Member), 2_000).unwrap();
    let base = m.heads();
    // The creator revokes b while a, not having seen it, adds b again as admin.
    let revoke = raw(&m, &c, base.clone(), 3_000, Op::Revoke { peer: peer(&b) });
    let readd = raw(&m, &a, base, 3_001, add(peer(&b), Role::Admin));
    let mut one = replica(&m);
    let mut two = replica(&m);
    one.apply(revoke.clone()).unwrap();
    one.apply(readd.clone()).unwrap();
    two.apply(readd).unwrap();
    assert_eq!(two.role(&peer(&b)), Some(Role::Admin));
    two.apply(revoke).unwrap();
    for r in [&one, &two] {
        assert!(!r.is_member(&peer(&b)));
        assert_eq!(r.member(&peer(&b)).unwrap().revoked_by, Some(peer(&c)));
    }
    assert_eq!(snapshot(&one), snapshot(&two));
    // Also when the peer was not a member before: a concurrent first add loses.
    let y = key(5);
    let base = one.heads();
    let r = raw(&one, &c, base.clone(), 4_000, Op::Revoke { peer: peer(&y) });
    let ad = raw(&one, &a, base, 4_000, add(peer(&y), Role::Member));
    one.apply_all([ad, r]);
    assert!(!one.is_member(&peer(&y)));
}

#[test]
fn revoked_admins_later_and_concurrent_ops_are_void() {
    let (mut m, c) = net();
    let (a, x, y, z) = (key(2), key(3), key(4), key(5));
    m.make(&c, add(peer(&a), Role::Admin), 2_000).unwrap();
    let before_x = m.heads();
    let seen = m.make(&a, add(peer(&x), Role::Member), 3_000).unwrap();
    // A concurrent op of a: made on the heads before its add of x, not seen by the revoke.
    let concurrent = raw(&m, &a, before_x, 3_500, add(peer(&z), Role::Admin));
    let revoke = m.make(&c, Op::Revoke { peer: peer(&a) }, 4_000).unwrap();
    m.apply(concurrent.clone()).unwrap();
    // After its revocation, in its causal past.
    let later = raw(
        &m,
        &a,
        vec![revoke.id()],
        5_000,
        add(peer(&y), Role::Member),
    );
    m.apply(later.clone()).unwrap();
    assert!(m.is_effective(&seen.id()), "ops the revoker had seen stand");
    assert!(m.is_member(&peer(&x)));
    assert!(!m.is_effective(&concurrent.id()));
    assert!(!m.is_effective(&later.id()));
    assert!(!m.is_member(&peer(&y)));
    assert!(!m.is_member(&peer(&z)));
    assert!(!m.is_member(&peer(&a)));
}

#[test]
fn appointees_of_a_revoked_admin_behind_the_revokers_back_have_no_rights() {
    let (mut m, c) = net();
    let (a, s, v) = (key(2), key(3), key(4));
    m.make(&c, add(peer(&a), Role::Admin), 2_000).unwrap();
    m.make(&c, add(peer(&v), Role::Member), 2_000).unwrap();
    let base = m.heads();
    m.make(&c, Op::Revoke { peer: peer(&a) }, 3_000).unwrap();
    // a, revoked, backdates the appointment of a sybil, which then adds and names.
    let sybil = raw(&m, &a, base, 2_500, add(peer(&s), Role::Admin));
    let by_sybil = raw(
        &m,
        &s,
        vec![sybil.id()],
        2_600,
        add(peer(&key(6)), Role::Member),
    );
    let rename = raw(
        &m,
        &s,
        vec![by_sybil.id()],
        2_700,
        Op::SetName {
            peer: peer(&v),
            name: "owned".into(),
        },
    );
    m.apply_all([sybil, by_sybil, rename]);
    assert!(!m.is_member(&peer(&s)));
    assert!(!m.is_member(&peer(&key(6))));
    assert_eq!(m.member(&peer(&v)).unwrap().name, None);
}

#[test]
fn backdated_revocation_by_a_revoked_admin_still_counts() {
    // The documented price of revoke-wins: revocations are never voided by concurrency.
    let (mut m, c) = net();
    let (a, b) = (key(2), key(3));
    m.make(&c, add(peer(&a), Role::Admin), 2_000).unwrap();
    m.make(&c, add(peer(&b), Role::Member), 2_000).unwrap();
    let base = m.heads();
    m.make(&c, Op::Revoke { peer: peer(&a) }, 3_000).unwrap();
    let backdated = raw(&m, &a, base, 2_500, Op::Revoke { peer: peer(&b) });
    m.apply(backdated).unwrap();
    assert!(!m.is_member(&peer(&b)));
    assert!(!m.is_member(&peer(&a)));
}

#[test]
fn revoked_member_stays_revoked_after_any_merge() {
    let (mut m, c) = net();
    let (a, b) = (key(2), key(3));
    m.make(&c, add(peer(&a), Role::Admin), 2_000).unwrap();
    m.make(&c, add(peer(&b), Role::Member), 2_000).unwrap();
    let mut other = replica(&m);
    let revoke = m.make(&a, Op::Revoke { peer: peer(&b) }, 3_000).unwrap();
    assert_eq!(
        m.make(&c, add(peer(&b), Role::Member), 4_000),
        Err(OpError::NotAuthorized)
    );
    // A re-add that has seen the revocation, signed anyway.
    let readd = raw(&m, &c, m.heads(), 4_000, add(peer(&b), Role::Admin));
    m.apply(readd).unwrap();
    // Meanwhile elsewhere b is promoted and renames itself.
    other
        .make(&c, Op::Promote { peer: peer(&b) }, 3_100)
        .unwrap();
    other
        .make(
            &b,
            Op::SetName {
                peer: peer(&b),
                name: "still here".into(),
            },
            3_200,
        )
        .unwrap();
    // Even if the revoking admin is revoked afterwards, or concurrently.
    other
        .make(&c, Op::Revoke { peer: peer(&a) }, 3_300)
        .unwrap();
    pull(&mut m, &other);
    pull(&mut other, &m);
    for r in [&m, &other] {
        assert!(r.is_effective(&revoke.id()));
        assert!(!r.is_member(&peer(&b)));
        assert_eq!(r.member(&peer(&b)).unwrap().name, None);
    }
    assert_eq!(snapshot(&m), snapshot(&other));
}

#[test]
fn concurrent_names_settle_the_same_everywhere() {
    let (mut m, c) = net();
    let b = key(3);
    m.make(&c, add(peer(&b), Role::Member), 2_000).unwrap();
    let base = m.heads();
    let name = |k: &SigningKey, n: &str, t| {
        raw(
            &m,
            k,
            base.clone(),
            t,
            Op::SetName {
                peer: peer(&b),
                name: n.into(),
            },
        )
    };
    let (own, admins) = (name(&b, "mine", 3_000), name(&c, "theirs", 3_001));
    let mut one = replica(&m);
    let mut two = replica(&m);
    one.apply_all([own.clone(), admins.clone()]);
    two.apply_all([admins, own.clone()]);
    for r in [&one, &two] {
        assert_eq!(r.member(&peer(&b)).unwrap().name.as_deref(), Some("theirs"));
    }
    // A name set after seeing both wins whatever its clock says.
    let after = raw(
        &one,
        &b,
        one.heads(),
        1,
        Op::SetName {
            peer: peer(&b),
            name: "final".into(),
        },
    );
    one.apply(after.clone()).unwrap();
    two.apply(after).unwrap();
    for r in [&one, &two] {
        assert_eq!(r.member(&peer(&b)).unwrap().name.as_deref(), Some("final"));
    }
}

#[test]
fn members_can_leave_but_the_creator_cannot_be_revoked() {
    let (mut m, c) = net();
    let (a, b) = (key(2), key(3));
    m.make(&c, add(peer(&a), Role::Admin), 2_000).unwrap();
    m.make(&c, add(peer(&b), Role::Member), 2_000).unwrap();
    m.make(&b, Op::Revoke { peer: peer(&b) }, 3_000).unwrap();
    assert!(!m.is_member(&peer(&b)));
    assert_eq!(
        m.make(&a, Op::Revoke { peer: peer(&c) }, 3_000),
        Err(OpError::NotAuthorized)
    );
    let op = raw(&m, &a, m.heads(), 3_000, Op::Revoke { peer: peer(&c) });
    m.apply(op.clone()).unwrap();
    assert!(!m.is_effective(&op.id()));
    assert_eq!(m.role(&peer(&c)), Some(Role::Admin));
}

#[test]
fn invite_admits_through_any_member() {
    let (mut m, c) = net();
    let (b, j) = (key(3), key(10));
    m.make(&c, add(peer(&b), Role::Member), 2_000).unwrap();
    let token = m.invite(&c, 10_000, 2, Role::Member, &mut rng()).unwrap();
    let text = token.to_text();
    assert!(text.starts_with("p2pnet1"));
    let back = InviteToken::from_text(&text).unwrap();
    assert_eq!(back.invite(), token.invite());
    let req = back.join_request(&peer(&j));
    let op = m
        .admit(&b, &peer(&j), req, Some("jay".into()), 5_000)
        .unwrap();
    assert!(m.is_effective(&op.id()));
    let mj = m.member(&peer(&j)).unwrap();
    assert_eq!((mj.role, mj.added_by), (Role::Member, Some(peer(&b))));
    assert_eq!(mj.name.as_deref(), Some("jay"));
    // Every replica checks the same op.
    let r = replica(&m);
    assert!(r.is_member(&peer(&j)));
}

#[test]
fn used_up_invite_does_not_admit() {
    let (mut m, c) = net();
    let b = key(3);
    m.make(&c, add(peer(&b), Role::Member), 2_000).unwrap();
    let token = m.invite(&c, 10_000, 1, Role::Admin, &mut rng()).unwrap();
    let (j1, j2) = (key(10), key(11));
    m.admit(&b, &peer(&j1), token.join_request(&peer(&j1)), None, 5_000)
        .unwrap();
    assert_eq!(m.role(&peer(&j1)), Some(Role::Admin));
    let before = snapshot(&m);
    assert_eq!(
        m.admit(&b, &peer(&j2), token.join_request(&peer(&j2)), None, 5_000),
        Err(OpError::InviteUsedUp)
    );
    let op = raw(
        &m,
        &b,
        m.heads(),
        5_000,
        Op::Add {
            peer: peer(&j2),
            role: Role::Admin,
            name: None,
            invite: Some(Box::new(token.join_request(&peer(&j2)))),
        },
    );
    m.apply(op.clone()).unwrap();
    assert!(!m.is_effective(&op.id()));
    assert_eq!(snapshot(&m), before);
}

#[test]
fn expired_invite_does_not_admit() {
    let (mut m, c) = net();
    let b = key(3);
    m.make(&c, add(peer(&b), Role::Member), 2_000).unwrap();
    let token = m.invite(&c, 10_000, 5, Role::Member, &mut rng()).unwrap();
    let j = key(10);
    assert_eq!(
        m.admit(&b, &peer(&j), token.join_request(&peer(&j)), None, 10_001),
        Err(OpError::InviteExpired)
    );
    let before = snapshot(&m);
    let op = raw(
        &m,
        &b,
        m.heads(),
        10_001,
        Op::Add {
            peer: peer(&j),
            role: Role::Member,
            name: None,
            invite: Some(Box::new(token.join_request(&peer(&j)))),
        },
    );
    m.apply(op.clone()).unwrap();
    assert!(!m.is_effective(&op.id()));
    assert_eq!(snapshot(&m), before);
}

#[test]
fn invites_of_non_admins_and_revoked_issuers_do_not_admit() {
    let (mut m, c) = net();
    let (a, b, j) = (key(2), key(3), key(10));
    m.make(&c, add(peer(&a), Role::Admin), 2_000).unwrap();
    m.make(&c, add(peer(&b), Role::Member), 2_000).unwrap();
    assert_eq!(
        m.invite(&b, 10_000, 1, Role::Admin, &mut rng())
            .unwrap_err(),
        OpError::NotAuthorized
    );
    let by_member =
        InviteToken::issue(m.network(), &b, 10_000, 1, Role::Admin, &mut rng()).unwrap();
    assert_eq!(
        m.admit(
            &b,
            &peer(&j),
            by_member.join_request(&peer(&j)),
            None,
            5_000
        ),
        Err(OpError::NotAuthorized)
    );
    let by_a = m.invite(&a, 10_000, 1, Role::Member, &mut rng()).unwrap();
    m.make(&c, Op::Revoke { peer: peer(&a) }, 3_000).unwrap();
    let before = snapshot(&m);
    for token in [&by_member, &by_a] {
        let op = raw(
            &m,
            &b,
            m.heads(),
            5_000,
            Op::Add {
                peer: peer(&j),
                role: token.invite().role,
                name: None,
                invite: Some(Box::new(token.join_request(&peer(&j)))),
            },
        );
        m.apply(op.clone()).unwrap();
        assert!(!m.is_effective(&op.id()));
    }
    assert_eq!(snapshot(&m), before);
}

#[test]
fn join_proof_is_bound_to_the_joiner() {
    let (mut m, c) = net();
    let token = m.invite(&c, 10_000, 1, Role::Member, &mut rng()).unwrap();
    let req = token.join_request(&peer(&key(10)));
    assert_eq!(req.verify_for(&peer(&key(11))), Err(OpError::BadSignature));
    assert_eq!(
        m.admit(&c, &peer(&key(11)), req.clone(), None, 5_000),
        Err(OpError::BadSignature)
    );
    // An add naming another peer than the proof's does not even decode.
    let bad = SignedOp::sign(
        &c,
        Some(m.network()),
        m.heads(),
        5_000,
        Op::Add {
            peer: peer(&key(11)),
            role: Role::Member,
            name: None,
            invite: Some(Box::new(req)),
        },
    );
    assert_eq!(bad, Err(OpError::BadSignature));
}

#[test]
fn invite_text_rejects_garbage() {
    let (m, c) = net();
    let text = m
        .invite(&c, 10_000, 1, Role::Member, &mut rng())
        .unwrap()
        .to_text();
    assert!(InviteToken::from_text("hello").is_err());
    assert!(InviteToken::from_text("p2pnet1!!!").is_err());
    assert!(matches!(
        InviteToken::from_text(&"a".repeat(MAX_INVITE_TEXT + 1)),
        Err(OpError::TooLarge { .. })
    ));
    // Any changed character breaks the decoding, a signature or the key match.
    for i in "p2pnet1".len()..text.len() {
        let mut t = text.clone().into_bytes();
        t[i] = if t[i] == b'a' { b'b' } else { b'a' };
        let t = String::from_utf8(t).unwrap();
        if let Ok(tok) = InviteToken::from_text(&t) {
            // Only the last character's unused low bits may change without effect.
            assert_eq!(
                tok.invite(),
                InviteToken::from_text(&text).unwrap().invite(),
                "{i}"
            );
        }
    }
}

#[test]
fn ops_wait_for_their_deps() {
    let (mut m, c) = net();
    let mut r = replica(&m);
    let ops: Vec<_> = (2..6u8)
        .map(|i| m.make(&c, add(peer(&key(i)), Role::Member), 2_000).unwrap())
        .collect();
    for op in ops.iter().rev().take(3) {
        assert!(matches!(r.apply(op.clone()), Ok(Applied::Pending { .. })));
    }
    assert_eq!(r.pending_len(), 3);
    assert_eq!(r.apply(ops[3].clone()), Ok(Applied::Duplicate));
    let Ok(Applied::Stored { ids }) = r.apply(ops[0].clone()) else {
        panic!("not stored");
    };
    assert_eq!(ids.len(), 4);
    assert_eq!(r.pending_len(), 0);
    assert_eq!(snapshot(&r), snapshot(&m));
}

#[test]
fn pending_is_bounded() {
    let (mut m, c) = net();
    for i in 0..MAX_PENDING {
        let mut dep = [0u8; 32];
        dep[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let op = raw(
            &m,
            &c,
            vec![OpId(dep)],
            2_000,
            Op::Revoke {
                peer: peer(&key(2)),
            },
        );
        m.apply(op).unwrap();
    }
    let op = raw(
        &m,
        &c,
        vec![OpId([0xff; 32])],
        2_000,
        Op::Revoke {
            peer: peer(&key(2)),
        },
    );
    assert_eq!(m.apply(op), Err(OpError::PendingFull));
}

#[test]
fn inputs_are_bounded() {
    let (mut m, c) = net();
    assert_eq!(
        SignedOp::decode(&vec![0u8; MAX_OP_BYTES + 1]),
        Err(OpError::TooLarge {
            len: MAX_OP_BYTES + 1
        })
    );
    assert!(SignedOp::decode(&[0xff; 64]).is_err());
    let long = "x".repeat(MAX_NAME_LEN + 1);
    assert_eq!(
        SignedOp::sign(
            &c,
            Some(m.network()),
            m.heads(),
            0,
            Op::SetName {
                peer: peer(&c),
                name: long
            }
        ),
        Err(OpError::BadName)
    );
    assert_eq!(
        Lease::new(vec![0; MAX_LEASE_LEN + 1]),
        Err(OpError::LeaseTooLong)
    );
    let deps: Vec<OpId> = (0..=MAX_DEPS as u8).map(|i| OpId([i; 32])).collect();
    assert_eq!(
        SignedOp::sign(
            &c,
            Some(m.network()),
            deps,
            0,
            Op::Promote { peer: peer(&c) }
        ),
        Err(OpError::BadDeps)
    );
    // Another network's op.
    let (other, oc) = (
        Membership::create("other", &key(1), 1_000, &mut StdRng::seed_from_u64(8)).unwrap(),
        key(1),
    );
    let op = raw(
        &other,
        &oc,
        other.heads(),
        2_000,
        add(peer(&key(2)), Role::Member),
    );
    assert_eq!(m.apply(op), Err(OpError::WrongNetwork));
    assert_eq!(m.apply(other.genesis().clone()), Err(OpError::Genesis));
    assert_eq!(m.apply(m.genesis().clone()), Ok(Applied::Duplicate));
}

#[test]
fn sync_in_batches_converges() {
    let (mut m, c) = net();
    let a = key(2);
    m.make(&c, add(peer(&a), Role::Admin), 2_000).unwrap();
    let mut r = replica(&m);
    for i in 0..(MAX_SYNC_BATCH + 20) {
        let who = &key(20 + (i % 200) as u8);
        m.make(&c, add(peer(who), Role::Member), 3_000 + i as u64)
            .unwrap();
    }
    r.make(
        &a,
        Op::Revoke {
            peer: peer(&key(20)),
        },
        2_500,
    )
    .unwrap();
    assert_eq!(m.missing_for(&r.heads()).len(), MAX_SYNC_BATCH);
    pull(&mut r, &m);
    pull(&mut m, &r);
    assert_eq!(m.heads(), r.heads());
    assert_eq!(snapshot(&m), snapshot(&r));
    assert!(!m.is_member(&peer(&key(20))));
    assert!(m.missing_for(&r.heads()).is_empty());
}

/// A random history among five nodes (node 0 creates), each with its own replica: ops of
/// every kind, valid or not (signed without local checks), invite uses, and syncs between
/// random pairs. Returns the genesis, every op made, and the replicas.
fn random_history(seed: u64, steps: usize) -> (SignedOp, Vec<SignedOp>, Vec<Membership>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let keys: Vec<SigningKey> = (1..=5).map(key).collect();
    let peers: Vec<PeerId> = keys.iter().map(peer).collect();
    let origin = Membership::create("prop", &keys[0], 1_000, &mut rng).unwrap();
    let genesis = origin.genesis().clone();
    let mut nodes: Vec<Membership> = (0..5)
        .map(|_| Membership::from_genesis(genesis.clone()).unwrap())
        .collect();
    let tokens: Vec<InviteToken> = (0..3)
        .map(|i| {
            let uses = rng.gen_range(1..3);
            InviteToken::issue(
                origin.network(),
                &keys[i],
                5_000,
                uses,
                Role::Member,
                &mut rng,
            )
            .unwrap()
        })
        .collect();
    let mut all = Vec::new();
    for step in 0..steps {
        let i = if rng.gen_bool(0.25) {
            0
        } else {
            rng.gen_range(0..5)
        };
        let time = 1_000 + step as u64 * 100 + rng.gen_range(0..100);
        let target = peers[rng.gen_range(0..5)];
        let op = match rng.gen_range(0..9) {
            0 | 1 => add(
                target,
                if rng.gen_bool(0.4) {
                    Role::Admin
                } else {
                    Role::Member
                },
            ),
            2 => Op::Revoke { peer: target },
            3 => Op::Promote { peer: target },
            4 => Op::SetName {
                peer: if rng.gen_bool(0.7) { peers[i] } else { target },
                name: format!("n{step}"),
            },
            5 => Op::SetLease {
                peer: peers[i],
                lease: Lease::new(vec![step as u8]).unwrap(),
            },
            6 => {
                let token = &tokens[rng.gen_range(0..tokens.len())];
                Op::Add {
                    peer: target,
                    role: Role::Member,
                    name: None,
                    invite: Some(Box::new(token.join_request(&target))),
                }
            }
            _ => {
                let j = rng.gen_range(0..5);
                if j != i {
                    let from = std::mem::replace(
                        &mut nodes[j],
                        Membership::from_genesis(genesis.clone()).unwrap(),
                    );
                    pull(&mut nodes[i], &from);
                    nodes[j] = from;
                }
                continue;
            }
        };
        // A node that does not know it was added yet first catches up with the creator.
        if !nodes[i].ops().any(|o| o.op().subject() == &peers[i]) {
            let from = std::mem::replace(
                &mut nodes[0],
                Membership::from_genesis(genesis.clone()).unwrap(),
            );
            pull(&mut nodes[i], &from);
            nodes[0] = from;
        }
        let n = &mut nodes[i];
        let signed = SignedOp::sign(&keys[i], Some(n.network()), n.heads(), time, op).unwrap();
        if n.apply(signed.clone()).is_ok() {
            all.push(signed);
        }
    }
    (genesis, all, nodes)
}

fn merged(genesis: &SignedOp, ops: &[SignedOp]) -> Membership {
    let mut m = Membership::from_genesis(genesis.clone()).unwrap();
    for op in ops {
        m.apply(op.clone()).unwrap();
    }
    assert_eq!(m.pending_len(), 0);
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The issue's property: the same member set on every delivery order.
    #[test]
    fn member_set_is_the_same_for_every_delivery_order(seed in any::<u64>()) {
        let (genesis, all, nodes) = random_history(seed, 60);
        let reference = merged(&genesis, &all);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        for _ in 0..4 {
            let mut order = all.clone();
            order.shuffle(&mut rng);
            let m = merged(&genesis, &order);
            prop_assert_eq!(m.heads(), reference.heads());
            prop_assert_eq!(snapshot(&m), snapshot(&reference));
            let effective: Vec<bool> = all.iter().map(|o| m.is_effective(&o.id())).collect();
            let expected: Vec<bool> = all.iter().map(|o| reference.is_effective(&o.id())).collect();
            prop_assert_eq!(effective, expected);
        }
        // A revoked peer's effective ops (other than revocations) were all seen by one of
        // its effective revocations.
        for m in reference.members().filter(|m| m.revoked()) {
            let revokes: Vec<OpId> = all
                .iter()
                .filter(|o| reference.is_effective(&o.id()))
                .filter(|o| matches!(o.op(), Op::Revoke { peer } if *peer == m.peer))
                .map(SignedOp::id)
                .collect();
            for o in all.iter().filter(|o| o.author() == &m.peer && reference.is_effective(&o.id())) {
                if !matches!(o.op(), Op::Revoke { .. }) {
                    prop_assert!(revokes.iter().any(|r| reference.is_ancestor(&o.id(), r)));
                }
            }
        }
        // Replicas that sync with each other get there too.
        let mut nodes = nodes;
        for i in 1..nodes.len() {
            let (head, tail) = nodes.split_at_mut(i);
            pull(&mut head[0], &tail[0]);
        }
        for i in 1..nodes.len() {
            let (head, tail) = nodes.split_at_mut(i);
            pull(&mut tail[0], &head[0]);
        }
        for n in &nodes {
            prop_assert_eq!(snapshot(n), snapshot(&reference));
        }
    }

    /// Revocation is permanent: whoever is revoked in any replica's partial view is
    /// revoked in the merge of everything.
    #[test]
    fn revoked_stays_revoked_after_any_merge(seed in any::<u64>()) {
        let (genesis, all, nodes) = random_history(seed, 60);
        let reference = merged(&genesis, &all);
        for n in &nodes {
            for m in n.members().filter(|m| m.revoked()) {
                prop_assert!(reference.member(&m.peer).is_some_and(Member::revoked));
            }
        }
    }

    /// Forged ops, ops by non-admins and by strangers never change the member set.
    #[test]
    fn forged_and_unauthorised_ops_change_nothing(seed in any::<u64>(), pick in 0usize..6) {
        let (genesis, all, _) = random_history(seed, 40);
        let mut m = merged(&genesis, &all);
        let before = snapshot(&m);
        let keys: Vec<SigningKey> = (1..=5).map(key).collect();
        let x = peer(&key(42));
        let ops = [
            add(x, Role::Admin),
            Op::Promote { peer: x },
            Op::Revoke { peer: peer(&keys[0]) },
            Op::SetName { peer: peer(&keys[0]), name: "forged".into() },
            Op::SetLease { peer: peer(&keys[0]), lease: Lease::new(vec![1]).unwrap() },
            add(peer(&keys[1]), Role::Admin),
        ];
        let op = ops[pick % ops.len()].clone();
        // Every node that is not an admin now, and a stranger.
        let mut signers: Vec<SigningKey> = keys[1..]
            .iter()
            .filter(|k| m.role(&peer(k)) != Some(Role::Admin))
            .cloned()
            .collect();
        signers.push(key(42));
        for k in &signers {
            let signed = SignedOp::sign(k, Some(m.network()), m.heads(), 99_000, op.clone()).unwrap();
            let _ = m.apply(signed.clone());
            // And the same op with a broken signature does not even decode.
            let mut bytes = signed.encoded().to_vec();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x01;
            prop_assert!(SignedOp::decode(&bytes).is_err());
            prop_assert_eq!(snapshot(&m), before.clone());
        }
    }
}

#[test]
fn record_is_bounded() {
    let (mut m, c) = net();
    let g = m.heads();
    let ops: Vec<SignedOp> = (0..MAX_OPS as u32)
        .map(|i| {
            let mut b = [7u8; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            let k = SigningKey::from_bytes(&b);
            raw(&m, &c, g.clone(), 2_000, add(peer(&k), Role::Member))
        })
        .collect();
    let results = m.apply_all(ops);
    assert_eq!(m.len(), MAX_OPS);
    assert_eq!(results.last(), Some(&Err(OpError::Full)));
    assert_eq!(m.members().count(), MAX_OPS);
    // Heads beyond MAX_DEPS: a new op names the newest MAX_DEPS.
    let op = m.make(
        &c,
        Op::Revoke {
            peer: peer(&key(2)),
        },
        3_000,
    );
    assert_eq!(op, Err(OpError::Full));
}

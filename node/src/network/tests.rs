#![allow(clippy::unwrap_used)]

use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::*;

mod invites;
mod properties;

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

//! Invites: who may admit, when they run out, and what a join proof binds.

use super::*;

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

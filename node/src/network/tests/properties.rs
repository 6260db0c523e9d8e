//! Property tests over random histories of five replicas.

use super::*;

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

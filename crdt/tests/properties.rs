//! Property tests: merging is commutative, associative and idempotent; save then load keeps
//! the document; two sessions with concurrent edits converge in few rounds and then fall
//! quiet.

#![allow(clippy::unwrap_used)]

use p2pnode_crdt::{Commit, Document, Store, Strategy as Read, SyncSession};
use proptest::prelude::*;
use serde_json::{Value, json};

/// One edit a replica makes. Keys and values come from small sets so replicas collide.
#[derive(Debug, Clone)]
enum Op {
    Put(u8, Value),
    PutNested(u8, u8, Value),
    Delete(u8),
    Push(Value),
    DeleteFirst,
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i32>().prop_map(Value::from),
        "[a-z]{0,6}".prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
        (any::<i8>(), "[a-z]{0,3}").prop_map(|(n, s)| json!({"n": n, "s": s, "l": [n, s]})),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..5, value()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0u8..3, 0u8..3, value()).prop_map(|(k, s, v)| Op::PutNested(k, s, v)),
        1 => (0u8..5).prop_map(Op::Delete),
        2 => value().prop_map(Op::Push),
        1 => Just(Op::DeleteFirst),
    ]
}

fn ops(max: usize) -> impl Strategy<Value = Vec<(Op, i64)>> {
    proptest::collection::vec((op(), 0i64..50), 0..max)
}

/// Applies edits; ones that do not fit the document as it is (a missing key) are skipped,
/// as a user's failed command would be.
fn apply(doc: &mut Document, ops: &[(Op, i64)]) {
    for (op, time) in ops {
        let commit = Commit::new().time_ms(*time);
        let _ = match op {
            Op::Put(k, v) => doc.put_with(&format!("k{k}"), v, &commit),
            Op::PutNested(k, s, v) => doc
                .put_with(&format!("m{k}"), &json!({}), &commit)
                .and_then(|_| doc.put_with(&format!("m{k}/s{s}"), v, &commit)),
            Op::Delete(k) => doc.delete_with(&format!("k{k}"), &commit),
            Op::Push(v) => doc.put_with("list/-", v, &commit),
            Op::DeleteFirst => doc.delete_with("list/0", &commit),
        };
    }
}

fn base() -> Document {
    let mut d = Document::new(b"base").unwrap();
    d.put_with("list", &json!([]), &Commit::new().time_ms(0))
        .unwrap();
    d
}

/// Three replicas of one base, each with its own edits.
fn replicas(a: &[(Op, i64)], b: &[(Op, i64)], c: &[(Op, i64)]) -> [Document; 3] {
    let base = base();
    let mut out = [
        base.fork(b"peer-a").unwrap(),
        base.fork(b"peer-b").unwrap(),
        base.fork(b"peer-c").unwrap(),
    ];
    apply(&mut out[0], a);
    apply(&mut out[1], b);
    apply(&mut out[2], c);
    out
}

fn merged(x: &Document, y: &Document) -> Document {
    let mut out = x.fork(b"merge").unwrap();
    out.merge(&mut y.fork(b"other").unwrap()).unwrap();
    out
}

/// What must agree: heads, and the JSON read by the replica-independent strategy.
fn state(d: &Document) -> (Vec<p2pnode_crdt::ChangeHash>, Value) {
    let mut heads = d.heads();
    heads.sort();
    (heads, d.get_with("", Read::LatestTimestamp).unwrap())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn merge_is_commutative(a in ops(12), b in ops(12)) {
        let [x, y, _] = replicas(&a, &b, &[]);
        prop_assert_eq!(state(&merged(&x, &y)), state(&merged(&y, &x)));
    }

    #[test]
    fn merge_is_associative(a in ops(10), b in ops(10), c in ops(10)) {
        let [x, y, z] = replicas(&a, &b, &c);
        let left = merged(&merged(&x, &y), &z);
        let right = merged(&x, &merged(&y, &z));
        prop_assert_eq!(state(&left), state(&right));
    }

    #[test]
    fn merge_is_idempotent(a in ops(12), b in ops(12)) {
        let [x, y, _] = replicas(&a, &b, &[]);
        prop_assert_eq!(state(&merged(&x, &x)), state(&x));
        let xy = merged(&x, &y);
        prop_assert_eq!(state(&merged(&xy, &y)), state(&xy));
        prop_assert_eq!(state(&merged(&xy, &xy)), state(&xy));
    }

    #[test]
    fn save_then_load_is_the_same_document(a in ops(16), b in ops(8)) {
        let [x, y, _] = replicas(&a, &b, &[]);
        let x = merged(&x, &y);
        let loaded = Document::load(b"reader", &x.save()).unwrap();
        prop_assert_eq!(state(&loaded), state(&x));
    }

    #[test]
    fn store_with_incremental_saves_loads_the_same_document(
        chunks in proptest::collection::vec(ops(6), 1..6),
        compact_bytes in prop_oneof![Just(0u64), Just(1u64 << 20)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap().with_compact_bytes(compact_bytes);
        let mut doc = base().fork(b"writer").unwrap();
        for chunk in &chunks {
            apply(&mut doc, chunk);
            store.save("doc", &mut doc).unwrap();
        }
        let loaded = store.load("doc", b"writer").unwrap();
        prop_assert_eq!(state(&loaded), state(&doc));
    }

    #[test]
    fn sync_converges_then_falls_quiet(a in ops(20), b in ops(20), extra in ops(2)) {
        let [x, y, _] = replicas(&a, &b, &[]);
        let mut sa = SyncSession::new(x);
        let mut sb = SyncSession::new(y);
        let rounds = run(&mut sa, &mut sb);
        prop_assert!(rounds <= 4, "{} rounds", rounds);
        prop_assert_eq!(state(sa.document()), state(sb.document()));
        // In sync: nothing more to say in either direction.
        prop_assert!(sa.generate_message(b"peer-b").is_none());
        prop_assert!(sb.generate_message(b"peer-a").is_none());
        // A later edit: carried over in a round or two, then quiet. Not always one message
        // each way: proptest found a case where automerge's sync took a further round (its
        // seed is kept in proptest-regressions), and automerge does not promise one.
        let before = sa.document().heads();
        apply(sa.document_mut(), &extra);
        if sa.document().heads() == before {
            return Ok(()); // the edits did not apply (a missing key)
        }
        let rounds = run(&mut sa, &mut sb);
        prop_assert!((1..=3).contains(&rounds), "{} rounds after one edit", rounds);
        prop_assert!(sa.generate_message(b"peer-b").is_none());
        prop_assert!(sb.generate_message(b"peer-a").is_none());
        prop_assert_eq!(state(sa.document()), state(sb.document()));
    }
}

/// automerge's loop over two sessions; returns the round trips until both fall quiet.
fn run(a: &mut SyncSession, b: &mut SyncSession) -> usize {
    for round in 0..50 {
        let ab = a.generate_message(b"peer-b");
        if let Some(m) = &ab {
            b.receive_message(b"peer-a", m).unwrap();
        }
        let ba = b.generate_message(b"peer-a");
        if let Some(m) = &ba {
            a.receive_message(b"peer-b", m).unwrap();
        }
        if ab.is_none() && ba.is_none() {
            return round;
        }
    }
    panic!("no convergence in 50 rounds");
}

use super::read::scalar_json;
use super::*;
use serde_json::json;

fn doc(peer: &str) -> Document {
    Document::new(peer.as_bytes()).unwrap()
}

#[test]
fn put_get_delete_keys() {
    let mut d = doc("a");
    d.put("todos", &json!([])).unwrap();
    d.put("todos/-", &json!({"title": "milk", "done": false}))
        .unwrap();
    d.put(
        "todos/1",
        &json!({"title": "eggs", "tags": ["x", 1, 2.5, null]}),
    )
    .unwrap();
    d.put("todos/0/done", &json!(true)).unwrap();
    d.put("a~1b", &json!(u64::MAX)).unwrap();
    assert_eq!(d.get("todos/0/title").unwrap(), json!("milk"));
    assert_eq!(d.get("todos/1/tags").unwrap(), json!(["x", 1, 2.5, null]));
    assert_eq!(d.get("a~1b").unwrap(), json!(u64::MAX));
    assert_eq!(d.keys("").unwrap(), ["a/b", "todos"]);
    assert_eq!(d.keys("todos").unwrap(), ["0", "1"]);
    d.delete("todos/0").unwrap();
    assert_eq!(d.get("todos/0/title").unwrap(), json!("eggs"));
    assert!(matches!(d.get("todos/5"), Err(Error::UnknownPath(p)) if p == "todos/5"));
    assert!(matches!(d.put("nope/x", &json!(1)), Err(Error::UnknownPath(p)) if p == "nope"));
    assert!(matches!(
        d.get("todos/0/title/x"),
        Err(Error::NotAContainer(_))
    ));
    assert!(matches!(d.delete(""), Err(Error::InvalidPath { .. })));
    d.put("", &json!({"only": 1})).unwrap();
    assert_eq!(d.get("").unwrap(), json!({"only": 1}));
    assert!(matches!(d.put("", &json!(1)), Err(Error::InvalidJson(_))));
}

#[test]
fn too_deep_json_is_refused() {
    let mut v = json!(1);
    for _ in 0..70 {
        v = json!([v]);
    }
    let mut d = doc("a");
    assert!(matches!(d.put("x", &v), Err(Error::InvalidJson(_))));
    assert!(d.get("x").is_err());
}

#[test]
fn history_has_author_time_message() {
    let mut d = doc("peer-a");
    d.put_with(
        "x",
        &json!(1),
        &Commit::new().message("first").time_ms(1000),
    )
    .unwrap();
    let mut e = d.fork(b"peer-b").unwrap();
    e.put_with("x", &json!(2), &Commit::new().time_ms(2000))
        .unwrap();
    d.merge(&mut e).unwrap();
    let h = d.history(10);
    assert_eq!(h.len(), 2);
    assert_eq!(
        (h[0].author.as_slice(), h[0].time_ms),
        (&b"peer-a"[..], 1000)
    );
    assert_eq!(h[0].message.as_deref(), Some("first"));
    assert_eq!(
        (h[1].author.as_slice(), h[1].time_ms),
        (&b"peer-b"[..], 2000)
    );
    assert_eq!(h[1].deps, vec![h[0].hash]);
    assert_eq!(d.history(1), h[1..]);
}

/// `a` (local, older) and `b` (remote, newer) write `k` concurrently; `a` has merged.
fn conflicted() -> Document {
    let mut a = doc("a");
    a.put_with("k", &json!(0), &Commit::new().time_ms(1))
        .unwrap();
    let mut b = a.fork(b"b").unwrap();
    a.put_with("k", &json!("local"), &Commit::new().time_ms(100))
        .unwrap();
    b.put_with("k", &json!("remote"), &Commit::new().time_ms(200))
        .unwrap();
    a.merge(&mut b).unwrap();
    a
}

#[test]
fn strategies_pick_as_documented() {
    let mut a = conflicted();
    assert_eq!(a.get("k").unwrap(), json!("remote"));
    assert_eq!(
        a.get_with("k", Strategy::LocalWins).unwrap(),
        json!("local")
    );
    assert_eq!(
        a.get_with("k", Strategy::RemoteWins).unwrap(),
        json!("remote")
    );
    assert!(matches!(
        a.get_with("k", Strategy::Manual),
        Err(Error::Conflict { values: 2, .. })
    ));
    assert!(matches!(
        a.get_with("", Strategy::Manual),
        Err(Error::Conflict { .. })
    ));
    let conflicts = a.conflicts().unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].path, "k");
    let pick = conflicts[0].pick.unwrap();
    assert_eq!(conflicts[0].candidates[pick].value, json!("remote"));
    let local = a.conflicts_with(Strategy::LocalWins).unwrap();
    assert_eq!(
        local[0].candidates[local[0].pick.unwrap()].value,
        json!("local")
    );
    assert!(
        conflicts[0]
            .candidates
            .iter()
            .any(|c| c.local && c.time_ms == 100)
    );

    a.set_strategy(Strategy::Manual);
    assert!(matches!(a.put("k", &json!(1)), Err(Error::Conflict { .. })));
    assert_eq!(a.conflicts().unwrap()[0].pick, None);
    a.resolve("k", Keep::Local).unwrap();
    assert_eq!(a.get("k").unwrap(), json!("local"));
    assert!(a.conflicts().unwrap().is_empty());
    assert_eq!(a.resolve("k", Keep::Local).unwrap(), None);
    assert!(matches!(
        a.resolve("k", Keep::Remote),
        Err(Error::NoCandidate { .. })
    ));
}

#[test]
fn latest_timestamp_ties_go_to_automerge_winner() {
    let mut a = doc("a");
    let mut b = doc("b");
    a.put_with("k", &json!(1), &Commit::new().time_ms(5))
        .unwrap();
    b.put_with("k", &json!(2), &Commit::new().time_ms(5))
        .unwrap();
    a.merge(&mut b).unwrap();
    let (v, _) = a.automerge().get(ROOT, "k").unwrap().unwrap();
    assert_eq!(a.get("k").unwrap(), scalar_json(v.as_scalar().unwrap()));
    // Candidates come in automerge's order: its winner last.
    let conflicts = a.conflicts().unwrap();
    let last = conflicts[0].candidates.last().unwrap();
    assert_eq!(last.value, scalar_json(v.as_scalar().unwrap()));
}

#[test]
fn list_elements_and_nested_objects_conflict_too() {
    let mut a = doc("a");
    a.put_with("l", &json!([1, 2]), &Commit::new().time_ms(1))
        .unwrap();
    let mut b = a.fork(b"b").unwrap();
    a.put_with("l/1", &json!("a"), &Commit::new().time_ms(10))
        .unwrap();
    b.put_with("l/1", &json!("b"), &Commit::new().time_ms(20))
        .unwrap();
    // Both create `o` concurrently, then write inside their own object.
    a.put_with("o", &json!({"x": 1}), &Commit::new().time_ms(30))
        .unwrap();
    b.put_with("o", &json!({"x": 2}), &Commit::new().time_ms(5))
        .unwrap();
    a.merge(&mut b).unwrap();
    assert_eq!(a.get("").unwrap(), json!({"l": [1, "b"], "o": {"x": 1}}));
    let paths: Vec<String> = a.conflicts().unwrap().into_iter().map(|c| c.path).collect();
    assert_eq!(paths, ["l/1", "o"]);
    a.set_strategy(Strategy::Manual);
    assert!(matches!(a.get("o/x"), Err(Error::Conflict { path, .. }) if path == "o"));
    assert!(matches!(
        a.put("l/1", &json!(0)),
        Err(Error::Conflict { .. })
    ));
    assert_eq!(a.get("l/0").unwrap(), json!(1));
    a.resolve("l/1", Keep::Remote).unwrap();
    a.resolve("o", Keep::Local).unwrap();
    assert_eq!(a.get("").unwrap(), json!({"l": [1, "b"], "o": {"x": 1}}));
}

#[test]
fn resolve_remote_and_value() {
    let mut a = conflicted();
    a.resolve("k", Keep::Remote).unwrap();
    assert_eq!(a.get_with("k", Strategy::Manual).unwrap(), json!("remote"));
    let mut a = conflicted();
    a.resolve("k", Keep::Value(json!({"n": 3}))).unwrap();
    assert_eq!(a.get_with("k/n", Strategy::Manual).unwrap(), json!(3));
}

//! Crash safety of the store: a process killed mid-save leaves a torn temp file or a torn
//! log tail; neither may corrupt the document or lose a completed save.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use p2pnode_crdt::{ChangeHash, Document, Error, Saved, Store, SyncSession};
use serde_json::json;

fn heads(doc: &Document) -> Vec<ChangeHash> {
    let mut h = doc.heads();
    h.sort();
    h
}

/// A store with one snapshot and five log records; the heads after each save.
fn store_with_log(dir: &Path) -> (Store, Vec<Vec<ChangeHash>>) {
    let store = Store::open(dir).unwrap();
    let mut doc = Document::new(b"writer").unwrap();
    doc.put("items", &json!([])).unwrap();
    assert!(matches!(
        store.save("doc", &mut doc).unwrap(),
        Saved::Snapshot(_)
    ));
    let mut saved = vec![heads(&doc)];
    for i in 0..5 {
        doc.put("items/-", &json!({"n": i, "text": "x".repeat(40)}))
            .unwrap();
        assert!(matches!(
            store.save("doc", &mut doc).unwrap(),
            Saved::Appended(_)
        ));
        saved.push(heads(&doc));
    }
    assert_eq!(store.save("doc", &mut doc).unwrap(), Saved::Nothing);
    (store, saved)
}

#[test]
fn every_truncation_of_the_log_loads_a_completed_save() {
    let dir = tempfile::tempdir().unwrap();
    let (store, saved) = store_with_log(dir.path());
    let log = dir.path().join("doc.log");
    let full = fs::read(&log).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for cut in 0..=full.len() {
        fs::write(&log, &full[..cut]).unwrap();
        let doc = store.load("doc", b"writer").unwrap();
        let at = saved.iter().position(|h| *h == heads(&doc));
        assert!(
            at.is_some(),
            "cut at {cut} loaded heads of no completed save"
        );
        seen.insert(at);
        // The torn tail is gone from disk, so later appends are reachable.
        assert!(fs::metadata(&log).unwrap().len() <= cut as u64);
    }
    assert_eq!(seen.len(), saved.len(), "every save is reached by some cut");
    assert_eq!(
        heads(&store.load("doc", b"writer").unwrap()),
        saved[5],
        "the whole log (last write) loads everything"
    );
}

#[test]
fn a_torn_tail_is_dropped_and_the_next_save_lands_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, saved) = store_with_log(dir.path());
    let log = dir.path().join("doc.log");
    let full = fs::read(&log).unwrap();
    fs::write(&log, &full[..full.len() - 3]).unwrap();
    let mut doc = store.load("doc", b"writer").unwrap();
    assert_eq!(heads(&doc), saved[4]);
    doc.put("after", &json!(true)).unwrap();
    assert!(matches!(
        store.save("doc", &mut doc).unwrap(),
        Saved::Appended(_)
    ));
    let again = store.load("doc", b"writer").unwrap();
    assert_eq!(heads(&again), heads(&doc));
    assert_eq!(again.get("after").unwrap(), json!(true));
}

#[test]
fn a_garbled_last_record_is_dropped_a_garbled_middle_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (store, saved) = store_with_log(dir.path());
    let log = dir.path().join("doc.log");
    let full = fs::read(&log).unwrap();

    let mut tail = full.clone();
    let last = tail.len() - 5;
    tail[last] ^= 0x55;
    fs::write(&log, &tail).unwrap();
    assert_eq!(heads(&store.load("doc", b"writer").unwrap()), saved[4]);

    let mut middle = full.clone();
    middle[12] ^= 0x55; // inside the first record's payload
    fs::write(&log, &middle).unwrap();
    let err = store.load("doc", b"writer").unwrap_err();
    assert!(matches!(err, Error::Corrupt { what: "log", .. }), "{err}");
    assert_eq!(
        fs::read(&log).unwrap(),
        middle,
        "damage before the tail is left for a person"
    );
}

#[test]
fn a_torn_temp_snapshot_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut doc = Document::new(b"writer").unwrap();
    doc.put("v", &json!(1)).unwrap();
    store.compact("doc", &mut doc).unwrap();
    let good = fs::read(dir.path().join("doc.am")).unwrap();
    // A compaction killed while writing the temp file: half of it, then garbage.
    doc.put("v", &json!(2)).unwrap();
    let mut torn = doc.save();
    torn.truncate(torn.len() / 2);
    torn.extend_from_slice(b"\xde\xad\xbe\xef");
    fs::write(dir.path().join(".doc.am.tmp"), &torn).unwrap();
    let loaded = store.load("doc", b"writer").unwrap();
    assert_eq!(loaded.get("v").unwrap(), json!(1));
    assert_eq!(fs::read(dir.path().join("doc.am")).unwrap(), good);
    assert_eq!(store.list().unwrap(), ["doc"]);
    // The next compaction replaces the torn temp file.
    let mut loaded = loaded;
    loaded.put("v", &json!(3)).unwrap();
    store.compact("doc", &mut loaded).unwrap();
    assert_eq!(
        store.load("doc", b"writer").unwrap().get("v").unwrap(),
        json!(3)
    );
}

#[test]
fn a_crash_between_snapshot_and_log_truncation_loads_the_same_document() {
    let dir = tempfile::tempdir().unwrap();
    let (store, saved) = store_with_log(dir.path());
    let log = dir.path().join("doc.log");
    let old_log = fs::read(&log).unwrap();
    let mut doc = store.load("doc", b"writer").unwrap();
    store.compact("doc", &mut doc).unwrap();
    assert_eq!(fs::metadata(&log).unwrap().len(), 0);
    fs::write(&log, &old_log).unwrap(); // as if the truncation never happened
    assert_eq!(heads(&store.load("doc", b"writer").unwrap()), saved[5]);
}

#[test]
fn the_log_is_compacted_when_it_outgrows_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap().with_compact_bytes(2048);
    let mut doc = Document::new(b"writer").unwrap();
    store.save("doc", &mut doc).unwrap();
    let mut kinds = Vec::new();
    for i in 0..40 {
        doc.put(&format!("k{i}"), &json!("y".repeat(50))).unwrap();
        kinds.push(store.save("doc", &mut doc).unwrap());
    }
    assert!(kinds.iter().any(|k| matches!(k, Saved::Snapshot(_))));
    assert!(kinds.iter().any(|k| matches!(k, Saved::Appended(_))));
    assert!(fs::metadata(dir.path().join("doc.log")).unwrap().len() <= 2048);
    assert_eq!(heads(&store.load("doc", b"writer").unwrap()), heads(&doc));
}

#[test]
fn errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut doc = Document::new(b"writer").unwrap();
    let errors = [
        store.load("missing", b"writer").unwrap_err(),
        store.save("../escape", &mut doc).unwrap_err(),
        doc.get("no/such").unwrap_err(),
        doc.put("/abs", &json!(1)).unwrap_err(),
        doc.put("", &json!([1])).unwrap_err(),
        SyncSession::new(Document::new(b"a").unwrap())
            .receive_message(b"b", b"not a message")
            .unwrap_err(),
    ];
    let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        lines,
        [
            "unknown document `missing`",
            "invalid name `../escape`: use 1 to 128 of A-Z a-z 0-9 . _ - (not starting with .)",
            "unknown path `no`",
            "invalid path `/abs`: starts with `/` (write `todos/3`, not `/todos/3`)",
            "invalid JSON: the document root must be an object",
            lines[5].as_str(),
        ]
    );
    assert!(lines[5].starts_with("bad sync message: "), "{}", lines[5]);
    assert!(lines.iter().all(|l| !l.contains('\n')));
}

#[test]
fn saving_a_loaded_document_under_another_name_writes_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (store, saved) = store_with_log(dir.path());
    let mut doc = store.load("doc", b"writer").unwrap();
    doc.put("copy", &json!(true)).unwrap();
    assert!(matches!(
        store.save("copy", &mut doc).unwrap(),
        Saved::Snapshot(_)
    ));
    assert_eq!(heads(&store.load("doc", b"writer").unwrap()), saved[5]);
    assert_eq!(heads(&store.load("copy", b"writer").unwrap()), heads(&doc));
    assert_eq!(store.list().unwrap(), ["copy", "doc"]);
    store.remove("copy").unwrap();
    assert_eq!(store.list().unwrap(), ["doc"]);
}

#[test]
fn sync_states_round_trip_per_peer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .save_sync_state("doc", &[1, 2, 255], b"state-1")
        .unwrap();
    store.save_sync_state("doc", b"peer", b"state-2").unwrap();
    store.save_sync_state("doc", b"peer", b"state-3").unwrap();
    assert_eq!(
        store.load_sync_states("doc").unwrap(),
        [
            (vec![1, 2, 255], b"state-1".to_vec()),
            (b"peer".to_vec(), b"state-3".to_vec())
        ]
    );
    assert!(store.load_sync_states("other").unwrap().is_empty());
    assert!(matches!(
        store.save_sync_state("doc", &[], b"x"),
        Err(Error::InvalidPeerId(0))
    ));
}

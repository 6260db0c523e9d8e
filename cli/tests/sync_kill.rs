//! A daemon SIGKILLed in the middle of writes to a document reopens it uncorrupted, with
//! every write it had acknowledged (a `db put` that exited 0).

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use crate::common::{Daemon, LOOPBACK, json, run, wait_for};

#[test]
fn a_daemon_killed_during_writes_keeps_every_acknowledged_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let mut daemon = Daemon::start(&dir, &LOOPBACK);
    json(&dir, &["net", "create", "home"]);
    json(&dir, &["db", "create", "log", "--network", "home"]);

    // A writer puts k0, k1, ... until a put fails (the daemon is gone), keeping the ones
    // that were acknowledged.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (dir, acked) = (dir.clone(), acked.clone());
        std::thread::spawn(move || {
            for i in 0..5000u32 {
                let value = format!("{{\"n\":{i},\"text\":\"write number {i}\"}}");
                let out = run(&dir, &["db", "put", "log", &format!("k{i}"), &value]);
                if !out.status.success() {
                    break;
                }
                acked.lock().unwrap().push(i);
            }
        })
    };
    wait_for("30 acknowledged writes", || {
        (acked.lock().unwrap().len() >= 30).then_some(())
    });
    // SIGKILL: no shutdown, no flush.
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 30);

    let _again = Daemon::start(&dir, &LOOPBACK);
    let doc = json(&dir, &["db", "get", "log"]);
    let doc = doc.get("value").unwrap_or(&doc);
    for i in &acked {
        assert_eq!(
            doc[format!("k{i}")]["n"],
            serde_json::json!(i),
            "acknowledged write {i} lost: {doc}"
        );
    }
    // The document works on: its history reads and a new write is taken.
    let history = json(&dir, &["db", "history", "log"]);
    assert!(
        history.as_array().is_some_and(|h| h.len() >= acked.len()),
        "{history}"
    );
    json(&dir, &["db", "put", "log", "after", "1"]);
    assert_eq!(
        json(&dir, &["db", "get", "log", "after"]),
        serde_json::json!(1)
    );
}

//! Files between real `p2pnode` processes on loopback: share and get a directory, a clear
//! error for an unknown content id, and an offer refused without the files permission,
//! then accepted with it.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use crate::common::{Daemon, LOOPBACK, json, run};
use serde_json::Value;

/// Pseudo-random bytes (xorshift), enough to defeat any accidental sameness.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// The JSON lines of a command's stdout; the command must succeed.
fn json_lines(dir: &Path, args: &[&str]) -> Vec<Value> {
    let out = run(dir, &[args, &["--json"]].concat());
    assert!(
        out.status.success(),
        "p2pnode {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn share_get_and_offers_between_two_daemons() {
    let tmp = tempfile::tempdir().unwrap();
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = Daemon::start(&da, &LOOPBACK);
    let boot = a.tcp_addr();
    let b = Daemon::start(&db, &[&LOOPBACK[..], &["--bootstrap", &boot]].concat());

    let src = tmp.path().join("album");
    std::fs::create_dir_all(src.join("raw")).unwrap();
    let big = noise(1_500_000, 7);
    std::fs::write(src.join("raw/big.bin"), &big).unwrap();
    std::fs::write(src.join("notes.txt"), b"hello").unwrap();
    let shared = json(&da, &["share", src.to_str().unwrap()]);
    let id = shared["content_id"].as_str().unwrap().to_string();
    assert_eq!(shared["files"], 2);
    let list = json(&da, &["shares"]);
    assert_eq!(list[0]["content_id"], id.as_str());

    let out = tmp.path().join("out");
    let lines = json_lines(
        &db,
        &[
            "get",
            &id,
            "--to",
            out.to_str().unwrap(),
            "--from",
            &a.peer_id,
        ],
    );
    assert_eq!(lines.last().unwrap()["status"], "done", "{lines:?}");
    assert_eq!(std::fs::read(out.join("album/raw/big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read(out.join("album/notes.txt")).unwrap(),
        b"hello"
    );
    let transfers = json(&db, &["transfers"]);
    assert_eq!(transfers[0]["status"], "done");

    // An id nobody shares: one clear line.
    let unknown = "b3:".to_string() + &"a".repeat(52);
    let res = run(
        &db,
        &[
            "get",
            &unknown,
            "--to",
            out.to_str().unwrap(),
            "--from",
            &a.peer_id,
        ],
    );
    assert!(!res.status.success());
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains("is not shared"), "{stderr}");

    // Offers need the files permission on the receiving side.
    let file = tmp.path().join("letter.txt");
    std::fs::write(&file, b"dear b").unwrap();
    let res = run(&da, &["send", &b.peer_id, file.to_str().unwrap()]);
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("refused"));
    json(&db, &["trust", "allow", &a.peer_id, "--protocols", "files"]);
    json(&da, &["send", &b.peer_id, file.to_str().unwrap()]);
    let inbox = json(&db, &["inbox"]);
    let offer = inbox[0]["id"].as_u64().unwrap().to_string();
    let to = tmp.path().join("received");
    let lines = json_lines(&db, &["accept", &offer, "--to", to.to_str().unwrap()]);
    assert_eq!(lines.last().unwrap()["status"], "done", "{lines:?}");
    assert_eq!(std::fs::read(to.join("letter.txt")).unwrap(), b"dear b");
    assert_eq!(json(&db, &["inbox"]), serde_json::json!([]));

    b.stop();
    a.stop();
}

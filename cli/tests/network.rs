//! Real `p2pnode` processes on loopback: a relay R and two nodes A and B that know only R.

#![allow(clippy::unwrap_used)]

use crate::common::{Daemon, LOOPBACK, json, wait_for};

#[test]
fn find_and_connect_by_peer_id_through_a_relay_then_reconnect_from_the_peer_store() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Daemon::start(
        &tmp.path().join("r"),
        &[&LOOPBACK[..], &["--relay"]].concat(),
    );
    let r = relay.tcp_addr();
    let boot = ["--bootstrap", r.as_str()];
    let a = Daemon::start(&tmp.path().join("a"), &[&LOOPBACK[..], &boot].concat());
    let b = Daemon::start(&tmp.path().join("b"), &[&LOOPBACK[..], &boot].concat());

    // Both hold a reservation on the relay, as nodes behind NAT would.
    for n in [&a, &b] {
        wait_for("a relay reservation", || {
            let s = json(&n.dir, &["status"]);
            (!s["reservations"].as_array()?.is_empty()).then_some(())
        });
    }

    let found = wait_for("B in the DHT", || {
        let out = crate::common::run(&a.dir, &["find", &b.peer_id, "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
            .flatten()
    });
    assert_eq!(found["peer_id"], b.peer_id.as_str());
    assert!(!found["addresses"].as_array().unwrap().is_empty());

    let connected = json(&a.dir, &["connect", &b.peer_id]);
    assert_eq!(connected["peer_id"], b.peer_id.as_str());
    assert_eq!(connected["path"], "direct");

    let peers = json(&a.dir, &["peers"]);
    let entry = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == b.peer_id.as_str())
        .expect("B listed in A's peers");
    assert_eq!(entry["path"], "direct");
    // Both listen on TCP and QUIC; whichever dial wins is a direct connection.
    assert!(
        entry["transport"] == "tcp" || entry["transport"] == "quic",
        "transport: {}",
        entry["transport"]
    );

    let pinged = json(&a.dir, &["ping", &b.peer_id, "--count", "2"]);
    assert_eq!(pinged["rtt_ms"].as_array().unwrap().len(), 2);

    // A restarted A has no bootstrap flag: it must find B again from its peer store.
    let a_dir = a.dir.clone();
    a.stop();
    let a = Daemon::start(&a_dir, &LOOPBACK);
    let b_id = b.peer_id.clone();
    wait_for("A to reconnect to B", || {
        a.is_connected_to(&b_id).then_some(())
    });
    let r_id = relay.peer_id.clone();
    wait_for("A to reconnect to the relay", || {
        a.is_connected_to(&r_id).then_some(())
    });
}

#[test]
fn verify_codes_match_then_revoke_disconnects_and_survives_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start(&tmp.path().join("a"), &LOOPBACK);
    let b = Daemon::start(&tmp.path().join("b"), &LOOPBACK);
    json(&a.dir, &["connect", &b.tcp_addr()]);

    // Both users see the same code from one exchange.
    let from_a = json(&a.dir, &["verify", &b.peer_id]);
    let from_b = json(&b.dir, &["verify", &a.peer_id]);
    assert_eq!(from_a["sas_digits"], from_b["sas_digits"]);
    assert_eq!(from_a["sas_words"], from_b["sas_words"]);
    assert!(
        from_a["sas_words"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .count()
            >= 5
    );

    let confirmed = json(&a.dir, &["verify", &b.peer_id, "--confirm"]);
    assert_eq!(confirmed["verified"], true);
    let list = json(&a.dir, &["trust", "list"]);
    assert_eq!(list[0]["peer_id"], b.peer_id.as_str());
    assert_eq!(list[0]["verified"], true);

    // A user who answers "no" leaves the peer unverified, with an error exit.
    let out = std::process::Command::new(crate::common::BIN)
        .arg("--data-dir")
        .arg(&b.dir)
        .args(["verify", &a.peer_id])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"n\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT verified"));

    // Revocation closes the connection within 5 s and holds after a restart.
    let revoked = json(&a.dir, &["trust", "revoke", &b.peer_id]);
    assert_eq!(revoked["revoked"], true);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while a.is_connected_to(&b.peer_id) {
        assert!(
            std::time::Instant::now() < deadline,
            "still connected 5 s after revoke"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let a_dir = a.dir.clone();
    a.stop();
    let a = Daemon::start(&a_dir, &LOOPBACK);
    let out = crate::common::run(&b.dir, &["connect", &a.tcp_addr()]);
    let ping = crate::common::run(&b.dir, &["ping", &a.peer_id, "--count", "1"]);
    assert!(!ping.status.success(), "revoked peer pinged: {out:?}");
    assert!(!a.is_connected_to(&b.peer_id));
}

//! Real `p2pnode` processes on loopback: a relay R and two nodes A and B that know only R.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Daemon, LOOPBACK, json, wait_for};

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
        let out = common::run(&a.dir, &["find", &b.peer_id, "--json"]);
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
    assert_eq!(entry["transport"], "tcp");

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
    assert!(a.is_connected_to(&relay.peer_id));
}

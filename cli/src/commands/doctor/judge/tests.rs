use p2pnode_node::api::{ClockSample, DatabaseHealth, Observation};

use super::*;

const LISTEN: &str = "/ip4/10.0.1.2/tcp/4001";
const RELAY: &str = "/ip4/198.51.100.2/tcp/4001";

fn obs(peer_address: &str, observed: &str) -> Observation {
    Observation {
        peer_id: "peer".into(),
        peer_address: peer_address.into(),
        observed: observed.into(),
        at: 0,
    }
}

fn daemon(nat_status: &str, reservations: &[&str], relay_only: bool) -> DaemonFacts {
    DaemonFacts {
        status: Status {
            peer_id: "me".into(),
            listen_addrs: vec![LISTEN.into()],
            external_addrs: vec![],
            nat_status: nat_status.into(),
            reservations: reservations.iter().map(|s| s.to_string()).collect(),
            connected_peers: 1,
            relay_server: false,
            dht_peers: 1,
            dht_queries: 0,
            provided_keys: 0,
        },
        diagnostics: Diagnostics {
            data_dir: "/nonexistent/p2pnode-doctor-test".into(),
            pid: 42,
            relay_only,
            hole_punch: if relay_only { "off" } else { "p2pnode" }.into(),
            database: DatabaseHealth {
                ok: true,
                tables: 3,
                entries: 5,
                bytes: 4096,
                error: None,
            },
            observed: vec![obs(RELAY, "/ip4/198.51.100.11/tcp/4001")],
            punches: vec![],
            clock: vec![ClockSample {
                peer_id: "peer".into(),
                offset_ms: 12.0,
                rtt_ms: 1.0,
            }],
        },
    }
}

fn served(pid: i32) -> SocketFacts {
    SocketFacts {
        exists: true,
        owner: Some(1000),
        mode: Some(0o600),
        server: Some((1000, Some(pid))),
        error: None,
    }
}

fn level(r: &Report, name: &str) -> Level {
    r.checks.iter().find(|c| c.name == name).unwrap().level
}

#[test]
fn a_healthy_node_behind_a_cone_nat() {
    let d = daemon(
        "private",
        &["/ip4/198.51.100.2/tcp/4001/p2p/R/p2p-circuit"],
        false,
    );
    let dir = Path::new(&d.diagnostics.data_dir).to_path_buf();
    let r = judge(&dir, 1000, &[], &served(42), Some(&d));
    assert!(r.ok, "{r:#?}");
    assert_eq!(r.facts.nat_behaviour, NatBehaviour::PortPreserving);
    assert_eq!(level(&r, "relays"), Level::Ok);
    assert_eq!(level(&r, "clock"), Level::Ok);
    assert_eq!(level(&r, "reachability"), Level::Info);
}

#[test]
fn failures_are_named_with_advice() {
    let mut d = daemon("private", &[], false);
    d.diagnostics.clock[0].offset_ms = -90_000.0;
    d.diagnostics.database.ok = false;
    let dir = Path::new(&d.diagnostics.data_dir).to_path_buf();
    // Another process (pid 7) holds the socket.
    let r = judge(&dir, 1000, &[], &served(7), Some(&d));
    assert!(!r.ok);
    for name in ["daemon", "relays", "clock", "database"] {
        let c = r.checks.iter().find(|c| c.name == name).unwrap();
        assert_eq!(c.level, Level::Fail, "{name}: {c:?}");
        assert!(c.advice.is_some(), "{name} says what to do");
    }
    // Another user's daemon.
    let mut other = served(42);
    other.server = Some((1001, Some(42)));
    let r = judge(&dir, 1000, &[], &other, Some(&d));
    assert_eq!(level(&r, "daemon"), Level::Fail);
}

#[test]
fn without_a_daemon_the_rest_is_skipped() {
    let r = judge(
        Path::new("/nonexistent"),
        1000,
        &[],
        &SocketFacts::default(),
        None,
    );
    assert!(!r.ok);
    assert_eq!(level(&r, "daemon"), Level::Fail);
    assert_eq!(level(&r, "nat"), Level::Skipped);
}

#[test]
fn relay_only_mode_needs_a_reservation_and_punches_nothing() {
    let d = daemon("off", &[], true);
    let dir = Path::new(&d.diagnostics.data_dir).to_path_buf();
    let r = judge(&dir, 1000, &[], &served(42), Some(&d));
    assert_eq!(level(&r, "relays"), Level::Fail);
    assert_eq!(level(&r, "hole_punching"), Level::Info);
    assert_eq!(level(&r, "reachability"), Level::Info);
    assert_eq!(level(&r, "nat"), Level::Info);
}

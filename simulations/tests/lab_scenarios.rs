//! The p2pnode scenarios in the NAT lab, with real `p2pnode` daemons behind nftables NAT
//! routers: cone-cone hole punching over TCP and QUIC, symmetric-symmetric and
//! cone-symmetric staying relayed, two peers on one LAN, and a relay restart; the cone-cone
//! TCP run also scrapes each daemon's metrics endpoint. Peers punch
//! with p2pnode's own hole-punch protocol, and once more with libp2p's DCUtR.
//!
//! Needs root and the `p2pnode` binary (env `P2PNODE_BIN`, else
//! `<workspace>/target/debug/p2pnode`: run `cargo build -p p2pnode` first). Without
//! either the tests fail when env CI is set and otherwise say why and return.
//!
//! Each test prints its outcome as one JSON line on stdout, past the test harness's
//! capture, so CI logs show the timings of passing runs too.

mod common;

use common::{MACHINE, config, init_tracing, lab_allowed, report};
use p2pnode_sim::lab::NatKind;
use p2pnode_sim::lab::node::PathKind;
use p2pnode_sim::lab::scenarios::{self, HolePunchOutcome, Punch, ScenarioConfig, Transport};

async fn hole_punch(a: NatKind, b: NatKind, transport: Transport) -> HolePunchOutcome {
    hole_punch_with(a, b, transport, Punch::default()).await
}

async fn hole_punch_with(
    a: NatKind,
    b: NatKind,
    transport: Transport,
    punch: Punch,
) -> HolePunchOutcome {
    init_tracing();
    let cfg = ScenarioConfig {
        hole_punch: punch,
        ..config()
    };
    let outcome = scenarios::hole_punch(a, b, transport, cfg)
        .await
        .expect("scenario runs");
    report(&outcome);
    assert_eq!(outcome.hole_punch, punch.as_str());
    // Only the relay's introduction may say it made the connection, and on cone NATs it
    // must have.
    let cone_cone = a == NatKind::Cone && b == NatKind::Cone;
    assert_eq!(
        outcome.introduced,
        punch == Punch::P2pnode && cone_cone,
        "{outcome:?}"
    );
    outcome
}

fn assert_direct_without_relay(outcome: &HolePunchOutcome) {
    assert!(outcome.found_by_id, "A finds B by peer id: {outcome:?}");
    assert!(
        outcome.direct,
        "hole punching makes the connection direct: {outcome:?}"
    );
    assert!(outcome.relay_killed, "{outcome:?}");
    assert!(
        outcome.ping_ok && outcome.ping_path == Some(PathKind::Direct),
        "traffic flows with the relay dead: {outcome:?}"
    );
}

fn assert_relayed_and_working(outcome: &HolePunchOutcome) {
    assert!(outcome.found_by_id, "A finds B by peer id: {outcome:?}");
    assert!(outcome.still_connected, "peers stay connected: {outcome:?}");
    assert!(outcome.ping_ok, "traffic flows: {outcome:?}");
    if !outcome.direct {
        assert_eq!(outcome.ping_path, Some(PathKind::Relayed), "{outcome:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cone_cone_tcp_goes_direct_and_works_without_the_relay() {
    if !lab_allowed() {
        return;
    }
    let _alone = MACHINE.write().await;
    init_tracing();
    let cfg = ScenarioConfig {
        metrics: true,
        ..config()
    };
    let outcome = scenarios::hole_punch(NatKind::Cone, NatKind::Cone, Transport::Tcp, cfg)
        .await
        .expect("scenario runs");
    report(&outcome);
    assert!(outcome.introduced, "{outcome:?}");
    assert_direct_without_relay(&outcome);
    // The documented metrics, scraped from each daemon with curl, show what happened.
    // A series given with its labels is read as is; one without them sums every label set.
    let value = |node: &str, series: &str| -> f64 {
        let text = &outcome.metrics[node];
        let values: Vec<f64> = text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(series)?;
                let rest = if series.ends_with('}') {
                    rest
                } else if rest.starts_with('{') {
                    rest.split_once("} ")?.1
                } else {
                    rest
                };
                rest.trim().parse().ok()
            })
            .collect();
        assert!(!values.is_empty(), "{node} has no {series}:\n{text}");
        values.iter().sum()
    };
    assert!(value("a", r#"p2pnode_connections{path="direct",transport="tcp"}"#) >= 1.0);
    assert!(value("b", "p2pnode_reservations_held") >= 1.0);
    let introduced: f64 = ["a", "b"]
        .iter()
        .map(|n| {
            outcome.metrics[*n]
                .lines()
                .find_map(|l| {
                    l.strip_prefix(
                        r#"p2pnode_holepunch_total{method="introduction",outcome="success",transport="tcp"}"#,
                    )?
                    .trim()
                    .parse::<f64>()
                    .ok()
                })
                .unwrap_or(0.0)
        })
        .sum();
    assert!(introduced >= 1.0, "{:?}", outcome.metrics);
    assert!(value("relay", "p2pnode_circuits_served_total") >= 1.0);
    assert!(value("relay", "p2pnode_reservations_served") >= 2.0);
    assert!(value("a", "libp2p_swarm_connections_established_total") >= 1.0);
    // DCUtR runs beside ours but stands down between two nodes that both speak ours: no
    // double dials.
    for node in ["a", "b"] {
        assert!(
            !outcome.metrics[node].contains(r#"method="dcutr""#),
            "{node} ran DCUtR against a p2pnode peer:\n{}",
            outcome.metrics[node]
        );
    }
}

/// A node running ours also punches with a peer that speaks only DCUtR (a node started
/// with `--hole-punch dcutr` stands in for go-libp2p or js-libp2p), in both roles: as the
/// relayed connection's listener it starts DCUtR once identify shows the dialer does not
/// speak ours; as its dialer it answers the other's DCUtR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cone_cone_goes_direct_with_a_dcutr_only_peer() {
    if !lab_allowed() {
        return;
    }
    let _alone = MACHINE.write().await;
    for punch in [Punch::P2pnodeToDcutr, Punch::DcutrToP2pnode] {
        for transport in [Transport::Tcp, Transport::Quic] {
            let outcome = hole_punch_with(NatKind::Cone, NatKind::Cone, transport, punch).await;
            assert_direct_without_relay(&outcome);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cone_cone_quic_goes_direct_and_works_without_the_relay() {
    if !lab_allowed() {
        return;
    }
    let _alone = MACHINE.write().await;
    let outcome = hole_punch(NatKind::Cone, NatKind::Cone, Transport::Quic).await;
    assert_direct_without_relay(&outcome);
}

/// libp2p's DCUtR stays available (`--hole-punch dcutr`) for peers that do not speak our
/// hole-punch protocol; the tests above run ours, the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cone_cone_goes_direct_with_libp2p_dcutr_too() {
    if !lab_allowed() {
        return;
    }
    let _alone = MACHINE.write().await;
    for transport in [Transport::Tcp, Transport::Quic] {
        let outcome = hole_punch_with(NatKind::Cone, NatKind::Cone, transport, Punch::Dcutr).await;
        assert_direct_without_relay(&outcome);
    }
}

/// The exchange on the relayed connection alone (the relay introduces nobody) still makes
/// cone-cone direct over both transports: the fallback when introductions fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cone_cone_goes_direct_by_the_exchange_alone() {
    if !lab_allowed() {
        return;
    }
    let _alone = MACHINE.write().await;
    for transport in [Transport::Tcp, Transport::Quic] {
        let outcome =
            hole_punch_with(NatKind::Cone, NatKind::Cone, transport, Punch::Exchange).await;
        assert_direct_without_relay(&outcome);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_symmetric_stays_relayed_and_works() {
    if !lab_allowed() {
        return;
    }
    let _shared = MACHINE.read().await;
    for transport in Transport::ALL {
        let outcome = hole_punch(NatKind::Symmetric, NatKind::Symmetric, transport).await;
        assert!(
            !outcome.direct,
            "no hole punch through two symmetric NATs: {outcome:?}"
        );
        assert_relayed_and_working(&outcome);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cone_symmetric_stays_connected() {
    if !lab_allowed() {
        return;
    }
    let _shared = MACHINE.read().await;
    for transport in Transport::ALL {
        // Either outcome is acceptable here; the JSON line says which it was.
        let outcome = hole_punch(NatKind::Cone, NatKind::Symmetric, transport).await;
        assert_relayed_and_working(&outcome);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_lan_peers_connect_directly_over_the_lan() {
    if !lab_allowed() {
        return;
    }
    init_tracing();
    let _alone = MACHINE.write().await;
    let outcome = scenarios::same_lan(config()).await.expect("scenario runs");
    report(&outcome);
    assert!(outcome.direct && outcome.lan_address, "{outcome:?}");
    assert!(
        outcome.ping_ok_without_relay && outcome.ping_path == Some(PathKind::Direct),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_reserve_again_within_30s_after_a_relay_restart() {
    if !lab_allowed() {
        return;
    }
    init_tracing();
    let _alone = MACHINE.write().await;
    let outcome = scenarios::relay_restart(Transport::Tcp, config())
        .await
        .expect("scenario runs");
    report(&outcome);
    assert!(outcome.within_30s, "{outcome:?}");
}

//! `p2pnode doctor` tells the truth about nodes in the NAT lab, checked on its JSON: a node
//! behind a cone NAT (port kept, hole punch succeeded), one behind a symmetric NAT (port
//! changed, hole punch failed, still reachable through the relay), and one in relay-only
//! (privacy) mode (no punching, a reservation, nothing failing).
//!
//! Needs root; without it the test fails when env CI is set and otherwise says why and
//! returns.

mod common;

use std::time::Duration;

use common::{MACHINE, init_tracing, lab_allowed};
use p2pnode_node::config::HolePunchMode;
use p2pnode_sim::lab::poll::{Poll, wait_for};
use p2pnode_sim::lab::scenarios::{
    PeerOptions, Transport, relay_addr, start_peer, start_relay, wait_direct, wait_reservation,
};
use p2pnode_sim::lab::{LabBuilder, NatKind, Node, NodeSpec};
use serde_json::Value;

const SIM_BIN: &str = env!("CARGO_BIN_EXE_p2pnode-sim");

/// Polls `node`'s doctor until `ready` holds for its report.
async fn doctor_until(node: &Node, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let what = format!("{}'s doctor to report {what}", node.name());
    let report = wait_for(
        &what,
        Duration::from_secs(45),
        Duration::from_millis(500),
        || async {
            if let Err(err) = node.check_running() {
                return Poll::Fail(err);
            }
            match node.doctor().await {
                Ok(report) if ready(&report) => Poll::Ready(report),
                Ok(report) => Poll::seen(report["facts"].to_string()),
                Err(err) => Poll::seen(err),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", node.log_tail(3000)));
    common::report(&serde_json::json!({ "doctor": node.name(), "report": report }));
    report
}

fn level<'a>(report: &'a Value, check: &str) -> &'a str {
    report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == check))
        .and_then(|c| c["level"].as_str())
        .unwrap_or_else(|| panic!("no check {check}: {report}"))
}

fn assert_levels(report: &Value, expected: &[(&str, &str)]) {
    for (check, want) in expected {
        assert_eq!(level(report, check), *want, "{check}: {report:#}");
    }
}

fn count(report: &Value, fact: &str) -> u64 {
    report["facts"][fact].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_cone_symmetric_and_relay_only_nodes_correctly() {
    if !lab_allowed() {
        return;
    }
    let _shared = MACHINE.read().await;
    init_tracing();
    // Each node behind its own router: two behind one router would meet over their LAN.
    let lab = LabBuilder::new()
        .public_host("relay")
        .router("rc1", NatKind::Cone)
        .host("cone1", "rc1")
        .router("rc2", NatKind::Cone)
        .host("cone2", "rc2")
        .router("rs1", NatKind::Symmetric)
        .host("sym1", "rs1")
        .router("rs2", NatKind::Symmetric)
        .host("sym2", "rs2")
        .router("rc3", NatKind::Cone)
        .host("private", "rc3")
        .sim_binary(SIM_BIN)
        .build()
        .await
        .expect("lab builds");
    let transport = Transport::Tcp;
    let relay = start_relay(&lab, "relay", &[transport], &common::config())
        .await
        .expect("relay starts");
    let options = PeerOptions {
        transport,
        port: 4001,
        mdns: false,
        listen_any: false,
        hole_punch: HolePunchMode::P2pnode,
        metrics: false,
    };
    let mut nodes = Vec::new();
    for host in ["cone1", "cone2", "sym1", "sym2"] {
        let node = start_peer(&lab, host, host, &relay, options)
            .await
            .expect("peer starts");
        nodes.push(node);
    }
    let ip = lab.host("private").expect("host").ip;
    let private = lab
        .start_node(
            "private",
            "private",
            NodeSpec {
                listen: vec![transport.addr(ip, 4001)],
                bootstrap: vec![relay_addr(&relay, transport)],
                extra_args: vec!["--relay-only".into()],
                ..NodeSpec::default()
            },
        )
        .await
        .expect("relay-only node starts");
    nodes.push(private);
    for node in &nodes {
        wait_reservation(node, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", node.log_tail(3000)));
    }
    let [cone1, cone2, sym1, sym2, private] = &nodes[..] else {
        unreachable!("five nodes")
    };

    // Cone: a hole punch that works.
    cone1
        .connect(cone2.peer_id())
        .await
        .expect("cone1 connects");
    let direct = wait_direct(
        cone1,
        cone2,
        transport,
        Duration::from_secs(20),
        Duration::from_millis(100),
    )
    .await
    .expect("poll");
    assert!(direct.is_some(), "cone1 and cone2 go direct");
    let report = doctor_until(cone1, "the hole punch", |r| {
        count(r, "punch_successes") >= 1
    })
    .await;
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(
        report["facts"]["nat_behaviour"], "port_preserving",
        "{report:#}"
    );
    assert_eq!(report["facts"]["relay_only"], false);
    assert_levels(
        &report,
        &[
            ("data_dir", "ok"),
            ("daemon", "ok"),
            ("database", "ok"),
            ("peers", "ok"),
            ("nat", "ok"),
            ("relays", "ok"),
            ("hole_punching", "ok"),
            ("clock", "ok"),
        ],
    );
    let offset = report["facts"]["clock_offset_ms"]
        .as_f64()
        .expect("a clock offset against connected peers");
    assert!(offset.abs() < 1000.0, "one machine, one clock: {offset} ms");

    // Symmetric: the port changes, hole punching fails, the relay still serves.
    sym1.connect(sym2.peer_id()).await.expect("sym1 connects");
    let report = doctor_until(sym1, "a failed hole punch", |r| {
        count(r, "punch_failures") >= 1
    })
    .await;
    assert_eq!(report["ok"], true, "warnings only: {report:#}");
    let nat = report["facts"]["nat_behaviour"]
        .as_str()
        .unwrap_or_default();
    assert!(
        nat == "port_changing" || nat == "symmetric",
        "a symmetric NAT changes ports: {report:#}"
    );
    assert_eq!(count(&report, "punch_successes"), 0, "{report:#}");
    assert_levels(
        &report,
        &[
            ("daemon", "ok"),
            ("peers", "ok"),
            ("nat", "warn"),
            ("relays", "ok"),
            ("hole_punching", "warn"),
        ],
    );

    // Relay-only: no punching at all, and the reservation it depends on.
    let report = doctor_until(private, "its reservation", |r| {
        r["facts"]["daemon_running"] == true
    })
    .await;
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["facts"]["relay_only"], true, "{report:#}");
    assert!(
        !report["facts"]["reservations"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{report:#}"
    );
    assert_levels(
        &report,
        &[
            ("daemon", "ok"),
            ("reachability", "info"),
            ("nat", "info"),
            ("relays", "ok"),
            ("hole_punching", "info"),
        ],
    );

    // And a daemon that is gone is a failure with advice, not a hang or a panic.
    private.kill().await.expect("kill");
    let report = private
        .doctor()
        .await
        .expect("doctor runs without a daemon");
    assert_eq!(report["ok"], false);
    assert_eq!(level(&report, "daemon"), "fail");
}

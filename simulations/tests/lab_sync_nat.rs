//! A document synced across the NAT lab (issue #20): A and B behind two NAT routers know
//! only the relay. A creates a network, B joins it with A's invite, and both write to a
//! document of that network: behind two cone NATs once hole punching made the connection
//! direct, behind two symmetric NATs over the relay. Either way both end with the same
//! heads and JSON, holding every acknowledged write of both sides.
//!
//! Needs root and the `p2pnode` binary: without them the tests fail (they never skip).
//! Each test prints its outcome as one JSON line on stdout.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::sync::wait_same;
use common::{config, init_tracing, machine_for, nat_pair, report, require_nat_lab};
use p2pnode_sim::lab::node::PathKind;
use p2pnode_sim::lab::scenarios;
use p2pnode_sim::lab::{NatKind, Node};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Longer than DCUtR's attempts, so a relayed outcome is settled by its "giving up" line.
const DCUTR_WINDOW: Duration = Duration::from_secs(45);
const DOC: &str = "notes";
/// Writes each side makes, all while connected.
const WRITES: usize = 50;
/// How long the two may take to agree after the last write was acknowledged.
const CONVERGE: Duration = Duration::from_secs(20);

/// `WRITES` puts of fresh keys named after `name`, then one of the shared key `last`.
async fn write(name: &str, node: &Node) {
    for k in 0..WRITES {
        let value = json!({ "by": name, "k": k }).to_string();
        node.client_text(&["db", "put", DOC, &format!("{name}_{k}"), &value])
            .await
            .unwrap();
    }
    node.client_text(&["db", "put", DOC, "last", &format!("\"{name}\"")])
        .await
        .unwrap();
}

async fn sync_across(nat: NatKind, expected: PathKind) {
    init_tracing();
    require_nat_lab("sync");
    let _machine = machine_for(expected).await;
    let cfg = scenarios::ScenarioConfig {
        direct_window: DCUTR_WINDOW,
        ..config()
    };
    let (_lab, a, b) = nat_pair(nat, expected, &cfg).await;
    let path = expected;

    // The network: A creates it, B joins with A's ticket over the path just made.
    a.client_text(&["net", "create", "lab"]).await.unwrap();
    let invite: Value = a.client_json(&["net", "invite", "lab"]).await.unwrap();
    let ticket = invite["ticket"].as_str().unwrap();
    b.client_text(&["net", "join", ticket]).await.unwrap();
    a.client_text(&["db", "create", DOC, "--network", "lab"])
        .await
        .unwrap();

    // Both write at once, each to keys of its own and to one key they share.
    let start = Instant::now();
    // B's first write needs the document: it arrives by sync once B is a member.
    let b_has_doc = wait_same(&[&a, &b], DOC, CONVERGE).await;
    assert!(
        b_has_doc.is_ok(),
        "the document never reached B: {b_has_doc:?}"
    );
    tokio::join!(write("a", &a), write("b", &b));
    let written = Instant::now();
    let (heads, value) = wait_same(&[&a, &b], DOC, CONVERGE)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let converged = written.elapsed();

    for node in ["a", "b"] {
        for k in 0..WRITES {
            assert_eq!(
                value[format!("{node}_{k}")],
                json!({ "by": node, "k": k }),
                "acknowledged write {node}_{k} missing"
            );
        }
    }
    assert!(
        value["last"] == "a" || value["last"] == "b",
        "the shared key holds one of the two writes: {}",
        value["last"]
    );
    // The connection the two hold afterwards is still of the kind asked for.
    let peer = b.peer(a.peer_id()).await.unwrap().unwrap();
    if expected == PathKind::Relayed {
        assert!(
            peer.connections.iter().all(|c| c.path == PathKind::Relayed),
            "a direct connection appeared behind symmetric NATs: {:?}",
            peer.connections
        );
    }
    report(&json!({
        "nat": nat.to_string(),
        "path": path,
        "writes": 2 * (WRITES + 1),
        "heads": heads.len(),
        "write_seconds": (written - start).as_secs_f64(),
        "converged_ms_after_last_write": converged.as_millis(),
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_syncs_across_two_cone_nats_directly() {
    sync_across(NatKind::Cone, PathKind::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_syncs_across_two_symmetric_nats_over_the_relay() {
    sync_across(NatKind::Symmetric, PathKind::Relayed).await;
}

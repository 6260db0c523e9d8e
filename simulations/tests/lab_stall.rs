//! Stalled TCP connections between real daemons in the lab: one that carried data while
//! the network was cut is closed by the node's TCP user timeout and redialled, so it
//! moves again within seconds of the heal; one that is slow but moving is left alone.
//!
//! The split is what `lab_sync` does (nftables drops by source address on each host);
//! the slow link is a token bucket on the sender's interface, whose queue makes
//! acknowledgements come late but keeps them coming.
//!
//! Needs root; without it the test fails when env CI is set and otherwise says why and
//! returns.

mod common;

use std::time::Duration;

use common::sync::wait_same;
use common::{MACHINE, init_tracing, lab_allowed};
use p2pnode_sim::lab::poll::{Poll, wait_for};
use p2pnode_sim::lab::{Lab, LabBuilder, Node, NodeSpec};
use rand::distributions::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const SIM_BIN: &str = env!("CARGO_BIN_EXE_p2pnode-sim");
/// The nodes' TCP user timeout (the default, `tcp_user_timeout_secs`).
const USER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the network stays cut in the stall test.
const OUTAGE: Duration = Duration::from_secs(20);

/// Runs one nft command (its words as arguments) in `host`'s namespace.
async fn nft(lab: &Lab, host: &str, script: &str) {
    let args: Vec<&str> = script.split_whitespace().collect();
    lab.exec(host, "nft", &args)
        .await
        .unwrap_or_else(|e| panic!("nft {script} on {host}: {e}"));
}

/// A lab of public hosts `a` and `b`, a node on each listening on TCP, and `a` connected
/// to `b` (so `a` dialled the connection).
async fn two_nodes() -> (Lab, Node, Node) {
    let lab = LabBuilder::new()
        .public_host("a")
        .public_host("b")
        .sim_binary(SIM_BIN)
        .build()
        .await
        .expect("lab builds");
    let mut nodes = Vec::new();
    for h in ["a", "b"] {
        let ip = lab.host(h).expect("host").ip;
        let spec = NodeSpec {
            listen: vec![format!("/ip4/{ip}/tcp/4001")],
            ..NodeSpec::default()
        };
        nodes.push(lab.start_node(h, h, spec).await.expect("node starts"));
    }
    let b = nodes.pop().expect("b");
    let a = nodes.pop().expect("a");
    let ip = lab.host("b").expect("host").ip;
    a.connect(&b.addr_with_id(&format!("/ip4/{ip}/tcp/4001")))
        .await
        .expect("connect");
    (lab, a, b)
}

/// Whether `node` has a connection to `peer`.
async fn connected(node: &Node, peer: &str) -> bool {
    node.peer(peer).await.ok().flatten().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_connection_is_closed_and_redialled_right_after_the_heal() {
    if !lab_allowed() {
        return;
    }
    let _machine = MACHINE.write().await;
    init_tracing();
    let (lab, a, b) = two_nodes().await;
    let ip = |h: &str| lab.host(h).unwrap().ip;

    // Cut: each host drops what the other sends.
    for (host, other) in [("a", "b"), ("b", "a")] {
        nft(&lab, host, "add table inet cut").await;
        nft(
            &lab,
            host,
            "add chain inet cut in { type filter hook input priority -1 ; policy accept ; }",
        )
        .await;
        nft(
            &lab,
            host,
            &format!("add rule inet cut in ip saddr {} drop", ip(other)),
        )
        .await;
    }
    // Data in flight on the connection: an echo that cannot be answered.
    let cut = tokio::time::Instant::now();
    let _ping = a
        .spawn_client(&["ping", b.peer_id(), "--count", "1"])
        .expect("ping starts");
    wait_for(
        "a's stalled connection to b closed",
        USER_TIMEOUT + Duration::from_secs(5),
        Duration::from_millis(100),
        || async {
            if connected(&a, b.peer_id()).await {
                Poll::seen("still connected")
            } else {
                Poll::Ready(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail(3000)));
    let closed_ms = cut.elapsed().as_millis();
    // The redials go nowhere for a while: the cut lasts a few attempts.
    wait_for(
        "a's log to show the redial",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async {
            if a.log_tail(20_000).contains("redialling a stalled peer") {
                Poll::Ready(())
            } else {
                Poll::seen("no redial logged")
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail(3000)));
    // The outage goes on (this is the scenario, not a wait for an event): long enough for
    // a few redials to go nowhere, so their SYN retransmissions have backed off.
    tokio::time::sleep_until(cut + OUTAGE).await;
    let cut_ms = cut.elapsed().as_millis();

    for host in ["a", "b"] {
        nft(&lab, host, "delete table inet cut").await;
    }
    let healed = tokio::time::Instant::now();
    wait_for(
        "a connected to b again",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            if connected(&a, b.peer_id()).await {
                Poll::Ready(())
            } else {
                Poll::seen("not connected")
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail(3000)));
    let reconnected_ms = healed.elapsed().as_millis();
    // And the new connection carries streams.
    let pinged: Value = a
        .client_json(&["ping", b.peer_id(), "--count", "1"])
        .await
        .expect("a pings b over the new connection");
    common::report(&json!({
        "closed_ms_after_cut": closed_ms,
        "cut_ms": cut_ms,
        "reconnected_ms_after_heal": reconnected_ms,
        "ping": pinged,
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_moving_connection_is_not_closed() {
    if !lab_allowed() {
        return;
    }
    let _machine = MACHINE.write().await;
    init_tracing();
    let (lab, a, b) = two_nodes().await;
    // 2 Mbit/s out of a, with up to a second of queue: acknowledgements of a bulk
    // transfer come a second late, yet they come.
    lab.exec(
        "a",
        "tc",
        &[
            "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "2mbit", "burst", "32kbit",
            "latency", "1s",
        ],
    )
    .await
    .expect("tbf on a");

    // A network and a document, then bulk writes on a that b syncs.
    a.client_text(&["net", "create", "lab"])
        .await
        .expect("net create");
    let invite: Value = a
        .client_json(&["net", "invite", "lab"])
        .await
        .expect("invite");
    b.client_text(&["net", "join", invite["ticket"].as_str().unwrap()])
        .await
        .expect("join");
    a.client_text(&["db", "create", "bulk", "--network", "lab"])
        .await
        .expect("db create");
    wait_same(&[&a, &b], "bulk", Duration::from_secs(30))
        .await
        .expect("the document reaches b");

    // 4 MiB of random letters (automerge compresses its changes; these stay about 3 MB):
    // well over 10 s at 2 Mbit/s, twice the user timeout. One put stays below the control
    // socket's 64 KiB body limit.
    let mut rng = StdRng::seed_from_u64(7);
    let start = tokio::time::Instant::now();
    let mut bytes = 0;
    for k in 0..72 {
        let value: String = (0..56 * 1024)
            .map(|_| char::from(rng.sample(Alphanumeric)))
            .collect();
        bytes += value.len();
        let key = format!("k{k}");
        a.client_text(&["db", "put", "bulk", &key, &json!(value).to_string()])
            .await
            .expect("put");
    }
    wait_same(&[&a, &b], "bulk", Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail(3000)));
    let took = start.elapsed();
    assert!(
        took > USER_TIMEOUT * 2,
        "the transfer took {took:?}: too short to show anything about a {USER_TIMEOUT:?} timeout"
    );
    for n in [&a, &b] {
        assert!(
            !n.log_tail(1 << 24).contains("connection stalled"),
            "{} closed the moving connection as stalled:\n{}",
            n.name(),
            n.log_tail(3000)
        );
    }
    assert!(connected(&a, b.peer_id()).await);
    common::report(&json!({ "bulk_bytes": bytes, "took_ms": took.as_millis() }));
}

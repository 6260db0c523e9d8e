//! The chat conversation of `cli/tests/chat.rs` across the NAT lab. A and B, behind two
//! NAT routers, know only the relay. A opens a line-mode chat to B by peer id and says
//! hello; B finds that message among its requests, accepts it and opens its own
//! line-mode chat; then both send a burst at once. Behind two cone NATs the conversation
//! runs once the connection is hole-punched direct; behind two symmetric NATs it stays on
//! the relayed connection. Either way every message must arrive exactly once and in
//! order, both in the other side's line output and in both histories, and every one must
//! be marked delivered.
//!
//! Needs root and the `p2pnode` binary, like `lab_scenarios.rs` (without either the
//! tests fail when env CI is set and otherwise say why and return). Each test prints its
//! outcome as one JSON line on stdout.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::chat::{LineChat, bodies, caught_up, numbered, of_type, wait_request};
use common::{KeepLogsOnPanic, MACHINE, config, init_tracing, lab_allowed, report, two_peers};
use p2pnode_sim::lab::node::{ConnectionInfo, PathKind};
use p2pnode_sim::lab::scenarios::{self, HolePunchLab, ScenarioConfig, Transport, is_direct};
use p2pnode_sim::lab::{NatKind, Node};
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

/// Longest wait for a direct connection.
const DCUTR_WINDOW: Duration = Duration::from_secs(45);
/// Messages each side sends in the burst.
const BURST: usize = 50;

/// How one direction of the conversation went.
#[derive(Debug, Serialize)]
struct Direction {
    /// Messages the sender wrote (the burst, and A's hello).
    sent: usize,
    /// Messages the receiver's line-mode chat printed as they came.
    received_live: usize,
    /// Incoming messages in the receiver's history.
    received_in_history: usize,
    /// Whether both are exactly what was sent (the line output: the burst), none lost,
    /// duplicated or reordered.
    exact: bool,
    /// Whether the sender's history marks every message delivered.
    all_delivered: bool,
}

/// Outcome of one conversation, printed as a JSON line.
#[derive(Debug, Serialize)]
struct ChatOutcome {
    /// "chat-cone-cone" or "chat-symmetric-symmetric".
    scenario: String,
    /// Transport of the peers and the relay.
    transport: Transport,
    /// Path of A's connection to B when the burst was through.
    path: PathKind,
    /// A's connections to B then.
    connections: Vec<ConnectionInfo>,
    /// Whether A was connected to B before its chat started (the daemons also reach
    /// each other on their own through DHT walks).
    already_connected: bool,
    /// The direct connection's address, if hole punching made one.
    direct_address: Option<String>,
    /// Whether a daemon logged that DCUtR gave up.
    dcutr_gave_up: bool,
    /// From starting A's chat until it had reached B (its `state` line).
    open_ms: f64,
    /// From starting A's chat until the path was settled: direct, or DCUtR gave up.
    path_settled_ms: f64,
    /// From writing the burst until both sides had every message and every receipt.
    burst_ms: f64,
    /// From starting A's chat until both chats had exited cleanly.
    elapsed_ms: f64,
    /// A's messages.
    a_to_b: Direction,
    /// B's messages.
    b_to_a: Direction,
    /// `lagged` events in either line output (events the chat missed).
    lagged: usize,
}

async fn history(node: &Node, peer: &str) -> Vec<Value> {
    node.client_json(&["chat", "history", peer, "--limit", "1000"])
        .await
        .unwrap()
}

fn incoming(history: &[Value]) -> Vec<String> {
    bodies(history.iter().filter(|m| m["outgoing"] == false))
}

/// One direction: `sent` by one side, of which the other side's line output should show
/// the `burst` (A's hello comes before B's chat is open), `live` as it did; the
/// receiver's `history` and the sender's `outbox` (its outgoing history).
fn direction(
    sent: &[String],
    burst: &[String],
    live: &[String],
    history: &[Value],
    outbox: &[Value],
) -> Direction {
    let received = incoming(history);
    Direction {
        sent: sent.len(),
        received_live: live.len(),
        received_in_history: received.len(),
        exact: received == sent && live == burst,
        all_delivered: outbox.len() == sent.len()
            && outbox
                .iter()
                .all(|m| m["outgoing"] == true && m["delivered"] == true),
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// The whole conversation between A behind `nat` and B behind another `nat`, over TCP;
/// asserts that it ran on the `expected` path and lost, doubled or reordered nothing.
async fn conversation(nat: NatKind, expected: PathKind) {
    init_tracing();
    let cfg = ScenarioConfig {
        // Longer than DCUtR's three attempts 10 s apart, so a relayed outcome is settled
        // by its "giving up" line rather than by the window.
        direct_window: DCUTR_WINDOW,
        ..config()
    };
    let t = Transport::Tcp;
    let hp = HolePunchLab::new(nat, nat, t, cfg.clone()).await.unwrap();
    let hp = KeepLogsOnPanic(hp);
    let (a, b) = two_peers(&hp.0, t, &cfg).await;
    let (a_id, b_id) = (a.peer_id(), b.peer_id());

    // A reaches B by peer id alone (DHT lookup, then the relay).
    let already_connected = a.peer(b_id).await.unwrap().is_some();
    let start = Instant::now();
    let mut chat_a = LineChat::start(&a, b_id);
    chat_a
        .read_until("the chat to open", |e| of_type(e, "state").count() > 0)
        .await;
    let open = start.elapsed();
    let direct = scenarios::wait_direct(&a, &b, t, cfg.direct_window, cfg.poll_interval)
        .await
        .unwrap();
    let path_settled = start.elapsed();
    let gave_up = scenarios::dcutr_gave_up(&a, &b).is_some();
    let peer = a.peer(b_id).await.unwrap().expect("A is connected to B");
    match expected {
        PathKind::Direct => assert!(
            direct.is_some(),
            "hole punching makes the connection direct: {:?}",
            peer.connections
        ),
        _ => assert!(
            direct.is_none() && gave_up && peer.connections.iter().all(|c| c.path == expected),
            "DCUtR gives up and the connection stays {expected:?}: {:?}",
            peer.connections
        ),
    }

    // A is not in B's trust store: its hello arrives as a message request.
    chat_a.send(&["hello".to_string()]).await;
    wait_request(&b, a_id, cfg.poll_interval).await;
    let accepted: Value = b.client_json(&["chat", "accept", a_id]).await.unwrap();
    assert_eq!(accepted["request"], false, "{accepted}");
    let mut chat_b = LineChat::start(&b, a_id);
    chat_b
        .read_until("the chat to open", |e| of_type(e, "state").count() > 0)
        .await;

    // Both write their burst at once.
    let (burst_a, burst_b) = (numbered("a", BURST), numbered("b", BURST));
    let burst_start = Instant::now();
    tokio::join!(chat_a.send(&burst_a), chat_b.send(&burst_b));
    tokio::join!(
        chat_a.read_until("B's burst and receipts for all of A's messages", |e| {
            caught_up(e, BURST, 1 + BURST)
        }),
        chat_b.read_until("A's burst and receipts for all of B's messages", |e| {
            caught_up(e, BURST, BURST)
        }),
    );
    let burst = burst_start.elapsed();
    let peer = a
        .peer(b_id)
        .await
        .unwrap()
        .expect("A is still connected to B");
    let (events_a, events_b) = tokio::join!(chat_a.finish(), chat_b.finish());
    let elapsed = start.elapsed();

    let (history_a, history_b) = tokio::join!(history(&a, b_id), history(&b, a_id));
    let outgoing = |h: &[Value]| -> Vec<Value> {
        h.iter()
            .filter(|m| m["outgoing"] == true)
            .cloned()
            .collect()
    };
    let mut sent_a = vec!["hello".to_string()];
    sent_a.extend(burst_a.iter().cloned());
    let live_a = bodies(of_type(&events_a, "message"));
    let live_b = bodies(of_type(&events_b, "message"));
    let outcome = ChatOutcome {
        scenario: format!("chat-{nat}-{nat}"),
        transport: t,
        path: peer.path,
        connections: peer.connections.clone(),
        already_connected,
        direct_address: direct.map(|(address, _)| address),
        dcutr_gave_up: gave_up,
        open_ms: ms(open),
        path_settled_ms: ms(path_settled),
        burst_ms: ms(burst),
        elapsed_ms: ms(elapsed),
        a_to_b: direction(
            &sent_a,
            &burst_a,
            &live_b,
            &history_b,
            &outgoing(&history_a),
        ),
        b_to_a: direction(
            &burst_b,
            &burst_b,
            &live_a,
            &history_a,
            &outgoing(&history_b),
        ),
        lagged: of_type(&events_a, "lagged").count() + of_type(&events_b, "lagged").count(),
    };
    report(&outcome);

    // The exact lists, so a failure shows what was lost, doubled or reordered.
    assert_eq!(live_b, burst_a, "B's line output");
    assert_eq!(live_a, burst_b, "A's line output");
    assert_eq!(incoming(&history_b), sent_a, "B's history");
    assert_eq!(incoming(&history_a), burst_b, "A's history");
    assert!(outcome.a_to_b.all_delivered, "{outcome:?}");
    assert!(outcome.b_to_a.all_delivered, "{outcome:?}");
    // Only the hello came before B accepted.
    let requests: Vec<bool> = history_b
        .iter()
        .filter(|m| m["outgoing"] == false)
        .map(|m| m["request"] == true)
        .collect();
    assert_eq!(requests.iter().filter(|r| **r).count(), 1, "{requests:?}");
    assert!(requests[0], "the hello arrived as a request");
    match expected {
        // The relayed connection is closed once the direct one exists, so the chat had
        // no other way.
        PathKind::Direct => assert!(
            peer.connections.iter().all(|c| is_direct(c, Some(t))),
            "only direct after the burst: {outcome:?}"
        ),
        _ => assert!(
            peer.connections.iter().all(|c| c.path == expected),
            "still {expected:?} after the burst: {outcome:?}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cone_cone_tcp_chat_runs_on_the_direct_connection() {
    if !lab_allowed() {
        return;
    }
    let _alone = MACHINE.write().await;
    conversation(NatKind::Cone, PathKind::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_symmetric_tcp_chat_runs_through_the_relay() {
    if !lab_allowed() {
        return;
    }
    let _shared = MACHINE.read().await;
    conversation(NatKind::Symmetric, PathKind::Relayed).await;
}

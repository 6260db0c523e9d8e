//! The event loop's commands and their errors, on the in-process memory transport: no
//! sockets, no sleeps (every wait is for an event, under a timeout).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::common::wait_for;

use p2pnode_node::api::Path;
use p2pnode_node::{Config, Multiaddr, Node, NodeError, PeerId, TransportKind};

mod lookups;

struct TestNode {
    node: Node,
    _dir: tempfile::TempDir,
}

impl TestNode {
    fn client(&self) -> &p2pnode_node::Client {
        self.node.client()
    }

    /// The node's first memory address (not one through a relay), with its peer id.
    async fn addr(&self) -> Multiaddr {
        let status = wait_for(|| async {
            let s = self.client().status().await.ok()?;
            s.listen_addrs
                .into_iter()
                .find(|a| !a.contains("/p2p-circuit"))
        })
        .await;
        format!("{status}/p2p/{}", self.client().peer_id())
            .parse()
            .unwrap()
    }
}

async fn start(bootstrap: Vec<Multiaddr>, relay: bool) -> TestNode {
    start_on("/memory/0", TransportKind::Memory, bootstrap, relay).await
}

async fn start_on(
    listen: &str,
    transport: TransportKind,
    bootstrap: Vec<Multiaddr>,
    relay: bool,
) -> TestNode {
    let config = Config {
        listen: vec![listen.parse().unwrap()],
        bootstrap,
        relay,
        mdns: false,
        ..Config::default()
    };
    start_config(config, transport).await
}

async fn start_config(config: Config, transport: TransportKind) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), config, transport)
        .await
        .unwrap();
    TestNode { node, _dir: dir }
}

/// A relay, and a node connected to it.
async fn relay_and_node() -> (TestNode, TestNode) {
    let relay = start(vec![], true).await;
    let a = start(vec![relay.addr().await], false).await;
    let relay_id = relay.client().peer_id();
    wait_for(|| async { connected(&a, relay_id).await.then_some(()) }).await;
    (relay, a)
}

async fn connected(a: &TestNode, b: PeerId) -> bool {
    crate::common::connected(&a.node, b).await
}

#[tokio::test]
async fn status_reports_identity_and_listeners() {
    let a = start(vec![], false).await;
    let status = a.client().status().await.unwrap();
    assert_eq!(status.peer_id, a.client().peer_id().to_string());
    assert!(!status.relay_server);
    assert_eq!(status.connected_peers, 0);
    assert_eq!((status.dht_peers, status.dht_queries), (0, 0));
    let _ = a.addr().await;
    a.node.shutdown().await;
}

#[tokio::test]
async fn connect_by_address_then_peers_lists_both_sides() {
    let a = start(vec![], false).await;
    let b = start(vec![], false).await;
    let c = a.client().connect_addr(b.addr().await).await.unwrap();
    assert_eq!(c.peer_id, b.client().peer_id().to_string());
    assert_eq!(c.path, Path::Direct);
    let peers = a.client().peers().await.unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].transport, "memory");
    wait_for(|| async { connected(&b, a.client().peer_id()).await.then_some(()) }).await;
    a.node.shutdown().await;
    b.node.shutdown().await;
}

/// What tasks wait on instead of polling the peer list: it changes when a peer connects
/// for the first time and when its last connection closes, and not while it stays.
#[tokio::test]
async fn peer_changes_mark_a_first_connection_and_a_last_close() {
    let a = start(vec![], false).await;
    let b = start(vec![], false).await;
    let mut changes = a.client().peer_changes();
    assert!(!changes.has_changed().unwrap(), "no peer yet");
    a.client().connect_addr(b.addr().await).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .expect("a change when B connected")
        .unwrap();
    let connected_at = changes.count();
    // Traffic over the connection is no change.
    a.client().ping(b.client().peer_id(), 2).await.unwrap();
    assert_eq!(changes.count(), connected_at);
    assert!(!changes.has_changed().unwrap());
    b.node.shutdown().await;
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .expect("a change when B's connection closed")
        .unwrap();
    assert!(a.client().peers().await.unwrap().is_empty());
    a.node.shutdown().await;
    // The node stopped: waiting ends with an error instead of never.
    let ended = tokio::time::timeout(Duration::from_secs(10), changes.changed()).await;
    assert!(matches!(ended, Ok(Err(_))), "{ended:?}");
}

#[tokio::test]
async fn nodes_behind_a_relay_hold_reservations() {
    let relay = start(vec![], true).await;
    let a = start(vec![relay.addr().await], false).await;
    let status = wait_for(|| async {
        let s = a.client().status().await.ok()?;
        (!s.reservations.is_empty()).then_some(s)
    })
    .await;
    assert!(status.reservations[0].contains(&relay.client().peer_id().to_string()));
    assert!(relay.client().status().await.unwrap().relay_server);
    a.node.shutdown().await;
    relay.node.shutdown().await;
}

/// A peer reachable only through the relay leaves the relay's DHT table when it goes: its
/// circuit address died with its connection, and a dead entry in a full bucket would make
/// newcomers wait a minute to be findable.
#[tokio::test]
async fn a_relay_forgets_a_peer_reachable_only_through_it_when_it_goes() {
    let relay = start(vec![], true).await;
    let r = relay.addr().await;
    let relay_only = |bootstrap| async move {
        start_config(
            Config {
                listen: vec!["/memory/0".parse().unwrap()],
                bootstrap,
                relay_only: true,
                mdns: false,
                ..Config::default()
            },
            TransportKind::Memory,
        )
        .await
    };
    let b = relay_only(vec![r.clone()]).await;
    let b_id = b.client().peer_id();
    // A direct peer stays in the table after it goes.
    let c = start(vec![r.clone()], false).await;
    let dht_peers = || async { relay.client().status().await.unwrap().dht_peers };
    wait_for(|| async { (dht_peers().await == 2).then_some(()) }).await;
    // B is found through its circuit address.
    let a = start(vec![r], false).await;
    let found = wait_for(|| async { a.client().find(b_id).await.ok() }).await;
    assert!(found.addresses[0].contains("p2p-circuit"), "{found:?}");
    wait_for(|| async { (dht_peers().await == 3).then_some(()) }).await;

    b.node.shutdown().await;
    c.node.shutdown().await;
    // B (circuit only) leaves the table; C (its own address) stays, and A is still in it.
    wait_for(|| async { (dht_peers().await == 2).then_some(()) }).await;
    wait_for(|| async {
        relay
            .client()
            .peers()
            .await
            .ok()?
            .iter()
            .all(|p| p.peer_id != b_id.to_string())
            .then_some(())
    })
    .await;
    a.node.shutdown().await;
    relay.node.shutdown().await;
}

#[tokio::test]
async fn dialling_nowhere_is_unreachable() {
    let a = start(vec![], false).await;
    // Nothing listens on this memory port.
    let addr: Multiaddr = format!("/memory/{}/p2p/{}", u64::MAX - 7, PeerId::random())
        .parse()
        .unwrap();
    let err = a.client().connect_addr(addr).await.unwrap_err();
    assert!(matches!(err, NodeError::Unreachable { .. }), "{err}");
    a.node.shutdown().await;
}

#[tokio::test]
async fn dialling_ourselves_is_refused() {
    let a = start(vec![], false).await;
    let err = a
        .client()
        .connect_peer(a.client().peer_id())
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::SelfDial), "{err}");
    let err = a.client().connect_addr(a.addr().await).await.unwrap_err();
    assert!(matches!(err, NodeError::SelfDial), "{err}");
    a.node.shutdown().await;
}

#[tokio::test]
async fn wrong_peer_id_at_an_address_is_an_error() {
    let a = start(vec![], false).await;
    let b = start(vec![], false).await;
    let mut addr = b.addr().await;
    addr.pop();
    let wrong = addr.with_p2p(PeerId::random()).unwrap();
    let err = a.client().connect_addr(wrong).await.unwrap_err();
    assert!(matches!(err, NodeError::Unreachable { .. }), "{err}");
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test]
async fn malformed_targets_are_invalid_input() {
    let a = start(vec![], false).await;
    for bad in ["/ip4/300.0.0.1/tcp/1", "12D3KooWnotreal", ""] {
        let err = a.client().connect(bad).await.unwrap_err();
        assert_eq!(err.kind(), "invalid_input", "{bad}: {err}");
    }
    a.node.shutdown().await;
}

#[tokio::test]
async fn commands_after_shutdown_report_stopped() {
    let a = start(vec![], false).await;
    let client = a.client().clone();
    a.node.shutdown().await;
    assert!(matches!(
        client.status().await.unwrap_err(),
        NodeError::Stopped
    ));
}

#[tokio::test]
async fn explicit_listen_address_in_use_fails_start() {
    let a = start(vec![], false).await;
    let mut taken = a.addr().await;
    taken.pop();
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: vec![taken],
        mdns: false,
        ..Config::default()
    };
    let err = Node::start_with(dir.path(), config, TransportKind::Memory)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot listen on"), "{err}");
    a.node.shutdown().await;
}

#[tokio::test]
async fn bootstrap_without_peer_id_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: vec!["/memory/0".parse().unwrap()],
        bootstrap: vec!["/memory/1234".parse().unwrap()],
        mdns: false,
        ..Config::default()
    };
    let err = Node::start_with(dir.path(), config, TransportKind::Memory)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/p2p/<peer-id>"), "{err}");
}

/// Every node speaks gossipsub, whose streams stay open; they must not keep a connection
/// alive, or a node ends up connected to every peer it ever looked up.
#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() {
    let start_idle = || async {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            listen: vec!["/memory/0".parse().unwrap()],
            mdns: false,
            idle_timeout_secs: 1,
            ..Config::default()
        };
        let node = Node::start_with(dir.path(), config, TransportKind::Memory)
            .await
            .unwrap();
        TestNode { node, _dir: dir }
    };
    let a = start_idle().await;
    let b = start_idle().await;
    a.client().connect_addr(b.addr().await).await.unwrap();
    // Identify, Kademlia and gossipsub all ran on the connection before it went quiet.
    wait_for(|| async { connected(&b, a.client().peer_id()).await.then_some(()) }).await;
    wait_for(|| async {
        let idle =
            a.client().peers().await.ok()?.is_empty() && b.client().peers().await.ok()?.is_empty();
        idle.then_some(())
    })
    .await;
    a.node.shutdown().await;
    b.node.shutdown().await;
}

/// A bootstrap peer is a way into the network, not a connection to hold: once its idle
/// connection closed, the node dials it again only when it has no connection left (before,
/// every node redialled its bootstrap peers every idle timeout, forever). A relay holding
/// the node's reservation stays connected.
#[tokio::test]
async fn a_bootstrap_peer_is_redialled_only_when_the_node_is_alone() {
    let boot = start(vec![], false).await;
    let relay = start(vec![], true).await;
    let config = Config {
        listen: vec!["/memory/0".parse().unwrap()],
        bootstrap: vec![boot.addr().await, relay.addr().await],
        mdns: false,
        idle_timeout_secs: 1,
        ..Config::default()
    };
    let a = start_config(config, TransportKind::Memory).await;
    let boot_id = boot.client().peer_id();
    wait_for(|| async {
        let s = a.client().status().await.ok()?;
        (!s.reservations.is_empty()).then_some(())
    })
    .await;
    wait_for(|| async { (!connected(&a, boot_id).await).then_some(()) }).await;
    // The absence of a redial can only be watched for a while: three redial ticks (1 s
    // each), in which the old behaviour redialled within one and held the connection for
    // the 1 s idle timeout.
    let watch = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while tokio::time::Instant::now() < watch {
        assert!(
            !connected(&a, boot_id).await,
            "redialled a bootstrap peer while connected to the relay"
        );
        assert!(connected(&a, relay.client().peer_id()).await);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Alone, the node finds its way back in through the bootstrap peer.
    relay.node.shutdown().await;
    wait_for(|| async { connected(&a, boot_id).await.then_some(()) }).await;
    a.node.shutdown().await;
    boot.node.shutdown().await;
}

//! Hole punching (`/p2pnode/holepunch/1`) on the memory transport: A reaches B through a
//! relay circuit, the two exchange addresses, and A's dial to the address B sent turns the
//! relayed connection into a direct one. There is no NAT here, so the test stands in for
//! it: each node's transport refuses direct dials to the other, A's until it holds the
//! relayed connection, B's always (B's "dial as listener" has no meaning on the memory
//! transport: it would reach A's listener with both sides answering the handshake). A knows
//! of B no address but the circuit, and runs no DHT query, so its only direct dial is the
//! punch's. Punching through real NAT, and how fast, is the NAT lab's job
//! (`simulations/tests/lab_scenarios.rs`, `p2pnode-sim bench-holepunch`).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{addr_of, wait_for};
use libp2p::core::ConnectedPoint;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade::Version;
use libp2p::multiaddr::Protocol;
use libp2p::{Transport, noise, yamux};
use p2pnode_node::api::Path;
use p2pnode_node::swarm::TransportFactory;
use p2pnode_node::{Config, Multiaddr, Node, TransportKind};

/// The memory port of an address.
fn port_of(addr: &Multiaddr) -> Option<u64> {
    addr.iter().find_map(|p| match p {
        Protocol::Memory(port) => Some(port),
        _ => None,
    })
}

/// The memory transport, refusing direct dials to `guarded` (a memory port) while `open`
/// is false.
fn guarded_transport(guarded: u64, open: Arc<AtomicBool>) -> TransportFactory {
    Arc::new(move |key| {
        let open = open.clone();
        Ok(MemoryTransport::default()
            .and_then(move |conn, endpoint| async move {
                if let ConnectedPoint::Dialer { address, .. } = &endpoint
                    && port_of(address) == Some(guarded)
                    && !open.load(Ordering::SeqCst)
                {
                    return Err(std::io::Error::other("direct dial refused by the test"));
                }
                Ok(conn)
            })
            .upgrade(Version::V1Lazy)
            .authenticate(noise::Config::new(key)?)
            .multiplex(yamux::Config::default())
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed())
    })
}

async fn start(dir: &std::path::Path, config: Config, transport: TransportKind) -> Node {
    let config = Config {
        mdns: false,
        ..config
    };
    Node::start_with(dir, config, transport).await.unwrap()
}

#[tokio::test]
async fn a_relayed_connection_becomes_direct_through_the_exchange() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let relay = start(
        dirs[0].path(),
        Config {
            listen: vec!["/memory/0".parse().unwrap()],
            relay: true,
            ..Config::default()
        },
        TransportKind::Memory,
    )
    .await;
    let r = addr_of(&relay).await;
    // Fixed random ports, so each node can be told the other's before either starts. A
    // node's own address is its confirmed external one: the candidate it punches with.
    let (port_a, port_b) = (rand::random::<u64>() | 1, rand::random::<u64>() & !1);
    let node = |port: u64| Config {
        listen: vec![format!("/memory/{port}").parse().unwrap()],
        external_addresses: vec![format!("/memory/{port}").parse().unwrap()],
        bootstrap: vec![r.clone()],
        dht_bootstrap_interval_secs: 0,
        ..Config::default()
    };
    let a_may_dial_b = Arc::new(AtomicBool::new(false));
    let a = start(
        dirs[1].path(),
        node(port_a),
        TransportKind::Custom(guarded_transport(port_b, a_may_dial_b.clone())),
    )
    .await;
    let b = start(
        dirs[2].path(),
        node(port_b),
        TransportKind::Custom(guarded_transport(port_a, Arc::new(AtomicBool::new(false)))),
    )
    .await;
    let b_id = b.client().peer_id();

    wait_for(|| async {
        let s = b.client().status().await.ok()?;
        (!s.reservations.is_empty()).then_some(())
    })
    .await;
    // A is not connected to B directly yet (its dials to B were refused so far), and
    // connects through the relay.
    assert!(!common::connected(&a, b_id).await);
    let circuit: Multiaddr = format!("{r}/p2p-circuit/p2p/{b_id}").parse().unwrap();
    a_may_dial_b.store(true, Ordering::SeqCst);
    let connected = a.client().connect_addr(circuit).await.unwrap();
    assert_eq!(connected.path, Path::Relayed, "{connected:?}");

    // The punch's dial gives A a direct connection to the address B sent; the relayed one
    // is closed once it exists.
    let direct = wait_for(|| async {
        let peers = a.client().peers().await.ok()?;
        let p = peers.into_iter().find(|p| p.peer_id == b_id.to_string())?;
        let all_direct = p.connections.iter().all(|c| c.path == Path::Direct);
        (all_direct && !p.connections.is_empty()).then_some(p)
    })
    .await;
    assert!(
        direct
            .connections
            .iter()
            .all(|c| c.outbound && port_of(&c.address.parse().unwrap()) == Some(port_b)),
        "{direct:?}"
    );
    let pinged = a.client().ping(b_id, 2).await.unwrap();
    assert_eq!(pinged.path, Path::Direct);

    for n in [a, b, relay] {
        n.shutdown().await;
    }
}

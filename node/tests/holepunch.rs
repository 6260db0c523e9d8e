//! Hole punching on the memory transport. The exchange (`/p2pnode/holepunch/1`): A reaches
//! B through a relay circuit, the two exchange addresses, and A's dial to the address B
//! sent turns the relayed connection into a direct one. There is no NAT here, so the test
//! stands in for it: each node's transport refuses direct dials to the other, A's until it
//! holds the relayed connection, B's always (B's "dial as listener" has no meaning on the
//! memory transport: it would reach A's listener with both sides answering the
//! handshake). A knows of B no address but the circuit, runs no DHT query, and the relay
//! makes no introductions, so its only direct dial is the exchange's. Introductions
//! (`/p2pnode/holepunch/introduce/1`): what the relay sends, that a node dials on its
//! relay's word and on nobody else's, and that a relayed connection finishing after the
//! introduction's direct one is closed. Punching through real NAT, and how fast, is the NAT
//! lab's job (`simulations/tests/lab_scenarios.rs`, `p2pnode-sim bench-holepunch`).

#![allow(clippy::unwrap_used)]

mod introduce;
mod transports;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::common::{addr_of, wait_for};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::core::ConnectedPoint;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::memory::Channel;
use libp2p::core::transport::{Boxed, ListenerId, MemoryTransport, TransportError, TransportEvent};
use libp2p::core::upgrade::Version;
use libp2p::multiaddr::Protocol;
use libp2p::{Transport, noise, yamux};
use p2pnode_node::api::Path;
use p2pnode_node::config::HolePunchMode;
use p2pnode_node::holepunch::{self, HOLEPUNCH_PROTOCOL, INTRODUCE_PROTOCOL, Introduction};
use p2pnode_node::swarm::TransportFactory;
use p2pnode_node::{Config, Multiaddr, Node, TransportKind};
use p2pnode_secure::stream::{read_length_prefixed, write_length_prefixed};

/// The memory port of an address.
fn port_of(addr: &Multiaddr) -> Option<u64> {
    addr.iter().find_map(|p| match p {
        Protocol::Memory(port) => Some(port),
        _ => None,
    })
}

/// The memory transport with `check` run on each raw connection before its upgrade; an
/// error refuses the connection.
fn memory_with<F>(check: F) -> TransportFactory
where
    F: Fn(&ConnectedPoint) -> std::io::Result<()> + Clone + Send + Sync + 'static,
{
    memory_wrapped(move |conn, endpoint| check(endpoint).map(|()| conn))
}

/// The memory transport with each raw connection passed through `wrap` before its
/// upgrade (Noise, yamux); an error refuses the connection.
fn memory_wrapped<F, W>(wrap: F) -> TransportFactory
where
    F: Fn(Channel<Vec<u8>>, &ConnectedPoint) -> std::io::Result<W> + Clone + Send + Sync + 'static,
    W: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Arc::new(move |key| {
        let wrap = wrap.clone();
        Ok(MemoryTransport::default()
            .and_then(move |conn, endpoint| {
                let wrapped = wrap(conn, &endpoint);
                async move { wrapped }
            })
            .upgrade(Version::V1Lazy)
            .authenticate(noise::Config::new(key)?)
            .multiplex(yamux::Config::default())
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed())
    })
}

/// The memory transport, refusing direct dials to `guarded` (a memory port) while `open`
/// is false.
fn guarded_transport(guarded: u64, open: Arc<AtomicBool>) -> TransportFactory {
    memory_with(move |endpoint| match endpoint {
        ConnectedPoint::Dialer { address, .. }
            if port_of(address) == Some(guarded) && !open.load(Ordering::SeqCst) =>
        {
            Err(std::io::Error::other("direct dial refused by the test"))
        }
        _ => Ok(()),
    })
}

/// The memory transport of a node that, until `open` is set, dials only `relay` (a
/// memory port) and takes no direct connection. On the memory transport every address is
/// reachable, and Kademlia's automatic bootstrap (which no setting turns off) looks the
/// node up through the relay and dials whomever it hears of: a direct connection that can
/// come before the circuit a test means to set up (seen in CI).
fn via_relay(relay: Option<u64>, open: Arc<AtomicBool>) -> TransportFactory {
    memory_with(move |endpoint| {
        if open.load(Ordering::SeqCst) {
            return Ok(());
        }
        match endpoint {
            ConnectedPoint::Dialer { address, .. } if port_of(address) == relay => Ok(()),
            ConnectedPoint::Dialer { .. } => Err(std::io::Error::other("dials only its relay")),
            ConnectedPoint::Listener { .. } => {
                Err(std::io::Error::other("takes no direct connection yet"))
            }
        }
    })
}

/// A listen list of one fresh memory port.
fn memory() -> Vec<Multiaddr> {
    vec!["/memory/0".parse().unwrap()]
}

/// A node on one fresh memory port.
async fn memory_node(dir: &std::path::Path, config: Config) -> Node {
    let config = Config {
        listen: memory(),
        ..config
    };
    start(dir, config, TransportKind::Memory).await
}

/// A relay on a fresh memory port that introduces nobody (`hole_punch` off), so a test's
/// introductions and exchanges are the only ones.
async fn relay_node(dir: &std::path::Path) -> Node {
    let config = Config {
        relay: true,
        hole_punch: HolePunchMode::Off,
        ..Config::default()
    };
    memory_node(dir, config).await
}

/// Waits until `node` holds a reservation on its relay.
async fn reserved(node: &Node) {
    wait_for(|| async {
        let s = node.client().status().await.ok()?;
        (!s.reservations.is_empty()).then_some(())
    })
    .await;
}

/// `from` sends `to` an introduction; the stream is returned open.
async fn introduce(from: &Node, to: p2pnode_node::PeerId, intro: &Introduction) -> libp2p::Stream {
    let mut stream = from
        .client()
        .streams()
        .open_stream(to, INTRODUCE_PROTOCOL)
        .await
        .unwrap();
    write_length_prefixed(&mut stream, &intro.encode())
        .await
        .unwrap();
    stream
}

/// A node that counts every raw connection reaching it, before any handshake.
async fn counted(dir: &std::path::Path) -> (Node, Arc<AtomicUsize>) {
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let node = start(
        dir,
        Config {
            listen: memory(),
            ..Config::default()
        },
        TransportKind::Custom(memory_with(move |endpoint| {
            if !endpoint.is_dialer() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        })),
    )
    .await;
    (node, reached)
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
    // No introductions: the exchange alone must do it.
    let relay = relay_node(dirs[0].path()).await;
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

    reserved(&b).await;
    // A is not connected to B directly yet (its dials to B were refused so far), and
    // connects through the relay.
    assert!(!crate::common::connected(&a, b_id).await);
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

/// A peer connected to us directly cannot make us dial the addresses it names: B answers
/// the exchange but, already direct, makes no dial to the address A names (C's), so
/// nothing reaches C. (Fails when the event loop dials for it: C sees the attempt.)
#[tokio::test]
async fn a_punch_request_over_a_direct_connection_dials_nobody() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let port_b = rand::random::<u64>();
    let a = memory_node(dirs[0].path(), Config::default()).await;
    let b = start(
        dirs[1].path(),
        Config {
            listen: vec![format!("/memory/{port_b}").parse().unwrap()],
            external_addresses: vec![format!("/memory/{port_b}").parse().unwrap()],
            ..Config::default()
        },
        TransportKind::Memory,
    )
    .await;
    let (c, reached_c) = counted(dirs[2].path()).await;
    let b_id = b.client().peer_id();
    let c_addr = addr_of(&c).await;

    // A direct connection only, and A asks B to punch to C's address.
    let connected = a.client().connect_addr(addr_of(&b).await).await.unwrap();
    assert_eq!(connected.path, Path::Direct);
    let mut stream = a
        .client()
        .streams()
        .open_stream(b_id, HOLEPUNCH_PROTOCOL)
        .await
        .unwrap();
    let offered = read_length_prefixed(&mut stream, 4096).await.unwrap();
    assert_eq!(
        holepunch::decode(&offered, b_id).unwrap(),
        vec![format!("/memory/{port_b}").parse::<Multiaddr>().unwrap()]
    );
    let mut c_only = c_addr.clone();
    c_only.pop();
    write_length_prefixed(&mut stream, &holepunch::encode(&[c_only]))
        .await
        .unwrap();
    // B ends the stream once the event loop has answered its dial request; had it
    // dialled, the answer would come only with the connection (or its failure), after C
    // had seen the attempt.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
    assert_eq!(reached_c.load(Ordering::SeqCst), 0);
    assert!(!crate::common::connected(&b, c.client().peer_id()).await);

    for n in [a, b, c] {
        n.shutdown().await;
    }
}

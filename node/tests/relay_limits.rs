//! A relay's per-network limits on real TCP (the memory transport has no IP): one host
//! with many fresh peer ids gets no more reservations, opens no more circuits and holds no
//! more connections than its /24 is allowed, and another /24 is still served.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::StreamExt;
use futures::future::BoxFuture;
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::upgrade::Version;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::{Multiaddr, Swarm, Transport, noise, relay, yamux};
use p2pnode_node::config::{HolePunchMode, RelayLimits};
use p2pnode_node::{Config, Node, PeerId};

use crate::common::{WAIT, addr_of};

/// The reservations one /24 may make in the test; the refill is too slow to matter.
const PER_PREFIX: u32 = 20;

/// A refill interval too slow to matter during a test.
const DAY: u64 = 24 * 60 * 60;

/// How many fresh peer ids the flooding host uses.
const CLIENTS: usize = 1000;

/// How many of them run at once.
const CONCURRENCY: usize = 32;

/// The circuits one /24 may open in the circuit test.
const CIRCUITS_PER_PREFIX: u32 = 10;

/// How many fresh peer ids dial through the relay in the circuit test.
const DIALERS: usize = 100;

/// How many of them dial at once: below libp2p's 10 concurrent circuit streams on one
/// connection (the relay's to the destination), so only our limit refuses circuits.
const DIAL_CONCURRENCY: usize = 8;

/// A dial-only TCP transport whose sockets are bound to one source address: Linux
/// answers all of 127.0.0.0/8 on loopback, but picks 127.0.0.1 as the source unless told,
/// and libp2p's TCP transport only ever binds the unspecified address.
#[derive(Clone, Copy)]
struct BoundTcp {
    source: Ipv4Addr,
}

impl Transport for BoundTcp {
    type Output = libp2p::tcp::tokio::TcpStream;
    type Error = std::io::Error;
    type ListenerUpgrade = futures::future::Pending<Result<Self::Output, Self::Error>>;
    type Dial = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn listen_on(
        &mut self,
        _id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        Err(TransportError::MultiaddrNotSupported(addr))
    }

    fn remove_listener(&mut self, _id: ListenerId) -> bool {
        false
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let mut ip = None;
        let mut port = None;
        for p in addr.iter() {
            match p {
                Protocol::Ip4(a) => ip = Some(a),
                Protocol::Tcp(p) => port = Some(p),
                Protocol::P2p(_) => {}
                _ => return Err(TransportError::MultiaddrNotSupported(addr)),
            }
        }
        let (Some(ip), Some(port)) = (ip, port) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let source = self.source;
        Ok(Box::pin(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from((source, 0)))?;
            let stream = socket.connect(SocketAddr::from((ip, port))).await?;
            stream.set_nodelay(true)?;
            Ok(libp2p::tcp::tokio::TcpStream(stream))
        }))
    }

    fn poll(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Poll::Pending
    }
}

/// The smallest swarm that can ask for a reservation: a fresh identity, TCP from
/// `source`, Noise, yamux and the relay client.
fn client(source: Ipv4Addr) -> Swarm<relay::client::Behaviour> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            BoundTcp { source }
                .upgrade(Version::V1Lazy)
                .authenticate(noise::Config::new(key).unwrap())
                .multiplex(yamux::Config::default())
        })
        .unwrap()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_, relay| relay)
        .unwrap()
        .build()
}

/// What became of one reservation request.
#[derive(Debug, PartialEq)]
enum Outcome {
    Accepted,
    /// The relay answered "resource limit exceeded".
    Denied,
    /// Anything else: the test's own failure, reported with the reason.
    Failed(String),
}

/// Whether `e` is, or wraps, the relay's "resource limit exceeded" answer to a
/// reservation or a circuit.
fn is_limit_exceeded(e: &(dyn std::error::Error + 'static)) -> bool {
    use relay::outbound::hop::{ConnectError, ReserveError};
    if let Some(ReserveError::ResourceLimitExceeded) = e.downcast_ref::<ReserveError>() {
        return true;
    }
    if let Some(ConnectError::ResourceLimitExceeded) = e.downcast_ref::<ConnectError>() {
        return true;
    }
    // A dial error carries one transport error per address tried.
    if let Some(DialError::Transport(errors)) = e.downcast_ref::<DialError>() {
        return errors.iter().any(|(_, e)| match e {
            TransportError::Other(e) => is_limit_exceeded(e),
            TransportError::MultiaddrNotSupported(_) => false,
        });
    }
    // `io::Error::source` skips the error it wraps; look at that one too.
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        return is_limit_exceeded(inner);
    }
    e.source().is_some_and(is_limit_exceeded)
}

/// One fresh peer id from `source` asks `relay` for a reservation, then goes away.
async fn reserve(relay: Multiaddr, source: Ipv4Addr) -> Outcome {
    reserve_holding(relay, source).await.0
}

/// One fresh peer id from `source` asks `relay` for a reservation; its swarm is returned
/// so the caller decides how long the connection (and the reservation on it) lives.
async fn reserve_holding(
    relay: Multiaddr,
    source: Ipv4Addr,
) -> (Outcome, Swarm<relay::client::Behaviour>) {
    let mut swarm = client(source);
    let listener = match swarm.listen_on(relay.with(Protocol::P2pCircuit)) {
        Ok(id) => id,
        Err(e) => return (Outcome::Failed(e.to_string()), swarm),
    };
    let wait = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(relay::client::Event::ReservationReqAccepted { .. }) => {
                    return Outcome::Accepted;
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    ..
                } if listener_id == listener => {
                    return match reason {
                        Err(e) if is_limit_exceeded(&e) => Outcome::Denied,
                        Err(e) => Outcome::Failed(format!("{e:?}")),
                        Ok(()) => Outcome::Failed("listener closed".into()),
                    };
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    return Outcome::Failed(format!("connection: {error}"));
                }
                _ => {}
            }
        }
    };
    let outcome = tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| Outcome::Failed("no answer in time".into()));
    (outcome, swarm)
}

/// A fresh peer id from `source` dials `dest` through the relay `relay`, then goes away.
async fn dial_through(relay: Multiaddr, dest: PeerId, source: Ipv4Addr) -> Outcome {
    let mut swarm = client(source);
    let addr = relay.with(Protocol::P2pCircuit).with(Protocol::P2p(dest));
    if let Err(e) = swarm.dial(addr) {
        return Outcome::Failed(e.to_string());
    }
    let wait = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == dest => {
                    return Outcome::Accepted;
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    return if is_limit_exceeded(&error) {
                        Outcome::Denied
                    } else {
                        Outcome::Failed(format!("{error:?}"))
                    };
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| Outcome::Failed("no answer in time".into()))
}

/// Counts each kind of outcome: (accepted, denied), failing the test on any other.
fn tally(outcomes: &[Outcome]) -> (usize, usize) {
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Failed(_)))
        .collect();
    assert!(
        failed.is_empty(),
        "{} requests failed otherwise, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let count = |want: Outcome| outcomes.iter().filter(|o| **o == want).count();
    (count(Outcome::Accepted), count(Outcome::Denied))
}

/// A relay on 127.0.0.1 with these limits and nothing else in the way: no other limit is
/// reached by the test's clients.
async fn relay_node(dir: &std::path::Path, relay_limits: RelayLimits) -> Node {
    let config = Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        relay: true,
        mdns: false,
        autonat: false,
        hole_punch: HolePunchMode::Off,
        dht_bootstrap_interval_secs: 0,
        relay_limits,
        ..Config::default()
    };
    Node::builder(dir, config).start().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_with_fresh_peer_ids_gets_only_its_prefixs_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let limits = RelayLimits {
        max_reservations: 4 * CLIENTS,
        reservation_burst_per_prefix: PER_PREFIX,
        reservation_refill_secs: DAY,
        // Clients come and go faster than the relay sees them close; only the rate
        // limit is under test here.
        max_connections_per_prefix: 0,
        ..RelayLimits::default()
    };
    let relay = relay_node(dir.path(), limits).await;
    let relay_addr = addr_of(&relay).await;

    let outcomes: Vec<Outcome> = futures::stream::iter(0..CLIENTS)
        .map(|_| reserve(relay_addr.clone(), Ipv4Addr::LOCALHOST))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    assert_eq!(
        tally(&outcomes),
        (PER_PREFIX as usize, CLIENTS - PER_PREFIX as usize),
        "accepted and denied reservations from 127.0.0.1"
    );

    // 127.1.0.1 is loopback too, but another /24: it has its own allowance.
    let other = reserve(relay_addr.clone(), Ipv4Addr::new(127, 1, 0, 1)).await;
    assert_eq!(other, Outcome::Accepted, "a peer from another /24");
    // While 127.0.0.0/24 stays refused.
    let again = reserve(relay_addr, Ipv4Addr::LOCALHOST).await;
    assert_eq!(again, Outcome::Denied, "the flooding /24 once more");

    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_with_fresh_peer_ids_opens_only_its_prefixs_circuits() {
    let dir = tempfile::tempdir().unwrap();
    let limits = RelayLimits {
        max_circuits: 4 * DIALERS,
        circuit_burst_per_prefix: CIRCUITS_PER_PREFIX,
        circuit_refill_secs: DAY,
        max_connections_per_prefix: 0,
        ..RelayLimits::default()
    };
    let relay = relay_node(dir.path(), limits).await;
    let relay_addr = addr_of(&relay).await;

    // The destination holds a reservation from another /24 and accepts every circuit.
    let mut dest = client(Ipv4Addr::new(127, 2, 0, 1));
    let dest_id = *dest.local_peer_id();
    dest.listen_on(relay_addr.clone().with(Protocol::P2pCircuit))
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            if let SwarmEvent::Behaviour(relay::client::Event::ReservationReqAccepted { .. }) =
                dest.select_next_some().await
            {
                return;
            }
        }
    })
    .await
    .expect("the destination's reservation");
    let dest_task = tokio::spawn(async move {
        loop {
            dest.select_next_some().await;
        }
    });

    let outcomes: Vec<Outcome> = futures::stream::iter(0..DIALERS)
        .map(|_| dial_through(relay_addr.clone(), dest_id, Ipv4Addr::LOCALHOST))
        .buffer_unordered(DIAL_CONCURRENCY)
        .collect()
        .await;
    assert_eq!(
        tally(&outcomes),
        (
            CIRCUITS_PER_PREFIX as usize,
            DIALERS - CIRCUITS_PER_PREFIX as usize
        ),
        "accepted and denied circuits from 127.0.0.1"
    );

    // A dialer from another /24 still gets through.
    let other = dial_through(relay_addr, dest_id, Ipv4Addr::new(127, 1, 0, 1)).await;
    assert_eq!(other, Outcome::Accepted, "a dialer from another /24");

    dest_task.abort();
    assert!(dest_task.await.unwrap_err().is_cancelled());
    relay.shutdown().await;
}

/// Connections (and the reservations on them) one /24 may hold in the connection test.
const CONNECTIONS_PER_PREFIX: u32 = 16;

/// Fresh peer ids that try to hold a reservation each in the connection test.
const HOLDERS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_holds_only_its_prefixs_connections_and_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let limits = RelayLimits {
        max_reservations: 4 * HOLDERS,
        // Only the connection cap is under test: no rate limit.
        reservation_burst_per_prefix: 0,
        max_connections_per_prefix: CONNECTIONS_PER_PREFIX,
        ..RelayLimits::default()
    };
    let relay = relay_node(dir.path(), limits).await;
    let relay_addr = addr_of(&relay).await;

    // Every client keeps its connection (and reservation, if granted) open.
    let results: Vec<(Outcome, Swarm<relay::client::Behaviour>)> =
        futures::stream::iter(0..HOLDERS)
            .map(|_| reserve_holding(relay_addr.clone(), Ipv4Addr::LOCALHOST))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
    let accepted = results
        .iter()
        .filter(|(o, _)| *o == Outcome::Accepted)
        .count();
    let cut_off = results
        .iter()
        .filter(|(o, _)| matches!(o, Outcome::Failed(e) if e.starts_with("connection")))
        .count();
    assert_eq!(
        (accepted, cut_off),
        (
            CONNECTIONS_PER_PREFIX as usize,
            HOLDERS - CONNECTIONS_PER_PREFIX as usize
        ),
        "granted, and cut off before the handshake: {:?}",
        results
            .iter()
            .map(|(o, _)| o)
            .find(|o| **o != Outcome::Accepted)
    );

    // Another /24 is still served while the first holds its share.
    let (other, _held) = reserve_holding(relay_addr.clone(), Ipv4Addr::new(127, 1, 0, 1)).await;
    assert_eq!(other, Outcome::Accepted, "a peer from another /24");

    // Once the holders let go, the /24 is served again.
    drop(results);
    crate::common::wait_for(|| async {
        (reserve(relay_addr.clone(), Ipv4Addr::LOCALHOST).await == Outcome::Accepted).then_some(())
    })
    .await;

    relay.shutdown().await;
}

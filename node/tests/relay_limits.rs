//! A relay's per-network limits on real TCP (the memory transport has no IP): one host
//! with a thousand fresh peer ids gets no more reservations than its /24 is allowed, and
//! another /24 is still served.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::StreamExt;
use futures::future::BoxFuture;
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::upgrade::Version;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, Swarm, Transport, noise, relay, yamux};
use p2pnode_node::config::{HolePunchMode, RelayLimits};
use p2pnode_node::{Config, Node};

use common::{WAIT, addr_of};

/// The reservations one /24 may make in the test; the refill is too slow to matter.
const PER_PREFIX: u32 = 20;

/// How many fresh peer ids the flooding host uses.
const CLIENTS: usize = 1000;

/// How many of them run at once.
const CONCURRENCY: usize = 32;

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

/// Whether `e` is, or wraps, the relay's "resource limit exceeded" answer.
fn is_limit_exceeded(e: &(dyn std::error::Error + 'static)) -> bool {
    use relay::outbound::hop::ReserveError;
    if let Some(ReserveError::ResourceLimitExceeded) = e.downcast_ref::<ReserveError>() {
        return true;
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
    let mut swarm = client(source);
    let listener = match swarm.listen_on(relay.with(Protocol::P2pCircuit)) {
        Ok(id) => id,
        Err(e) => return Outcome::Failed(e.to_string()),
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
                    return Outcome::Failed(error.to_string());
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| Outcome::Failed("no answer in time".into()))
}

/// A relay on 127.0.0.1 that allows [`PER_PREFIX`] reservations per /24 and nothing else
/// in the way: no other limit is reached by the test's clients.
async fn relay_node(dir: &std::path::Path) -> Node {
    let config = Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        relay: true,
        mdns: false,
        autonat: false,
        hole_punch: HolePunchMode::Off,
        dht_bootstrap_interval_secs: 0,
        relay_limits: RelayLimits {
            max_reservations: 4 * CLIENTS,
            reservation_burst_per_prefix: PER_PREFIX,
            reservation_refill_secs: 24 * 60 * 60,
            ..RelayLimits::default()
        },
        ..Config::default()
    };
    Node::builder(dir, config).start().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_with_fresh_peer_ids_gets_only_its_prefixs_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_node(dir.path()).await;
    let relay_addr = addr_of(&relay).await;

    let outcomes: Vec<Outcome> = futures::stream::iter(0..CLIENTS)
        .map(|_| reserve(relay_addr.clone(), Ipv4Addr::LOCALHOST))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let accepted = outcomes.iter().filter(|o| **o == Outcome::Accepted).count();
    let denied = outcomes.iter().filter(|o| **o == Outcome::Denied).count();
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
    assert_eq!(
        (accepted, denied),
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

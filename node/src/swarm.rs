//! Builds the swarm: the real transports (TCP and QUIC over IPv4 and IPv6, DNS, relay
//! client) for a running node, or the memory transport for tests and in-process
//! simulations. Both share [`Behaviour::new`], so simulations run the node's own stack.

use std::sync::Arc;
use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, MemoryTransport};
use libp2p::core::upgrade::Version;
use libp2p::{PeerId, Swarm, Transport, identity::Keypair, noise, tcp, yamux};

use crate::behaviour::Behaviour;
use crate::config::Config;

/// The swarm could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the network stack: {0}")]
pub struct BuildError(#[source] Box<dyn std::error::Error + Send + Sync>);

fn build_err(e: impl std::error::Error + Send + Sync + 'static) -> BuildError {
    BuildError(Box::new(e))
}

fn boxed(
    e: impl std::error::Error + Send + Sync + 'static,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

/// A swarm on the real transports.
pub fn build(keypair: Keypair, cfg: &Config) -> Result<Swarm<Behaviour>, BuildError> {
    let stall = cfg.tcp_user_timeout();
    Ok(libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_quic()
        // TCP as the builder's `with_tcp` makes it, plus the user timeout on every socket.
        .with_other_transport(|key| {
            let noise = noise::Config::new(key).map_err(boxed)?;
            Ok(tcp_transport(stall)
                .upgrade(Version::V1Lazy)
                .authenticate(noise)
                .multiplex(yamux::Config::default()))
        })
        .map_err(build_err)?
        .with_dns()
        .map_err(build_err)?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(build_err)?
        .with_behaviour(|key, relay| Behaviour::new(key, relay, cfg).map_err(boxed))
        .map_err(build_err)?
        .with_swarm_config(|c| swarm_config(c, cfg))
        .build())
}

/// The swarm's settings.
///
/// Streams keep libp2p's default protocol negotiation (multistream-select `V1`: the first
/// message waits for the peer's confirmation, one round trip). `V1Lazy` would save that
/// round trip but breaks one-way streams over QUIC: identify's push writes and drops its
/// stream, QUIC then stops the peer's confirmation with STOP_SENDING, and the peer discards
/// the push (a NATed node's relay address never reached its relay; hole-punch lab: 0 of 20
/// QUIC trials found the peer). Connections negotiate security and multiplexing lazily
/// (see the transports below).
fn swarm_config(c: libp2p::swarm::Config, cfg: &Config) -> libp2p::swarm::Config {
    c.with_idle_connection_timeout(cfg.idle_timeout())
}

/// Makes the base transport of a node from its key: authenticated and multiplexed, as
/// `Transport::upgrade().authenticate().multiplex()` produces. The relay client is added
/// on top by [`build_custom`]. Simulations use it to inject link latency.
pub type TransportFactory =
    Arc<dyn Fn(&Keypair) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> + Send + Sync>;

/// A swarm on a caller-made transport, with the relay client on top as in [`build`].
pub fn build_custom(
    keypair: Keypair,
    cfg: &Config,
    factory: TransportFactory,
) -> Result<Swarm<Behaviour>, BuildError> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| factory(key).map_err(boxed))
        .map_err(build_err)?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(build_err)?
        .with_behaviour(|key, relay| Behaviour::new(key, relay, cfg).map_err(boxed))
        .map_err(build_err)?
        .with_swarm_config(|c| swarm_config(c, cfg))
        .build())
}

/// TCP and QUIC, authenticated and multiplexed, as one boxed transport (no DNS: relay-only
/// nodes reach their relays by address). Security and the multiplexer are negotiated
/// lazily (`V1Lazy`: the dialer's first Noise message goes with the protocol name), as
/// libp2p's builder does for TCP in [`build`]: a round trip less per connection.
pub fn tcp_quic_transport(
    key: &Keypair,
    stall: Option<Duration>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let tcp = tcp_transport(stall)
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default());
    let quic = libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(key));
    Ok(tcp
        .or_transport(quic)
        .map(|either, _| match either {
            futures::future::Either::Left((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
            futures::future::Either::Right((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
        })
        .boxed())
}

/// TCP (no Nagle) whose connections, dialled or accepted, get `stall` as their
/// `TCP_USER_TIMEOUT`: the kernel then closes a connection whose sent data stayed
/// unacknowledged that long, instead of retransmitting with a backed-off timeout (after a
/// network split of a minute the next retransmission can be half a minute away, while a
/// fresh connection starts with a fresh timer). A connection that moves, however slowly,
/// keeps getting acknowledgements and is never closed by it; an idle one has nothing
/// unacknowledged. The event loop redials a dialled connection that ends this way.
fn tcp_transport(stall: Option<Duration>) -> Boxed<tcp::tokio::TcpStream> {
    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .map(move |stream, _| {
            if let Some(timeout) = stall {
                set_user_timeout(&stream, timeout);
            }
            stream
        })
        .boxed()
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_user_timeout(stream: &tcp::tokio::TcpStream, timeout: Duration) {
    if let Err(e) = socket2::SockRef::from(&stream.0).set_tcp_user_timeout(Some(timeout)) {
        tracing::debug!("cannot set TCP_USER_TIMEOUT: {e}");
    }
}

/// Elsewhere the kernel's own (long) timeout stays.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_user_timeout(_stream: &tcp::tokio::TcpStream, _timeout: Duration) {}

/// Wraps a transport factory so it dials only `relays` and listens nowhere.
pub fn relay_only(factory: TransportFactory, relays: Vec<libp2p::Multiaddr>) -> TransportFactory {
    Arc::new(move |key| Ok(crate::privacy::RelayOnly::new(factory(key)?, relays.clone()).boxed()))
}

/// The memory transport, authenticated with Noise and multiplexed with yamux, negotiated
/// lazily as on the real transports.
pub fn memory_transport(key: &Keypair) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    Ok(MemoryTransport::default()
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

/// A swarm on the in-process memory transport (`/memory/<n>` addresses), with the relay
/// client on top as in [`build`].
pub fn build_memory(keypair: Keypair, cfg: &Config) -> Result<Swarm<Behaviour>, BuildError> {
    build_custom(keypair, cfg, Arc::new(memory_transport))
}

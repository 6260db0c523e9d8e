//! Builds the swarm: the real transports (TCP and QUIC over IPv4 and IPv6, DNS, relay
//! client) for a running node, or the memory transport for tests and in-process
//! simulations. Both share [`Behaviour::new`], so simulations run the node's own stack.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, MemoryTransport};
use libp2p::core::upgrade::Version;
use libp2p::{PeerId, Swarm, Transport, identity::Keypair, noise, tcp, yamux};

use crate::behaviour::Behaviour;
use crate::buffered::Buffered;
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
        // TCP as the builder's `with_tcp` makes it, but secured with our TLS upgrade
        // (AES-GCM where both ends have the hardware; see `tls`), plus the user timeout on
        // every socket.
        .with_other_transport(|key| secured_tcp(key, stall))
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

/// Why a [`TransportFactory`] could not make its transport.
pub type TransportError = Box<dyn std::error::Error + Send + Sync>;

/// Makes the base transport of a node from its key: authenticated and multiplexed, as
/// `Transport::upgrade().authenticate().multiplex()` produces. The relay client is added
/// on top by [`build_custom`]. Simulations use it to inject link latency.
pub type TransportFactory =
    Arc<dyn Fn(&Keypair) -> Result<Boxed<(PeerId, StreamMuxerBox)>, TransportError> + Send + Sync>;

/// A swarm on a caller-made transport, with the relay client on top as in [`build`].
pub fn build_custom(
    keypair: Keypair,
    cfg: &Config,
    factory: TransportFactory,
) -> Result<Swarm<Behaviour>, BuildError> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| factory(key))
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
/// lazily (`V1Lazy`: the dialer's TLS ClientHello goes with the protocol name), as
/// libp2p's builder does for TCP in [`build`]: a round trip less per connection.
pub fn tcp_quic_transport(
    key: &Keypair,
    stall: Option<Duration>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, TransportError> {
    let tcp = secured_tcp(key, stall)?;
    let quic = libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(key));
    Ok(tcp
        .or_transport(quic)
        .map(|either, _| match either {
            futures::future::Either::Left((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
            futures::future::Either::Right((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
        })
        .boxed())
}

/// TCP, secured and multiplexed: what `upgrade(V1Lazy).authenticate(..).multiplex(yamux)`
/// makes, except that the two roles offer different security. A connection we dial (in
/// the dialer's role) offers only TLS (see [`crate::tls`]), so multistream-select settles
/// lazily: the protocol name travels with the ClientHello, and a connection is as quick
/// to set up as with Noise alone. A connection we accept (or dial in the listener's role,
/// as a hole punch may) takes TLS or Noise, whichever the dialer proposes: libp2p
/// implementations that speak only Noise can still reach us.
fn secured_tcp(
    key: &Keypair,
    stall: Option<Duration>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, TransportError> {
    secured_tcp_within(key, stall, INBOUND_SETUP_TIMEOUT)
}

/// How long an accepted connection may take to agree on security and the multiplexer: a
/// stranger who connects and then stalls is dropped after it, not held for good.
const INBOUND_SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// [`secured_tcp`], with accepted connections set up within `inbound`.
fn secured_tcp_within(
    key: &Keypair,
    stall: Option<Duration>,
    inbound: Duration,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, TransportError> {
    use libp2p::core::{ConnectedPoint, Endpoint};

    let tls = crate::tls::Config::new(key)?;
    let noise = noise::Config::new(key)?;
    let upgraded = tcp_transport(stall).and_then(move |conn, endpoint| {
        let (tls, noise) = (tls.clone(), noise.clone());
        let dialer = matches!(
            endpoint,
            ConnectedPoint::Dialer {
                role_override: Endpoint::Dialer,
                ..
            }
        );
        async move {
            if dialer {
                dial_secured(conn, tls).await
            } else {
                accept_secured(conn, tls, noise).await
            }
        }
    });
    Ok(
        libp2p::core::transport::timeout::TransportTimeout::with_ingoing_timeout(upgraded, inbound)
            .boxed(),
    )
}

/// A TCP connection as [`tcp_transport`] makes it.
type TcpConn = Buffered<tcp::tokio::TcpStream>;

/// The dialer's side: proposes TLS alone, then yamux, both lazily.
async fn dial_secured(
    conn: TcpConn,
    tls: crate::tls::Config,
) -> io::Result<(PeerId, StreamMuxerBox)> {
    use libp2p::core::upgrade::OutboundConnectionUpgrade;

    let batching = conn.batching();
    let (name, io) =
        multistream_select::dialer_select_proto(conn, [crate::tls::PROTOCOL], Version::V1Lazy)
            .await
            .map_err(io::Error::other)?;
    let (peer, io) = tls
        .upgrade_outbound(io, name)
        .await
        .map_err(io::Error::other)?;
    let (name, io) = multistream_select::dialer_select_proto(io, [YAMUX], Version::V1Lazy)
        .await
        .map_err(io::Error::other)?;
    let muxer = yamux::Config::default().upgrade_outbound(io, name).await?;
    batching.on();
    Ok((peer, StreamMuxerBox::new(muxer)))
}

/// The listener's side: takes TLS or Noise, whichever the dialer proposes, then yamux.
async fn accept_secured(
    conn: TcpConn,
    tls: crate::tls::Config,
    noise: noise::Config,
) -> io::Result<(PeerId, StreamMuxerBox)> {
    use futures::future::Either;
    use libp2p::core::upgrade::InboundConnectionUpgrade;

    let batching = conn.batching();
    let offered = [crate::tls::PROTOCOL, NOISE];
    let (name, io) = multistream_select::listener_select_proto(conn, offered)
        .await
        .map_err(io::Error::other)?;
    let (peer, io) = if name == NOISE {
        let (peer, io) = noise
            .upgrade_inbound(io, NOISE)
            .await
            .map_err(io::Error::other)?;
        (peer, Either::Right(io))
    } else {
        let (peer, io) = tls
            .upgrade_inbound(io, crate::tls::PROTOCOL)
            .await
            .map_err(io::Error::other)?;
        (peer, Either::Left(io))
    };
    let (name, io) = multistream_select::listener_select_proto(io, [YAMUX])
        .await
        .map_err(io::Error::other)?;
    let muxer = yamux::Config::default().upgrade_inbound(io, name).await?;
    batching.on();
    Ok((peer, StreamMuxerBox::new(muxer)))
}

/// Noise's and yamux's protocol names in multistream-select.
const NOISE: &str = "/noise";
const YAMUX: &str = "/yamux/1.0.0";

/// TCP (no Nagle) whose connections, dialled or accepted, get `stall` as their
/// `TCP_USER_TIMEOUT`: the kernel then closes a connection whose sent data stayed
/// unacknowledged that long, instead of retransmitting with a backed-off timeout (after a
/// network split of a minute the next retransmission can be half a minute away, while a
/// fresh connection starts with a fresh timer). A connection that moves, however slowly,
/// keeps getting acknowledgements and is never closed by it; an idle one has nothing
/// unacknowledged. The event loop redials a dialled connection that ends this way.
fn tcp_transport(stall: Option<Duration>) -> Boxed<Buffered<tcp::tokio::TcpStream>> {
    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .map(move |stream, _| {
            if let Some(timeout) = stall {
                set_user_timeout(&stream, timeout);
            }
            // Under TLS, fewer and larger socket calls (see `buffered`).
            Buffered::new(stream)
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
pub fn memory_transport(key: &Keypair) -> Result<Boxed<(PeerId, StreamMuxerBox)>, TransportError> {
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

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use futures::StreamExt;
    use libp2p::Multiaddr;
    use libp2p::core::Endpoint;
    use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportEvent};

    use super::*;

    type Conn = Boxed<(PeerId, StreamMuxerBox)>;

    fn events(
        t: &mut Conn,
    ) -> impl futures::Stream<Item = TransportEvent<<Conn as Transport>::ListenerUpgrade, io::Error>> + '_
    {
        futures::stream::poll_fn(move |cx| Pin::new(&mut *t).poll(cx).map(Some))
    }

    /// A listener on loopback: its address.
    async fn listen(t: &mut Conn) -> Multiaddr {
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
        t.listen_on(ListenerId::next(), addr).unwrap();
        let mut ev = events(t);
        loop {
            if let Some(TransportEvent::NewAddress { listen_addr, .. }) = ev.next().await {
                return listen_addr;
            }
        }
    }

    /// Dials `listener` from `dialer`; the peer ids each side learnt, or the dial's error.
    async fn connect(
        dialer: &mut Conn,
        listener: &mut Conn,
        addr: Multiaddr,
    ) -> Result<(PeerId, PeerId), String> {
        let opts = DialOpts {
            role: Endpoint::Dialer,
            port_use: PortUse::New,
        };
        let dial = dialer.dial(addr, opts).map_err(|e| e.to_string())?;
        let accept = async {
            let mut ev = events(listener);
            loop {
                if let Some(TransportEvent::Incoming { upgrade, .. }) = ev.next().await {
                    return upgrade.await;
                }
            }
        };
        let timeout = Duration::from_secs(10);
        let (dialled, accepted) =
            tokio::time::timeout(timeout, futures::future::join(dial, accept))
                .await
                .map_err(|_| "timed out".to_string())?;
        // Both ends finished security and yamux: the connection is ready for streams.
        let (listener_id, _) = dialled.map_err(|e| e.to_string())?;
        let (dialer_id, _) = accepted.map_err(|e| e.to_string())?;
        Ok((listener_id, dialer_id))
    }

    // Plain libp2p TCP transports of one security protocol, negotiating step by step
    // (`V1`: no lazy yamux, so both ends finish without a stream opened).
    fn noise_only(key: &Keypair) -> Conn {
        tcp::tokio::Transport::new(tcp::Config::default())
            .upgrade(Version::V1)
            .authenticate(noise::Config::new(key).unwrap())
            .multiplex(yamux::Config::default())
            .map(|(p, m), _| (p, StreamMuxerBox::new(m)))
            .boxed()
    }

    fn tls_only(key: &Keypair) -> Conn {
        tcp::tokio::Transport::new(tcp::Config::default())
            .upgrade(Version::V1)
            .authenticate(libp2p::tls::Config::new(key).unwrap())
            .multiplex(yamux::Config::default())
            .map(|(p, m), _| (p, StreamMuxerBox::new(m)))
            .boxed()
    }

    #[tokio::test]
    async fn we_take_tls_or_noise() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (ida, idb) = (a.public().to_peer_id(), b.public().to_peer_id());
        let mut ours = secured_tcp(&b, None).unwrap();
        let addr = listen(&mut ours).await;
        let mut tls = tls_only(&a);
        let got = connect(&mut tls, &mut ours, addr.clone()).await.unwrap();
        assert_eq!(got, (idb, ida));
        // A libp2p peer that speaks only Noise still reaches us.
        let mut noise = noise_only(&a);
        let got = connect(&mut noise, &mut ours, addr).await.unwrap();
        assert_eq!(got, (idb, ida));
    }

    /// A stranger that connects and says nothing is dropped once the set-up time is up.
    #[tokio::test]
    async fn a_silent_inbound_connection_is_dropped_after_the_set_up_time() {
        let key = Keypair::generate_ed25519();
        let mut ours = secured_tcp_within(&key, None, Duration::from_millis(300)).unwrap();
        let addr = listen(&mut ours).await;
        let port = addr
            .iter()
            .find_map(|p| match p {
                libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
                _ => None,
            })
            .unwrap();
        let _silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let upgrade = async {
            let mut ev = events(&mut ours);
            loop {
                if let Some(TransportEvent::Incoming { upgrade, .. }) = ev.next().await {
                    return upgrade.await;
                }
            }
        };
        let ended = tokio::time::timeout(Duration::from_secs(10), upgrade).await;
        let Err(err) = ended.expect("the set-up was not cut off") else {
            panic!("a silent peer got a connection");
        };
        assert!(err.to_string().contains("Timeout"), "{err}");
    }

    /// Our dialer proposes TLS alone, with its ClientHello in the same flight (lazy
    /// negotiation: no round trip more than Noise took).
    #[tokio::test]
    async fn we_dial_with_tls_alone_and_lazily() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let mut dialer = secured_tcp(&Keypair::generate_ed25519(), None).unwrap();
        let opts = DialOpts {
            role: Endpoint::Dialer,
            port_use: PortUse::New,
        };
        let dial = dialer.dial(addr, opts).unwrap();
        let read = async {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut first = vec![0u8; 4096];
            let mut got = Vec::new();
            // The flight holds the two protocol lines and a TLS handshake record (0x16).
            while !got.windows(2).any(|w| w == [b'\n', 0x16]) {
                let n = s.read(&mut first).await.unwrap();
                assert!(n > 0, "closed after {got:?}");
                got.extend_from_slice(&first[..n]);
            }
            got
        };
        let got = tokio::select! {
            got = read => got,
            _ = dial => panic!("the dial ended before its first flight was read"),
        };
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("\u{13}/multistream/1.0.0\n\u{b}/tls/1.0.0\n"),
            "{text:?}"
        );
        assert!(!text.contains("/noise"));
    }
}

//! The `--relay-only` privacy mode: the node never dials or accepts a direct connection
//! except to its relays, so peers only ever see a relay's address. Enforced at the bottom
//! of the stack, in the transport, so no behaviour (Kademlia, DCUtR, AutoNAT, mDNS) can
//! leak the node's address by dialling around it.

use std::pin::Pin;
use std::task::{Context, Poll};

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, Transport};

/// A transport that dials only the given relay addresses and listens nowhere. Relayed
/// connections still work: the relay client transport above it carries them over the
/// connection to the relay.
pub struct RelayOnly {
    inner: Boxed<(PeerId, StreamMuxerBox)>,
    relays: Vec<Multiaddr>,
}

impl RelayOnly {
    /// Wraps `inner`, allowing dials to `relays` only (compared without `/p2p/<id>`).
    pub fn new(inner: Boxed<(PeerId, StreamMuxerBox)>, relays: Vec<Multiaddr>) -> Self {
        Self {
            inner,
            relays: relays.iter().map(without_p2p).collect(),
        }
    }
}

fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

impl Transport for RelayOnly {
    type Output = (PeerId, StreamMuxerBox);
    type Error = std::io::Error;
    type ListenerUpgrade = <Boxed<(PeerId, StreamMuxerBox)> as Transport>::ListenerUpgrade;
    type Dial = <Boxed<(PeerId, StreamMuxerBox)> as Transport>::Dial;

    fn listen_on(
        &mut self,
        _id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        // Listening would mean accepting direct connections.
        Err(TransportError::MultiaddrNotSupported(addr))
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        if self.relays.contains(&without_p2p(&addr)) {
            self.inner.dial(addr, opts)
        } else {
            tracing::debug!(%addr, "relay-only mode: refusing a direct dial");
            Err(TransportError::MultiaddrNotSupported(addr))
        }
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

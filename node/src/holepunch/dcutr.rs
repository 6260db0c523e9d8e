//! libp2p's DCUtR beside our hole punching, for peers that speak only DCUtR (go-libp2p,
//! js-libp2p, a node started with `--hole-punch dcutr`), with no double dials.
//!
//! The two are started by opposite ends: ours by the relayed connection's dialer A, DCUtR
//! by its listener B, the moment the connection exists. So on B, DCUtR's first request
//! (the stream it opens to start the upgrade) is held until identify tells B which
//! protocols A speaks: A speaks ours, so A runs our exchange and the held request is
//! dropped; A does not, so DCUtR goes ahead, one identify round trip later than it would
//! alone. As A, DCUtR only answers: a DCUtR-only B starts it, while our exchange finds
//! that B does not speak ours and stops. Identify reports the remote's protocols to every
//! handler of the connection, so the decision is the connection handler's own.

use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::handler::{ConnectionEvent, ProtocolsChange};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, dcutr};

use super::HOLEPUNCH_PROTOCOL;

/// DCUtR whose listener side waits to learn that the remote does not speak ours.
pub struct DcutrForOthers {
    inner: dcutr::Behaviour,
    /// Hold the listener side's start (a node running ours as well); false runs plain
    /// DCUtR (`--hole-punch dcutr`).
    defer: bool,
}

impl DcutrForOthers {
    /// DCUtR for `local`; `defer` makes it give way to ours (see the module docs).
    pub fn new(local: PeerId, defer: bool) -> Self {
        Self {
            inner: dcutr::Behaviour::new(local),
            defer,
        }
    }
}

impl NetworkBehaviour for DcutrForOthers {
    type ConnectionHandler = Deferred<THandler<dcutr::Behaviour>>;
    type ToSwarm = dcutr::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner =
            self.inner
                .handle_established_inbound_connection(id, peer, local_addr, remote_addr)?;
        // Only an inbound relayed connection's handler starts DCUtR on its own.
        let relayed = local_addr.iter().any(|p| p == Protocol::P2pCircuit);
        Ok(Deferred::new(inner, self.defer && relayed))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, maybe_peer, addresses, effective_role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self.inner.handle_established_outbound_connection(
            id,
            peer,
            addr,
            role_override,
            port_use,
        )?;
        Ok(Deferred::new(inner, false))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

/// Where a [`Deferred`] handler stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Outbound stream requests wait for the remote's protocol list.
    Holding,
    /// They pass.
    Open,
    /// The remote speaks ours: they are dropped.
    Closed,
}

/// A connection handler whose outbound stream requests wait until the remote's protocols
/// are known, and are dropped if it speaks our hole punching.
pub struct Deferred<H: ConnectionHandler> {
    inner: H,
    gate: Gate,
    held: Vec<SubstreamProtocol<H::OutboundProtocol, H::OutboundOpenInfo>>,
}

impl<H: ConnectionHandler> Deferred<H> {
    fn new(inner: H, hold: bool) -> Self {
        Self {
            inner,
            gate: if hold { Gate::Holding } else { Gate::Open },
            held: Vec::new(),
        }
    }
}

/// Requests one handler may hold: DCUtR makes one per attempt, three at most.
const MAX_HELD: usize = 4;

impl<H: ConnectionHandler> ConnectionHandler for Deferred<H> {
    type FromBehaviour = H::FromBehaviour;
    type ToBehaviour = H::ToBehaviour;
    type InboundProtocol = H::InboundProtocol;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.inner.listen_protocol()
    }

    fn connection_keep_alive(&self) -> bool {
        self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        if self.gate == Gate::Open
            && let Some(protocol) = self.held.pop()
        {
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest { protocol });
        }
        loop {
            match self.inner.poll(cx) {
                Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest { protocol })
                    if self.gate != Gate::Open =>
                {
                    if self.gate == Gate::Holding && self.held.len() < MAX_HELD {
                        self.held.push(protocol);
                    }
                }
                other => return other,
            }
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        self.inner.on_behaviour_event(event);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        if self.gate == Gate::Holding
            && let ConnectionEvent::RemoteProtocolsChange(ProtocolsChange::Added(added)) = &event
        {
            // The first report is identify's whole list.
            let speaks_ours = added.clone().any(|p| *p == HOLEPUNCH_PROTOCOL);
            self.gate = if speaks_ours {
                self.held.clear();
                Gate::Closed
            } else {
                Gate::Open
            };
            tracing::debug!(
                speaks_ours,
                "remote's protocols known: DCUtR {}",
                if speaks_ours {
                    "stands down"
                } else {
                    "goes ahead"
                }
            );
        }
        self.inner.on_connection_event(event);
    }
}

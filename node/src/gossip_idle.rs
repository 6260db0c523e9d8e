//! Gossipsub that stays off a connection until this node joins a topic, and whose streams
//! do not keep connections alive.
//!
//! Gossipsub (0.50) sends an "extensions" message on every new connection, so it opens a
//! stream each way on every connection, and libp2p keeps a connection alive while any
//! stream is open. Every node speaks gossipsub (for the protocols' topics), so without this wrapper:
//! - no connection ever idles out: a node that looks up many peers in the DHT keeps a
//!   connection to each of them until `max_connections` (a simulated 200-node network
//!   became a full mesh of ~20 000 connections, ~240 KiB each);
//! - every connection, also the short ones of DHT lookups, carries two gossipsub streams
//!   with their codec buffers (8 KiB each way per stream), about a third of what a
//!   connection costs in memory, for nothing while the node has joined no topic.
//!
//! [`IdleGossip`] wraps the gossipsub behaviour. Its handler marks gossipsub's streams as
//! not keeping the connection alive, so what does is gossipsub's own opinion (the peer is in
//! one of our topic meshes), other protocols' streams, and the swarm's idle timeout. And
//! while this node has joined no topic, the handler holds back gossipsub's request for an
//! outbound stream; when the node joins its first topic, every connection's handler is told
//! to let it through (gossipsub has queued our subscription for every peer by then), so topic
//! members already connected learn of it as before. A peer that has joined a topic opens its own
//! stream to us, so we still learn its subscriptions. The behaviour itself is reached through
//! `Deref`, so callers use it as plain gossipsub.

use std::collections::{HashMap, VecDeque};
use std::ops::{Deref, DerefMut};
use std::task::{Context, Poll};

use futures::future::Either;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::behaviour::ConnectionEstablished;
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound, FullyNegotiatedOutbound};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId,
    FromSwarm, NetworkBehaviour, NotifyHandler, SubstreamProtocol, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, gossipsub};

/// Gossipsub that opens no streams before the node joins a topic, and whose streams do not
/// keep connections alive.
pub struct IdleGossip {
    inner: gossipsub::Behaviour,
    /// Whether the node had joined a topic when [`NetworkBehaviour::poll`] last looked.
    active: bool,
    /// Established connections, to tell their handlers when the node joins its first topic.
    connections: HashMap<ConnectionId, PeerId>,
    /// Handlers still to be told (at most one entry per connection).
    to_activate: VecDeque<(PeerId, ConnectionId)>,
}

impl IdleGossip {
    /// Wraps `inner`.
    pub fn new(inner: gossipsub::Behaviour) -> Self {
        Self {
            inner,
            active: false,
            connections: HashMap::new(),
            to_activate: VecDeque::new(),
        }
    }

    fn joined_any(&self) -> bool {
        self.inner.topics().next().is_some()
    }

    fn handler(&self, inner: Inner) -> Handler {
        Handler {
            inner,
            active: self.joined_any(),
            held: None,
        }
    }
}

impl Deref for IdleGossip {
    type Target = gossipsub::Behaviour;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl DerefMut for IdleGossip {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

type Inner = <gossipsub::Behaviour as NetworkBehaviour>::ConnectionHandler;

type InnerEvent = ConnectionHandlerEvent<
    <Inner as ConnectionHandler>::OutboundProtocol,
    <Inner as ConnectionHandler>::OutboundOpenInfo,
    <Inner as ConnectionHandler>::ToBehaviour,
>;

/// Tells a connection's handler that the node has joined a topic.
#[derive(Debug, Clone, Copy)]
pub struct Activate;

/// Gossipsub's connection handler, with its negotiated streams marked before it gets them and
/// its outbound stream held back until the node joins a topic.
pub struct Handler {
    inner: Inner,
    active: bool,
    /// Gossipsub's request for an outbound stream, made while the node was in no topic.
    held: Option<InnerEvent>,
}

impl NetworkBehaviour for IdleGossip {
    type ConnectionHandler = Handler;
    type ToSwarm = gossipsub::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self
            .inner
            .handle_established_inbound_connection(id, peer, local, remote)?;
        Ok(self.handler(inner))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self
            .inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)?;
        Ok(self.handler(inner))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match &event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                ..
            }) => {
                self.connections.insert(*connection_id, *peer_id);
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.connections.remove(connection_id);
            }
            _ => {}
        }
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
        // The event loop subscribes between two polls of the swarm, so a first topic shows
        // up here before anything else runs.
        let active = self.joined_any();
        if active && !self.active {
            self.to_activate.clear();
            self.to_activate
                .extend(self.connections.iter().map(|(&id, &peer)| (peer, id)));
        }
        self.active = active;
        if let Some((peer_id, id)) = self.to_activate.pop_front() {
            return Poll::Ready(ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::One(id),
                event: Either::Right(Activate),
            });
        }
        self.inner.poll(cx).map(|event| event.map_in(Either::Left))
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Either<<Inner as ConnectionHandler>::FromBehaviour, Activate>;
    type ToBehaviour = <Inner as ConnectionHandler>::ToBehaviour;
    type InboundProtocol = <Inner as ConnectionHandler>::InboundProtocol;
    type OutboundProtocol = <Inner as ConnectionHandler>::OutboundProtocol;
    type InboundOpenInfo = <Inner as ConnectionHandler>::InboundOpenInfo;
    type OutboundOpenInfo = <Inner as ConnectionHandler>::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.inner.listen_protocol()
    }

    fn connection_keep_alive(&self) -> bool {
        // True while the peer is in one of our topic meshes: topic members stay connected.
        self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        if self.active
            && let Some(request) = self.held.take()
        {
            return Poll::Ready(request);
        }
        loop {
            match self.inner.poll(cx) {
                Poll::Ready(request @ ConnectionHandlerEvent::OutboundSubstreamRequest { .. })
                    if !self.active =>
                {
                    // Gossipsub asks once and then waits for the stream; poll on for the
                    // rest of its work (an inbound stream from a peer in a topic).
                    self.held = Some(request);
                }
                other => return other,
            }
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {
            Either::Left(event) => self.inner.on_behaviour_event(event),
            Either::Right(Activate) => self.active = true,
        }
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
        let event = match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                mut protocol,
                info,
            }) => {
                if let Either::Left((stream, _)) = &mut protocol {
                    stream.ignore_for_keep_alive();
                }
                ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol, info })
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                mut protocol,
                info,
            }) => {
                protocol.0.ignore_for_keep_alive();
                ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound { protocol, info })
            }
            other => other,
        };
        self.inner.on_connection_event(event);
    }
}

#[cfg(test)]
mod tests {
    use futures::task::noop_waker_ref;
    use libp2p::core::ConnectedPoint;
    use libp2p::identity::Keypair;

    use super::*;

    fn gossip() -> IdleGossip {
        let key = Keypair::generate_ed25519();
        let inner = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key),
            gossipsub::Config::default(),
        )
        .unwrap();
        IdleGossip::new(inner)
    }

    fn addr() -> Multiaddr {
        "/memory/1".parse().unwrap()
    }

    fn handler(g: &mut IdleGossip, peer: PeerId, id: ConnectionId) -> Handler {
        g.handle_established_inbound_connection(id, peer, &addr(), &addr())
            .unwrap()
    }

    fn asks_for_a_stream(h: &mut Handler) -> bool {
        let mut cx = Context::from_waker(noop_waker_ref());
        matches!(
            h.poll(&mut cx),
            Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest { .. })
        )
    }

    fn topic() -> gossipsub::IdentTopic {
        gossipsub::IdentTopic::new("topic")
    }

    #[test]
    fn a_node_in_a_topic_opens_a_stream_on_a_new_connection_at_once() {
        let mut g = gossip();
        g.subscribe(&topic()).unwrap();
        let mut h = handler(&mut g, PeerId::random(), ConnectionId::new_unchecked(1));
        assert!(asks_for_a_stream(&mut h));
    }

    #[test]
    fn a_node_in_no_topic_holds_the_stream_back_until_told() {
        let mut g = gossip();
        let mut h = handler(&mut g, PeerId::random(), ConnectionId::new_unchecked(1));
        assert!(!asks_for_a_stream(&mut h));
        assert!(!asks_for_a_stream(&mut h));
        h.on_behaviour_event(Either::Right(Activate));
        assert!(asks_for_a_stream(&mut h));
    }

    #[test]
    fn joining_a_first_topic_tells_every_open_connection_once() {
        let mut g = gossip();
        let (peer, id) = (PeerId::random(), ConnectionId::new_unchecked(7));
        let _h = handler(&mut g, peer, id);
        let endpoint = ConnectedPoint::Listener {
            local_addr: addr(),
            send_back_addr: addr(),
        };
        g.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: peer,
            connection_id: id,
            endpoint: &endpoint,
            failed_addresses: &[],
            other_established: 0,
        }));
        let mut cx = Context::from_waker(noop_waker_ref());
        let activation = |p: Poll<ToSwarm<_, THandlerInEvent<IdleGossip>>>| match p {
            Poll::Ready(ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::One(c),
                event: Either::Right(Activate),
            }) => Some((peer_id, c)),
            _ => None,
        };

        assert_eq!(activation(g.poll(&mut cx)), None);
        g.subscribe(&topic()).unwrap();
        assert_eq!(activation(g.poll(&mut cx)), Some((peer, id)));
        assert_eq!(activation(g.poll(&mut cx)), None);
    }
}

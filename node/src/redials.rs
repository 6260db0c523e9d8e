//! Refuses the surplus connections of redials: the event loop redials a peer whose
//! connection stalled with several dials under way at once (see
//! `event_loop::reconnect`), and when the network comes back more than one of them may
//! connect. The first is kept; the others are refused as they are established, before any
//! other behaviour sees them. Closing them afterwards would race with `libp2p-stream`,
//! which picks a connection at random for a new stream and may pick the one closing (seen
//! in the lab: "send failed because receiver is gone").
//!
//! Connections other than redials are never refused here.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::behaviour::ConnectionEstablished;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, DialFailure, FromSwarm, NetworkBehaviour,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// Most redials remembered at once; past it a redial is not deduplicated (a dial ends
/// within the swarm's connection timeout, so this only guards against lost events).
const MAX_REDIALS: usize = 1024;

/// Why a connection was refused: the peer was connected again by another dial first.
#[derive(Debug, thiserror::Error)]
#[error("a redial connected after the peer was connected again")]
pub struct Surplus;

/// Redials under way, and how many connections each peer has.
#[derive(Debug, Default)]
pub struct Behaviour {
    redials: HashSet<ConnectionId>,
    established: HashMap<PeerId, usize>,
}

impl Behaviour {
    /// The dial `id` is a redial: refuse its connection if the peer is connected by then.
    pub fn redial(&mut self, id: ConnectionId) {
        if self.redials.len() < MAX_REDIALS {
            self.redials.insert(id);
        }
    }

    /// Whether an outbound connection `id` to `peer`, just established, is kept.
    fn admit(&mut self, id: ConnectionId, peer: PeerId) -> Result<(), Surplus> {
        let redial = self.redials.remove(&id);
        if redial && self.established.get(&peer).is_some_and(|&n| n > 0) {
            return Err(Surplus);
        }
        Ok(())
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(connection_id, peer).map_err(|e| {
            tracing::debug!(%peer, "surplus redial refused");
            ConnectionDenied::new(e)
        })?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished { peer_id, .. }) => {
                *self.established.entry(peer_id).or_insert(0) += 1;
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { peer_id, .. }) => {
                if let Some(n) = self.established.get_mut(&peer_id) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.established.remove(&peer_id);
                    }
                }
            }
            FromSwarm::DialFailure(DialFailure { connection_id, .. }) => {
                self.redials.remove(&connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_redial_is_kept_and_later_ones_are_refused() {
        let mut b = Behaviour::default();
        let peer = PeerId::random();
        let (first, second) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        b.redial(first);
        b.redial(second);
        assert!(b.admit(first, peer).is_ok());
        b.established.insert(peer, 1);
        assert!(b.admit(second, peer).is_err());
        // Forgotten once decided.
        assert!(b.redials.is_empty());
    }

    #[test]
    fn other_connections_are_never_refused() {
        let mut b = Behaviour::default();
        let peer = PeerId::random();
        b.established.insert(peer, 2);
        assert!(b.admit(ConnectionId::new_unchecked(3), peer).is_ok());
    }
}

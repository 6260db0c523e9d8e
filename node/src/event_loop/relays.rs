//! Relays: our reservations (relay client) and, as a relay, the DHT entries of peers
//! that were reachable only through us.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use super::addrs::{relay_of, strip_p2p};
use super::{EventLoop, KeepFor};
use crate::api::Path;

/// A relay we listen through.
pub(super) struct Reservation {
    pub(super) relay: PeerId,
    pub(super) circuit_addr: Multiaddr,
    pub(super) accepted: bool,
}

impl EventLoop {
    /// A relay accepted (or renewed) our reservation.
    pub(super) fn on_reservation_accepted(&mut self, relay_peer_id: PeerId, renewal: bool) {
        if !renewal {
            tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
        }
        for r in self.reservations.values_mut() {
            if r.relay == relay_peer_id {
                r.accepted = true;
            }
        }
        self.count_reservations();
        // A relay that gave us a slot is worth staying connected to.
        let addrs = self
            .conns
            .get(&relay_peer_id)
            .into_iter()
            .flatten()
            .filter(|c| c.outbound && c.path == Path::Direct)
            .map(|c| strip_p2p(&c.address))
            .collect();
        self.keep_connected(relay_peer_id, addrs, KeepFor::Relay);
    }

    /// Tells the metrics how many reservations we hold.
    pub(super) fn count_reservations(&self) {
        let held = self.reservations.values().filter(|r| r.accepted).count();
        self.metrics.reservations_held(held);
    }

    /// Drops from the DHT table the circuit addresses through us of a peer that is no
    /// longer connected: its reservation went with the connection. A peer left with no
    /// address leaves the table, instead of holding a place in a full bucket (where
    /// Kademlia makes newcomers wait a minute for it) while nobody can reach it.
    pub(super) fn forget_circuits(&mut self, peer: PeerId) {
        let me = *self.swarm.local_peer_id();
        let mut via_us = self.table_addresses(peer);
        via_us.retain(|a| relay_of(a) == Some(me));
        let kad = &mut self.swarm.behaviour_mut().kad;
        for addr in via_us {
            if kad.remove_address(&peer, &addr).is_some() {
                tracing::debug!(%peer, "peer reachable only through us has gone; out of the DHT table");
            }
        }
    }

    /// Listens through `relay` when we have fewer reservations than configured.
    pub(super) fn maybe_reserve(&mut self, relay: PeerId) {
        if self.reservations.len() >= self.cfg.max_reservations
            || self.reservations.values().any(|r| r.relay == relay)
        {
            return;
        }
        // Reserve over a connection we dialled: its address is one we know reaches the relay.
        let Some(addr) = self
            .conns
            .get(&relay)
            .into_iter()
            .flatten()
            .find(|c| c.outbound && c.path == Path::Direct)
            .map(|c| strip_p2p(&c.address))
        else {
            return;
        };
        let circuit_addr = addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit_addr.clone()) {
            Ok(listener) => {
                tracing::info!(%relay, "requesting a relay reservation");
                self.reservations.insert(
                    listener,
                    Reservation {
                        relay,
                        circuit_addr,
                        accepted: false,
                    },
                );
            }
            Err(e) => tracing::warn!(%relay, "cannot listen through relay: {e}"),
        }
    }
}

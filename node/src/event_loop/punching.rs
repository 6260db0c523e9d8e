//! Hole punching's side in the event loop: our addresses for the punch tasks, their
//! dials, and a relay's introductions.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId};

use super::EventLoop;
use super::addrs::{Scope, path_of, peer_of, punch_addrs, relay_of, scope_of, strip_p2p};
use crate::api::Path;
use crate::error::NodeError;
use crate::holepunch::{MAX_PUNCH_ADDRS, PunchDial};

/// Circuits tracked while they are set up; past it new ones are not (their introductions
/// are refused, and the exchange punches for them instead).
const MAX_PENDING_CIRCUITS: usize = 256;
/// Relays one dial's addresses may go through, as tracked.
const MAX_DIAL_RELAYS: usize = 8;

/// Relay circuits being set up, by connection: our dials, and circuits a relay brought us
/// (accepted, not yet through their handshake). An introduction is obeyed only for one of
/// these, or for an established relayed connection.
#[derive(Default)]
pub(super) struct PendingCircuits {
    /// Connection -> (the peer at the other end, the relays its addresses go through;
    /// `None` for a dial whose addresses we do not see: Kademlia's own dials of the peers
    /// a lookup visits, which is how a lookup usually reaches a peer behind a relay).
    list: HashMap<ConnectionId, (PeerId, Option<Vec<PeerId>>)>,
}

impl PendingCircuits {
    /// We dial `peer` at `addrs`: notes the relays of its circuit addresses.
    pub(super) fn dialling(&mut self, id: ConnectionId, peer: PeerId, addrs: &[Multiaddr]) {
        let mut relays: Vec<PeerId> = addrs.iter().filter_map(relay_of).collect();
        relays.dedup();
        relays.truncate(MAX_DIAL_RELAYS);
        self.note(id, peer, Some(relays));
    }

    /// The swarm dials `peer`: a dial we did not note ourselves (see `list`).
    pub(super) fn dialing(&mut self, id: ConnectionId, peer: PeerId) {
        if !self.list.contains_key(&id) {
            self.note(id, peer, None);
        }
    }

    /// A circuit from `peer` through `relay` is coming in.
    pub(super) fn incoming(&mut self, id: ConnectionId, relay: PeerId, peer: PeerId) {
        self.note(id, peer, Some(vec![relay]));
    }

    fn note(&mut self, id: ConnectionId, peer: PeerId, relays: Option<Vec<PeerId>>) {
        if self.list.len() < MAX_PENDING_CIRCUITS {
            self.list.insert(id, (peer, relays));
        }
    }

    /// The connection was established or failed.
    pub(super) fn ended(&mut self, id: ConnectionId) {
        self.list.remove(&id);
    }

    /// Whether a circuit with `peer` through `relay` may be being set up.
    fn contains(&self, relay: PeerId, peer: PeerId) -> bool {
        self.list.values().any(|(p, relays)| {
            *p == peer && relays.as_ref().is_none_or(|list| list.contains(&relay))
        })
    }
}

impl EventLoop {
    /// Records an address of ours a peer could punch to, and tells the punch tasks.
    pub(super) fn add_our_addr(&mut self, address: Multiaddr) {
        if self.our_addrs.add(address) {
            self.punching.ours.send_replace(self.our_addrs.to_vec());
        }
    }

    /// Makes a hole-punch dial; the answer comes like any other dial's.
    pub(super) fn punch_dial(&mut self, dial: PunchDial) {
        let PunchDial {
            peer,
            addrs,
            as_listener,
            introduced_by,
            reply,
        } = dial;
        // Direct already (the other side's dial won, a punch raced another, or the peer
        // asked over a direct connection): done, and no dial. This is also what keeps a
        // peer from using us to send connection attempts to addresses it names, unless
        // it reaches us only through a relay, as DCUtR allows too.
        if self.has_direct(&peer)
            && let Some(c) = self.best_connection(&peer)
        {
            let _ = reply.send(Ok(c));
            return;
        }
        let (relay, agreed) = match introduced_by {
            Some(i) => (self.check_introduction(i.relay, peer), Some(i.agreed)),
            None => (self.relay_to(&peer), None),
        };
        let addrs = relay.and_then(|relay| {
            let addrs = punch_addrs(addrs, self.reach(&relay), MAX_PUNCH_ADDRS);
            if addrs.is_empty() {
                Err("no address we may dial on this relay's word")
            } else {
                Ok(addrs)
            }
        });
        let addrs = match addrs {
            Ok(addrs) => addrs,
            Err(why) => {
                tracing::debug!(%peer, "hole punch refused: {why}");
                self.metrics.refused(if agreed.is_some() {
                    "introduction"
                } else {
                    "exchange_addresses"
                });
                let _ = reply.send(Err(NodeError::InvalidInput(format!(
                    "hole punch refused: {why}"
                ))));
                return;
            }
        };
        if let Some(agreed) = agreed {
            let _ = agreed.send(());
        }
        // One punch dial per peer at a time: the exchange's request while an
        // introduction's dial is under way (or the other way round) takes its outcome, as
        // a second dial from the same port to the same address could only fail.
        if let Some((_, waiting)) = self.punch_dials.get_mut(&peer) {
            waiting.push(reply);
            return;
        }
        let mut opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::Always);
        if as_listener {
            opts = opts.override_role();
        }
        let opts = opts.build();
        let id = opts.connection_id();
        self.dial_and_reply(peer, opts, reply);
        if self.dials.contains_key(&id) {
            self.punch_dials.insert(peer, (id, Vec::new()));
        }
    }

    /// A connection is coming in: notes it when it is a circuit (the relay says whom it
    /// comes from).
    pub(super) fn on_incoming(&mut self, id: ConnectionId, local: &Multiaddr, remote: &Multiaddr) {
        if let (Some(relay), Some(peer)) = (self.circuit_relay(local), peer_of(remote)) {
            self.circuits.incoming(id, relay, peer);
        }
    }

    /// The relay a circuit address goes through. An inbound circuit's listen address names
    /// the relay only by the address we reached it at (libp2p's relay client builds it
    /// from the connection's remote address, which has no peer id when we dialled none),
    /// so that address is looked up among our connections.
    pub(super) fn circuit_relay(&self, addr: &Multiaddr) -> Option<PeerId> {
        if path_of(addr) != Path::Relayed {
            return None;
        }
        if let Some(relay) = relay_of(addr) {
            return Some(relay);
        }
        let at: Multiaddr = addr
            .iter()
            .take_while(|p| *p != Protocol::P2pCircuit)
            .collect();
        self.conns.iter().find_map(|(peer, list)| {
            list.iter()
                .any(|c| c.path == Path::Direct && strip_p2p(&c.address) == at)
                .then_some(*peer)
        })
    }

    /// Whether to obey `relay`'s introduction of `peer`, and the relay when so. An
    /// introduction comes before the circuit's connection exists, so the circuit being set
    /// up is what vouches for it: one from `peer` through `relay` (we are its destination),
    /// or one we are dialling to `peer` through `relay`. Without that check any relay could
    /// name made-up peers and make us a reflector, sending connection attempts wherever it
    /// likes.
    fn check_introduction(&mut self, relay: PeerId, peer: PeerId) -> Result<PeerId, &'static str> {
        if !self.introducers.contains(&relay) {
            return Err("an introduction from a relay that is not one of our bootstrap peers");
        }
        if peer == relay || peer == *self.swarm.local_peer_id() {
            return Err("an introduction naming the relay or us");
        }
        if self
            .swarm
            .behaviour()
            .blocked
            .blocked_peers()
            .contains(&peer)
        {
            return Err("an introduction of a blocked peer");
        }
        let circuit = self.circuits.contains(relay, peer)
            || self
                .conns
                .get(&peer)
                .is_some_and(|l| l.iter().any(|c| c.relay == Some(relay)));
        if !circuit {
            return Err("an introduction for no circuit of ours through that relay");
        }
        if !self.intro_budget.admit(relay, peer, Instant::now()) {
            return Err("that relay's introductions of this peer are over their budget");
        }
        Ok(relay)
    }

    /// The relay of our relayed connection to `peer`: the exchange came over it (and the
    /// connection may have closed meanwhile).
    fn relay_to(&self, peer: &PeerId) -> Result<PeerId, &'static str> {
        self.conns
            .get(peer)
            .into_iter()
            .flatten()
            .find_map(|c| c.relay.filter(|_| c.path == Path::Relayed))
            .ok_or("no relayed connection to this peer")
    }

    /// The narrowest scope we reach `relay` over directly (the Internet when we do not):
    /// a punch on its word dials nothing narrower.
    fn reach(&self, relay: &PeerId) -> Scope {
        self.conns
            .get(relay)
            .into_iter()
            .flatten()
            .filter(|c| c.path == Path::Direct)
            .filter_map(|c| scope_of(&strip_p2p(&c.address)))
            .min()
            .unwrap_or(Scope::Global)
    }

    /// The relay's side of a circuit from `src` to `dst` just accepted: introduce them.
    pub(super) fn introduce(&mut self, src: PeerId, dst: PeerId) {
        let (src_addrs, dst_addrs) = (self.observed_addrs(&src), self.observed_addrs(&dst));
        if src_addrs.is_empty() || dst_addrs.is_empty() {
            return;
        }
        self.punching
            .puncher
            .introduce((src, src_addrs), (dst, dst_addrs));
    }

    /// Where we see `peer`: the remote addresses of our direct connections to it.
    fn observed_addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let mut addrs: Vec<Multiaddr> = Vec::new();
        for c in self.conns.get(peer).into_iter().flatten() {
            let addr = strip_p2p(&c.address);
            if c.path == Path::Direct && !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        addrs.truncate(MAX_PUNCH_ADDRS);
        addrs
    }
}

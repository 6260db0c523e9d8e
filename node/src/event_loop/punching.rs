//! Hole punching's side in the event loop: our addresses for the punch tasks, their
//! dials, and a relay's introductions.

use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId};

use super::EventLoop;
use super::addrs::strip_p2p;
use crate::api::Path;
use crate::error::NodeError;
use crate::holepunch::PunchDial;

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
        let refused = match introduced_by {
            // An introduction comes before the circuit's connection exists, so only whom
            // it comes from vouches for it: a relay we chose (it holds our reservation, or
            // we keep it connected as a bootstrap peer or relay).
            Some(relay) => {
                let ours = self.keep.contains_key(&relay)
                    || self
                        .reservations
                        .values()
                        .any(|r| r.relay == relay && r.accepted);
                (!ours || peer == relay || peer == *self.swarm.local_peer_id())
                    .then_some("an introduction from a peer that is not our relay")
            }
            // The relayed connection the request came over may have closed meanwhile.
            None => {
                let relayed = self
                    .conns
                    .get(&peer)
                    .is_some_and(|l| l.iter().any(|c| c.path == Path::Relayed));
                (!relayed).then_some("no relayed connection to this peer")
            }
        };
        if let Some(why) = refused {
            let _ = reply.send(Err(NodeError::InvalidInput(format!(
                "hole punch refused: {why}"
            ))));
            return;
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
        addrs.truncate(crate::holepunch::MAX_ADDRS);
        addrs
    }
}

//! Redialling peers whose connection stalled.
//!
//! A TCP connection that carried data while the network was down is closed by its user
//! timeout (see `crate::swarm`), and the other side's next write meets the reset; the side
//! that dialled it dials again until a connection is back, as a client reconnects to its server (the side that accepted may have nothing
//! to dial: a peer behind NAT). Nothing here knows why the connection mattered: a
//! connection that stalls had data in flight, so something was using it.
//!
//! When the network comes back matters more than how often we try: a dial that is under
//! way when it does moves on at its next SYN retransmission, which backs off (1, 2, 4 s)
//! within the dial's timeout. So attempts start every [`ATTEMPT_EVERY`] even while
//! earlier ones are pending, which keeps a SYN going out about every second, and the
//! connections that come in after the first one are refused (`crate::redials`). After a long
//! outage the attempts thin out to a tenth of the time the peer has been lost, and stop
//! after [`GIVE_UP_AFTER`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

/// Least time between two attempts to one peer.
const ATTEMPT_EVERY: Duration = Duration::from_secs(2);
/// Most time between two attempts to one peer.
const MAX_ATTEMPT_EVERY: Duration = Duration::from_secs(30);
/// A peer lost this long is no longer redialled.
const GIVE_UP_AFTER: Duration = Duration::from_secs(10 * 60);
/// Most peers redialled at once (each lost connection adds one; this bounds the state).
const MAX_PEERS: usize = 256;

struct Lost {
    addrs: Vec<Multiaddr>,
    since: Instant,
    next: Instant,
}

/// The peers being redialled. Time is passed in.
#[derive(Default)]
pub(super) struct Reconnects {
    peers: HashMap<PeerId, Lost>,
}

impl Reconnects {
    /// Whether no peer is being redialled.
    pub(super) fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// `peer`'s last connection, dialled by us at `addr`, stalled: redial it from now on.
    pub(super) fn lost(&mut self, peer: PeerId, addr: Multiaddr, now: Instant) {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEERS {
            return;
        }
        let lost = self.peers.entry(peer).or_insert(Lost {
            addrs: Vec::new(),
            since: now,
            next: now,
        });
        if !lost.addrs.contains(&addr) {
            lost.addrs.push(addr);
        }
    }

    /// `peer` is connected again (however): no more attempts.
    pub(super) fn connected(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// Whether `peer` is being redialled.
    pub(super) fn is_lost(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// The peers to dial now, with their addresses; peers lost for too long are dropped.
    pub(super) fn due(&mut self, now: Instant) -> Vec<(PeerId, Vec<Multiaddr>)> {
        self.peers
            .retain(|_, l| now.saturating_duration_since(l.since) < GIVE_UP_AFTER);
        let mut due = Vec::new();
        for (peer, l) in &mut self.peers {
            if l.next > now {
                continue;
            }
            let gap = (now.saturating_duration_since(l.since) / 10)
                .clamp(ATTEMPT_EVERY, MAX_ATTEMPT_EVERY);
            l.next = now + gap;
            due.push((*peer, l.addrs.clone()));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> Multiaddr {
        "/ip4/198.51.100.2/tcp/4001"
            .parse()
            .unwrap_or_else(|_| Multiaddr::empty())
    }

    #[test]
    fn a_lost_peer_is_dialled_at_once_then_every_two_seconds() {
        let mut r = Reconnects::default();
        let peer = PeerId::random();
        let t0 = Instant::now();
        r.lost(peer, addr(), t0);
        assert_eq!(r.due(t0), vec![(peer, vec![addr()])]);
        assert!(r.due(t0 + Duration::from_millis(1900)).is_empty());
        assert_eq!(r.due(t0 + ATTEMPT_EVERY).len(), 1);
        assert_eq!(r.due(t0 + ATTEMPT_EVERY * 2).len(), 1);
    }

    #[test]
    fn attempts_thin_out_to_a_tenth_of_the_outage_and_stop() {
        let mut r = Reconnects::default();
        let peer = PeerId::random();
        let t0 = Instant::now();
        r.lost(peer, addr(), t0);
        let at = t0 + Duration::from_secs(100);
        assert_eq!(r.due(at).len(), 1);
        assert!(r.due(at + Duration::from_secs(9)).is_empty());
        assert_eq!(r.due(at + Duration::from_secs(10)).len(), 1);
        let late = t0 + Duration::from_secs(500);
        assert_eq!(r.due(late).len(), 1);
        assert!(r.due(late + Duration::from_secs(29)).is_empty());
        assert!(r.due(t0 + GIVE_UP_AFTER).is_empty());
        assert!(!r.is_lost(&peer));
    }

    #[test]
    fn a_connection_ends_the_attempts() {
        let mut r = Reconnects::default();
        let peer = PeerId::random();
        let t0 = Instant::now();
        r.lost(peer, addr(), t0);
        r.connected(&peer);
        assert!(!r.is_lost(&peer));
        assert!(r.due(t0 + Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn addresses_add_up_and_the_peer_count_is_bounded() {
        let mut r = Reconnects::default();
        let t0 = Instant::now();
        let peer = PeerId::random();
        let other: Multiaddr = "/ip4/198.51.100.3/tcp/4001"
            .parse()
            .unwrap_or_else(|_| Multiaddr::empty());
        r.lost(peer, addr(), t0);
        r.lost(peer, other.clone(), t0);
        r.lost(peer, addr(), t0);
        assert_eq!(r.due(t0), vec![(peer, vec![addr(), other])]);
        for _ in 1..MAX_PEERS + 10 {
            r.lost(PeerId::random(), addr(), t0);
        }
        assert_eq!(r.peers.len(), MAX_PEERS);
    }
}

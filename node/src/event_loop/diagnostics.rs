//! What `p2pnode doctor` asks the event loop: how peers see us (the observed addresses
//! identify reports over direct connections), the recent hole-punch outcomes, and where
//! the node keeps its data.

use std::collections::VecDeque;

use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

use super::EventLoop;
use crate::api::{Observation, Path, PunchRecord};
use crate::metrics::unix_now;

/// How many observations are kept: one per peer, the oldest forgotten first.
pub(crate) const MAX_OBSERVATIONS: usize = 32;

/// What the event loop reports for the doctor.
#[derive(Debug)]
pub struct LoopDiagnostics {
    /// The data directory.
    pub data_dir: String,
    /// Whether the node runs in relay-only (privacy) mode.
    pub relay_only: bool,
    /// Its hole-punching mode.
    pub hole_punch: &'static str,
    /// Observations, the most recent first.
    pub observed: Vec<Observation>,
    /// Hole-punch outcomes, the most recent first.
    pub punches: Vec<PunchRecord>,
}

/// The latest observed address per peer, bounded.
#[derive(Debug, Default)]
pub(super) struct Observations {
    list: VecDeque<Observation>,
}

impl Observations {
    /// Records what `peer` (at `peer_address`) says our address is, replacing what it
    /// said before.
    pub(super) fn record(&mut self, peer: PeerId, peer_address: &Multiaddr, observed: &Multiaddr) {
        let peer_id = peer.to_string();
        self.list.retain(|o| o.peer_id != peer_id);
        if self.list.len() == MAX_OBSERVATIONS {
            self.list.pop_back();
        }
        self.list.push_front(Observation {
            peer_id,
            peer_address: peer_address.to_string(),
            observed: observed.to_string(),
            at: unix_now(),
        });
    }

    fn to_vec(&self) -> Vec<Observation> {
        self.list.iter().cloned().collect()
    }
}

impl EventLoop {
    /// Identify told us how `peer` sees us on `connection`. Only direct connections say
    /// anything about our NAT: over a circuit the peer sees the relay.
    pub(super) fn observe(&mut self, peer: PeerId, connection: ConnectionId, observed: &Multiaddr) {
        let Some(conn) = self
            .conns
            .get(&peer)
            .into_iter()
            .flatten()
            .find(|c| c.id == connection)
        else {
            return;
        };
        if conn.path == Path::Direct
            && !observed
                .iter()
                .any(|p| p == libp2p::multiaddr::Protocol::P2pCircuit)
        {
            self.observations.record(peer, &conn.address, observed);
        }
    }

    pub(super) fn diagnostics(&self) -> LoopDiagnostics {
        LoopDiagnostics {
            data_dir: self.cfg.data_dir.display().to_string(),
            relay_only: self.cfg.relay_only,
            hole_punch: if self.cfg.relay_only {
                "off"
            } else {
                self.cfg.hole_punch_mode
            },
            observed: self.observations.to_vec(),
            punches: self.metrics.recent_punches(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_observation_per_peer_newest_first_and_bounded() {
        let mut obs = Observations::default();
        let addr: Multiaddr = "/ip4/198.51.100.2/tcp/4001".parse().unwrap();
        let ours: Multiaddr = "/ip4/198.51.100.11/tcp/4001".parse().unwrap();
        let first = PeerId::random();
        obs.record(first, &addr, &ours);
        for _ in 0..MAX_OBSERVATIONS + 3 {
            obs.record(PeerId::random(), &addr, &ours);
        }
        let list = obs.to_vec();
        assert_eq!(list.len(), MAX_OBSERVATIONS);
        assert!(list.iter().all(|o| o.peer_id != first.to_string()));
        let again = PeerId::random();
        obs.record(again, &addr, &ours);
        obs.record(again, &addr, &addr);
        let list = obs.to_vec();
        assert_eq!(list[0].peer_id, again.to_string());
        assert_eq!(list[0].observed, addr.to_string());
        assert_eq!(
            list.iter()
                .filter(|o| o.peer_id == again.to_string())
                .count(),
            1
        );
    }
}

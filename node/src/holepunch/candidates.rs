//! Our own addresses a peer could punch to ([`Candidates`]).

use std::collections::VecDeque;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

use super::MAX_ADDRS;

/// Our own addresses a peer could punch to: the ones other peers observed (identify), the
/// most recently reported first, and confirmed external ones. Bounded to [`MAX_ADDRS`].
#[derive(Debug, Default)]
pub struct Candidates {
    list: VecDeque<Multiaddr>,
}

impl Candidates {
    /// Records an address (moved to the front when already known) and says whether the
    /// list changed. Only dialable addresses count: relayed ones do not (the point is to
    /// get off the relay), nor what a peer at the far end of a circuit observes (just
    /// `/p2p/<our id>`).
    pub fn add(&mut self, mut addr: Multiaddr) -> bool {
        if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
            addr.pop();
        }
        let dialable = matches!(
            addr.iter().next(),
            Some(
                Protocol::Ip4(_)
                    | Protocol::Ip6(_)
                    | Protocol::Dns(_)
                    | Protocol::Dns4(_)
                    | Protocol::Dns6(_)
                    | Protocol::Memory(_)
            )
        );
        if !dialable || addr.iter().any(|p| p == Protocol::P2pCircuit) {
            return false;
        }
        // Every identify exchange reports the same few addresses again.
        if self.list.front() == Some(&addr) {
            return false;
        }
        self.list.retain(|a| a != &addr);
        self.list.push_front(addr);
        self.list.truncate(MAX_ADDRS);
        true
    }

    /// The addresses, most recent first.
    pub fn to_vec(&self) -> Vec<Multiaddr> {
        self.list.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::tests::{addr, peer};
    use super::*;

    #[test]
    fn candidates_are_bounded_newest_first_and_never_relayed() {
        let mut c = Candidates::default();
        for port in 0..(MAX_ADDRS as u16 + 4) {
            c.add(addr(&format!("/ip4/198.51.100.7/tcp/{port}")));
        }
        c.add(addr("/ip4/198.51.100.7/tcp/5"));
        c.add(addr(&format!(
            "/ip4/203.0.113.1/tcp/1/p2p/{}/p2p-circuit",
            peer()
        )));
        c.add(addr(&format!("/p2p/{}", peer())));
        let list = c.to_vec();
        assert_eq!(list.len(), MAX_ADDRS);
        assert_eq!(list[0], addr("/ip4/198.51.100.7/tcp/5"));
        assert_eq!(
            list[1],
            addr(&format!("/ip4/198.51.100.7/tcp/{}", MAX_ADDRS + 3))
        );
        assert!(list.iter().all(|a| !a.to_string().contains("circuit")));
    }
}

//! A cap on the inbound connections one network (IPv4 /24, IPv6 /48, see [`Prefix`]) holds
//! at once on a relay, pending handshakes included.
//!
//! Without it a flood of fresh peer ids from a few hosts fills the relay's global
//! connection limit (and, as each reservation lives on a connection, its reservations)
//! and locks honest nodes out of even connecting. The check runs when the TCP or QUIC
//! connection arrives, before its security handshake, so a refused connection costs no
//! handshake.
//! A reservation lives on its connection (libp2p's relay keeps at most one per
//! connection), so the cap also bounds the reservations a network holds.
//!
//! [`PrefixConnections`] is the sans-IO count; [`Behaviour`] plugs it into the swarm.

use std::collections::HashMap;
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

use crate::relay_limits::Prefix;

/// Why an inbound connection was refused: its network holds its share already.
#[derive(Debug, thiserror::Error)]
#[error("{prefix:?} holds its {cap} inbound connections already")]
pub struct PrefixFull {
    /// The network.
    pub prefix: Prefix,
    /// Its cap.
    pub cap: u32,
}

/// Inbound connections per network, each counted from its arrival until it closes or
/// fails. Entries exist only for open connections, so the tables are bounded by the
/// swarm's own connection limits.
#[derive(Debug)]
pub struct PrefixConnections {
    cap: u32,
    by_prefix: HashMap<Prefix, u32>,
    by_connection: HashMap<ConnectionId, Prefix>,
}

impl PrefixConnections {
    /// At most `cap` inbound connections per network.
    pub fn new(cap: u32) -> Self {
        Self {
            cap,
            by_prefix: HashMap::new(),
            by_connection: HashMap::new(),
        }
    }

    /// A connection from `remote` arrives: counted if its network is below the cap.
    ///
    /// Relayed connections (`/p2p-circuit`) are not counted: they cost the relay that
    /// carries them, not us. Nor are addresses without an IP (the memory transport): only
    /// simulations use it, where a bootstrap node holds every simulated peer; a real relay
    /// listens on IP transports only.
    pub fn open(&mut self, id: ConnectionId, remote: &Multiaddr) -> Result<(), PrefixFull> {
        let prefix = match Prefix::of_addr(remote) {
            Some(Prefix::NonIp) | None => return Ok(()),
            Some(prefix) => prefix,
        };
        let count = self.by_prefix.entry(prefix).or_insert(0);
        if *count >= self.cap {
            return Err(PrefixFull {
                prefix,
                cap: self.cap,
            });
        }
        *count += 1;
        self.by_connection.insert(id, prefix);
        Ok(())
    }

    /// A counted connection closed or failed (unknown ids are ignored).
    pub fn close(&mut self, id: ConnectionId) {
        let Some(prefix) = self.by_connection.remove(&id) else {
            return;
        };
        if let Some(count) = self.by_prefix.get_mut(&prefix) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.by_prefix.remove(&prefix);
            }
        }
    }

    /// How many inbound connections `prefix` holds.
    pub fn held(&self, prefix: Prefix) -> u32 {
        self.by_prefix.get(&prefix).copied().unwrap_or(0)
    }
}

/// The swarm side of [`PrefixConnections`]: refuses at the pending stage, forgets on
/// failure or close. It has no protocol of its own.
#[derive(Debug)]
pub struct Behaviour {
    counts: PrefixConnections,
}

impl Behaviour {
    /// At most `cap` inbound connections per network.
    pub fn new(cap: u32) -> Self {
        Self {
            counts: PrefixConnections::new(cap),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.counts.open(connection_id, remote_addr).map_err(|e| {
            tracing::debug!(%remote_addr, "inbound connection refused: {e}");
            ConnectionDenied::new(e)
        })
    }

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
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.counts.close(connection_id)
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
    use libp2p::multiaddr::Protocol;

    fn tcp(ip: &str) -> Multiaddr {
        format!("/ip4/{ip}/tcp/4001").parse().unwrap()
    }

    #[test]
    fn a_network_holds_at_most_its_cap_and_gets_slots_back_on_close() {
        let mut c = PrefixConnections::new(3);
        let ids: Vec<ConnectionId> = (0..5).map(ConnectionId::new_unchecked).collect();
        assert!(c.open(ids[0], &tcp("192.0.2.1")).is_ok());
        assert!(c.open(ids[1], &tcp("192.0.2.2")).is_ok());
        assert!(c.open(ids[2], &tcp("192.0.2.200")).is_ok());
        let err = c.open(ids[3], &tcp("192.0.2.3")).unwrap_err();
        assert_eq!(err.cap, 3);
        // Another /24 has its own share.
        assert!(c.open(ids[4], &tcp("192.0.3.1")).is_ok());
        let net = Prefix::of_addr(&tcp("192.0.2.9")).unwrap();
        assert_eq!(c.held(net), 3);
        // A refused connection was never counted: closing it frees nothing.
        c.close(ids[3]);
        assert_eq!(c.held(net), 3);
        c.close(ids[1]);
        c.close(ids[1]);
        assert_eq!(c.held(net), 2, "closing twice frees one slot");
        assert!(c.open(ids[3], &tcp("192.0.2.3")).is_ok());
        for id in &ids {
            c.close(*id);
        }
        assert_eq!(c.held(net), 0);
        assert!(c.by_prefix.is_empty() && c.by_connection.is_empty());
    }

    #[test]
    fn relayed_and_non_ip_connections_are_not_counted() {
        let mut c = PrefixConnections::new(1);
        let relayed = tcp("198.51.100.1")
            .with(Protocol::P2p(PeerId::random()))
            .with(Protocol::P2pCircuit);
        let memory = Multiaddr::empty().with(Protocol::Memory(7));
        for n in 0..10 {
            assert!(c.open(ConnectionId::new_unchecked(n), &relayed).is_ok());
            assert!(
                c.open(ConnectionId::new_unchecked(100 + n), &memory)
                    .is_ok()
            );
        }
        assert!(c.by_connection.is_empty());
    }

    #[test]
    fn ipv6_counts_by_48_and_mapped_ipv4_as_ipv4() {
        let mut c = PrefixConnections::new(1);
        let v6 = |s: &str| -> Multiaddr { format!("/ip6/{s}/tcp/1").parse().unwrap() };
        assert!(
            c.open(ConnectionId::new_unchecked(1), &v6("2001:db8:1::1"))
                .is_ok()
        );
        assert!(
            c.open(ConnectionId::new_unchecked(2), &v6("2001:db8:1:ff::2"))
                .is_err()
        );
        assert!(
            c.open(ConnectionId::new_unchecked(3), &v6("2001:db8:2::1"))
                .is_ok()
        );
        assert!(
            c.open(ConnectionId::new_unchecked(4), &tcp("192.0.2.1"))
                .is_ok()
        );
        assert!(
            c.open(ConnectionId::new_unchecked(5), &v6("::ffff:192.0.2.7"))
                .is_err()
        );
    }
}

//! Connection bookkeeping: dials and their replies, peers kept connected and redialled,
//! blocking, and what identify tells us about a peer.

use std::time::{Duration, Instant};

use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionError, ConnectionId, DialError};
use libp2p::{Multiaddr, PeerId, identify, relay};
use tokio::sync::oneshot;

use super::addrs::{is_concrete, is_loopback, is_private, peer_of, strip_p2p, transport_of};
use super::{EventLoop, KeepFor};
use crate::api::{Connected, ConnectionInfo, Path};
use crate::behaviour::KAD_PROTOCOL;
use crate::error::NodeError;

/// How often unconnected bootstrap peers and relays are redialled, at most.
const REDIAL_MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Whether a connection ended because it stalled: its socket timed out (TCP's user
/// timeout, see `crate::swarm`), or the peer's kernel reset it (a reset, a broken pipe),
/// as opposed to an orderly close, the idle timeout or a refusal by the peer. A reset
/// counts because of how splits end: the side with data in flight times out first and
/// drops its socket, and the other side's next write after the heal meets the reset. If
/// that other side dialled the connection, it is the only one that can dial it again; the
/// lab saw pairs of members left unconnected after a heal when it did not.
/// The socket's error comes wrapped (yamux's, inside an `Other` I/O error): the chain of
/// sources is searched.
pub(super) fn stalled(cause: Option<&ConnectionError>) -> bool {
    let Some(ConnectionError::IO(e)) = cause else {
        return false;
    };
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if err.downcast_ref::<std::io::Error>().is_some_and(|io| {
            use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, TimedOut};
            matches!(
                io.kind(),
                TimedOut | ConnectionReset | ConnectionAborted | BrokenPipe
            )
        }) {
            return true;
        }
        next = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| {
                io.get_ref()
                    .map(|inner| inner as &(dyn std::error::Error + 'static))
            })
            .or_else(|| err.source());
    }
    false
}

/// A connection as the event loop tracks it.
pub(super) struct Conn {
    pub(super) id: ConnectionId,
    pub(super) address: Multiaddr,
    /// Read from the endpoint, not the remote address: an inbound relayed connection's
    /// remote address does not show the circuit, its local (listen) address does.
    pub(super) path: Path,
    pub(super) outbound: bool,
    /// The relay a relayed connection goes through.
    pub(super) relay: Option<PeerId>,
    pub(super) rtt: Option<Duration>,
    /// A hole punch's dial made it: its address is the peer's NAT mapping, which lets in
    /// only a dial the peer answers with its own (see `keep_punched_out_of_dht`). Cleared
    /// when the peer names the address as one it listens on.
    pub(super) punched: bool,
}

impl Conn {
    /// The path, as a metrics label.
    pub(super) fn path_label(&self) -> &'static str {
        match self.path {
            Path::Direct => "direct",
            Path::Relayed => "relayed",
        }
    }

    /// The transport, as a metrics label.
    pub(super) fn transport_label(&self) -> &'static str {
        match self.path {
            Path::Relayed => "relay",
            Path::Direct => transport_of(&self.address),
        }
    }

    pub(super) fn info(&self) -> ConnectionInfo {
        ConnectionInfo {
            address: self.address.to_string(),
            path: self.path,
            transport: match self.path {
                Path::Relayed => "relay".to_string(),
                Path::Direct => transport_of(&self.address).to_string(),
            },
            outbound: self.outbound,
            rtt_ms: self.rtt.map(|d| d.as_secs_f64() * 1000.0),
        }
    }
}

/// A peer we redial when its connection drops (bootstrap peers and relays), with its
/// redial backoff.
pub(super) struct Keep {
    addrs: Vec<Multiaddr>,
    next_attempt: Instant,
    backoff: Duration,
    /// Redialled whenever it is not connected (a relay holding our reservation), rather
    /// than only while this node has no connection at all (a bootstrap peer).
    always: bool,
}

impl EventLoop {
    /// Keeps a connection to `peer` at `addrs`, redialling with backoff when it drops (for
    /// a bootstrap peer: when this node has no connection left, see [`KeepFor`]).
    pub(crate) fn keep_connected(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, why: KeepFor) {
        for addr in &addrs {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
        }
        let keep = self.keep.entry(peer).or_insert(Keep {
            addrs: Vec::new(),
            next_attempt: Instant::now(),
            backoff: Duration::from_millis(500),
            always: false,
        });
        keep.always |= why == KeepFor::Relay;
        if why == KeepFor::Bootstrap {
            self.introducers.insert(peer);
        }
        for addr in addrs {
            if !keep.addrs.contains(&addr) {
                keep.addrs.push(addr);
            }
        }
    }

    /// Refuses `peer` from now on and closes its connections (the block list closes them
    /// as soon as the swarm polls it; disconnecting here makes it immediate).
    pub(crate) fn block(&mut self, peer: PeerId) {
        self.swarm.behaviour_mut().blocked.block_peer(peer);
        self.keep.remove(&peer);
        self.reconnects.connected(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
        tracing::info!(%peer, "peer blocked");
    }

    /// Dials `peer` once at `addrs` (peers from the store), without keeping it connected.
    pub(crate) fn dial_known(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        for addr in &addrs {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
        }
        let opts = DialOpts::peer_id(peer).addresses(addrs.clone()).build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => self.circuits.dialling(id, peer, &addrs),
            Err(e) => tracing::debug!(%peer, "cannot redial known peer: {e}"),
        }
    }

    pub(super) fn connect_addr(
        &mut self,
        addr: Multiaddr,
        reply: oneshot::Sender<Result<Connected, NodeError>>,
    ) {
        let peer = peer_of(&addr);
        if let Some(peer) = peer {
            if peer == *self.swarm.local_peer_id() {
                let _ = reply.send(Err(NodeError::SelfDial));
                return;
            }
            if let Some(c) = self.best_connection(&peer) {
                let _ = reply.send(Ok(c));
                return;
            }
        }
        let opts = match peer {
            Some(peer) => DialOpts::peer_id(peer)
                .addresses(vec![addr.clone()])
                .condition(PeerCondition::Always)
                .build(),
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                if let Some(peer) = peer {
                    self.circuits
                        .dialling(id, peer, std::slice::from_ref(&addr));
                }
                self.addr_dials.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(dial_error(peer, &e)));
            }
        }
    }

    pub(super) fn dial_found(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<Connected, NodeError>>,
    ) {
        if let Some(c) = self.best_connection(&peer) {
            let _ = reply.send(Ok(c));
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs.clone())
            .condition(PeerCondition::Always)
            .build();
        let id = opts.connection_id();
        self.dial_and_reply(peer, opts, reply);
        if self.dials.contains_key(&id) {
            self.circuits.dialling(id, peer, &addrs);
        }
    }

    /// Dials; `reply` hears of the connection or of why there is none.
    pub(super) fn dial_and_reply(
        &mut self,
        peer: PeerId,
        opts: DialOpts,
        reply: oneshot::Sender<Result<Connected, NodeError>>,
    ) {
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(id, (peer, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(dial_error(Some(peer), &e)));
            }
        }
    }

    pub(super) fn redial(&mut self) {
        let now = Instant::now();
        let alone = self.conns.is_empty();
        let due: Vec<(PeerId, Vec<Multiaddr>)> = self
            .keep
            .iter_mut()
            .filter(|(p, k)| {
                (k.always || alone)
                    && k.next_attempt <= now
                    && !self.conns.contains_key(p)
                    && !self.dialing.contains(p)
            })
            .map(|(p, k)| {
                k.next_attempt = now + k.backoff;
                k.backoff = (k.backoff * 2).min(REDIAL_MAX_BACKOFF);
                (*p, k.addrs.clone())
            })
            .collect();
        for (peer, addrs) in due {
            tracing::debug!(%peer, "dialling kept peer");
            let opts = DialOpts::peer_id(peer).addresses(addrs.clone()).build();
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    self.dialing.insert(peer);
                    self.circuits.dialling(id, peer, &addrs);
                }
                Err(e) => tracing::debug!(%peer, "redial refused: {e}"),
            }
        }
    }

    /// Dials the peers whose connection stalled (see [`super::reconnect`]).
    pub(super) fn reconnect(&mut self) {
        for (peer, addrs) in self.reconnects.due(Instant::now()) {
            // `Disconnected`, not the default: an earlier attempt may still wait on its
            // SYN retransmission, and this one starts a fresh schedule. A surplus
            // connection is refused by `crate::redials`.
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs.clone())
                .condition(PeerCondition::Disconnected)
                .build();
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    tracing::debug!(%peer, "dialling a stalled peer");
                    self.swarm.behaviour_mut().redials.redial(id);
                    self.circuits.dialling(id, peer, &addrs);
                }
                Err(e) => tracing::debug!(%peer, "redial refused: {e}"),
            }
        }
    }

    pub(super) fn on_connection(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        endpoint: ConnectedPoint,
    ) {
        if self.reconnects.is_lost(&peer) {
            tracing::info!(%peer, "stalled peer reconnected");
            self.reconnects.connected(&peer);
        }
        let outbound = endpoint.is_dialer();
        // Our punch dials and DCUtR's "as listener" one (its other side is marked on
        // DCUtR's success event).
        let punched = matches!(
            endpoint,
            ConnectedPoint::Dialer {
                role_override: Endpoint::Listener,
                ..
            }
        ) || self
            .punch_dials
            .get(&peer)
            .is_some_and(|(dial, _)| *dial == id);
        let address = endpoint.get_remote_address().clone();
        let path = if endpoint.is_relayed() {
            Path::Relayed
        } else {
            Path::Direct
        };
        // An inbound relayed connection's remote address is just `/p2p/<peer>`; the
        // circuit, with the relay, is in the local (listen) address.
        let relay = match &endpoint {
            ConnectedPoint::Dialer { address, .. } => self.circuit_relay(address),
            ConnectedPoint::Listener { local_addr, .. } => self.circuit_relay(local_addr),
        };
        tracing::info!(%peer, %address, ?path, "connected");
        self.dialing.remove(&peer);
        if let Some(k) = self.keep.get_mut(&peer) {
            k.backoff = Duration::from_millis(500);
        }
        if outbound && path == Path::Direct {
            self.remember(peer, vec![strip_p2p(&address)]);
        }
        let conn = Conn {
            id,
            address: address.clone(),
            path,
            outbound,
            relay,
            rtt: None,
            punched: punched && path == Path::Direct,
        };
        self.metrics
            .connection(conn.path_label(), conn.transport_label(), 1);
        let list = self.conns.entry(peer).or_default();
        list.push(conn);
        if list.len() == 1 {
            self.peers_changed();
        }
        if path == Path::Direct {
            self.close_relayed(peer);
            if let Some(punch) = self.punches.remove(&peer) {
                punch.abort();
                tracing::info!(%peer, %address, "hole punch succeeded: direct connection");
            }
        } else if self.has_direct(&peer) {
            // An introduction's direct dial can finish before the relayed connection it
            // raced (the relayed one still runs its handshake over the circuit): close the
            // late relayed one as `close_relayed` would have.
            tracing::debug!(%peer, "closing relayed connection: a direct one exists");
            self.swarm.close_connection(id);
        } else if outbound && self.cfg.hole_punch {
            // We dialled through a relay because we want this peer: we start the punch
            // (see `crate::holepunch` for why this side).
            let punch = tokio::spawn(tracing::Instrument::in_current_span(
                self.punching.puncher.clone().punch(peer),
            ));
            if let Some(earlier) = self.punches.insert(peer, punch.abort_handle()) {
                earlier.abort();
            }
        }
        // A dial whose relayed connection came late is answered with the direct one,
        // which is what its caller's streams will use.
        let direct = (path == Path::Relayed)
            .then(|| self.best_connection(&peer))
            .flatten()
            .filter(|best| best.path == Path::Direct);
        let connected = direct.unwrap_or_else(|| Connected {
            peer_id: peer.to_string(),
            path,
            address: address.to_string(),
        });
        if outbound {
            self.lookup_reached(peer, &address, &connected);
        }
        if path == Path::Direct
            && let Some((_, waiting)) = self.punch_dials.remove(&peer)
        {
            for reply in waiting {
                let _ = reply.send(Ok(connected.clone()));
            }
        }
        if let Some((_, reply)) = self.dials.remove(&id) {
            let _ = reply.send(Ok(connected.clone()));
        }
        if let Some(reply) = self.addr_dials.remove(&id) {
            let _ = reply.send(Ok(connected));
        }
    }

    /// Closes relayed connections to `peer` once a direct one exists: libp2p-stream picks
    /// a connection at random for new streams, and a relay circuit is slow and byte-limited.
    fn close_relayed(&mut self, peer: PeerId) {
        let relayed: Vec<ConnectionId> = self
            .conns
            .get(&peer)
            .into_iter()
            .flatten()
            .filter(|c| c.path == Path::Relayed)
            .map(|c| c.id)
            .collect();
        for id in relayed {
            tracing::debug!(%peer, "closing relayed connection: a direct one exists");
            self.swarm.close_connection(id);
        }
    }

    pub(super) fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
        // A peer's loopback addresses are only ours too when we reach it over loopback;
        // otherwise dialling them reaches our own listeners (a self-dial that can win the
        // race against a real dial and then fail it).
        let conns = || self.conns.get(&peer).into_iter().flatten();
        let via_loopback = conns().any(|c| is_loopback(&c.address));
        // Likewise its private-network addresses: stored and handed on in the DHT they
        // would send others into their own LANs (and, at a relay, keep a peer behind NAT
        // in the table after it has gone; see `forget_circuits`).
        let via_private = conns().any(|c| is_private(&c.address));
        let addrs: Vec<Multiaddr> = info
            .listen_addrs
            .iter()
            .filter(|a| {
                is_concrete(a)
                    && (via_loopback || !is_loopback(a))
                    && (via_loopback || via_private || !is_private(a))
            })
            .cloned()
            .collect();
        // A punched address the peer also listens on is an address like any other.
        for c in self.conns.get_mut(&peer).into_iter().flatten() {
            if c.punched && addrs.contains(&strip_p2p(&c.address)) {
                c.punched = false;
            }
        }
        if info.protocols.contains(&KAD_PROTOCOL) {
            // Peers that dialled us are only routable once we know their listen addresses.
            for addr in &addrs {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
            }
        }
        if !addrs.is_empty() {
            self.remember(peer, addrs.clone());
        }
        let is_relay = info.protocols.contains(&relay::HOP_PROTOCOL_NAME);
        if is_relay && !self.cfg.relay_server {
            self.maybe_reserve(peer);
        }
    }

    /// Takes `peer`'s punched addresses back out of Kademlia, which adds every address it
    /// dialled out to once the peer speaks Kademlia there. A NAT mapping lets in only the
    /// dial the peer answers with its own; handed to others in lookups, it makes their
    /// lookups dial it plainly, from their listen port, so their own punch to the peer
    /// finds that port pair taken (the kernel then dials from a fresh port the peer's NAT
    /// does not expect) and fails for good. Seen in the NAT lab: of three members behind
    /// cone NATs, the third's lookup dialled the first at the address the second had
    /// punched, 6 ms before the relay's introduction arrived.
    pub(super) fn keep_punched_out_of_dht(&mut self, peer: PeerId, addresses: &[Multiaddr]) {
        let punched: Vec<Multiaddr> = self
            .conns
            .get(&peer)
            .into_iter()
            .flatten()
            .filter(|c| c.punched && c.outbound)
            .map(|c| c.address.clone())
            .filter(|a| addresses.iter().any(|k| strip_p2p(k) == strip_p2p(a)))
            .collect();
        for addr in punched {
            tracing::debug!(%peer, %addr, "keeping a punched address out of the DHT");
            self.swarm.behaviour_mut().kad.remove_address(&peer, &addr);
        }
    }

    fn remember(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if let Some(store) = &self.store
            && store.try_send((peer, addrs)).is_err()
        {
            tracing::debug!(%peer, "peer store busy; update dropped");
        }
    }

    pub(super) fn has_direct(&self, peer: &PeerId) -> bool {
        self.conns
            .get(peer)
            .is_some_and(|l| l.iter().any(|c| c.path == Path::Direct))
    }

    pub(super) fn best_connection(&self, peer: &PeerId) -> Option<Connected> {
        let list = self.conns.get(peer)?;
        let best = list
            .iter()
            .find(|c| c.path == Path::Direct)
            .or_else(|| list.first())?;
        Some(Connected {
            peer_id: peer.to_string(),
            path: best.path,
            address: best.address.to_string(),
        })
    }
}

pub(super) fn dial_error(peer: Option<PeerId>, error: &DialError) -> NodeError {
    let target = peer.map_or_else(|| "the address".to_string(), |p| p.to_string());
    let reason = match error {
        DialError::Transport(errors) => errors
            .iter()
            .map(|(addr, e)| format!("{addr}: {}", crate::error::transport_reason(e)))
            .collect::<Vec<_>>()
            .join("; "),
        DialError::WrongPeerId { obtained, .. } => {
            format!("the peer there is {obtained}, not the one asked for")
        }
        DialError::NoAddresses => "no known addresses".to_string(),
        other => other.to_string(),
    };
    NodeError::Unreachable { target, reason }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// An error that wraps another, as yamux's decode error wraps the socket's.
    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrapped(#[source] io::Error);

    #[test]
    fn a_timed_out_socket_counts_as_stalled_however_deeply_wrapped() {
        let timed_out = || io::Error::from(io::ErrorKind::TimedOut);
        assert!(stalled(Some(&ConnectionError::IO(timed_out()))));
        // What the lab showed: `Other(yamux Error(Decode(Io(TimedOut))))`.
        let wrapped = io::Error::other(Wrapped(timed_out()));
        assert!(stalled(Some(&ConnectionError::IO(wrapped))));
    }

    #[test]
    fn a_socket_reset_by_the_peer_counts_as_stalled() {
        // What the lab showed after a heal: `Other(yamux Error(Io(BrokenPipe)))`.
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::BrokenPipe,
        ] {
            let wrapped = io::Error::other(Wrapped(io::Error::from(kind)));
            assert!(stalled(Some(&ConnectionError::IO(wrapped))), "{kind:?}");
        }
    }

    #[test]
    fn other_endings_do_not_count_as_stalled() {
        assert!(!stalled(None));
        assert!(!stalled(Some(&ConnectionError::KeepAliveTimeout)));
        let eof = io::Error::other(Wrapped(io::Error::from(io::ErrorKind::UnexpectedEof)));
        assert!(!stalled(Some(&ConnectionError::IO(eof))));
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(!stalled(Some(&ConnectionError::IO(refused))));
    }
}

//! The one task that owns the [`Swarm`]. Everything else talks to it through
//! [`crate::Client`], which sends [`Command`]s with a oneshot for the reply (the shape of
//! rust-libp2p's `examples/file-sharing`). Requests that wait on the network are parked in
//! `pending_*` maps keyed by query or connection id and answered when the event arrives.

mod addrs;
mod commands;
mod connections;
mod diagnostics;
mod lookups;
mod providers;
mod punching;
mod reconnect;
mod relays;
mod topics;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::metrics::Recorder;
use libp2p::swarm::{ConnectionId, ListenError, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat, dcutr, gossipsub, identify, kad, mdns, ping, relay,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::api::Connected;
use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::error::NodeError;
use crate::holepunch::{Candidates, IntroBudget, PunchDial, Puncher};
use crate::metrics::Metrics;
use crate::prefix_connections::PrefixFull;

pub(crate) use addrs::peer_of;
pub use addrs::{path_of, transport_of, transport_of_all};
pub use commands::Command;
pub use diagnostics::LoopDiagnostics;
pub use providers::{MAX_PROVIDER_KEY, MAX_PROVIDERS};
pub use topics::{TopicMessage, TopicMessageId, Validation};

use addrs::is_concrete;
use connections::{Conn, Keep, dial_error, stalled};
use diagnostics::Observations;
use lookups::PendingLookup;
use providers::PendingProviders;
use punching::PendingCircuits;
use reconnect::Reconnects;
use relays::Reservation;
use topics::Joined;

/// How often the redial schedule is checked (while it has anything to look at).
const REDIAL_TICK: Duration = Duration::from_secs(1);

/// Why a peer is kept connected: it decides when the peer is redialled.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeepFor {
    /// A way into the network: redialled only while this node is connected to nobody.
    /// Redialling it whenever its idle connection closed would cost every node a handshake
    /// with its bootstrap peers every idle timeout, and the bootstrap peers one with every
    /// node; the DHT keeps their addresses for lookups anyway.
    Bootstrap,
    /// A relay holding our reservation: redialled whenever the connection drops.
    Relay,
}

/// Something the peer store should remember; written by the store thread.
pub(crate) type StoreUpdate = (PeerId, Vec<Multiaddr>);

/// Options of the event loop that do not belong to the behaviours.
pub(crate) struct LoopConfig {
    pub(crate) relay_server: bool,
    pub(crate) confirm_listen_addrs: bool,
    pub(crate) max_reservations: usize,
    /// Run our own hole punch (`crate::holepunch`) on relayed connections we dial.
    pub(crate) hole_punch: bool,
    /// As a relay, introduce the two ends of each circuit to each other
    /// (`crate::holepunch::INTRODUCE_PROTOCOL`).
    pub(crate) introduce: bool,
    /// Where the node keeps its data (reported to the doctor).
    pub(crate) data_dir: std::path::PathBuf,
    /// The privacy mode (reported to the doctor).
    pub(crate) relay_only: bool,
    /// The hole-punching mode, `p2pnode`, `dcutr` or `off` (reported to the doctor).
    pub(crate) hole_punch_mode: &'static str,
}

/// The event loop's side of hole punching: our addresses, published to the punch tasks,
/// and the dials they ask for.
pub(crate) struct HolePunching {
    pub(crate) puncher: Puncher,
    pub(crate) ours: watch::Sender<Vec<Multiaddr>>,
    pub(crate) dials: mpsc::Receiver<PunchDial>,
}

/// The event loop. Run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    store: Option<SyncSender<StoreUpdate>>,
    cfg: LoopConfig,
    conns: HashMap<PeerId, Vec<Conn>>,
    lookups: HashMap<kad::QueryId, PendingLookup>,
    /// Provider lookups asked for by protocols ([`Command::FindProviders`]).
    provider_lookups: HashMap<kad::QueryId, PendingProviders>,
    dials: HashMap<ConnectionId, (PeerId, oneshot::Sender<Result<Connected, NodeError>>)>,
    addr_dials: HashMap<ConnectionId, oneshot::Sender<Result<Connected, NodeError>>>,
    reservations: HashMap<ListenerId, Reservation>,
    keep: HashMap<PeerId, Keep>,
    dialing: HashSet<PeerId>,
    /// Peers whose dialled connection stalled, redialled until one is back.
    reconnects: Reconnects,
    topics: HashMap<gossipsub::TopicHash, Joined>,
    punching: HolePunching,
    our_addrs: Candidates,
    /// Hole-punch dials under way, one per peer, and the requests waiting for its outcome.
    punch_dials: HashMap<PeerId, (ConnectionId, Vec<DialReply>)>,
    /// Our exchanges (A's side), by peer: ended once a direct connection exists however it
    /// came (an introduction's dial usually wins), so they do not retry on the relayed
    /// connection being closed under them and report a failure that is none.
    punches: HashMap<PeerId, tokio::task::AbortHandle>,
    /// Relay circuits being set up, in either direction: what an introduction must name.
    circuits: PendingCircuits,
    /// Relays we may obey introductions from: the bootstrap peers we were given. A relay
    /// we found on our own may hold our reservation, but not send us dialling.
    introducers: HashSet<PeerId>,
    /// Introductions obeyed, per relay and per (relay, peer).
    intro_budget: IntroBudget,
    metrics: Arc<Metrics>,
    /// How peers see us, for the doctor.
    observations: Observations,
    /// Counts the peers that became connected (a first connection) or disconnected (the
    /// last one closed), for tasks that act on new peers without polling the list.
    peer_changes: tokio::sync::watch::Sender<u64>,
}

type DialReply = oneshot::Sender<Result<Connected, NodeError>>;

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        store: Option<SyncSender<StoreUpdate>>,
        cfg: LoopConfig,
        punching: HolePunching,
        metrics: Arc<Metrics>,
    ) -> Self {
        // Addresses given as external (`--external-address`) are candidates from the start.
        let mut our_addrs = Candidates::default();
        for addr in swarm.external_addresses() {
            our_addrs.add(addr.clone());
        }
        punching.ours.send_replace(our_addrs.to_vec());
        Self {
            swarm,
            commands,
            store,
            cfg,
            conns: HashMap::new(),
            lookups: HashMap::new(),
            provider_lookups: HashMap::new(),
            dials: HashMap::new(),
            addr_dials: HashMap::new(),
            reservations: HashMap::new(),
            keep: HashMap::new(),
            dialing: HashSet::new(),
            reconnects: Reconnects::default(),
            topics: HashMap::new(),
            punching,
            our_addrs,
            punch_dials: HashMap::new(),
            punches: HashMap::new(),
            circuits: PendingCircuits::default(),
            introducers: HashSet::new(),
            intro_budget: IntroBudget::default(),
            metrics,
            observations: Observations::default(),
            peer_changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Changes whenever a peer becomes connected or disconnected (see [`crate::Client::peer_changes`]).
    pub(crate) fn peer_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.peer_changes.subscribe()
    }

    fn peers_changed(&self) {
        self.peer_changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether the redial tick has anything to look at: a peer kept or lost, a topic, or
    /// a connection. With connections it also polls the swarm once a second, which some
    /// behaviours' timers need: gossipsub 0.50 resets its heartbeat's `Delay` after it
    /// fired without polling it again, so nothing wakes the swarm for the next heartbeat.
    /// A node with none of these has nothing due, and sleeps.
    fn has_timed_work(&self) -> bool {
        !self.keep.is_empty()
            || !self.reconnects.is_empty()
            || !self.topics.is_empty()
            || !self.conns.is_empty()
    }

    /// Runs until `shutdown` resolves or every [`crate::Client`] is dropped.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let mut redial = tokio::time::interval(REDIAL_TICK);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                Some(dial) = self.punching.dials.recv() => self.punch_dial(dial),
                // Only while there is something to look at (see `has_timed_work`).
                _ = redial.tick(), if self.has_timed_work() => {
                    self.redial();
                    self.reconnect();
                    self.lookup_topics();
                }
                () = &mut shutdown => break,
            }
        }
        tracing::info!("event loop stopped");
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.libp2p.record(&event);
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if self.cfg.confirm_listen_addrs && is_concrete(&address) {
                    // A relay with no --external-address vouches for its own listen addresses;
                    // libp2p's relay server refuses reservations until some address is confirmed.
                    self.swarm.add_external_address(address);
                }
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
                self.add_our_addr(address);
            }
            SwarmEvent::NewExternalAddrCandidate { address } => {
                tracing::debug!(%address, "observed address");
                self.add_our_addr(address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some(r) = self.reservations.remove(&listener_id) {
                    tracing::info!(relay = %r.relay, ?reason, "relay reservation ended");
                    self.count_reservations();
                }
            }
            SwarmEvent::IncomingConnection {
                connection_id,
                local_addr,
                send_back_addr,
            } => self.on_incoming(connection_id, &local_addr, &send_back_addr),
            SwarmEvent::Dialing {
                peer_id: Some(peer),
                connection_id,
            } => self.circuits.dialing(connection_id, peer),
            SwarmEvent::IncomingConnectionError {
                connection_id,
                error,
                ..
            } => {
                if let ListenError::Denied { cause } = &error
                    && cause.downcast_ref::<PrefixFull>().is_some()
                {
                    self.metrics.refused("connections_per_prefix");
                }
                self.circuits.ended(connection_id)
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.circuits.ended(connection_id);
                self.on_connection(peer_id, connection_id, endpoint)
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                ..
            } => {
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                if let Some(list) = self.conns.get_mut(&peer_id) {
                    let mut stalled_dial = None;
                    if let Some(c) = list.iter().find(|c| c.id == connection_id) {
                        self.metrics
                            .connection(c.path_label(), c.transport_label(), -1);
                        if stalled(cause.as_ref()) {
                            tracing::info!(peer = %peer_id, address = %c.address, outbound = c.outbound, "connection stalled");
                            if c.outbound {
                                stalled_dial = Some(c.address.clone());
                            }
                        }
                    }
                    list.retain(|c| c.id != connection_id);
                    if list.is_empty() {
                        if let Some(addr) = stalled_dial {
                            tracing::info!(peer = %peer_id, %addr, "redialling a stalled peer");
                            self.reconnects
                                .lost(peer_id, addr, std::time::Instant::now());
                        }
                        self.conns.remove(&peer_id);
                        self.peers_changed();
                        self.forget_circuits(peer_id);
                        if let Some(punch) = self.punches.remove(&peer_id) {
                            punch.abort();
                        }
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                if let Some(peer) = peer_id {
                    self.dialing.remove(&peer);
                }
                self.circuits.ended(connection_id);
                let err = || dial_error(peer_id, &error);
                if let Some(peer) = peer_id
                    && self
                        .punch_dials
                        .get(&peer)
                        .is_some_and(|(id, _)| *id == connection_id)
                    && let Some((_, waiting)) = self.punch_dials.remove(&peer)
                {
                    for reply in waiting {
                        let _ = reply.send(Err(err()));
                    }
                }
                if let Some((_, reply)) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Err(err()));
                } else if let Some(reply) = self.addr_dials.remove(&connection_id) {
                    let _ = reply.send(Err(err()));
                } else {
                    tracing::debug!(peer = ?peer_id, "dial failed: {error}");
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    /// Hands libp2p's own recorders the events they know.
    fn record(&self, event: &BehaviourEvent) {
        let m = &self.metrics.libp2p;
        match event {
            BehaviourEvent::Identify(e) => m.record(e),
            BehaviourEvent::Kad(e) => m.record(e),
            BehaviourEvent::RelayServer(e) => m.record(e),
            BehaviourEvent::Dcutr(e) => m.record(e),
            BehaviourEvent::Ping(e) => m.record(e),
            BehaviourEvent::Gossipsub(e) => m.record(e),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        self.record(&event);
        match event {
            BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                connection_id,
            }) => {
                self.observe(peer_id, connection_id, &info.observed_addr);
                self.on_identify(peer_id, info)
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                stats,
                step,
            }) => {
                if let kad::QueryResult::GetProviders(r) = &result
                    && self.on_providers(id, r, step.last)
                {
                    return;
                }
                self.on_query_result(id, result, &stats)
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer, addresses, ..
            }) => {
                tracing::trace!(%peer, "routing table updated");
                self.keep_punched_out_of_dht(peer, &addresses.into_vec());
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => self.on_reservation_accepted(relay_peer_id, renewal),
            BehaviourEvent::RelayClient(event) => tracing::debug!(?event, "relay client"),
            BehaviourEvent::RelayServer(relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            }) => {
                tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, "relay circuit accepted");
                self.metrics.circuit_served();
                if self.cfg.introduce {
                    self.introduce(src_peer_id, dst_peer_id);
                }
            }
            BehaviourEvent::RelayServer(event) => {
                match &event {
                    relay::Event::ReservationReqAccepted { renewed: false, .. } => {
                        self.metrics.reservation_served(1)
                    }
                    relay::Event::ReservationClosed { .. }
                    | relay::Event::ReservationTimedOut { .. } => {
                        self.metrics.reservation_served(-1)
                    }
                    relay::Event::ReservationReqDenied { .. } => {
                        self.metrics.refused("relay_reservation")
                    }
                    relay::Event::CircuitReqDenied { .. } => self.metrics.refused("relay_circuit"),
                    _ => {}
                }
                tracing::debug!(?event, "relay server")
            }
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => match result {
                Ok(connection) => {
                    let conn = self
                        .conns
                        .get_mut(&remote_peer_id)
                        .into_iter()
                        .flatten()
                        .find(|c| c.id == connection);
                    let transport = conn.map_or("unknown", |c| {
                        c.punched = c.path == crate::api::Path::Direct;
                        transport_of(&c.address)
                    });
                    self.metrics
                        .punch("dcutr", "success", transport, Some(remote_peer_id));
                    tracing::info!(peer = %remote_peer_id, "hole punch succeeded: direct connection")
                }
                Err(e) => {
                    self.metrics
                        .punch("dcutr", "failure", "unknown", Some(remote_peer_id));
                    tracing::info!(peer = %remote_peer_id, "hole punch failed: {e}")
                }
            },
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            }) => {
                if let Ok(rtt) = result
                    && let Some(c) = self
                        .conns
                        .get_mut(&peer)
                        .and_then(|l| l.iter_mut().find(|c| c.id == connection))
                {
                    c.rtt = Some(rtt);
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => self.on_topic_message(propagation_source, message_id, message),
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => {
                tracing::info!(?old, ?new, "NAT status changed");
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in found {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    by_peer.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in by_peer {
                    if !self.conns.contains_key(&peer) {
                        tracing::info!(%peer, "found on the LAN by mDNS");
                        self.dial_known(peer, addrs);
                    }
                }
            }
            _ => {}
        }
    }
}

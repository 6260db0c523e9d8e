//! The one task that owns the [`Swarm`]. Everything else talks to it through
//! [`crate::Client`], which sends [`Command`]s with a oneshot for the reply (the shape of
//! rust-libp2p's `examples/file-sharing`). Requests that wait on the network are parked in
//! `pending_*` maps keyed by query or connection id and answered when the event arrives.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat, dcutr, gossipsub, identify, kad, mdns, ping, relay,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::api::{Connected, ConnectionInfo, Found, Path, PeerInfo, Status};
use crate::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL};
use crate::error::NodeError;
use crate::holepunch::{Candidates, PunchDial, Puncher};

/// How often unconnected bootstrap peers and relays are redialled, at most.
const REDIAL_MAX_BACKOFF: Duration = Duration::from_secs(8);
/// How often the redial schedule is checked.
const REDIAL_TICK: Duration = Duration::from_secs(1);

/// A request to the event loop.
#[derive(Debug)]
pub enum Command {
    /// Report the node's status.
    Status(oneshot::Sender<Status>),
    /// List connected peers.
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    /// Dial an address.
    ConnectAddr(Multiaddr, oneshot::Sender<Result<Connected, NodeError>>),
    /// Reach a peer by id, looking it up in the DHT when needed.
    ConnectPeer(PeerId, oneshot::Sender<Result<Connected, NodeError>>),
    /// Look a peer up in the DHT.
    Find(PeerId, oneshot::Sender<Result<Found, NodeError>>),
    /// Listen on one more address.
    Listen(Multiaddr, oneshot::Sender<Result<(), NodeError>>),
    /// Close every connection of a peer and refuse new ones (revocation).
    Block(PeerId, oneshot::Sender<()>),
    /// Accept a peer's connections again.
    Unblock(PeerId, oneshot::Sender<()>),
    /// Join a gossipsub topic: subscribe, announce ourselves as a provider of the topic in
    /// the DHT and connect to the others there. Messages arrive on the sender.
    JoinTopic(
        String,
        mpsc::Sender<TopicMessage>,
        oneshot::Sender<Result<(), NodeError>>,
    ),
    /// Leave a topic.
    LeaveTopic(String, oneshot::Sender<()>),
    /// Publish on a joined topic.
    Publish(String, Vec<u8>, oneshot::Sender<Result<(), NodeError>>),
}

/// A message received on a joined topic.
#[derive(Debug, Clone)]
pub struct TopicMessage {
    /// The peer that published it (gossipsub signs messages with the publisher's key).
    pub source: Option<PeerId>,
    /// The payload.
    pub data: Vec<u8>,
}

/// A joined topic: where its messages go, and when to look for its members again.
struct Joined {
    topic: gossipsub::IdentTopic,
    subscriber: mpsc::Sender<TopicMessage>,
    next_lookup: Instant,
}

/// How often the DHT is asked again for the members of a joined topic.
const TOPIC_LOOKUP_INTERVAL: Duration = Duration::from_secs(15);

/// What a finished DHT lookup should do.
enum Lookup {
    Find(oneshot::Sender<Result<Found, NodeError>>),
    Connect(oneshot::Sender<Result<Connected, NodeError>>),
}

/// A DHT lookup under way.
struct PendingLookup {
    target: PeerId,
    lookup: Lookup,
    /// Whether this is already the second query for the target (see `on_query_result`).
    retried: bool,
}

impl PendingLookup {
    fn new(target: PeerId, lookup: Lookup) -> Self {
        Self {
            target,
            lookup,
            retried: false,
        }
    }

    /// Whether whoever asked has stopped waiting for the answer.
    fn abandoned(&self) -> bool {
        match &self.lookup {
            Lookup::Find(reply) => reply.is_closed(),
            Lookup::Connect(reply) => reply.is_closed(),
        }
    }
}

/// A connection as the event loop tracks it.
struct Conn {
    id: ConnectionId,
    address: Multiaddr,
    /// Read from the endpoint, not the remote address: an inbound relayed connection's
    /// remote address does not show the circuit, its local (listen) address does.
    path: Path,
    outbound: bool,
    rtt: Option<Duration>,
}

impl Conn {
    fn info(&self) -> ConnectionInfo {
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

/// A relay we listen through.
struct Reservation {
    relay: PeerId,
    circuit_addr: Multiaddr,
    accepted: bool,
}

/// A peer we redial when its connection drops (bootstrap peers and relays), with its
/// redial backoff.
struct Keep {
    addrs: Vec<Multiaddr>,
    next_attempt: Instant,
    backoff: Duration,
    /// Redialled whenever it is not connected (a relay holding our reservation), rather
    /// than only while this node has no connection at all (a bootstrap peer).
    always: bool,
}

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
    dials: HashMap<ConnectionId, (PeerId, oneshot::Sender<Result<Connected, NodeError>>)>,
    addr_dials: HashMap<ConnectionId, oneshot::Sender<Result<Connected, NodeError>>>,
    reservations: HashMap<ListenerId, Reservation>,
    keep: HashMap<PeerId, Keep>,
    dialing: HashSet<PeerId>,
    topics: HashMap<gossipsub::TopicHash, Joined>,
    punching: HolePunching,
    our_addrs: Candidates,
    /// Hole-punch dials under way, one per peer, and the requests waiting for its outcome.
    punch_dials: HashMap<PeerId, (ConnectionId, Vec<DialReply>)>,
    /// Our exchanges (A's side), by peer: ended once a direct connection exists however it
    /// came (an introduction's dial usually wins), so they do not retry on the relayed
    /// connection being closed under them and report a failure that is none.
    punches: HashMap<PeerId, tokio::task::AbortHandle>,
}

type DialReply = oneshot::Sender<Result<Connected, NodeError>>;

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        store: Option<SyncSender<StoreUpdate>>,
        cfg: LoopConfig,
        punching: HolePunching,
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
            dials: HashMap::new(),
            addr_dials: HashMap::new(),
            reservations: HashMap::new(),
            keep: HashMap::new(),
            dialing: HashSet::new(),
            topics: HashMap::new(),
            punching,
            our_addrs,
            punch_dials: HashMap::new(),
            punches: HashMap::new(),
        }
    }

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
        let opts = DialOpts::peer_id(peer).addresses(addrs).build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, "cannot redial known peer: {e}");
        }
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
                _ = redial.tick() => {
                    self.redial();
                    self.lookup_topics();
                }
                () = &mut shutdown => break,
            }
        }
        tracing::info!("event loop stopped");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.peers());
            }
            Command::ConnectAddr(addr, reply) => self.connect_addr(addr, reply),
            Command::ConnectPeer(peer, reply) => {
                if let Some(c) = self.best_connection(&peer) {
                    let _ = reply.send(Ok(c));
                    return;
                }
                if peer == *self.swarm.local_peer_id() {
                    let _ = reply.send(Err(NodeError::SelfDial));
                    return;
                }
                let id = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                self.lookups
                    .insert(id, PendingLookup::new(peer, Lookup::Connect(reply)));
            }
            Command::Find(peer, reply) => {
                let id = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                self.lookups
                    .insert(id, PendingLookup::new(peer, Lookup::Find(reply)));
            }
            Command::Block(peer, reply) => {
                self.block(peer);
                let _ = reply.send(());
            }
            Command::Unblock(peer, reply) => {
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
                let _ = reply.send(());
            }
            Command::JoinTopic(name, subscriber, reply) => {
                let topic = gossipsub::IdentTopic::new(name);
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .subscribe(&topic)
                    .map(|_| ())
                    .map_err(|e| NodeError::InvalidInput(format!("cannot join topic: {e}")));
                if result.is_ok() {
                    let key = kad::RecordKey::new(&topic.hash().as_str());
                    if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
                        tracing::warn!("cannot announce topic membership: {e}");
                    }
                    self.topics.insert(
                        topic.hash(),
                        Joined {
                            topic,
                            subscriber,
                            next_lookup: Instant::now(),
                        },
                    );
                    self.lookup_topics();
                }
                let _ = reply.send(result);
            }
            Command::LeaveTopic(name, reply) => {
                let topic = gossipsub::IdentTopic::new(name);
                self.swarm.behaviour_mut().gossipsub.unsubscribe(&topic);
                let key = kad::RecordKey::new(&topic.hash().as_str());
                self.swarm.behaviour_mut().kad.stop_providing(&key);
                self.topics.remove(&topic.hash());
                let _ = reply.send(());
            }
            Command::Publish(name, data, reply) => {
                let topic = gossipsub::IdentTopic::new(name);
                let result = match self.swarm.behaviour_mut().gossipsub.publish(topic, data) {
                    Ok(_) => Ok(()),
                    // Alone in the room so far: the message has no one to reach, which is
                    // not an error for the sender.
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Ok(()),
                    Err(e) => Err(NodeError::InvalidInput(format!("cannot publish: {e}"))),
                };
                let _ = reply.send(result);
            }
            Command::Listen(addr, reply) => {
                let result =
                    self.swarm
                        .listen_on(addr.clone())
                        .map(|_| ())
                        .map_err(|e| NodeError::Listen {
                            addr: addr.to_string(),
                            reason: crate::error::transport_reason(&e),
                        });
                let _ = reply.send(result);
            }
        }
    }

    fn connect_addr(
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
                self.addr_dials.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(dial_error(peer, &e)));
            }
        }
    }

    fn dial_found(
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
            .addresses(addrs)
            .condition(PeerCondition::Always)
            .build();
        self.dial_and_reply(peer, opts, reply);
    }

    /// Dials; `reply` hears of the connection or of why there is none.
    fn dial_and_reply(
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

    /// Records an address of ours a peer could punch to, and tells the punch tasks.
    fn add_our_addr(&mut self, address: Multiaddr) {
        if self.our_addrs.add(address) {
            self.punching.ours.send_replace(self.our_addrs.to_vec());
        }
    }

    /// Makes a hole-punch dial; the answer comes like any other dial's.
    fn punch_dial(&mut self, dial: PunchDial) {
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
    fn introduce(&mut self, src: PeerId, dst: PeerId) {
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

    fn redial(&mut self) {
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
            let opts = DialOpts::peer_id(peer).addresses(addrs).build();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    self.dialing.insert(peer);
                }
                Err(e) => tracing::debug!(%peer, "redial refused: {e}"),
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
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
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => self.on_connection(peer_id, connection_id, endpoint),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                ..
            } => {
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                if let Some(list) = self.conns.get_mut(&peer_id) {
                    list.retain(|c| c.id != connection_id);
                    if list.is_empty() {
                        self.conns.remove(&peer_id);
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

    fn on_connection(&mut self, peer: PeerId, id: ConnectionId, endpoint: ConnectedPoint) {
        let outbound = endpoint.is_dialer();
        let address = endpoint.get_remote_address().clone();
        let path = if endpoint.is_relayed() {
            Path::Relayed
        } else {
            Path::Direct
        };
        tracing::info!(%peer, %address, ?path, "connected");
        self.dialing.remove(&peer);
        if let Some(k) = self.keep.get_mut(&peer) {
            k.backoff = Duration::from_millis(500);
        }
        if outbound && path == Path::Direct {
            self.remember(peer, vec![strip_p2p(&address)]);
        }
        self.conns.entry(peer).or_default().push(Conn {
            id,
            address: address.clone(),
            path,
            outbound,
            rtt: None,
        });
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

    /// Answers the lookups for `peer` as soon as we have dialled it, usually because the
    /// lookup itself asked it for its neighbours. Waiting for the query to finish would
    /// add the round trips to the other closest peers (or a slow peer's whole timeout)
    /// to an answer we already have, and an address we connected to is a verified one.
    fn lookup_reached(&mut self, peer: PeerId, address: &Multiaddr, connected: &Connected) {
        let reached: Vec<_> = self
            .lookups
            .extract_if(|_, pending| pending.target == peer)
            .collect();
        for (id, PendingLookup { lookup, .. }) in reached {
            if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                query.finish();
            }
            match lookup {
                Lookup::Find(reply) => {
                    let _ = reply.send(Ok(Found {
                        peer_id: peer.to_string(),
                        addresses: vec![strip_p2p(address).to_string()],
                    }));
                }
                Lookup::Connect(reply) => {
                    let _ = reply.send(Ok(connected.clone()));
                }
            }
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

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.on_identify(peer_id, info)
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id, result, stats, ..
            }) => self.on_query_result(id, result, &stats),
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, .. }) => {
                tracing::trace!(%peer, "routing table updated");
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
                }
                for r in self.reservations.values_mut() {
                    if r.relay == relay_peer_id {
                        r.accepted = true;
                    }
                }
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
            BehaviourEvent::RelayClient(event) => tracing::debug!(?event, "relay client"),
            BehaviourEvent::RelayServer(relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            }) => {
                tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, "relay circuit accepted");
                if self.cfg.introduce {
                    self.introduce(src_peer_id, dst_peer_id);
                }
            }
            BehaviourEvent::RelayServer(event) => tracing::debug!(?event, "relay server"),
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => match result {
                Ok(_) => {
                    tracing::info!(peer = %remote_peer_id, "hole punch succeeded: direct connection")
                }
                Err(e) => tracing::info!(peer = %remote_peer_id, "hole punch failed: {e}"),
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
            BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. }) => {
                if let Some(joined) = self.topics.get(&message.topic) {
                    let msg = TopicMessage {
                        source: message.source,
                        data: message.data,
                    };
                    // A subscriber that cannot keep up loses messages rather than stalling
                    // the event loop; gossip is best-effort anyway.
                    if joined.subscriber.try_send(msg).is_err() {
                        tracing::warn!(topic = %message.topic, "topic subscriber is behind; message dropped");
                    }
                }
            }
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

    fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
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

    /// Drops from the DHT table the circuit addresses through us of a peer that is no
    /// longer connected: its reservation went with the connection. A peer left with no
    /// address leaves the table, instead of holding a place in a full bucket (where
    /// Kademlia makes newcomers wait a minute for it) while nobody can reach it.
    fn forget_circuits(&mut self, peer: PeerId) {
        let me = *self.swarm.local_peer_id();
        let kad = &mut self.swarm.behaviour_mut().kad;
        let via_us: Vec<Multiaddr> = match kad.kbucket(peer) {
            Some(bucket) => bucket
                .iter()
                .filter(|e| *e.node.key.preimage() == peer)
                .flat_map(|e| e.node.value.iter().filter(|a| is_circuit_via(a, &me)))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        for addr in via_us {
            if kad.remove_address(&peer, &addr).is_some() {
                tracing::debug!(%peer, "peer reachable only through us has gone; out of the DHT table");
            }
        }
    }

    /// Listens through `relay` when we have fewer reservations than configured.
    fn maybe_reserve(&mut self, relay: PeerId) {
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

    /// Asks the DHT for the members of joined topics that are due, and dials them.
    fn lookup_topics(&mut self) {
        let now = Instant::now();
        let due: Vec<kad::RecordKey> = self
            .topics
            .values_mut()
            .filter(|j| j.next_lookup <= now)
            .map(|j| {
                j.next_lookup = now + TOPIC_LOOKUP_INTERVAL;
                kad::RecordKey::new(&j.topic.hash().as_str())
            })
            .collect();
        if self.swarm.connected_peers().next().is_none() {
            return;
        }
        for key in due {
            self.swarm.behaviour_mut().kad.get_providers(key);
        }
    }

    fn on_query_result(
        &mut self,
        id: kad::QueryId,
        result: kad::QueryResult,
        stats: &kad::QueryStats,
    ) {
        if let kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
            providers,
            ..
        })) = result
        {
            let me = *self.swarm.local_peer_id();
            for peer in providers {
                if peer != me && !self.conns.contains_key(&peer) && !self.dialing.contains(&peer) {
                    tracing::debug!(%peer, "dialling a member of a joined topic");
                    if self.swarm.dial(DialOpts::peer_id(peer).build()).is_ok() {
                        self.dialing.insert(peer);
                    }
                }
            }
            return;
        }
        let kad::QueryResult::GetClosestPeers(result) = result else {
            return;
        };
        let Some(pending) = self.lookups.remove(&id) else {
            return;
        };
        let target = pending.target;
        let (peers, timed_out) = match result {
            Ok(ok) => (ok.peers, false),
            Err(kad::GetClosestPeersError::Timeout { peers, .. }) => (peers, true),
        };
        let answered = !peers.is_empty();
        let mut addrs: Vec<Multiaddr> = peers
            .into_iter()
            .filter(|p| p.peer_id == target)
            .flat_map(|p| p.addrs)
            .collect();
        // A peer we are connected to is found even if the DHT has not learned it yet.
        for c in self.conns.get(&target).into_iter().flatten() {
            if !addrs.contains(&c.address) && c.path == Path::Direct && c.outbound {
                addrs.push(strip_p2p(&c.address));
            }
        }
        // Kademlia gives each peer 10 s and then ends the query without it, although its
        // answer may still come: on a slow or congested link the first lookup can end
        // before anyone answered, while a second one reuses the connections the first
        // opened. So a lookup that found nothing while peers were still unanswered asks
        // once more (not after the whole lookup's time ran out, nor for nobody).
        if addrs.is_empty()
            && stats.num_pending() > 0
            && !pending.retried
            && !timed_out
            && !pending.abandoned()
        {
            tracing::debug!(
                %target,
                unanswered = stats.num_pending(),
                "lookup ended with peers unanswered; asking again"
            );
            let id = self.swarm.behaviour_mut().kad.get_closest_peers(target);
            self.lookups.insert(
                id,
                PendingLookup {
                    retried: true,
                    ..pending
                },
            );
            return;
        }
        // "No peers to ask" only when nobody answered: a node whose connections merely
        // idled out still has a routing table, and its lookup went through the network.
        let no_peers = !answered && self.swarm.connected_peers().next().is_none();
        match pending.lookup {
            Lookup::Find(reply) => {
                let result = if addrs.is_empty() {
                    Err(not_found(target, no_peers))
                } else {
                    Ok(Found {
                        peer_id: target.to_string(),
                        addresses: addrs.iter().map(|a| a.to_string()).collect(),
                    })
                };
                let _ = reply.send(result);
            }
            Lookup::Connect(reply) => {
                if addrs.is_empty() {
                    let _ = reply.send(Err(not_found(target, no_peers)));
                } else {
                    self.dial_found(target, addrs, reply);
                }
            }
        }
    }

    fn remember(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if let Some(store) = &self.store
            && store.try_send((peer, addrs)).is_err()
        {
            tracing::debug!(%peer, "peer store busy; update dropped");
        }
    }

    fn has_direct(&self, peer: &PeerId) -> bool {
        self.conns
            .get(peer)
            .is_some_and(|l| l.iter().any(|c| c.path == Path::Direct))
    }

    fn best_connection(&self, peer: &PeerId) -> Option<Connected> {
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

    fn status(&mut self) -> Status {
        let nat_status = match self
            .swarm
            .behaviour()
            .autonat
            .as_ref()
            .map(|a| a.nat_status())
        {
            Some(autonat::NatStatus::Public(_)) => "public",
            Some(autonat::NatStatus::Private) => "private",
            Some(autonat::NatStatus::Unknown) => "unknown",
            None => "off",
        };
        let mut reservations: Vec<String> = self
            .reservations
            .values()
            .filter(|r| r.accepted)
            .map(|r| r.circuit_addr.to_string())
            .collect();
        reservations.sort();
        let kad = &mut self.swarm.behaviour_mut().kad;
        let dht_peers = kad.kbuckets().map(|b| b.num_entries()).sum();
        let dht_queries = kad.iter_queries().count();
        Status {
            peer_id: self.swarm.local_peer_id().to_string(),
            listen_addrs: self.swarm.listeners().map(|a| a.to_string()).collect(),
            external_addrs: self
                .swarm
                .external_addresses()
                .map(|a| a.to_string())
                .collect(),
            nat_status: nat_status.to_string(),
            reservations,
            connected_peers: self.conns.len(),
            relay_server: self.cfg.relay_server,
            dht_peers,
            dht_queries,
        }
    }

    fn peers(&self) -> Vec<PeerInfo> {
        let mut peers: Vec<PeerInfo> = self
            .conns
            .iter()
            .map(|(peer, list)| {
                let connections: Vec<ConnectionInfo> = list.iter().map(Conn::info).collect();
                // Prefer a direct connection, then the one with a measured round trip.
                let best = connections
                    .iter()
                    .filter(|c| c.path == Path::Direct)
                    .max_by_key(|c| c.rtt_ms.is_some())
                    .or_else(|| connections.first());
                PeerInfo {
                    peer_id: peer.to_string(),
                    path: best.map_or(Path::Relayed, |c| c.path),
                    transport: best.map_or_else(String::new, |c| c.transport.clone()),
                    rtt_ms: best.and_then(|c| c.rtt_ms),
                    connections,
                }
            })
            .collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        peers
    }
}

fn not_found(peer: PeerId, no_peers: bool) -> NodeError {
    if no_peers {
        NodeError::NoPeers
    } else {
        NodeError::NotFound {
            peer: peer.to_string(),
        }
    }
}

fn dial_error(peer: Option<PeerId>, error: &DialError) -> NodeError {
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

/// The peer id an address ends in, if any.
pub(crate) fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().last().and_then(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

/// `addr` without a trailing `/p2p/<id>`.
fn strip_p2p(addr: &Multiaddr) -> Multiaddr {
    let mut addr = addr.clone();
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

/// Whether the address goes through a relay.
pub fn path_of(addr: &Multiaddr) -> Path {
    if addr.iter().any(|p| p == Protocol::P2pCircuit) {
        Path::Relayed
    } else {
        Path::Direct
    }
}

/// The transport an address uses, as the API names it.
pub fn transport_of(addr: &Multiaddr) -> &'static str {
    let mut name = "other";
    for p in addr.iter() {
        match p {
            Protocol::P2pCircuit => return "relay",
            Protocol::Tcp(_) => name = "tcp",
            Protocol::QuicV1 => name = "quic",
            Protocol::Memory(_) => name = "memory",
            _ => {}
        }
    }
    name
}

/// Whether an address is on the loopback interface.
fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// Whether an address is on a private network (RFC 1918, shared CGNAT space, link-local,
/// IPv6 unique-local): reachable only from inside that network.
fn is_private(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => {
            let [a, b, ..] = ip.octets();
            ip.is_private() || ip.is_link_local() || (a == 100 && (b & 0xc0) == 64)
        }
        Protocol::Ip6(ip) => {
            let first = ip.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
        _ => false,
    })
}

/// Whether `addr` is a relay circuit through `relay` (`.../p2p/<relay>/p2p-circuit`).
fn is_circuit_via(addr: &Multiaddr, relay: &PeerId) -> bool {
    let mut previous = None;
    for p in addr.iter() {
        if p == Protocol::P2pCircuit {
            return previous == Some(Protocol::P2p(*relay));
        }
        previous = Some(p);
    }
    false
}

/// Whether an address can be dialled: not `0.0.0.0`/`::` (which listeners report).
fn is_concrete(addr: &Multiaddr) -> bool {
    !addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_circuit_addresses_are_told_apart() {
        let private = |a: &str| is_private(&a.parse().unwrap());
        assert!(private("/ip4/10.1.0.2/tcp/4001"));
        assert!(private("/ip4/192.168.1.5/udp/1/quic-v1"));
        assert!(private("/ip4/100.64.3.4/tcp/1"));
        assert!(private("/ip6/fd00::1/tcp/1"));
        assert!(private("/ip6/fe80::1/tcp/1"));
        assert!(!private("/ip4/198.51.100.2/tcp/4001"));
        assert!(!private("/ip4/100.128.0.1/tcp/1"));
        assert!(!private("/ip6/2001:db8::1/tcp/1"));
        assert!(!private("/memory/5"));

        let relay = PeerId::random();
        let circuit: Multiaddr = format!("/ip4/198.51.100.2/tcp/4001/p2p/{relay}/p2p-circuit")
            .parse()
            .unwrap();
        assert!(is_circuit_via(&circuit, &relay));
        assert!(!is_circuit_via(&circuit, &PeerId::random()));
        let direct: Multiaddr = format!("/ip4/198.51.100.2/tcp/4001/p2p/{relay}")
            .parse()
            .unwrap();
        assert!(!is_circuit_via(&direct, &relay));
    }

    #[test]
    fn paths_and_transports_are_read_from_addresses() {
        let tcp: Multiaddr = "/ip4/1.2.3.4/tcp/1".parse().unwrap();
        let quic: Multiaddr = "/ip4/1.2.3.4/udp/1/quic-v1".parse().unwrap();
        let relayed: Multiaddr = format!("/ip4/1.2.3.4/tcp/1/p2p/{}/p2p-circuit", PeerId::random())
            .parse()
            .unwrap();
        assert_eq!((path_of(&tcp), transport_of(&tcp)), (Path::Direct, "tcp"));
        assert_eq!(
            (path_of(&quic), transport_of(&quic)),
            (Path::Direct, "quic")
        );
        assert_eq!(
            (path_of(&relayed), transport_of(&relayed)),
            (Path::Relayed, "relay")
        );
    }

    #[test]
    fn p2p_suffix_is_stripped_and_read() {
        let peer = PeerId::random();
        let addr: Multiaddr = format!("/ip4/1.2.3.4/tcp/1/p2p/{peer}").parse().unwrap();
        assert_eq!(peer_of(&addr), Some(peer));
        assert_eq!(strip_p2p(&addr).to_string(), "/ip4/1.2.3.4/tcp/1");
        assert!(!is_concrete(&"/ip4/0.0.0.0/tcp/1".parse().unwrap()));
    }
}

//! The tunnel service (`vpn up/down/status`): per network that is up, an [`Engine`] fed
//! the network's members and leases from the node, a TUN device with our addresses, and
//! one secure stream per member on [`crate::STREAM_PROTOCOL`].
//!
//! One task (the owner) holds the networks that are up and their streams; it alone
//! changes them, on commands, membership events, accepted or opened streams and a tick.
//! The packets never pass through it: per network a reader on the data thread reads the
//! TUN device and routes each packet (through the engine, under a short lock, see `path`) into the
//! bounded queue of the member that holds its destination; per stream a writer drains
//! that queue and a reader checks each packet with the engine before it is written into
//! the device (`link`). A membership change updates the engine at once, so a revoked
//! member's packets are refused from that moment, and its streams are closed.
//!
//! Streams: per network and member, one. The member with the smaller peer id opens it as
//! soon as both are up; the other opens only if none came after `FALLBACK_OPEN` (3 s). When
//! both exist, the one the smaller id opened wins on both ends (as sync does).
//!
//! Packets go as UDP datagrams where the two members reach each other's socket (`udp`),
//! else over the stream (reliable and ordered, over a relay say). The queue in front of
//! each stream writer drops packets that waited too long, which keeps an inner TCP's view
//! of the path honest.
//!
//! Files: `net` (a network that is up, and the engine's input from the node's roster),
//! `path` (the data path and the TUN reader), `data` (the thread the packets' IO runs on),
//! `udp` (the datagram path), `link` (a stream's reader and writer),
//! `streams` (accepting, opening and attaching streams), `sys` (what `vpn up` checks on
//! the host), `handle`, `routes`, `error`.

mod data;
mod error;
mod handle;
mod link;
mod names;
mod net;
mod path;
mod routes;
mod streams;
mod sys;
mod udp;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::{PeerId, Stream, StreamProtocol};
use p2pnode_node::networks::{NetEvent, Networks};
use p2pnode_node::secure::SecureListener;
use p2pnode_node::{Client, Context, OwnerTask, Protocol, ProtocolError, ProtocolHandler};
use p2pnode_secure::SecureStream;
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::api::{Down, NetStatus};
use crate::device::{ReadBatch, TunDevice};
use crate::{Engine, MemberId};
pub use error::TunnelError;
pub use handle::TunnelHandle;
use net::{NetTunnel, View};
use path::DataPath;

/// Commands queued for the owner.
const COMMAND_QUEUE: usize = 64;
/// Events from stream tasks queued for the owner.
const EVENT_QUEUE: usize = 256;
/// Most streams (over all networks) at once.
pub const MAX_LINKS: usize = 1024;
/// Accepted streams whose hello we wait for at once; more are closed unread.
const MAX_HELLOS: usize = 32;
/// How long an accepted stream may take to name its network.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Opening a stream (dial, handshake, hello) gives up after this long.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// How often members without a stream are looked at.
const TICK: Duration = Duration::from_millis(500);
/// The larger peer id opens a stream itself when none came after this long.
const FALLBACK_OPEN: Duration = Duration::from_secs(3);
/// Least time between two attempts to open a stream to one member, doubled after each
/// attempt (a member whose tunnel is down is not asked every tick).
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// Most doublings of [`RETRY_EVERY`] (2 s x 2^5: about a minute).
const MAX_BACKOFF_DOUBLINGS: u32 = 5;
/// A stream that lived this long was a working one: after it ends, opening starts over
/// without the backoff.
const HEALTHY_LINK: Duration = Duration::from_secs(10);
/// The largest MTU `vpn up` takes (IPv4's largest packet); the smallest is IPv6's 1280.
const MAX_MTU: u16 = u16::MAX;

enum Command {
    Up {
        network: String,
        mtu: u16,
        offload: bool,
        reply: oneshot::Sender<Result<NetStatus, TunnelError>>,
    },
    Down {
        network: String,
        reply: oneshot::Sender<Result<Down, TunnelError>>,
    },
    Status {
        reply: oneshot::Sender<Vec<NetStatus>>,
    },
}

// Boxed: a secure stream dwarfs the other events.
type Secure = Box<SecureStream<Stream>>;

/// What the stream tasks tell the owner.
enum Event {
    Opened {
        network: String,
        peer: PeerId,
        stream: Result<(Secure, Option<Box<udp::Negotiated>>), String>,
    },
    Hello {
        peer: PeerId,
        network: [u8; 32],
        stream: Secure,
        datagram: Option<Box<udp::Negotiated>>,
    },
    Closed {
        network: String,
        peer: PeerId,
        link: u64,
        reason: String,
    },
}

/// Spawns a task of the service in the current span (the node's).
fn spawn<F>(task: F) -> JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(tracing::Instrument::in_current_span(task))
}

/// The tunnel protocol, to register on a node: `Node::builder(..).protocol(Tunnel)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tunnel;

impl Protocol for Tunnel {
    type Handler = TunnelService;

    fn name(&self) -> &'static str {
        crate::PROTOCOL
    }

    fn start(self, ctx: Context) -> Result<TunnelService, ProtocolError> {
        let listener = ctx
            .listen(StreamProtocol::new(crate::STREAM_PROTOCOL))
            .map_err(|e| ProtocolError::new(crate::PROTOCOL, e))?;
        let client = ctx.client().clone();
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let (stop_tx, stop_rx) = oneshot::channel();
        let service = Service {
            me: client.peer_id(),
            networks: ctx.networks().clone(),
            client: client.clone(),
            nets: BTreeMap::new(),
            events_tx,
            hellos: Arc::new(Semaphore::new(MAX_HELLOS)),
            next_link: 1,
            signing: ctx.signing_key().clone(),
            udp: None,
            port: Arc::default(),
            up_ids: Arc::default(),
            observed_at: std::time::Instant::now(),
            data: data::DataThread::default(),
        };
        let task = spawn(service.run(listener, cmd_rx, events_rx, stop_rx));
        Ok(TunnelService {
            handle: TunnelHandle {
                commands: cmd_tx,
                client,
            },
            owner: OwnerTask::new(stop_tx, task),
        })
    }
}

/// The running tunnel protocol, as the node keeps it.
pub struct TunnelService {
    handle: TunnelHandle,
    owner: OwnerTask,
}

impl std::fmt::Debug for TunnelService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelService")
    }
}

impl TunnelService {
    /// The handle for `vpn up/down/status`.
    pub fn handle(&self) -> &TunnelHandle {
        &self.handle
    }
}

impl ProtocolHandler for TunnelService {
    fn route_prefixes(&self) -> &[&'static str] {
        crate::api::routes::PREFIXES
    }

    fn handle(
        &self,
        request: p2pnode_node::control::ControlRequest,
    ) -> futures::future::BoxFuture<'static, p2pnode_node::control::ControlReply> {
        let handle = self.handle.clone();
        Box::pin(async move { routes::serve(&handle, request).await })
    }

    fn shutdown(&self) -> futures::future::BoxFuture<'_, ()> {
        // The owner takes every network down (devices closed, interfaces gone) and ends.
        Box::pin(self.owner.stop(crate::PROTOCOL))
    }
}

struct Service {
    client: Client,
    me: PeerId,
    networks: Networks,
    nets: BTreeMap<String, NetTunnel>,
    events_tx: mpsc::Sender<Event>,
    hellos: Arc<Semaphore>,
    next_link: u64,
    /// Our identity key, for the datagram sessions' handshakes.
    signing: p2pnode_secure::SigningKey,
    /// The datagram socket and its reader, from the first `vpn up` on.
    udp: Option<(Arc<udp::Udp>, data::ReaderHandle)>,
    /// The datagram socket's port, 0 before it is bound; shared with the tasks that
    /// answer streams, which read it once they know the network.
    port: Arc<std::sync::atomic::AtomicU16>,
    /// The ids of the networks that are up, for those tasks: a stream for a network that
    /// is not up (yet) is closed before its datagram negotiation, so an answer never
    /// goes out without our socket's port, and the opener tries again later.
    up_ids: Arc<std::sync::RwLock<std::collections::HashSet<[u8; 32]>>>,
    /// When members without a datagram path were last looked at for new addresses.
    observed_at: std::time::Instant,
    /// The thread the packets' IO runs on, from the first `vpn up` on.
    data: data::DataThread,
}

impl Service {
    async fn run(
        mut self,
        mut listener: SecureListener,
        mut cmd_rx: mpsc::Receiver<Command>,
        mut events_rx: mpsc::Receiver<Event>,
        mut stop_rx: oneshot::Receiver<()>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut membership = self.networks.subscribe();
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                event = membership.recv() => match event {
                    Ok(NetEvent::Changed { name, .. } | NetEvent::Left { name }) => {
                        self.membership_changed(&name).await;
                    }
                    // Lagged: look at every network again.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let names: Vec<String> = self.nets.keys().cloned().collect();
                        for name in names {
                            self.membership_changed(&name).await;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                Some(c) = cmd_rx.recv() => self.command(c).await,
                Some(a) = listener.next() => self.accepted(a),
                Some(e) = events_rx.recv() => self.event(e),
                _ = tick.tick() => self.tick(),
            }
        }
        for (name, t) in std::mem::take(&mut self.nets) {
            t.stop().await;
            tracing::info!(network = name, "tunnel down (node stopping)");
        }
        if let Some((_, reader)) = self.udp.take() {
            reader.stop().await;
        }
        tracing::debug!("tunnel service stopped");
    }

    async fn command(&mut self, c: Command) {
        match c {
            Command::Up {
                network,
                mtu,
                offload,
                reply,
            } => {
                let result = self.up(&network, mtu, offload).await;
                let _ = reply.send(result);
            }
            Command::Down { network, reply } => {
                let result = match self.nets.remove(&network) {
                    Some(t) => {
                        self.forget_up(&t.id);
                        let interface = t.interface.clone();
                        t.stop().await;
                        tracing::info!(network, interface, "tunnel down");
                        Ok(Down { network, interface })
                    }
                    None => Err(TunnelError::NotUp(network)),
                };
                let _ = reply.send(result);
            }
            Command::Status { reply } => {
                let list = self.nets.iter().map(|(n, t)| self.status(n, t)).collect();
                let _ = reply.send(list);
            }
        }
    }

    async fn up(
        &mut self,
        network: &str,
        mtu: u16,
        offload: bool,
    ) -> Result<NetStatus, TunnelError> {
        if let Some(t) = self.nets.get(network) {
            return Ok(self.status(network, t));
        }
        if !self.networks.is_in(network) {
            return Err(TunnelError::NotMember(network.to_string()));
        }
        let mut roster = self.networks.roster(network)?;
        // Our name, for `<name>.p2p`: the host name when we have set none.
        // A member's name may arrive between our look and our op: then look again, once.
        for _ in 0..2 {
            if names::own_name(&roster, &self.me).is_some() {
                break;
            }
            let Some(name) = names::default_name(&roster, &self.me) else {
                break;
            };
            let named = self.record_name(network, name).await;
            roster = self.networks.roster(network)?;
            if named {
                break;
            }
        }
        let view = View::of(&roster, &self.me);
        let me = MemberId(self.me.to_bytes());
        let engine = Engine::new(roster.id.0, me, mtu, &view.claims, view.revoked)?;
        let lease = engine
            .our_lease()
            .ok_or_else(|| TunnelError::NotMember(network.to_string()))?;
        let prefixes = engine.table().prefixes();
        let interface = sys::interface_name(network, &roster.id.0);
        sys::check_free(&interface, &prefixes).map_err(|taken| match taken {
            sys::Taken::Interface(name) => TunnelError::InterfaceExists(name),
            sys::Taken::Route { prefix, overlap } => TunnelError::Collision {
                network: network.to_string(),
                prefix,
                route: overlap.route,
                interface: overlap.interface,
            },
        })?;
        if engine.must_record_ours() {
            self.record_lease(network, lease).await;
        }
        let device = Arc::new(TunDevice::create_with(
            &interface, lease, &prefixes, mtu, offload,
        )?);
        self.bind_udp().await;
        let names: names::Names = Arc::new(Mutex::new(names::table_of(&roster, engine.table())));
        let dns = self.start_dns(network, &interface, lease.v4, &names).await;
        let path = Arc::new(Mutex::new(DataPath::new(engine)));
        let reader = self
            .data
            .add(Box::new(path::TunReader {
                network: network.to_string(),
                device: device.clone(),
                path: path.clone(),
                reads: ReadBatch::new(mtu),
                batch: self.udp.as_ref().map(|(u, _)| u.batch()),
            }))
            .map_err(|e| TunnelError::DataThread(e.to_string()))?;
        tracing::info!(
            network,
            interface,
            ipv4 = %lease.v4,
            ipv6 = %lease.v6,
            "tunnel up"
        );
        let t = NetTunnel {
            id: roster.id.0,
            interface,
            mtu,
            lease,
            path,
            device,
            reader,
            members: view.names,
            links: HashMap::new(),
            opening: BTreeSet::new(),
            waiting: HashMap::new(),
            names,
            dns,
        };
        let status = self.status(network, &t);
        if let Ok(mut up) = self.up_ids.write() {
            up.insert(t.id);
        }
        self.nets.insert(network.to_string(), t);
        self.tick();
        Ok(status)
    }

    /// Our lease moved (another member recorded the same address at the same time, and
    /// won the tie-break): the device takes the new addresses and the DNS responder moves
    /// with them. Connections on the old address end, as they would on any renumbering.
    async fn readdress(&mut self, network: &str, new: crate::Lease) {
        let Some(t) = self.nets.get_mut(network) else {
            return;
        };
        let old = t.lease;
        if let Err(e) = sys::readdress(&t.interface, old, new).await {
            tracing::warn!(
                network,
                "tunnel: cannot move to {} / {}: {e}",
                new.v4,
                new.v6
            );
            return;
        }
        t.lease = new;
        tracing::warn!(
            network,
            from = %old.v4,
            to = %new.v4,
            ipv6 = %new.v6,
            "tunnel: the tie-break moved our address"
        );
        if let Some(dns) = t.dns.take() {
            dns.abort();
            let _ = dns.await;
        }
        let (interface, names) = (t.interface.clone(), t.names.clone());
        let dns = self.start_dns(network, &interface, new.v4, &names).await;
        if let Some(t) = self.nets.get_mut(network) {
            t.dns = dns;
        }
    }

    /// Binds the datagram socket, once. Without it every member is reached over streams.
    async fn bind_udp(&mut self) {
        if self.udp.is_some() {
            return;
        }
        let bound = udp::Udp::bind(0).and_then(|u| {
            let reader = self.data.add(Box::new(udp::UdpReader::new(u.clone())))?;
            Ok((u, reader))
        });
        match bound {
            Ok((u, reader)) => {
                tracing::info!(port = u.port(), "tunnel: datagram socket bound");
                self.port
                    .store(u.port(), std::sync::atomic::Ordering::Relaxed);
                self.udp = Some((u, reader));
            }
            Err(e) => tracing::warn!("tunnel: no datagram socket, streams only: {e}"),
        }
    }

    /// `network`'s status, with the datagram socket's port and the datagrams it dropped
    /// that belong to no network (named no link, or could not be sent).
    fn status(&self, network: &str, t: &NetTunnel) -> NetStatus {
        let mut s = t.status(network);
        if let Some((u, _)) = &self.udp {
            s.udp_port = Some(u.port());
            let (unknown, send_failed) = u.drops();
            for (reason, n) in [("udp_unknown", unknown), ("udp_send_failed", send_failed)] {
                if n > 0 {
                    *s.drops.entry(reason.to_string()).or_insert(0) += n;
                }
            }
        }
        s
    }

    /// Takes `id` off the networks that are up.
    fn forget_up(&self, id: &[u8; 32]) {
        if let Ok(mut up) = self.up_ids.write() {
            up.remove(id);
        }
    }

    /// Writes our lease into the network's record: the tie-break moved us, and members
    /// that join later must see the address as ours.
    async fn record_lease(&self, network: &str, lease: crate::Lease) {
        let networks = self.networks.clone();
        let name = network.to_string();
        let bytes = lease.to_bytes().to_vec();
        let result = tokio::task::spawn_blocking(move || networks.set_lease(&name, bytes)).await;
        match result {
            Ok(Ok(())) => tracing::info!(network, ipv4 = %lease.v4, "tunnel: recorded our lease"),
            Ok(Err(e)) => tracing::warn!(network, "tunnel: cannot record our lease: {e}"),
            Err(e) => tracing::warn!(network, "tunnel: cannot record our lease: {e}"),
        }
    }

    /// Records `name` as ours in `network`; whether it was.
    async fn record_name(&self, network: &str, name: String) -> bool {
        let networks = self.networks.clone();
        let net = network.to_string();
        let n = name.clone();
        let result = tokio::task::spawn_blocking(move || networks.set_name(&net, &n)).await;
        match result {
            Ok(Ok(())) => {
                tracing::info!(network, name, "tunnel: recorded our name");
                return true;
            }
            Ok(Err(e)) => tracing::warn!(network, "tunnel: cannot record our name: {e}"),
            Err(e) => tracing::warn!(network, "tunnel: cannot record our name: {e}"),
        }
        false
    }

    /// Starts the DNS responder of `network` on `addr` (the device's address, so the
    /// device is up first), and points systemd-resolved at it where that runs. `None`
    /// when the socket cannot be bound: the tunnel works without names.
    async fn start_dns(
        &self,
        network: &str,
        interface: &str,
        addr: std::net::Ipv4Addr,
        names: &names::Names,
    ) -> Option<JoinHandle<()>> {
        let socket = match names::bind(addr).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(network, "tunnel: no DNS responder on {addr}:53: {e}");
                return None;
            }
        };
        let task = spawn(names::serve(socket, names.clone()));
        let iface = interface.to_string();
        match tokio::task::spawn_blocking(move || names::configure_resolver(&iface, addr)).await {
            Ok(Ok(true)) => tracing::info!(
                network,
                interface,
                "tunnel: systemd-resolved asks {addr} for ~p2p"
            ),
            Ok(Ok(false)) => tracing::debug!(network, "tunnel: no systemd-resolved to configure"),
            Ok(Err(e)) => tracing::warn!(network, "tunnel: cannot configure systemd-resolved: {e}"),
            Err(e) => tracing::warn!(network, "tunnel: cannot configure systemd-resolved: {e}"),
        }
        Some(task)
    }

    /// Acts on a change to `network`'s record at once: the engine gets the new members
    /// and revocations (a revoked member's packets are refused from here on), streams of
    /// members gone are closed; if we are no member any more, the tunnel goes down.
    async fn membership_changed(&mut self, network: &str) {
        let Some(t) = self.nets.get_mut(network) else {
            return;
        };
        let roster = match self.networks.roster(network) {
            Ok(r) if self.networks.is_in(network) => r,
            _ => {
                if let Some(t) = self.nets.remove(network) {
                    self.forget_up(&t.id);
                    t.stop().await;
                }
                tracing::info!(network, "tunnel down: no longer a member of the network");
                return;
            }
        };
        let view = View::of(&roster, &self.me);
        let (lease, record) = {
            let Ok(mut p) = t.path.lock() else {
                return;
            };
            if let Err(e) = p.engine.update(&view.claims, view.revoked) {
                tracing::warn!(network, "tunnel: cannot settle the addresses: {e}");
                return;
            }
            if let Ok(mut names) = t.names.lock() {
                *names = names::table_of(&roster, p.engine.table());
            }
            (p.engine.our_lease(), p.engine.must_record_ours())
        };
        t.members = view.names;
        let members = &t.members;
        t.links.retain(|peer, _| members.contains_key(peer));
        t.waiting.retain(|peer, _| members.contains_key(peer));
        if let Some(l) = lease
            && l != t.lease
        {
            self.readdress(network, l).await;
        }
        if record && let Some(l) = lease {
            self.record_lease(network, l).await;
        }
        if names::must_rename(&roster, &self.me)
            && let Some(name) = names::default_name(&roster, &self.me)
        {
            let _ = self.record_name(network, name).await;
        }
    }
}

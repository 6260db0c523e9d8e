//! The tunnel service (`vpn up/down/status`): per network that is up, an
//! [`Engine`](crate::Engine) fed the network's members and leases from the node, a TUN
//! device with our addresses, and one secure stream per member on
//! [`crate::STREAM_PROTOCOL`].
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
//! Files: `up` (bringing a network up), `net` (a network that is up, and the engine's
//! input from the node's roster), `path` (the data path and the TUN reader), `data` (the
//! thread the packets' IO runs on), `udp` (the datagram path), `link` (a stream's reader
//! and writer), `streams` (accepting, opening and attaching streams), `sys` (what `vpn up`
//! checks on the host), `handle`, `routes`, `error`.

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
mod up;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use libp2p::{PeerId, Stream, StreamProtocol};
use p2pnode_node::networks::{NetEvent, Networks};
use p2pnode_node::open_schedule::Pauses;
use p2pnode_node::secure::SecureListener;
use p2pnode_node::{Client, Context, OwnerTask, Protocol, ProtocolError, ProtocolHandler};
use p2pnode_secure::SecureStream;
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::api::{Down, NetStatus};
pub use error::TunnelError;
pub use handle::TunnelHandle;
use net::{NetTunnel, View};

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
/// How often members without a stream are looked at, while a tunnel is up.
const TICK: Duration = Duration::from_millis(500);
/// The larger peer id opens a stream itself when none came after this long.
const FALLBACK_OPEN: Duration = Duration::from_secs(3);
/// Least time between two attempts to open a stream to one member, doubled after each
/// attempt (a member whose tunnel is down is not asked every tick).
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// Most doublings of [`RETRY_EVERY`] (2 s x 2^5: about a minute).
const MAX_BACKOFF_DOUBLINGS: u32 = 5;
/// The above, as the stream opens' schedule takes them.
const PAUSES: Pauses = Pauses {
    fallback: FALLBACK_OPEN,
    retry: RETRY_EVERY,
    max_doublings: MAX_BACKOFF_DOUBLINGS,
};
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
                // Only while a tunnel is up: a node without one does nothing here.
                _ = tick.tick(), if !self.nets.is_empty() => self.tick(),
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
            let mut p = t.path.lock();
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

//! The sync service: every document as a [`SyncSession`], one secure stream per connected
//! peer that may sync, and the `db` control routes.
//!
//! One task (the owner) holds the documents and the links. Stream readers and writers are
//! separate tasks talking to it over bounded channels. The owner works in batches: it takes
//! every input that is ready, applies them, saves each changed document with
//! [`Store::save_session`] (fsynced), and only then answers callers, tells watchers and
//! generates the next sync messages. So a write is acknowledged only once it is on disk,
//! and many received changes share one save.
//!
//! Streams: one per peer. The peer with the smaller id opens it as soon as it sees the
//! connection; the other opens only if no stream came after `FALLBACK_OPEN` (3 s). When both
//! streams exist, the one opened by the smaller id wins on both ends.
//!
//! Files: `exchange` runs writes, merges received frames and ends a batch, `links` opens
//! and keeps the streams, `io` holds the stream tasks, `routes` the control routes,
//! `handle` the [`SyncHandle`], `error` the [`SyncError`].

mod error;
mod exchange;
mod handle;
mod io;
mod links;
mod routes;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use libp2p::{PeerId, StreamProtocol};
use p2pnode_crdt::{ChangeHash, Document, Store, SyncSession};
use p2pnode_node::networks::{NetEvent, Networks};
use p2pnode_node::open_schedule::{OpenSchedule, Pauses};
use p2pnode_node::secure::{Accepted, SecureListener};
use p2pnode_node::{Client, Context, OwnerTask, Protocol, ProtocolError, ProtocolHandler};
use p2pnode_secure::SecureStream;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::api::{DocInfo, WatchEvent, Written};
use crate::wire::{Frame, MAX_FRAME_LEN};
pub use error::SyncError;
pub use handle::{SyncHandle, SyncStats};
use links::Link;

/// Commands queued for the owner.
const COMMAND_QUEUE: usize = 256;
/// Frames read from all streams, waiting for the owner. With [`MAX_FRAME_LEN`] this bounds
/// the bytes buffered for the owner; each reader holds at most one more frame.
const INBOUND_QUEUE: usize = 16;
/// Most documents this node holds.
pub const MAX_DOCS: usize = 1024;
/// Most documents synced with one peer.
pub const MAX_DOCS_PER_PEER: usize = 256;
/// Encoded frames waiting for one stream's writer. automerge has at most one message in
/// flight per document and peer, so a writer this far behind is stalled and is dropped.
const WRITER_QUEUE: usize = MAX_DOCS_PER_PEER + 16;
/// Bytes of received frames one peer may have waiting for the owner (above one frame, so
/// the largest frame always fits).
const INBOUND_BYTES_PER_PEER: u32 = (MAX_FRAME_LEN + (8 << 20)) as u32;
/// Bytes of encoded frames one peer's writer may have queued; past it the stream counts
/// as stalled and is dropped (the peer catches up on its next connection).
const OUTBOUND_BYTES_PER_PEER: u64 = 2 * MAX_FRAME_LEN as u64;
/// Most peers with a sync stream at once.
pub const MAX_LINKS: usize = 256;
/// Events buffered per watched document (a slow watcher gets a `lagged` line).
const WATCH_QUEUE: usize = 1024;
/// Most inputs in one batch (one save per changed document).
const MAX_BATCH: usize = 256;
/// The larger peer id opens a stream itself when none came after this long.
const FALLBACK_OPEN: Duration = Duration::from_secs(3);
/// Least time between two attempts to open a stream to one peer, doubled after each
/// attempt that brought no stream (a peer that refuses us is not asked every few seconds).
const RETRY_EVERY: Duration = Duration::from_secs(3);
/// An attempt that failed after this long failed on the connection, not on the peer's
/// answer, and is retried after [`RETRY_EVERY`] without backing off further.
const SLOW_FAILURE: Duration = RETRY_EVERY;
/// Most doublings of [`RETRY_EVERY`] (3 s x 2^6: about three minutes).
const MAX_BACKOFF_DOUBLINGS: u32 = 6;
/// The above, as the stream opens' schedule takes them.
const PAUSES: Pauses = Pauses {
    fallback: FALLBACK_OPEN,
    retry: RETRY_EVERY,
    max_doublings: MAX_BACKOFF_DOUBLINGS,
};
/// Opening a stream (dial, handshake) gives up after this long.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);

/// What the secure layer adds to each chunk: its length prefix, header and tag.
const CHUNK_OVERHEAD: u64 = (p2pnode_secure::stream::LENGTH_PREFIX_LEN
    + p2pnode_secure::session::HEADER_LEN
    + p2pnode_secure::session::TAG_LEN) as u64;

/// A network name: what a document belongs to (the node's rule for network names).
pub(crate) fn check_network(network: &str) -> Result<(), SyncError> {
    p2pnode_node::networks::check_name(network).map_err(|e| SyncError::Invalid(e.to_string()))
}

fn hex_heads(heads: &[ChangeHash]) -> Vec<String> {
    heads.iter().map(ToString::to_string).collect()
}

/// A peer id as shown: the libp2p form, or hex for bytes that are not one.
pub(crate) fn peer_label(bytes: &[u8]) -> String {
    PeerId::from_bytes(bytes).map_or_else(
        |_| bytes.iter().map(|b| format!("{b:02x}")).collect(),
        |p| p.to_string(),
    )
}

fn read_network(dir: &Path, doc: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{doc}.network")))
        .ok()
        .filter(|n| check_network(n).is_ok())
        .unwrap_or_default()
}

/// Spawns a task of the service in the current span (the node's).
fn spawn<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(tracing::Instrument::in_current_span(task))
}

/// Runs `f`, which blocks (an fsync, a large merge), inside the owner without stalling
/// the node's other tasks: on a multi-thread runtime (the daemon's has one worker) the
/// worker first hands them to another thread (`block_in_place`); a current-thread runtime
/// (a test's) runs `f` in place, as it has no other thread to hand them to.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A write on one document, run by the owner.
type WriteOp =
    Box<dyn FnOnce(&mut Document) -> Result<Option<ChangeHash>, p2pnode_crdt::Error> + Send>;
/// A read, run by the owner with its state; it answers its caller itself.
type ReadOp = Box<dyn FnOnce(&Service) + Send>;

enum Command {
    Write {
        doc: String,
        /// Create the document in this network when it does not exist.
        create: Option<String>,
        /// Refuse a document that already exists (`db create`).
        must_be_new: bool,
        op: WriteOp,
        reply: oneshot::Sender<Result<Written, SyncError>>,
    },
    Read(ReadOp),
    Watch {
        doc: String,
        reply: oneshot::Sender<Result<broadcast::Receiver<WatchEvent>, SyncError>>,
    },
}

pub(crate) enum Inbound {
    Frame {
        peer: PeerId,
        link: u64,
        frame: Frame,
        /// The reader's byte budget for this frame, released once it is applied.
        _permit: tokio::sync::OwnedSemaphorePermit,
    },
    Closed {
        peer: PeerId,
        link: u64,
        reason: String,
    },
}

enum Opened {
    // Boxed: a secure stream is large beside the failure variant.
    Ok(PeerId, Box<SecureStream<libp2p::Stream>>),
    /// Why, and how long the attempt took.
    Failed(PeerId, String, Duration),
}

enum Input {
    Command(Command),
    Inbound(Inbound),
    Opened(Opened),
    // Boxed: an accepted secure stream dwarfs the other inputs.
    Accepted(Box<Accepted>),
    /// A network's membership changed (`None`: any network's).
    Membership(Option<String>),
}

struct Doc {
    session: SyncSession,
    network: String,
    /// Made on the first watch: an unwatched document holds no buffer.
    watch: Option<broadcast::Sender<WatchEvent>>,
}

type Reply = Box<dyn FnOnce(Result<(), SyncError>) + Send>;

/// What one batch changed, acted on once the changed documents are saved.
#[derive(Default)]
struct Batch {
    dirty: BTreeSet<String>,
    sends: BTreeSet<(String, PeerId)>,
    events: Vec<(String, WatchEvent)>,
    replies: Vec<(String, Reply)>,
}

struct Service {
    client: Client,
    me: PeerId,
    me_bytes: Vec<u8>,
    store: Store,
    networks: Networks,
    docs: BTreeMap<String, Doc>,
    links: HashMap<PeerId, Link>,
    opening: HashSet<PeerId>,
    seen: HashMap<PeerId, OpenSchedule>,
    stats: SyncStats,
    inbound_tx: mpsc::Sender<Inbound>,
    opened_tx: mpsc::Sender<Opened>,
    next_link: u64,
}

/// The sync protocol, to register on a node: `Node::builder(..).protocol(Sync)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sync;

impl Protocol for Sync {
    type Handler = SyncService;

    fn name(&self) -> &'static str {
        crate::PROTOCOL
    }

    fn start(self, ctx: Context) -> Result<SyncService, ProtocolError> {
        let err = |e: SyncError| ProtocolError::new(crate::PROTOCOL, e);
        let store = Store::open(ctx.data_dir().join("sync")).map_err(|e| err(e.into()))?;
        let networks = ctx.networks().clone();
        let client = ctx.client().clone();
        let me = client.peer_id();
        let me_bytes = me.to_bytes();
        let mut docs = BTreeMap::new();
        for name in store.list().map_err(|e| err(e.into()))? {
            if docs.len() >= MAX_DOCS {
                tracing::warn!("more than {MAX_DOCS} documents stored; the rest not loaded");
                break;
            }
            let session = store
                .load_session(&name, &me_bytes)
                .map_err(|e| err(e.into()))?
                .with_max_message_bytes(MAX_FRAME_LEN);
            let network = read_network(store.dir(), &name);
            docs.insert(
                name,
                Doc {
                    session,
                    network,
                    watch: None,
                },
            );
        }
        let listener = ctx
            .listen(StreamProtocol::new(crate::STREAM_PROTOCOL))
            .map_err(|e| err(e.into()))?;
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let (opened_tx, opened_rx) = mpsc::channel(64);
        let (stop_tx, stop_rx) = oneshot::channel();
        let service = Service {
            client,
            me,
            me_bytes,
            store,
            networks,
            docs,
            links: HashMap::new(),
            opening: HashSet::new(),
            seen: HashMap::new(),
            stats: SyncStats::default(),
            inbound_tx,
            opened_tx,
            next_link: 1,
        };
        let task = spawn(service.run(listener, cmd_rx, inbound_rx, opened_rx, stop_rx));
        Ok(SyncService {
            handle: SyncHandle { commands: cmd_tx },
            owner: OwnerTask::new(stop_tx, task),
        })
    }
}

/// The running sync protocol, as the node keeps it: [`SyncService::handle`] for callers.
pub struct SyncService {
    handle: SyncHandle,
    owner: OwnerTask,
}

impl std::fmt::Debug for SyncService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncService")
    }
}

impl SyncService {
    /// The handle for reading and writing documents.
    pub fn handle(&self) -> &SyncHandle {
        &self.handle
    }
}

impl ProtocolHandler for SyncService {
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
        // The owner stops taking input, commits the batch in flight (what it acknowledged
        // is on disk) and ends.
        Box::pin(self.owner.stop("sync"))
    }
}

/// Whether the stream between `me` and `peer` was opened by the smaller peer id.
fn preferred(me: PeerId, peer: PeerId, outbound: bool) -> bool {
    (me < peer) == outbound
}

impl Service {
    async fn run(
        mut self,
        mut listener: SecureListener,
        mut cmd_rx: mpsc::Receiver<Command>,
        mut inbound_rx: mpsc::Receiver<Inbound>,
        mut opened_rx: mpsc::Receiver<Opened>,
        mut stop_rx: oneshot::Receiver<()>,
    ) {
        let mut membership = self.networks.subscribe();
        let mut membership_live = true;
        // The peers are looked at when they connect or disconnect, when a membership
        // changes, a stream ends or an open fails, and when an open comes due: not on a
        // timer, so an idle node does nothing here. First for the peers connected already.
        let mut peer_changes = self.client.peer_changes();
        let mut peers_live = true;
        let mut look = true;
        let mut due: Option<Instant> = None;
        loop {
            if look {
                look = false;
                due = self.look_at_peers().await;
            }
            let at = due.unwrap_or_else(Instant::now);
            let first = tokio::select! {
                _ = &mut stop_rx => break,
                event = membership.recv(), if membership_live => match event {
                    Ok(NetEvent::Changed { name, .. } | NetEvent::Left { name }) => {
                        Input::Membership(Some(name))
                    }
                    // Lagged: re-check every network.
                    Err(broadcast::error::RecvError::Lagged(_)) => Input::Membership(None),
                    Err(broadcast::error::RecvError::Closed) => {
                        membership_live = false;
                        continue;
                    }
                },
                Some(c) = cmd_rx.recv() => Input::Command(c),
                Some(i) = inbound_rx.recv() => Input::Inbound(i),
                Some(a) = listener.next() => Input::Accepted(Box::new(a)),
                Some(o) = opened_rx.recv() => Input::Opened(o),
                changed = peer_changes.changed(), if peers_live => {
                    // An error: the node's event loop has ended.
                    peers_live = changed.is_ok();
                    look = peers_live;
                    continue;
                }
                () = tokio::time::sleep_until(at.into()), if due.is_some() => {
                    look = true;
                    continue;
                }
            };
            let mut batch = Batch::default();
            look |= self.apply(first, &mut batch);
            for _ in 0..MAX_BATCH {
                let next = if let Ok(c) = cmd_rx.try_recv() {
                    Input::Command(c)
                } else if let Ok(i) = inbound_rx.try_recv() {
                    Input::Inbound(i)
                } else if let Some(a) = listener.accepted_now() {
                    Input::Accepted(Box::new(a))
                } else if let Ok(o) = opened_rx.try_recv() {
                    Input::Opened(o)
                } else {
                    break;
                };
                look |= self.apply(next, &mut batch);
            }
            self.finish(batch);
        }
        // Every batch was finished (saved) before the next input was taken.
        self.links.clear();
        tracing::debug!("sync service stopped");
    }

    /// Applies one input; gives whether the peers need another look (a stream ended, an
    /// open failed, a membership changed).
    fn apply(&mut self, input: Input, batch: &mut Batch) -> bool {
        match input {
            Input::Command(c) => self.command(c, batch),
            Input::Inbound(Inbound::Frame {
                peer, link, frame, ..
            }) => {
                if self.links.get(&peer).is_some_and(|l| l.id == link) {
                    // The stream works: should it end, the next opens start afresh.
                    self.seen.remove(&peer);
                    self.receive(peer, frame, batch);
                }
            }
            Input::Inbound(Inbound::Closed { peer, link, reason }) => {
                if self.links.get(&peer).is_some_and(|l| l.id == link) {
                    tracing::debug!(%peer, "sync stream ended: {reason}");
                    self.drop_link(peer);
                    return true;
                }
            }
            Input::Accepted(a) => {
                let Accepted { peer, stream, .. } = *a;
                // Peers that share no network of ours get nothing: the stream is closed
                // unread.
                if !self.shares_network(&peer) {
                    tracing::debug!(%peer, "sync stream refused: no network in common");
                    self.stats.refused_streams += 1;
                    return false;
                }
                self.attach(peer, stream, preferred(self.me, peer, false), batch);
            }
            Input::Opened(Opened::Ok(peer, stream)) => {
                self.opening.remove(&peer);
                self.attach(peer, *stream, preferred(self.me, peer, true), batch);
            }
            Input::Opened(Opened::Failed(peer, reason, took)) => {
                self.opening.remove(&peer);
                tracing::debug!(%peer, "cannot open a sync stream: {reason}");
                // A slow failure is the connection not answering (a network split, a
                // stalled link), not the peer refusing: it already waited its time, and
                // the next attempt must come soon after the link heals, so it does not
                // back off further.
                if took >= SLOW_FAILURE
                    && let Some(seen) = self.seen.get_mut(&peer)
                {
                    seen.forget_backoff();
                }
                return true;
            }
            Input::Membership(network) => {
                self.membership_changed(network.as_deref());
                return true;
            }
        }
        false
    }

    /// Whether `peer` is a current member of a network we are in (the networks of our
    /// documents and any other: a peer may bring a document of a network we share).
    fn shares_network(&self, peer: &PeerId) -> bool {
        self.networks.shares_a_network(peer)
    }

    /// Acts on a membership change at once: a peer that shares no network with us any
    /// more loses its stream; one still sharing some keeps it, and its documents of the
    /// network it left are forgotten on the link (their frames are refused both ways by
    /// [`Self::may_sync`]).
    fn membership_changed(&mut self, network: Option<&str>) {
        let linked: Vec<PeerId> = self.links.keys().copied().collect();
        for peer in linked {
            if !self.shares_network(&peer) {
                tracing::info!(%peer, "sync: no network in common any more; closing the stream");
                self.stats.closed_by_membership += 1;
                self.drop_link(peer);
                continue;
            }
            let gone: Vec<String> = self.links[&peer]
                .docs
                .iter()
                .filter(|doc| {
                    self.docs.get(*doc).is_some_and(|d| {
                        network.is_none_or(|n| d.network == n)
                            && !self.networks.is_member(&d.network, &peer)
                    })
                })
                .cloned()
                .collect();
            let peer_bytes = peer.to_bytes();
            for doc in gone {
                if let Some(link) = self.links.get_mut(&peer) {
                    link.docs.remove(&doc);
                }
                if let Some(d) = self.docs.get_mut(&doc) {
                    d.session.disconnected(&peer_bytes);
                }
            }
        }
    }

    /// The one access check, for every frame in and out: whether `peer` may sync `doc`,
    /// that is, whether we are in the document's network and the node's membership
    /// record names `peer` a current member of it.
    fn may_sync(&self, peer: &PeerId, doc: &str) -> bool {
        self.links.contains_key(peer)
            && self
                .docs
                .get(doc)
                .is_some_and(|d| self.may_sync_network(peer, &d.network))
    }

    fn may_sync_network(&self, peer: &PeerId, network: &str) -> bool {
        self.networks.is_in(network) && self.networks.is_member(network, peer)
    }

    fn command(&mut self, c: Command, batch: &mut Batch) {
        match c {
            Command::Read(op) => op(self),
            Command::Watch { doc, reply } => {
                let rx = match self.docs.get_mut(&doc) {
                    Some(d) => Ok(d
                        .watch
                        .get_or_insert_with(|| broadcast::channel(WATCH_QUEUE).0)
                        .subscribe()),
                    None => Err(SyncError::UnknownDocument(doc)),
                };
                let _ = reply.send(rx);
            }
            Command::Write {
                doc,
                create,
                must_be_new,
                op,
                reply,
            } => match self.write(&doc, create, must_be_new, op) {
                Ok(change) => {
                    let Some(d) = self.docs.get(&doc) else {
                        return;
                    };
                    let written = Written {
                        doc: doc.clone(),
                        change: change.map(|c| c.to_string()),
                        heads: hex_heads(&d.session.document().heads()),
                    };
                    batch.dirty.insert(doc.clone());
                    if change.is_some() {
                        batch.events.push((
                            doc.clone(),
                            WatchEvent::Changed {
                                doc: doc.clone(),
                                source: "local".into(),
                                changes: 1,
                                heads: written.heads.clone(),
                            },
                        ));
                    }
                    for peer in self.links.keys() {
                        batch.sends.insert((doc.clone(), *peer));
                    }
                    batch.replies.push((
                        doc,
                        Box::new(move |saved| {
                            let _ = reply.send(saved.map(|()| written));
                        }),
                    ));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
        }
    }

    fn info(&self, name: &str, d: &Doc) -> DocInfo {
        DocInfo {
            doc: name.to_string(),
            network: d.network.clone(),
            changes: d.session.document().change_count(),
            heads: hex_heads(&d.session.document().heads()),
        }
    }
}

//! The files service on a running node: sharing (outboards on disk, a table of shares,
//! provider records), serving groups over `/p2pnode/files/1` through the secure gate,
//! fetching from many providers at once with the [`Planner`](crate::Planner), and offers
//! pushed to a peer.
//!
//! Shape: one shared state ([`FilesHandle`]) behind the routes; every stream and every
//! transfer is its own task in one bounded [`JoinSet`](tokio::task::JoinSet) that
//! shutdown aborts (a transfer's verified groups are on disk with its resume state, so
//! an aborted one resumes). Files: `share` the shares and their table, `serve` the
//! provider side and offers, `fetch` transfers, `disk` what a transfer writes (on its
//! own thread), `dirs` the directories it writes in (walked without following links),
//! `accepted` accepted offers kept until done, `wire` the messages, `routes` the control
//! routes; `hostile` (feature `test-util`) a sender without the sender's checks, for
//! tests of the receiver's.
//!
//! Serving while fetching ([`Config::serve_while_fetching`]): a `get` registers its
//! content as a partial (`share`), the transfer's writes make each verified group
//! servable with its proof (`disk`), `serve` answers the groups it has and `NotYet` for
//! the rest, and the fetcher's planner keeps such a provider for other groups. Bounds:
//! the same streams per peer and in all as any share, 32 partials kept, one provider
//! lookup per transfer every `rediscover_every`.

mod accepted;
mod dirs;
mod disk;
mod fetch;
#[cfg(feature = "test-util")]
pub mod hostile;
mod partial;
mod routes;
mod serve;
mod share;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::{PeerId, StreamProtocol};
use p2pnode_node::control::ApiError;
use p2pnode_node::{Client, Context, NodeError, Protocol, ProtocolError, ProtocolHandler};
use redb::Database;
use tokio::sync::Semaphore;

use crate::ContentId;
use crate::api::{FilesEvent, OfferInfo, ShareInfo, TransferInfo, TransferStatus};
use partial::Partial;
use share::Share;

/// Shares held at most (each keeps its manifest in memory). Below the 1024 keys
/// Kademlia's record store provides at once, leaving room for chat's topics.
const MAX_SHARES: usize = 1000;
/// Transfers remembered at most; the oldest finished ones are forgotten first.
const MAX_TRANSFERS: usize = 256;
/// Transfers running at once at most.
const MAX_RUNNING: usize = 16;
/// Offers waiting in the inbox at most, in all and per peer.
const MAX_OFFERS: usize = 64;
const MAX_OFFERS_PER_PEER: usize = 4;
/// An offer not answered within this long expires (the sender is told nothing; its
/// content stays shared with the peer until unshared).
const OFFER_TTL_MS: u64 = 24 * 3600 * 1000;
/// Streams served at once, in all and per peer: each holds at most one group in memory,
/// so this bounds the bytes in flight per peer to 4 groups.
const MAX_SERVING: usize = 128;
const MAX_STREAMS_PER_PEER: usize = 4;
/// Groups one request may ask for: 16 MiB of whole groups, or 256 small files. The
/// provider reads and sends them in batches, so this bounds the request, not its memory.
const MAX_GROUPS_PER_REQUEST: usize = 256;
/// Opening a stream (lookup, dial, handshake) gives up after this long.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// A fetcher waits this long for the next frame of an answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// A served stream with no request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Settings of the files service, built by value: `Config::default()`.
#[derive(Debug, Clone)]
pub struct Config {
    /// How often shares are announced again in the DHT.
    pub reannounce_every: Duration,
    /// Whole (64 KiB) groups outstanding per provider in a transfer; a transfer of small
    /// files keeps as many bytes outstanding, in more groups.
    pub window: usize,
    /// How long a group is outstanding, with nothing else left to ask, before another
    /// provider is asked for it too (the endgame).
    pub endgame_after: Duration,
    /// Serve what a `get` has verified while it is still fetching, announce this node as
    /// a provider once it has a group, and look for providers again every
    /// [`rediscover_every`](Self::rediscover_every) (the others fetching the same content
    /// become providers as they go). Each `get` then starts at a random group, so that
    /// its fetchers hold different groups early.
    pub serve_while_fetching: bool,
    /// How often a `get` serving while it fetches looks for providers again.
    pub rediscover_every: Duration,
    /// Test hook: serve every group with one byte flipped (a lying provider).
    #[cfg(test)]
    pub(crate) corrupt: bool,
    /// Test hook: a transfer stops (as if killed) once this many groups were written.
    #[cfg(test)]
    pub(crate) stop_after_groups: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            reannounce_every: Duration::from_secs(600),
            // 2 MiB in flight per provider: 1 Gbit/s at a 16 ms round trip.
            window: 32,
            endgame_after: Duration::from_millis(500),
            serve_while_fetching: true,
            rediscover_every: Duration::from_secs(5),
            #[cfg(test)]
            corrupt: false,
            #[cfg(test)]
            stop_after_groups: None,
        }
    }
}

/// Why a files operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The input was not valid (a relative path, a malformed content id).
    #[error("{0}")]
    Invalid(String),
    /// No such share, transfer or offer.
    #[error("{0}")]
    NotFound(String),
    /// No provider could be found or reached.
    #[error("{0}")]
    NoProvider(String),
    /// The peer refused (an offer without the files permission, a full inbox).
    #[error("{0}")]
    Refused(String),
    /// A bound was reached.
    #[error("{0}")]
    Busy(String),
    /// Reading or writing files failed.
    #[error("{0}")]
    Io(String),
    /// The files table failed.
    #[error("files database: {0}")]
    Db(String),
    /// A node operation failed.
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl ApiError for FilesError {
    fn kind(&self) -> &str {
        match self {
            Self::Invalid(_) => "invalid_input",
            Self::NotFound(_) => "not_found",
            Self::NoProvider(_) => "no_provider",
            Self::Refused(_) => "refused",
            Self::Busy(_) => "busy",
            Self::Io(_) => "io",
            Self::Db(_) => "database",
            Self::Node(e) => e.kind(),
        }
    }

    fn status(&self) -> u16 {
        match self {
            Self::Invalid(_) => 400,
            Self::NotFound(_) => 404,
            Self::Refused(_) => 403,
            Self::Busy(_) => 503,
            Self::NoProvider(_) => 502,
            Self::Io(_) | Self::Db(_) => 500,
            Self::Node(e) => e.status(),
        }
    }
}

fn db_err(e: impl std::fmt::Display) -> FilesError {
    FilesError::Db(e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn parse_content(s: &str) -> Result<ContentId, FilesError> {
    s.trim()
        .parse()
        .map_err(|e| FilesError::Invalid(format!("invalid content id {s:?}: {e}")))
}

/// An offer waiting in the inbox.
#[derive(Debug, Clone)]
struct Offer {
    peer: PeerId,
    content: ContentId,
    info: OfferInfo,
}

/// Events buffered for slow subscribers (they get a `lagged` event past it). Made on the
/// first subscription, so a node nobody watches holds no buffer.
const EVENT_BUFFER: usize = 1024;

#[derive(Clone, Default)]
struct Events(Arc<std::sync::OnceLock<tokio::sync::broadcast::Sender<FilesEvent>>>);

impl Events {
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<FilesEvent> {
        self.0
            .get_or_init(|| tokio::sync::broadcast::channel(EVENT_BUFFER).0)
            .subscribe()
    }

    fn send(&self, event: FilesEvent) {
        // No subscriber is fine: events are for whoever watches.
        if let Some(tx) = self.0.get() {
            let _ = tx.send(event);
        }
    }
}

/// Forgets offers older than [`OFFER_TTL_MS`].
fn expire_offers(offers: &mut BTreeMap<u64, Offer>, now: u64) {
    offers.retain(|_, o| now.saturating_sub(o.info.received_at) < OFFER_TTL_MS);
}

/// The state every route, stream and transfer shares.
pub(crate) struct Inner {
    client: Client,
    db: Arc<Database>,
    /// `<data dir>/files/outboards`: one outboard per file root.
    outboards: PathBuf,
    config: Config,
    shares: Mutex<HashMap<ContentId, Arc<Share>>>,
    /// Content being (or lately) fetched by a `get`, served while it is; oldest first.
    partials: Mutex<VecDeque<(ContentId, Arc<Partial>)>>,
    transfers: Mutex<BTreeMap<u64, TransferInfo>>,
    offers: Mutex<BTreeMap<u64, Offer>>,
    streams_per_peer: Mutex<HashMap<PeerId, usize>>,
    serving: Arc<Semaphore>,
    running: Arc<Semaphore>,
    /// A permit per transfer's writer thread, held until its last checkpoint: shutdown
    /// waits for them all, so no writer outlives the service.
    writers: Arc<Semaphore>,
    next_id: AtomicU64,
    served_groups: AtomicU64,
    events: Events,
    /// Groups this node asked providers for (tests count what a resume fetches).
    #[cfg(test)]
    requested_groups: AtomicU64,
    /// Requests answered "not yet" (serve-while-fetching), for tests.
    #[cfg(test)]
    not_yet_sent: AtomicU64,
    tasks: Mutex<tokio::task::JoinSet<()>>,
}

impl Inner {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `task` in the service's set (in the current span), reaping finished ones.
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Ok(mut tasks) = self.tasks.lock() {
            while tasks.try_join_next().is_some() {}
            tasks.spawn(tracing::Instrument::in_current_span(task));
        }
    }

    /// Changes a transfer's record and publishes it as an event.
    fn update_transfer(&self, id: u64, f: impl FnOnce(&mut TransferInfo)) {
        let updated = match self.transfers.lock() {
            Ok(mut t) => t.get_mut(&id).map(|info| {
                f(info);
                info.clone()
            }),
            Err(_) => None,
        };
        if let Some(info) = updated {
            self.events.send(FilesEvent::Transfer(info));
        }
    }

    /// Records a new transfer, forgetting the oldest finished ones past the bound.
    fn add_transfer(&self, info: TransferInfo) -> Result<(), FilesError> {
        let mut t = self
            .transfers
            .lock()
            .map_err(|_| FilesError::Busy("transfers lock poisoned".into()))?;
        while t.len() >= MAX_TRANSFERS {
            let Some(old) = t
                .iter()
                .find(|(_, i)| i.status != TransferStatus::Running)
                .map(|(id, _)| *id)
            else {
                return Err(FilesError::Busy(format!(
                    "{MAX_TRANSFERS} transfers are running"
                )));
            };
            t.remove(&old);
        }
        t.insert(info.id, info.clone());
        self.events.send(FilesEvent::Transfer(info));
        Ok(())
    }
}

/// The handle to the running service: what the routes and tests call.
#[derive(Clone)]
pub struct FilesHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FilesHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FilesHandle")
    }
}

impl FilesHandle {
    /// Shares `paths` (absolute): hashes them, keeps their outboards, records the share
    /// and announces its content id.
    pub async fn share(&self, paths: Vec<PathBuf>) -> Result<ShareInfo, FilesError> {
        share::share(&self.inner, paths, None).await
    }

    /// Stops sharing a content.
    pub async fn unshare(&self, content_id: &str) -> Result<ShareInfo, FilesError> {
        share::unshare(&self.inner, parse_content(content_id)?).await
    }

    /// Every share.
    pub fn shares(&self) -> Vec<ShareInfo> {
        share::list(&self.inner)
    }

    /// Starts fetching `content_id` into `to` from its providers and the peers in `from`;
    /// returns the transfer at its start.
    pub async fn get(
        &self,
        content_id: &str,
        to: PathBuf,
        from: Vec<PeerId>,
    ) -> Result<TransferInfo, FilesError> {
        fetch::start(
            &self.inner,
            parse_content(content_id)?,
            to,
            from,
            fetch::Origin::Get,
        )
    }

    /// Every transfer remembered, oldest first.
    pub fn transfers(&self) -> Vec<TransferInfo> {
        self.inner
            .transfers
            .lock()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One transfer.
    pub fn transfer(&self, id: u64) -> Result<TransferInfo, FilesError> {
        self.inner
            .transfers
            .lock()
            .ok()
            .and_then(|t| t.get(&id).cloned())
            .ok_or_else(|| FilesError::NotFound(format!("no transfer {id}")))
    }

    /// The transfer `id` once it has ended, or as it is after `wait` if it still runs:
    /// a client following a transfer learns of its end at once instead of at its next
    /// poll, and gets progress at least every `wait`.
    pub async fn transfer_wait(&self, id: u64, wait: Duration) -> Result<TransferInfo, FilesError> {
        // Subscribed before looking, so an end between the two is not missed.
        let mut rx = self.subscribe();
        let now = self.transfer(id)?;
        if now.status != TransferStatus::Running || wait.is_zero() {
            return Ok(now);
        }
        let ended = async {
            loop {
                match rx.recv().await {
                    Ok(FilesEvent::Transfer(t))
                        if t.id == id && t.status != TransferStatus::Running =>
                    {
                        return;
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if self
                            .transfer(id)
                            .is_ok_and(|t| t.status != TransferStatus::Running)
                        {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        };
        let _ = tokio::time::timeout(wait, ended).await;
        self.transfer(id)
    }

    /// Offers `paths` to `peer`: they are hashed and shared with that peer only, and the
    /// offer goes to its inbox. Fails if the peer refuses it.
    pub async fn send(
        &self,
        peer: PeerId,
        paths: Vec<PathBuf>,
    ) -> Result<crate::api::SendInfo, FilesError> {
        serve::send_offer(&self.inner, peer, paths).await
    }

    /// Offers waiting for an answer.
    pub fn inbox(&self) -> Vec<OfferInfo> {
        self.inner
            .offers
            .lock()
            .map(|mut o| {
                expire_offers(&mut o, now_ms());
                o.values().map(|o| o.info.clone()).collect()
            })
            .unwrap_or_default()
    }

    /// Accepts an offer: fetches it into `to` from the offering peer only. The accepted
    /// offer is remembered until its transfer is done, so the service resumes it after a
    /// restart or when the peer comes back.
    pub async fn accept(&self, offer: u64, to: PathBuf) -> Result<TransferInfo, FilesError> {
        if !to.is_absolute() {
            return Err(FilesError::Invalid(format!(
                "{} is not an absolute path",
                to.display()
            )));
        }
        let o = self.take_offer(offer)?;
        accepted::remember(&self.inner, o.content, &to, o.peer).await?;
        fetch::start(
            &self.inner,
            o.content,
            to,
            vec![o.peer],
            fetch::Origin::Offer,
        )
    }

    /// Rejects an offer (it is forgotten).
    pub fn reject(&self, offer: u64) -> Result<OfferInfo, FilesError> {
        Ok(self.take_offer(offer)?.info)
    }

    fn take_offer(&self, offer: u64) -> Result<Offer, FilesError> {
        self.inner
            .offers
            .lock()
            .ok()
            .and_then(|mut o| {
                expire_offers(&mut o, now_ms());
                o.remove(&offer)
            })
            .ok_or_else(|| FilesError::NotFound(format!("no offer {offer} (expired or answered)")))
    }

    /// Events from now on: offers and transfers.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<FilesEvent> {
        self.inner.events.subscribe()
    }

    /// Groups this node served to others (for tests and status).
    pub fn served_groups(&self) -> u64 {
        self.inner.served_groups.load(Ordering::Relaxed)
    }
}

/// The files protocol, to register on a node: `Node::builder(..).protocol(Files::default())`.
#[derive(Debug, Clone, Default)]
pub struct Files {
    config: Config,
}

impl Files {
    /// The protocol with `config`.
    pub fn new(config: Config) -> Self {
        Self { config }
    }
}

impl Protocol for Files {
    type Handler = FilesService;

    fn name(&self) -> &'static str {
        crate::PROTOCOL
    }

    fn start(self, ctx: Context) -> Result<FilesService, ProtocolError> {
        let err = |e: FilesError| ProtocolError::new(crate::PROTOCOL, e);
        let outboards = ctx.data_dir().join("files").join("outboards");
        std::fs::create_dir_all(&outboards)
            .map_err(|e| err(FilesError::Io(format!("{}: {e}", outboards.display()))))?;
        let shares = share::load(ctx.database()).map_err(err)?;
        // Partial outboards of a previous run prove nothing known to be on disk now.
        let partial = partial::partial_root(&outboards);
        let _ = std::fs::remove_dir_all(&partial);
        let listener = ctx
            .listen(StreamProtocol::new(crate::STREAM_PROTOCOL))
            .map_err(|e| err(e.into()))?;
        let inner = Arc::new(Inner {
            client: ctx.client().clone(),
            db: ctx.database().clone(),
            outboards,
            config: self.config,
            shares: Mutex::new(shares),
            partials: Mutex::new(VecDeque::new()),
            transfers: Mutex::new(BTreeMap::new()),
            offers: Mutex::new(BTreeMap::new()),
            streams_per_peer: Mutex::new(HashMap::new()),
            serving: Arc::new(Semaphore::new(MAX_SERVING)),
            running: Arc::new(Semaphore::new(MAX_RUNNING)),
            writers: Arc::new(Semaphore::new(MAX_RUNNING)),
            next_id: AtomicU64::new(1),
            served_groups: AtomicU64::new(0),
            events: Events::default(),
            #[cfg(test)]
            requested_groups: AtomicU64::new(0),
            #[cfg(test)]
            not_yet_sent: AtomicU64::new(0),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
        });
        let span = ctx.span().clone();
        let _entered = span.enter();
        inner.spawn(serve::accept_loop(Arc::downgrade(&inner), listener));
        inner.spawn(share::announce_loop(Arc::downgrade(&inner)));
        inner.spawn(accepted::resume_loop(Arc::downgrade(&inner)));
        Ok(FilesService {
            handle: FilesHandle { inner },
        })
    }
}

/// The running files protocol, as the node keeps it.
pub struct FilesService {
    handle: FilesHandle,
}

impl std::fmt::Debug for FilesService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FilesService")
    }
}

impl FilesService {
    /// The handle for sharing, fetching and offers.
    pub fn handle(&self) -> &FilesHandle {
        &self.handle
    }
}

impl ProtocolHandler for FilesService {
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
        Box::pin(async move {
            // An aborted transfer's writer checkpoints what it was given (below), so it
            // leaves a resumable state; served streams just close.
            let tasks = match self.handle.inner.tasks.lock() {
                Ok(mut t) => Some(std::mem::take(&mut *t)),
                Err(_) => None,
            };
            if let Some(mut tasks) = tasks {
                tasks.shutdown().await;
            }
            // Its writers' last checkpoints.
            let _ = self
                .handle
                .inner
                .writers
                .acquire_many(MAX_RUNNING as u32)
                .await;
        })
    }
}

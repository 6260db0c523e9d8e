//! The chat service: 1:1 conversations over secure streams and rooms over gossipsub,
//! driving the sans-IO state machines of `p2pnode_chat` with real streams, a clock and
//! the node's database.
//!
//! One task (the owner) holds every [`Conversation`] and [`Room`]. Stream readers and
//! writers are separate tasks talking to it over bounded channels, so a slow peer never
//! stalls the others. The owner works in batches: it takes every input that is ready,
//! applies all of them to the state machines, commits the resulting snapshots, history
//! rows and requests in **one** redb transaction, and only then writes frames, answers
//! callers and publishes events. A node killed at any moment therefore neither loses an
//! acknowledged message nor shows one twice, and many messages share one fsync.
//!
//! Streams: at most one live stream per peer. When both sides open one at the same
//! moment, the stream opened by the smaller peer id wins, so both ends settle on the same
//! one; a stream that replaces an older one otherwise always wins, because its opener
//! only opens when it believes the old one is gone.
//!
//! Files: [`Chat`] and [`ChatService`] here are the protocol contract with the node;
//! `owner` is the batch loop, `links` the 1:1 inputs and streams, `commands` the handle's
//! requests, `rooms` rooms and timers, `room_store` the rooms' replay gates and their
//! tables, `strangers` the quota of message requests, `io` the stream tasks, `db` the
//! tables, `handle` the [`ChatHandle`], `routes` the control routes.

mod commands;
mod db;
mod handle;
mod io;
mod links;
mod owner;
mod room_store;
mod rooms;
mod routes;
mod strangers;
#[cfg(test)]
mod tests;

// What the submodules share; each brings it in with `use super::*`.
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use p2pnode_node::event_loop::TopicMessage;
use p2pnode_node::secure::{Accepted, SecureListener};
use p2pnode_node::trust::TrustDb;
use p2pnode_node::{
    Client, Context, NodeError, OwnerTask, Protocol, ProtocolError, ProtocolHandler,
};
use p2pnode_secure::stream::{LENGTH_PREFIX_LEN, read_length_prefixed};
use p2pnode_secure::{Session, SigningKey};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::api::{ChatEvent, ChatMessage, ChatPeerState, ChatRequest, RoomInfo, RoomMessageInfo};
use crate::id::hex;
use crate::{
    Admission, Config as ConvConfig, Conversation, Frame, Invite, MAX_BODY_LEN, Output, Room,
    RoomConfig, RoomEvent, RoomOutput, Snapshot, admit,
};
use db::{Batch, ChatDb, Row, cbor, message_of};
pub use handle::ChatHandle;
use io::{read_frames, write_frames};
use rooms::{not_joined, room_event, room_info};
use strangers::Usage;

/// Conversation state: peer id -> [`Snapshot`] (CBOR).
const CONVERSATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("chat_conversations");
/// History: (peer id, local index) -> [`Row`] (CBOR).
const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("chat_history");
/// Pending message requests: peer id -> unix ms of the first message.
const REQUESTS: TableDefinition<&str, u64> = TableDefinition::new("chat_requests");
/// Joined rooms: room id (hex) -> invite code.
const ROOMS: TableDefinition<&str, &str> = TableDefinition::new("chat_rooms");

/// Commands queued for the owner task.
const COMMAND_QUEUE: usize = 256;
/// Frames read from all streams, waiting for the owner.
const INBOUND_QUEUE: usize = 4096;
/// Frames waiting for one stream's writer. The conversation window (1024 messages) plus
/// receipts and hellos fit; a writer this far behind is a stalled stream and is dropped.
const WRITER_QUEUE: usize = 4096;
/// Chat events buffered for slow subscribers (they get a `lagged` event past it, and
/// the history has everything). tokio allocates every slot up front (~1.2 MiB), so the
/// channel is only made once somebody subscribes (`Events`).
pub const EVENT_QUEUE: usize = 8192;

/// The chat event channel, made on the first subscription: a node nobody watches (a
/// headless daemon, each of a simulation's hundreds) does not hold its buffer.
#[derive(Clone, Default)]
struct Events(Arc<std::sync::OnceLock<broadcast::Sender<ChatEvent>>>);

impl Events {
    fn subscribe(&self) -> broadcast::Receiver<ChatEvent> {
        self.0
            .get_or_init(|| broadcast::channel(EVENT_QUEUE).0)
            .subscribe()
    }

    fn send(&self, event: ChatEvent) {
        // No subscriber is fine: events are for whoever watches.
        if let Some(tx) = self.0.get() {
            let _ = tx.send(event);
        }
    }
}
/// Room messages waiting for the owner.
const ROOM_QUEUE: usize = 1024;
/// Most inputs handled in one batch (one database transaction).
const MAX_BATCH: usize = 512;
/// How often timers run and offline peers with queued messages are tried again.
const TICK: Duration = Duration::from_millis(500);
/// Least time between two attempts to open a stream to a peer.
const RETRY_EVERY: Duration = Duration::from_secs(3);
/// Opening a stream (lookup, dial, handshake) gives up after this long.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// A stream younger than this is kept when the peer's simultaneous open loses the tie.
const TIE_WINDOW: Duration = Duration::from_secs(5);
/// Most history rows one request returns.
pub const MAX_HISTORY: usize = 100_000;
/// Most rooms joined at once.
const MAX_ROOMS: usize = 64;
/// Room presence: often enough that members show up quickly, rarely enough to be cheap.
const PRESENCE_EVERY_MS: u64 = 3_000;
/// A member silent for this long (more than three presence intervals) has left.
const MEMBER_TIMEOUT_MS: u64 = 12_000;

/// Why a chat operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The input was not valid (oversized body, malformed invite, unknown room).
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error("chat database: {0}")]
    Db(#[from] DbError),
    /// A node operation failed.
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl ChatError {
    /// The stable kind for the control socket.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_input",
            Self::Db(_) => "database",
            Self::Node(e) => e.kind(),
        }
    }
}

/// Why the chat tables could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// redb failed.
    #[error(transparent)]
    Store(#[from] redb::Error),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The blocking database task did not finish (the runtime is stopping).
    #[error("database task ended: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The batch this request was part of could not be committed (one failure answers
    /// every caller of the batch).
    #[error(transparent)]
    Batch(Arc<DbError>),
}

/// A redb error, as a database error.
fn store_err(e: impl Into<redb::Error>) -> DbError {
    DbError::Store(e.into())
}

/// A redb error, as a chat error.
fn db_err(e: impl Into<redb::Error>) -> ChatError {
    ChatError::Db(store_err(e))
}

/// A record that does not decode.
fn corrupt(e: impl std::fmt::Display) -> ChatError {
    ChatError::Db(DbError::Corrupt(e.to_string()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

enum Command {
    Send {
        peer: PeerId,
        body: String,
        reply: oneshot::Sender<Result<ChatMessage, ChatError>>,
    },
    State {
        peer: PeerId,
        reply: oneshot::Sender<ChatPeerState>,
    },
    Admission {
        peer: PeerId,
        admission: Admission,
        reply: oneshot::Sender<()>,
    },
    RoomJoin {
        code: String,
        reply: oneshot::Sender<Result<RoomInfo, ChatError>>,
    },
    RoomSend {
        room: String,
        body: String,
        reply: oneshot::Sender<Result<RoomMessageInfo, ChatError>>,
    },
    RoomInfo {
        room: String,
        reply: oneshot::Sender<Result<RoomInfo, ChatError>>,
    },
    RoomLeave {
        room: String,
        reply: oneshot::Sender<Result<(), ChatError>>,
    },
}

enum Inbound {
    Frame {
        peer: PeerId,
        link: u64,
        frame: Frame,
    },
    Closed {
        peer: PeerId,
        link: u64,
        reason: String,
    },
}

enum Opened {
    // Boxed: a secure stream is large beside the failure variant.
    Ok(PeerId, Box<p2pnode_secure::SecureStream<libp2p::Stream>>),
    Failed(PeerId, String),
}

/// One live stream to a peer.
struct Link {
    id: u64,
    /// Whether the peer with the smaller id opened it (the tie-break winner).
    preferred: bool,
    opened: Instant,
    writer: mpsc::Sender<Frame>,
    reader: tokio::task::AbortHandle,
}

impl Drop for Link {
    fn drop(&mut self) {
        // The writer ends (and closes the stream) when its sender is dropped.
        self.reader.abort();
    }
}

struct Peer {
    conv: Conversation,
    admission: Admission,
    link: Option<Link>,
    opening: bool,
    last_attempt: Option<Instant>,
    next_index: u64,
    /// `reserved_up_to` of the last committed snapshot: message frames numbered up to
    /// here may go out before their batch commits (see `p2pnode_chat::conversation`).
    durable_reserved: u64,
    /// What its stored messages take while it is a requester (see `strangers`).
    request_usage: Usage,
}

struct JoinedRoom {
    room: Room,
    code: String,
    forwarder: tokio::task::AbortHandle,
}

impl Drop for JoinedRoom {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

/// The owner task's state: every conversation and joined room.
struct Service {
    client: Client,
    db: ChatDb,
    me: PeerId,
    signer: SigningKey,
    peers: HashMap<PeerId, Peer>,
    /// Pending requesters, oldest first, at most `strangers::MAX_REQUESTERS`.
    requesters: VecDeque<PeerId>,
    /// The node's trust store, read again when a stream is attached.
    trust: TrustDb,
    rooms: HashMap<String, JoinedRoom>,
    events: Events,
    inbound_tx: mpsc::Sender<Inbound>,
    opened_tx: mpsc::Sender<Opened>,
    room_tx: mpsc::Sender<(String, TopicMessage)>,
    next_link: u64,
}

/// What a batch does once its transaction committed.
/// Answers a caller once the batch's commit succeeded or failed.
type Reply = Box<dyn FnOnce(Committed) + Send>;

/// How a batch's commit ended, shared by everything the batch answers.
type Committed = Result<(), Arc<DbError>>;

#[derive(Default)]
struct After {
    frames: Vec<(PeerId, Frame)>,
    /// Events safe to publish before the commit (an incoming message: if the commit is
    /// lost, so is our receipt, and the peer sends the message again).
    early_events: Vec<ChatEvent>,
    events: Vec<ChatEvent>,
    replies: Vec<Reply>,
    publish: Vec<(String, Vec<u8>)>,
}

/// A batch whose transaction is being committed, and what follows once it is.
struct Committing {
    task: tokio::task::JoinHandle<Result<(), DbError>>,
    after: After,
    /// Each changed conversation's `reserved_up_to` in this batch.
    reserved: Vec<(PeerId, u64)>,
}

async fn wait_commit_of(c: &mut Committing) -> Committed {
    match (&mut c.task).await {
        Ok(r) => r.map_err(Arc::new),
        Err(e) => Err(Arc::new(DbError::Task(e))),
    }
}

/// Waits for the commit in flight; never finishes when there is none.
async fn wait_commit(c: &mut Option<Committing>) -> Committed {
    match c {
        Some(c) => wait_commit_of(c).await,
        None => std::future::pending().await,
    }
}

enum Input {
    Command(Command),
    Inbound(Inbound),
    Opened(Opened),
    // Boxed: an accepted secure stream dwarfs the other inputs.
    Accepted(Box<Accepted>),
    Room(String, TopicMessage),
    Tick,
}

impl p2pnode_node::control::ApiError for ChatError {
    fn kind(&self) -> &str {
        ChatError::kind(self)
    }

    fn status(&self) -> u16 {
        match self {
            Self::Invalid(_) => 400,
            Self::Db(_) => 500,
            Self::Node(e) => p2pnode_node::control::ApiError::status(e),
        }
    }
}

/// Spawns a task of the service in the current span (the node's).
fn spawn<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(tracing::Instrument::in_current_span(task))
}

/// The peer id behind a room member's Ed25519 key, as reported.
fn member_id(key: &p2pnode_secure::PeerKey) -> String {
    p2pnode_node::peer::peer_id_of_key(key)
        .map_or_else(|| "invalid-key".to_string(), |p| p.to_string())
}

/// The chat protocol, to register on a node: `Node::builder(..).protocol(Chat)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Chat;

impl Protocol for Chat {
    type Handler = ChatService;

    fn name(&self) -> &'static str {
        crate::PROTOCOL
    }

    fn start(self, ctx: Context) -> Result<ChatService, ProtocolError> {
        let err = |e: ChatError| ProtocolError::new(crate::PROTOCOL, e);
        let db = ChatDb::open(ctx.database().clone()).map_err(err)?;
        let trust =
            TrustDb::open(ctx.database().clone()).map_err(|e| err(ChatError::Node(e.into())))?;
        let listener = ctx
            .listen(StreamProtocol::new(crate::STREAM_PROTOCOL))
            .map_err(|e| err(e.into()))?;
        let client = ctx.client().clone();
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let events = Events::default();
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let (opened_tx, opened_rx) = mpsc::channel(64);
        let (room_tx, room_rx) = mpsc::channel(ROOM_QUEUE);
        let (stop_tx, stop_rx) = oneshot::channel();
        let handle = ChatHandle {
            commands: cmd_tx,
            events: events.clone(),
            db: db.clone(),
            client: client.clone(),
        };
        let me = client.peer_id();
        let service = Service {
            client,
            db,
            me,
            signer: ctx.signing_key().clone(),
            peers: HashMap::new(),
            requesters: VecDeque::new(),
            trust,
            rooms: HashMap::new(),
            events,
            inbound_tx,
            opened_tx,
            room_tx,
            next_link: 1,
        };
        let task = spawn(service.run(listener, cmd_rx, inbound_rx, opened_rx, room_rx, stop_rx));
        Ok(ChatService {
            handle,
            owner: OwnerTask::new(stop_tx, task),
        })
    }
}

/// The running chat protocol, as the node keeps it: [`ChatService::handle`] for callers.
pub struct ChatService {
    handle: ChatHandle,
    owner: OwnerTask,
}

impl std::fmt::Debug for ChatService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatService")
    }
}

impl ChatService {
    /// The handle for sending, reading history, rooms and events.
    pub fn handle(&self) -> &ChatHandle {
        &self.handle
    }
}

impl ProtocolHandler for ChatService {
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
        Box::pin(self.owner.stop("chat"))
    }
}

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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use p2pnode_chat::{
    Admission, Config as ConvConfig, Conversation, Frame, Invite, MAX_BODY_LEN, Output, Room,
    RoomConfig, RoomEvent, RoomOutput, Snapshot, admit,
};
use p2pnode_secure::stream::{LENGTH_PREFIX_LEN, read_length_prefixed};
use p2pnode_secure::{PeerKey, Session, SigningKey};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::api::{ChatEvent, ChatMessage, ChatPeerState, ChatRequest, RoomInfo, RoomMessageInfo};
use crate::client::Client;
use crate::error::NodeError;

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
/// channel is only made once somebody subscribes ([`Events`]).
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
    Db(String),
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

fn db_err(e: impl std::fmt::Display) -> ChatError {
    ChatError::Db(e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing plain structs into a Vec cannot fail.
    let _ = ciborium::into_writer(value, &mut out);
    out
}

/// A history row as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    id: String,
    seq: u64,
    outgoing: bool,
    sent_at: u64,
    body: String,
    request: bool,
}

/// The chat service's tables.
#[derive(Clone)]
struct ChatDb {
    db: Arc<Database>,
}

/// Everything one batch writes, in one transaction.
#[derive(Default)]
struct Batch {
    snapshots: Vec<(String, Vec<u8>)>,
    rows: Vec<(String, u64, Vec<u8>)>,
    requests_add: Vec<(String, u64)>,
    requests_remove: Vec<String>,
    rooms_add: Vec<(String, String)>,
    rooms_remove: Vec<String>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.snapshots.is_empty()
            && self.rows.is_empty()
            && self.requests_add.is_empty()
            && self.requests_remove.is_empty()
            && self.rooms_add.is_empty()
            && self.rooms_remove.is_empty()
    }
}

impl ChatDb {
    fn open(db: Arc<Database>) -> Result<Self, ChatError> {
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(CONVERSATIONS).map_err(db_err)?;
        txn.open_table(HISTORY).map_err(db_err)?;
        txn.open_table(REQUESTS).map_err(db_err)?;
        txn.open_table(ROOMS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Self { db })
    }

    fn commit(&self, batch: &Batch) -> Result<(), ChatError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut convs = txn.open_table(CONVERSATIONS).map_err(db_err)?;
            for (peer, snap) in &batch.snapshots {
                convs
                    .insert(peer.as_str(), snap.as_slice())
                    .map_err(db_err)?;
            }
            let mut history = txn.open_table(HISTORY).map_err(db_err)?;
            for (peer, index, row) in &batch.rows {
                history
                    .insert((peer.as_str(), *index), row.as_slice())
                    .map_err(db_err)?;
            }
            let mut requests = txn.open_table(REQUESTS).map_err(db_err)?;
            for (peer, at) in &batch.requests_add {
                if requests.get(peer.as_str()).map_err(db_err)?.is_none() {
                    requests.insert(peer.as_str(), *at).map_err(db_err)?;
                }
            }
            for peer in &batch.requests_remove {
                requests.remove(peer.as_str()).map_err(db_err)?;
            }
            let mut rooms = txn.open_table(ROOMS).map_err(db_err)?;
            for (id, code) in &batch.rooms_add {
                rooms.insert(id.as_str(), code.as_str()).map_err(db_err)?;
            }
            for id in &batch.rooms_remove {
                rooms.remove(id.as_str()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Every stored conversation with the next free history index of each.
    fn load(&self) -> Result<Vec<(PeerId, Snapshot, u64)>, ChatError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let convs = txn.open_table(CONVERSATIONS).map_err(db_err)?;
        let history = txn.open_table(HISTORY).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in convs.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let Ok(peer) = k.value().parse::<PeerId>() else {
                tracing::warn!(
                    key = k.value(),
                    "chat: skipping a conversation with a bad key"
                );
                continue;
            };
            let snap = match Snapshot::decode(v.value()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, "chat: unreadable conversation state: {e}");
                    continue;
                }
            };
            let key = k.value().to_string();
            let next = history
                .range((key.as_str(), 0)..=(key.as_str(), u64::MAX))
                .map_err(db_err)?
                .next_back()
                .transpose()
                .map_err(db_err)?
                .map_or(0, |(k, _)| k.value().1 + 1);
            out.push((peer, snap, next));
        }
        Ok(out)
    }

    fn rooms(&self) -> Result<Vec<(String, String)>, ChatError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let rooms = txn.open_table(ROOMS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in rooms.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.push((k.value().to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    /// The last `limit` history rows with `peer`, oldest first.
    fn history(&self, peer: &PeerId, limit: usize) -> Result<Vec<ChatMessage>, ChatError> {
        let key = peer.to_string();
        let txn = self.db.begin_read().map_err(db_err)?;
        let convs = txn.open_table(CONVERSATIONS).map_err(db_err)?;
        // Our own numbering never restarts while this database lives, so an outgoing
        // message is delivered exactly when its seq is covered by the peer's receipts.
        let acked = match convs.get(key.as_str()).map_err(db_err)? {
            Some(v) => {
                Snapshot::decode(v.value())
                    .map_err(db_err)?
                    .cursor
                    .acked_up_to
            }
            None => 0,
        };
        let history = txn.open_table(HISTORY).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in history
            .range((key.as_str(), 0)..=(key.as_str(), u64::MAX))
            .map_err(db_err)?
            .rev()
            .take(limit)
        {
            let (_, v) = entry.map_err(db_err)?;
            let row: Row = ciborium::from_reader(v.value()).map_err(db_err)?;
            out.push(message_of(&key, row, acked));
        }
        out.reverse();
        Ok(out)
    }

    fn requests(&self) -> Result<Vec<ChatRequest>, ChatError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let requests = txn.open_table(REQUESTS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in requests.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.push(ChatRequest {
                peer_id: k.value().to_string(),
                first_at: v.value(),
            });
        }
        Ok(out)
    }
}

fn message_of(peer: &str, row: Row, acked: u64) -> ChatMessage {
    ChatMessage {
        peer_id: peer.to_string(),
        id: row.id,
        seq: row.seq,
        outgoing: row.outgoing,
        sent_at: row.sent_at,
        body: row.body,
        delivered: row.outgoing && row.seq <= acked,
        request: row.request,
    }
}

/// The peer id behind a room member's Ed25519 key.
fn peer_of_key(key: &PeerKey) -> String {
    libp2p::identity::ed25519::PublicKey::try_from_bytes(key)
        .map(|pk| {
            libp2p::identity::PublicKey::from(pk)
                .to_peer_id()
                .to_string()
        })
        .unwrap_or_else(|_| "invalid-key".to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

/// A cloneable handle to the chat service.
#[derive(Clone)]
pub struct ChatHandle {
    commands: mpsc::Sender<Command>,
    events: Events,
    db: ChatDb,
    client: Client,
}

impl std::fmt::Debug for ChatHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatHandle")
    }
}

impl ChatHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ChatError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        Ok(rx.await.map_err(|_| NodeError::Stopped)?)
    }

    /// Queues a message to `peer`; returns it once it is stored (it is delivered when the
    /// peer is reachable, now or later).
    pub async fn send(&self, peer: PeerId, body: String) -> Result<ChatMessage, ChatError> {
        if body.len() > MAX_BODY_LEN {
            return Err(ChatError::Invalid(format!(
                "message is {} bytes; the limit is {MAX_BODY_LEN} bytes",
                body.len()
            )));
        }
        if peer == self.client.peer_id() {
            return Err(NodeError::SelfDial.into());
        }
        self.ask(|reply| Command::Send { peer, body, reply })
            .await?
    }

    /// The last `limit` messages with `peer`, oldest first.
    pub async fn history(&self, peer: PeerId, limit: usize) -> Result<Vec<ChatMessage>, ChatError> {
        let db = self.db.clone();
        let limit = limit.clamp(1, MAX_HISTORY);
        tokio::task::spawn_blocking(move || db.history(&peer, limit))
            .await
            .map_err(db_err)?
    }

    /// Pending message requests.
    pub async fn requests(&self) -> Result<Vec<ChatRequest>, ChatError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.requests())
            .await
            .map_err(db_err)?
    }

    /// Accepts `peer`'s request: chat is allowed from now on.
    pub async fn accept(&self, peer: PeerId) -> Result<ChatPeerState, ChatError> {
        self.client.allow(peer, &["chat".to_string()]).await?;
        self.ask(|reply| Command::Admission {
            peer,
            admission: Admission::Accept,
            reply,
        })
        .await?;
        self.state(peer).await
    }

    /// Blocks `peer`: revoked in the trust store, its stream closed, its messages dropped.
    pub async fn block(&self, peer: PeerId) -> Result<ChatPeerState, ChatError> {
        self.client.revoke(peer).await?;
        self.ask(|reply| Command::Admission {
            peer,
            admission: Admission::Block,
            reply,
        })
        .await?;
        self.state(peer).await
    }

    /// The conversation's state (online, path, verified, queued).
    pub async fn state(&self, peer: PeerId) -> Result<ChatPeerState, ChatError> {
        let mut state = self.ask(|reply| Command::State { peer, reply }).await?;
        if let Some(info) = self
            .client
            .peers()
            .await?
            .into_iter()
            .find(|p| p.peer_id == state.peer_id)
        {
            state.connected = true;
            state.path = Some(info.path);
        }
        state.verified = self
            .client
            .trust_list()
            .await?
            .iter()
            .any(|t| t.peer_id == state.peer_id && t.verified);
        Ok(state)
    }

    /// Tries to reach `peer` (DHT lookup and dial); succeeds when connected, or when the
    /// conversation already exists (messages then wait in the queue). An unknown peer
    /// that cannot be reached is an error.
    pub async fn open(&self, peer: PeerId) -> Result<ChatPeerState, ChatError> {
        if peer == self.client.peer_id() {
            return Err(NodeError::SelfDial.into());
        }
        let reached = tokio::time::timeout(OPEN_TIMEOUT, self.client.connect_peer(peer)).await;
        let state = self.state(peer).await?;
        match reached {
            Ok(Ok(_)) => Ok(state),
            Ok(Err(_)) | Err(_) if state.known => Ok(state),
            // Addresses were found but none answered: a real peer that is offline now.
            Ok(Err(NodeError::Unreachable { .. })) => Ok(state),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(NodeError::Timeout {
                what: format!("reaching {peer}"),
                secs: OPEN_TIMEOUT.as_secs(),
            }
            .into()),
        }
    }

    /// Chat events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ChatEvent> {
        self.events.subscribe()
    }

    /// Creates a room and joins it; the returned info carries the invite code.
    pub async fn room_create(
        &self,
        name: &str,
        ttl: Option<Duration>,
    ) -> Result<RoomInfo, ChatError> {
        let invite = Invite::new(
            name,
            ttl,
            now_ms(),
            Some(self.client.peer_id().to_bytes()),
            &mut rand::rngs::OsRng,
        )
        .map_err(|e| ChatError::Invalid(format!("cannot create the room: {e}")))?;
        self.room_join(&invite.encode()).await
    }

    /// Joins the room of an invite code.
    pub async fn room_join(&self, code: &str) -> Result<RoomInfo, ChatError> {
        let code = code.trim().to_string();
        Invite::decode(&code, now_ms())
            .map_err(|e| ChatError::Invalid(format!("invalid invite code: {e}")))?;
        self.ask(|reply| Command::RoomJoin { code, reply }).await?
    }

    /// Sends a text message to a joined room (by room id or invite code).
    pub async fn room_send(&self, room: &str, body: String) -> Result<RoomMessageInfo, ChatError> {
        if body.len() > MAX_BODY_LEN {
            return Err(ChatError::Invalid(format!(
                "message is {} bytes; the limit is {MAX_BODY_LEN} bytes",
                body.len()
            )));
        }
        let room = room.to_string();
        self.ask(|reply| Command::RoomSend { room, body, reply })
            .await?
    }

    /// A joined room's name, id and members.
    pub async fn room_info(&self, room: &str) -> Result<RoomInfo, ChatError> {
        let room = room.to_string();
        self.ask(|reply| Command::RoomInfo { room, reply }).await?
    }

    /// Leaves a room (says goodbye, unsubscribes, forgets it).
    pub async fn room_leave(&self, room: &str) -> Result<(), ChatError> {
        let room = room.to_string();
        self.ask(|reply| Command::RoomLeave { room, reply }).await?
    }
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

/// The room-signing key of the node's identity (rooms sign with the same Ed25519 key the
/// peer id carries, so members are shown by peer id).
pub fn signing_key_of(keypair: &libp2p::identity::Keypair) -> Option<SigningKey> {
    let secret = keypair.clone().try_into_ed25519().ok()?.secret();
    let bytes: [u8; 32] = secret.as_ref().try_into().ok()?;
    Some(SigningKey::from_bytes(&bytes))
}

/// Starts the chat service on a running node's client and database.
pub fn start(
    client: Client,
    db: Arc<Database>,
    signer: SigningKey,
) -> Result<(ChatHandle, tokio::task::JoinHandle<()>), ChatError> {
    let db = ChatDb::open(db)?;
    let listener = client.listen_secure(
        StreamProtocol::new(p2pnode_chat::STREAM_PROTOCOL),
        p2pnode_chat::PROTOCOL,
    )?;
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let events = Events::default();
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let (opened_tx, opened_rx) = mpsc::channel(64);
    let (room_tx, room_rx) = mpsc::channel(ROOM_QUEUE);
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
        signer,
        peers: HashMap::new(),
        rooms: HashMap::new(),
        events,
        inbound_tx,
        opened_tx,
        room_tx,
        next_link: 1,
    };
    let task = tokio::spawn(service.run(listener, cmd_rx, inbound_rx, opened_rx, room_rx));
    Ok((handle, task))
}

struct Service {
    client: Client,
    db: ChatDb,
    me: PeerId,
    signer: SigningKey,
    peers: HashMap<PeerId, Peer>,
    rooms: HashMap<String, JoinedRoom>,
    events: Events,
    inbound_tx: mpsc::Sender<Inbound>,
    opened_tx: mpsc::Sender<Opened>,
    room_tx: mpsc::Sender<(String, crate::event_loop::TopicMessage)>,
    next_link: u64,
}

/// What a batch does once its transaction committed.
/// Answers a caller once the batch's commit succeeded or failed.
type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;

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
    task: tokio::task::JoinHandle<Result<(), ChatError>>,
    after: After,
    /// Each changed conversation's `reserved_up_to` in this batch.
    reserved: Vec<(PeerId, u64)>,
}

async fn wait_commit_of(c: &mut Committing) -> Result<(), String> {
    match (&mut c.task).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Waits for the commit in flight; never finishes when there is none.
async fn wait_commit(c: &mut Option<Committing>) -> Result<(), String> {
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
    Accepted(Box<crate::secure::Accepted>),
    Room(String, crate::event_loop::TopicMessage),
    Tick,
}

impl Service {
    async fn run(
        mut self,
        mut listener: crate::secure::SecureListener,
        mut commands: mpsc::Receiver<Command>,
        mut inbound: mpsc::Receiver<Inbound>,
        mut opened: mpsc::Receiver<Opened>,
        mut room_rx: mpsc::Receiver<(String, crate::event_loop::TopicMessage)>,
    ) {
        self.restore().await;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The batch whose transaction is being committed. The next batch is handled (and
        // its early frames and events go out) meanwhile; its commit waits for this one.
        let mut committing: Option<Committing> = None;
        loop {
            let first = tokio::select! {
                done = wait_commit(&mut committing), if committing.is_some() => {
                    if let Some(c) = committing.take() {
                        self.settle(done, c).await;
                    }
                    continue;
                }
                c = commands.recv() => match c {
                    Some(c) => Input::Command(c),
                    None => break,
                },
                Some(i) = inbound.recv() => Input::Inbound(i),
                Some(o) = opened.recv() => Input::Opened(o),
                a = listener.next() => match a {
                    Some(a) => Input::Accepted(Box::new(a)),
                    None => break,
                },
                Some((room, m)) = room_rx.recv() => Input::Room(room, m),
                _ = tick.tick() => Input::Tick,
            };
            let mut inputs = vec![first];
            // Group commit: whatever else is ready shares this batch's transaction.
            while inputs.len() < MAX_BATCH {
                if let Ok(i) = inbound.try_recv() {
                    inputs.push(Input::Inbound(i));
                } else if let Ok(c) = commands.try_recv() {
                    inputs.push(Input::Command(c));
                } else if let Ok((room, m)) = room_rx.try_recv() {
                    inputs.push(Input::Room(room, m));
                } else {
                    break;
                }
            }
            let mut batch = Batch::default();
            let mut after = After::default();
            let mut dirty = HashSet::new();
            for input in inputs {
                self.handle(input, &mut batch, &mut after, &mut dirty).await;
            }
            let mut reserved = Vec::new();
            for peer in dirty {
                if let Some(p) = self.peers.get(&peer) {
                    batch
                        .snapshots
                        .push((peer.to_string(), p.conv.snapshot().encode()));
                    reserved.push((peer, p.conv.cursor().reserved_up_to));
                }
            }
            // Keep the disk off the latency path: messages within a committed
            // reservation, and incoming messages, go out before the batch commits.
            for (peer, frame) in self.take_early(&mut after.frames) {
                self.write(peer, frame);
            }
            for event in after.early_events.drain(..) {
                self.events.send(event);
            }
            // Batches settle in order: the one before this goes first.
            if let Some(mut c) = committing.take() {
                let done = wait_commit_of(&mut c).await;
                self.settle(done, c).await;
            }
            if batch.is_empty() {
                self.finish(Ok(()), after).await;
            } else {
                let db = self.db.clone();
                committing = Some(Committing {
                    task: tokio::task::spawn_blocking(move || db.commit(&batch)),
                    after,
                    reserved,
                });
            }
        }
        if let Some(mut c) = committing.take() {
            let done = wait_commit_of(&mut c).await;
            self.settle(done, c).await;
        }
        tracing::debug!("chat service stopped");
    }

    /// A batch's commit ended: what it reserved is now durable, and its actions follow.
    async fn settle(&mut self, committed: Result<(), String>, c: Committing) {
        if committed.is_ok() {
            for (peer, r) in c.reserved {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.durable_reserved = r;
                }
            }
        }
        self.finish(committed, c.after).await;
    }

    /// Acts on a batch once it is durable (or reports its failure).
    async fn finish(&mut self, committed: Result<(), String>, after: After) {
        if let Err(e) = &committed {
            tracing::error!("chat: cannot store chat state, nothing sent: {e}");
            // Memory is now ahead of disk: drop the streams so the peers resend from
            // what they know, and the callers learn their messages were not stored.
            for p in self.peers.values_mut() {
                p.link = None;
                p.conv.disconnected();
            }
        }
        for reply in after.replies {
            reply(committed.clone());
        }
        if committed.is_err() {
            return;
        }
        for (peer, frame) in after.frames {
            self.write(peer, frame);
        }
        for event in after.early_events.into_iter().chain(after.events) {
            self.events.send(event);
        }
        for (topic, data) in after.publish {
            if let Err(e) = self.client.publish(&topic, data).await {
                tracing::debug!(%topic, "room publish failed: {e}");
            }
        }
    }

    /// Removes from `frames` and returns each peer's leading message frames that its
    /// committed reservation covers (a peer's frames keep their order: after its first
    /// frame that must wait for the commit, the rest of its frames wait too).
    fn take_early(&self, frames: &mut Vec<(PeerId, Frame)>) -> Vec<(PeerId, Frame)> {
        let mut waiting = HashSet::new();
        let mut early = Vec::new();
        frames.retain(|(peer, frame)| {
            let covered = !waiting.contains(peer)
                && matches!(frame, Frame::Message(m)
                    if self.peers.get(peer).is_some_and(|p| m.last_seq() <= p.durable_reserved));
            if covered {
                early.push((*peer, frame.clone()));
            } else {
                waiting.insert(*peer);
            }
            !covered
        });
        early
    }

    fn write(&mut self, peer: PeerId, frame: Frame) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(link) = &p.link else {
            return;
        };
        if let Err(e) = link.writer.try_send(frame) {
            tracing::warn!(%peer, "chat stream stalled or closed ({e}); reconnecting later");
            p.link = None;
            p.conv.disconnected();
        }
    }

    async fn restore(&mut self) {
        let db = self.db.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            db.load().map(|c| {
                (
                    c,
                    db.rooms().unwrap_or_default(),
                    db.requests().unwrap_or_default(),
                )
            })
        })
        .await
        .map_err(db_err)
        .and_then(|r| r);
        let (convs, rooms, requests) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!("chat: cannot load conversations: {e}");
                return;
            }
        };
        let requests: HashSet<String> = requests.into_iter().map(|r| r.peer_id).collect();
        for (peer, snap, next_index) in convs {
            // An unanswered request stays one across restarts.
            let admission = if requests.contains(&peer.to_string()) {
                Admission::Request
            } else {
                Admission::Accept
            };
            let durable_reserved = snap.cursor.reserved_up_to;
            match Conversation::restore(ConvConfig::default(), snap) {
                Ok(conv) => {
                    self.peers.insert(
                        peer,
                        Peer {
                            durable_reserved,
                            conv,
                            admission,
                            link: None,
                            opening: false,
                            last_attempt: None,
                            next_index,
                        },
                    );
                }
                Err(e) => tracing::warn!(%peer, "chat: cannot restore conversation: {e}"),
            }
        }
        tracing::info!(
            conversations = self.peers.len(),
            "chat: conversations restored"
        );
        for (_, code) in rooms {
            let mut batch = Batch::default();
            let mut after = After::default();
            if let Err(e) = self.join_room(&code, &mut batch, &mut after).await {
                tracing::warn!("chat: cannot rejoin a room: {e}");
            }
            self.finish(Ok(()), after).await;
        }
    }

    fn peer(&mut self, peer: PeerId) -> &mut Peer {
        self.peers.entry(peer).or_insert_with(|| Peer {
            conv: Conversation::new(ConvConfig::default(), &mut rand::rngs::OsRng),
            admission: Admission::Accept,
            link: None,
            opening: false,
            last_attempt: None,
            next_index: 0,
            durable_reserved: 0,
        })
    }

    async fn handle(
        &mut self,
        input: Input,
        batch: &mut Batch,
        after: &mut After,
        dirty: &mut HashSet<PeerId>,
    ) {
        let now = now_ms();
        match input {
            Input::Command(cmd) => self.command(cmd, now, batch, after, dirty).await,
            Input::Inbound(Inbound::Frame { peer, link, frame }) => {
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                if p.link.as_ref().map(|l| l.id) != Some(link) {
                    return; // from a stream that was replaced
                }
                if p.admission == Admission::Block || p.admission == Admission::KeyChanged {
                    return;
                }
                let out = p.conv.handle_frame(frame, now);
                dirty.insert(peer);
                self.outputs(peer, out, now, batch, after);
            }
            Input::Inbound(Inbound::Closed { peer, link, reason }) => {
                if let Some(p) = self.peers.get_mut(&peer)
                    && p.link.as_ref().map(|l| l.id) == Some(link)
                {
                    tracing::debug!(%peer, %reason, "chat stream closed");
                    p.link = None;
                    p.conv.disconnected();
                    after.events.push(ChatEvent::PeerState {
                        peer_id: peer.to_string(),
                        online: false,
                    });
                }
            }
            Input::Opened(Opened::Ok(peer, stream)) => {
                let p = self.peer(peer);
                p.opening = false;
                self.attach(peer, *stream, true, Admission::Accept, now, after, dirty);
            }
            Input::Opened(Opened::Failed(peer, reason)) => {
                let p = self.peer(peer);
                p.opening = false;
                tracing::debug!(%peer, "chat: peer not reachable now: {reason}");
            }
            Input::Accepted(a) => {
                let a = *a;
                let admission = admit(a.decision);
                match admission {
                    Admission::Block | Admission::KeyChanged => {
                        tracing::info!(peer = %a.peer, ?admission, "chat stream refused");
                    }
                    Admission::Accept | Admission::Request => {
                        self.attach(a.peer, a.stream, false, admission, now, after, dirty);
                    }
                }
            }
            Input::Room(room_id, message) => {
                let Some(joined) = self.rooms.get_mut(&room_id) else {
                    return;
                };
                match joined.room.handle_message(&message.data, now) {
                    Ok(events) => {
                        for e in events {
                            after
                                .events
                                .push(room_event(&room_id, joined.room.name(), e));
                        }
                    }
                    Err(e) => tracing::debug!(room = %room_id, "room message dropped: {e}"),
                }
            }
            Input::Tick => self.tick(now, batch, after, dirty),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attach(
        &mut self,
        peer: PeerId,
        stream: p2pnode_secure::SecureStream<libp2p::Stream>,
        outbound: bool,
        admission: Admission,
        now: u64,
        after: &mut After,
        dirty: &mut HashSet<PeerId>,
    ) {
        let me = self.me;
        let id = self.next_link;
        self.next_link += 1;
        let inbound_tx = self.inbound_tx.clone();
        let p = self.peer(peer);
        if matches!(p.admission, Admission::Block | Admission::KeyChanged)
            && admission != Admission::Accept
        {
            return;
        }
        // An outbound stream means we chose to talk, and so does having written to the
        // peer; otherwise the trust store's word for this stream decides.
        let we_wrote = p.conv.cursor().next_seq > 1;
        if outbound || admission == Admission::Accept || !we_wrote {
            p.admission = admission;
        }
        let preferred = preferred(me, peer, outbound);
        if let Some(old) = &p.link
            && old.preferred
            && !preferred
            && old.opened.elapsed() < TIE_WINDOW
        {
            tracing::debug!(%peer, "simultaneous chat streams: keeping the preferred one");
            return;
        }
        let (session_io, session) = stream.into_parts();
        let session = Arc::new(Mutex::new(session));
        let (read, write) = session_io.split();
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let max = session
            .lock()
            .map(|s| s.config().max_frame_len())
            .unwrap_or(0);
        let reader = tokio::spawn(read_frames(
            peer,
            id,
            read,
            session.clone(),
            max,
            inbound_tx.clone(),
        ))
        .abort_handle();
        tokio::spawn(write_frames(peer, id, write, session, rx, inbound_tx));
        if p.link.is_some() {
            p.conv.disconnected();
        }
        p.link = Some(Link {
            id,
            preferred,
            opened: Instant::now(),
            writer: tx,
            reader,
        });
        let out = p.conv.connected(now);
        dirty.insert(peer);
        after.events.push(ChatEvent::PeerState {
            peer_id: peer.to_string(),
            online: true,
        });
        for o in out {
            if let Output::Send(f) = o {
                after.frames.push((peer, f));
            }
        }
    }

    fn outputs(
        &mut self,
        peer: PeerId,
        out: Vec<Output>,
        now: u64,
        batch: &mut Batch,
        after: &mut After,
    ) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let key = peer.to_string();
        for o in out {
            match o {
                Output::Send(f) => after.frames.push((peer, f)),
                Output::Deliver(m) => {
                    let request = p.admission == Admission::Request;
                    let row = Row {
                        id: m.id.to_string(),
                        seq: m.seq,
                        outgoing: false,
                        sent_at: m.sent_at,
                        body: m.body,
                        request,
                    };
                    batch.rows.push((key.clone(), p.next_index, cbor(&row)));
                    p.next_index += 1;
                    let event = ChatEvent::Message(message_of(&key, row, 0));
                    if request {
                        batch.requests_add.push((key.clone(), now));
                        after.events.push(ChatEvent::Request {
                            peer_id: key.clone(),
                        });
                        after.events.push(event);
                    } else {
                        after.early_events.push(event);
                    }
                }
                Output::Delivered { up_to_seq, ids } => {
                    after.events.push(ChatEvent::Delivered {
                        peer_id: key.clone(),
                        up_to_seq,
                        ids: ids.iter().map(ToString::to_string).collect(),
                    });
                }
            }
        }
    }

    async fn command(
        &mut self,
        cmd: Command,
        now: u64,
        batch: &mut Batch,
        after: &mut After,
        dirty: &mut HashSet<PeerId>,
    ) {
        match cmd {
            Command::Send { peer, body, reply } => {
                let p = self.peer(peer);
                if p.admission == Admission::Block {
                    let _ = reply.send(Err(ChatError::Node(NodeError::Revoked {
                        peer: peer.to_string(),
                    })));
                    return;
                }
                let (message, out) = match p.conv.send(body, now, &mut rand::rngs::OsRng) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = reply.send(Err(ChatError::Invalid(e.to_string())));
                        return;
                    }
                };
                // Writing to someone answers their request.
                if p.admission == Admission::Request {
                    p.admission = Admission::Accept;
                    batch.requests_remove.push(peer.to_string());
                }
                let row = Row {
                    id: message.id.to_string(),
                    seq: message.seq,
                    outgoing: true,
                    sent_at: message.sent_at,
                    body: message.body,
                    request: false,
                };
                batch
                    .rows
                    .push((peer.to_string(), p.next_index, cbor(&row)));
                p.next_index += 1;
                dirty.insert(peer);
                let stored = message_of(&peer.to_string(), row, 0);
                after.events.push(ChatEvent::Sent(stored.clone()));
                after.replies.push(Box::new(move |r| {
                    let _ = reply.send(r.map(|()| stored).map_err(ChatError::Db));
                }));
                let online = p.link.is_some();
                self.outputs(peer, out, now, batch, after);
                if !online {
                    self.try_open(peer, true);
                }
            }
            Command::State { peer, reply } => {
                let state = match self.peers.get(&peer) {
                    Some(p) => ChatPeerState {
                        peer_id: peer.to_string(),
                        known: true,
                        online: p.conv.is_online(),
                        connected: false,
                        path: None,
                        verified: false,
                        queued: p.conv.outbox().len(),
                        request: p.admission == Admission::Request,
                        blocked: p.admission == Admission::Block,
                    },
                    None => ChatPeerState {
                        peer_id: peer.to_string(),
                        ..ChatPeerState::default()
                    },
                };
                let _ = reply.send(state);
            }
            Command::Admission {
                peer,
                admission,
                reply,
            } => {
                let p = self.peer(peer);
                p.admission = admission;
                if admission == Admission::Block {
                    p.link = None;
                    p.conv.disconnected();
                }
                dirty.insert(peer);
                batch.requests_remove.push(peer.to_string());
                after.replies.push(Box::new(move |_| {
                    let _ = reply.send(());
                }));
            }
            Command::RoomJoin { code, reply } => {
                let r = self.join_room(&code, batch, after).await;
                let _ = reply.send(r);
            }
            Command::RoomSend { room, body, reply } => {
                let me = self.me;
                let client = self.client.clone();
                let Some((id, joined)) = self.find_room(&room) else {
                    let _ = reply.send(Err(not_joined(&room)));
                    return;
                };
                match joined
                    .room
                    .send_text(body.clone(), now, &mut rand::rngs::OsRng)
                {
                    Ok((message, sealed)) => {
                        let topic = joined.room.topic().to_string();
                        let info = RoomMessageInfo {
                            room_id: id.clone(),
                            room: joined.room.name().to_string(),
                            sender: me.to_string(),
                            id: message.id.to_string(),
                            sent_at: message.sent_at,
                            body,
                        };
                        // Published right away (not after the batch) so the caller
                        // learns whether any member could be reached.
                        match client.publish(&topic, sealed).await {
                            Ok(()) => {
                                let _ = reply.send(Ok(info));
                            }
                            Err(e) => {
                                let _ = reply.send(Err(ChatError::Invalid(format!(
                                    "no room member reachable yet ({e}); try again in a moment"
                                ))));
                            }
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ChatError::Invalid(e.to_string())));
                    }
                }
            }
            Command::RoomInfo { room, reply } => {
                let r = match self.find_room(&room) {
                    Some((id, j)) => Ok(room_info(&id, j)),
                    None => Err(not_joined(&room)),
                };
                let _ = reply.send(r);
            }
            Command::RoomLeave { room, reply } => {
                let Some((id, _)) = self.find_room(&room) else {
                    let _ = reply.send(Err(not_joined(&room)));
                    return;
                };
                if let Some(mut joined) = self.rooms.remove(&id) {
                    let topic = joined.room.topic().to_string();
                    if let Ok(bye) = joined.room.leave(now, &mut rand::rngs::OsRng) {
                        let _ = self.client.publish(&topic, bye).await;
                    }
                    let _ = self.client.leave_topic(&topic).await;
                    batch.rooms_remove.push(id);
                }
                after.replies.push(Box::new(move |r| {
                    let _ = reply.send(r.map_err(ChatError::Db));
                }));
            }
        }
    }

    fn find_room(&mut self, room: &str) -> Option<(String, &mut JoinedRoom)> {
        let room = room.trim();
        let id = if self.rooms.contains_key(room) {
            room.to_string()
        } else {
            self.rooms
                .iter()
                .find(|(_, j)| j.code == room)
                .map(|(id, _)| id.clone())?
        };
        self.rooms.get_mut(&id).map(|j| (id, j))
    }

    async fn join_room(
        &mut self,
        code: &str,
        batch: &mut Batch,
        after: &mut After,
    ) -> Result<RoomInfo, ChatError> {
        let now = now_ms();
        let invite = Invite::decode(code, now)
            .map_err(|e| ChatError::Invalid(format!("invalid invite code: {e}")))?;
        let id = hex(&invite.room_id());
        if let Some(j) = self.rooms.get(&id) {
            return Ok(room_info(&id, j));
        }
        if self.rooms.len() >= MAX_ROOMS {
            return Err(ChatError::Invalid(format!(
                "already in {MAX_ROOMS} rooms; leave one first"
            )));
        }
        let config = RoomConfig::default()
            .with_presence_interval_ms(PRESENCE_EVERY_MS)
            .with_member_timeout_ms(MEMBER_TIMEOUT_MS);
        let (room, presence) = Room::join(
            &invite,
            self.signer.clone(),
            config,
            now,
            &mut rand::rngs::OsRng,
        )
        .map_err(|e| ChatError::Invalid(format!("cannot join the room: {e}")))?;
        let topic = room.topic().to_string();
        let mut rx = self.client.join_topic(&topic, ROOM_QUEUE).await?;
        let tx = self.room_tx.clone();
        let room_id = id.clone();
        let forwarder = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if tx.send((room_id.clone(), m)).await.is_err() {
                    break;
                }
            }
        })
        .abort_handle();
        // The creator is a good first member to know; best effort.
        if let Some(creator) = invite.creator().and_then(|b| PeerId::from_bytes(b).ok())
            && creator != self.me
        {
            let client = self.client.clone();
            tokio::spawn(async move {
                if let Err(e) = client.connect_peer(creator).await {
                    tracing::debug!(%creator, "room creator not reachable: {e}");
                }
            });
        }
        after.publish.push((topic, presence));
        batch.rooms_add.push((id.clone(), code.to_string()));
        let joined = JoinedRoom {
            room,
            code: code.to_string(),
            forwarder,
        };
        let info = room_info(&id, &joined);
        self.rooms.insert(id, joined);
        Ok(info)
    }

    fn tick(
        &mut self,
        now: u64,
        batch: &mut Batch,
        after: &mut After,
        dirty: &mut HashSet<PeerId>,
    ) {
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.conv.poll_timeout().is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for peer in due {
            if let Some(p) = self.peers.get_mut(&peer) {
                let out = p.conv.handle_timeout(now);
                dirty.insert(peer);
                self.outputs(peer, out, now, batch, after);
            }
        }
        // Offline peers with queued messages: try again (cheap when unreachable, since
        // at most one attempt per peer runs at a time).
        let waiting: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.link.is_none() && p.conv.outbox().len() > 0 && p.admission != Admission::Block
            })
            .map(|(k, _)| *k)
            .collect();
        for peer in waiting {
            self.try_open(peer, false);
        }
        let mut expired = Vec::new();
        for (id, joined) in &mut self.rooms {
            if joined.room.poll_timeout().is_some_and(|t| t <= now) {
                for o in joined.room.handle_timeout(now, &mut rand::rngs::OsRng) {
                    match o {
                        RoomOutput::Publish(bytes) => {
                            after.publish.push((joined.room.topic().to_string(), bytes));
                        }
                        RoomOutput::Event(RoomEvent::Expired) => {
                            expired.push(id.clone());
                            after.events.push(room_event(
                                id,
                                joined.room.name(),
                                RoomEvent::Expired,
                            ));
                        }
                        RoomOutput::Event(e) => {
                            after.events.push(room_event(id, joined.room.name(), e));
                        }
                    }
                }
            }
        }
        for id in expired {
            if let Some(joined) = self.rooms.remove(&id) {
                let client = self.client.clone();
                let topic = joined.room.topic().to_string();
                tokio::spawn(async move {
                    let _ = client.leave_topic(&topic).await;
                });
                batch.rooms_remove.push(id);
            }
        }
    }

    /// Starts opening a stream to `peer` unless one is open or being opened.
    fn try_open(&mut self, peer: PeerId, now: bool) {
        let client = self.client.clone();
        let tx = self.opened_tx.clone();
        let p = self.peer(peer);
        if p.link.is_some() || p.opening {
            return;
        }
        if !now && p.last_attempt.is_some_and(|t| t.elapsed() < RETRY_EVERY) {
            return;
        }
        p.opening = true;
        p.last_attempt = Some(Instant::now());
        tokio::spawn(async move {
            let protocol = StreamProtocol::new(p2pnode_chat::STREAM_PROTOCOL);
            let opened = tokio::time::timeout(
                OPEN_TIMEOUT,
                client.open_secure(peer, protocol, p2pnode_chat::PROTOCOL),
            )
            .await;
            let result = match opened {
                Ok(Ok(stream)) => Opened::Ok(peer, Box::new(stream)),
                Ok(Err(e)) => Opened::Failed(peer, e.to_string()),
                Err(_) => Opened::Failed(peer, "timed out".into()),
            };
            let _ = tx.send(result).await;
        });
    }
}

/// Whether a stream between `me` and `peer` was opened by the smaller peer id, the
/// winner when both open at once (both ends compute the same answer).
fn preferred(me: PeerId, peer: PeerId, outbound: bool) -> bool {
    (me < peer) == outbound
}

fn not_joined(room: &str) -> ChatError {
    ChatError::Invalid(format!(
        "not in a room {room:?}; join it with its invite code first"
    ))
}

fn room_info(id: &str, joined: &JoinedRoom) -> RoomInfo {
    RoomInfo {
        room_id: id.to_string(),
        name: joined.room.name().to_string(),
        code: joined.code.clone(),
        expires_at: joined.room.key().expires_at(),
        members: joined
            .room
            .members()
            .iter()
            .map(|m| peer_of_key(&m.key))
            .collect(),
    }
}

fn room_event(room_id: &str, name: &str, e: RoomEvent) -> ChatEvent {
    match e {
        RoomEvent::Message(m) => ChatEvent::RoomMessage(RoomMessageInfo {
            room_id: room_id.to_string(),
            room: name.to_string(),
            sender: peer_of_key(&m.sender),
            id: m.id.to_string(),
            sent_at: m.sent_at,
            body: match m.body {
                p2pnode_chat::RoomBody::Text(t) => t,
                _ => String::new(),
            },
        }),
        RoomEvent::Joined(k) => ChatEvent::MemberJoined {
            room_id: room_id.to_string(),
            member: peer_of_key(&k),
        },
        RoomEvent::Left(k) => ChatEvent::MemberLeft {
            room_id: room_id.to_string(),
            member: peer_of_key(&k),
        },
        RoomEvent::Expired => ChatEvent::RoomExpired {
            room_id: room_id.to_string(),
        },
    }
}

/// Reads sealed frames, opens them and hands the chat frames to the owner. Ends (and
/// reports) on the first error: a secure stream that fails once is not trusted again.
async fn read_frames(
    peer: PeerId,
    link: u64,
    mut io: futures::io::ReadHalf<libp2p::Stream>,
    session: Arc<Mutex<Session>>,
    max: usize,
    tx: mpsc::Sender<Inbound>,
) {
    let reason = loop {
        let mut sealed = match read_length_prefixed(&mut io, max).await {
            Ok(b) => b,
            Err(e) => break e.to_string(),
        };
        let payload = {
            let Ok(mut s) = session.lock() else {
                break "session lock poisoned".to_string();
            };
            match s.open(&mut sealed) {
                Ok(p) => p.to_vec(),
                Err(e) => break format!("bad secure frame: {e}"),
            }
        };
        let frame = match Frame::decode(&payload) {
            Ok(f) => f,
            Err(e) => break format!("protocol violation: {e}"),
        };
        // Waiting here is the backpressure on a peer that sends faster than we store.
        if tx.send(Inbound::Frame { peer, link, frame }).await.is_err() {
            return;
        }
    };
    let _ = tx.send(Inbound::Closed { peer, link, reason }).await;
}

/// Seals and writes the owner's frames; coalesces whatever is queued into one flush.
async fn write_frames(
    peer: PeerId,
    link: u64,
    mut io: futures::io::WriteHalf<libp2p::Stream>,
    session: Arc<Mutex<Session>>,
    mut rx: mpsc::Receiver<Frame>,
    tx: mpsc::Sender<Inbound>,
) {
    let mut buf = Vec::new();
    let reason = 'outer: loop {
        let Some(first) = rx.recv().await else {
            // Replaced or dropped by the owner: close our side politely.
            let _ = io.close().await;
            return;
        };
        buf.clear();
        let mut next = Some(first);
        let mut count = 0;
        while let Some(frame) = next {
            let payload = frame.encode();
            let start = buf.len();
            buf.extend_from_slice(&[0; LENGTH_PREFIX_LEN]);
            {
                let Ok(mut s) = session.lock() else {
                    break 'outer "session lock poisoned".to_string();
                };
                if let Err(e) = s.seal(&payload, Instant::now(), &mut buf) {
                    break 'outer format!("cannot seal: {e}");
                }
            }
            let len = u32::try_from(buf.len() - start - LENGTH_PREFIX_LEN).unwrap_or(u32::MAX);
            buf[start..start + LENGTH_PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
            count += 1;
            next = if count < 256 && buf.len() < 1 << 20 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if let Err(e) = io.write_all(&buf).await {
            break e.to_string();
        }
        if let Err(e) = io.flush().await {
            break e.to_string();
        }
    };
    let _ = tx.send(Inbound::Closed { peer, link, reason }).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pnode_secure::TrustDecision;

    #[test]
    fn tie_break_is_symmetric() {
        let a = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let b = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        // The stream a opens to b is preferred on both ends, or on neither; and exactly
        // one of the two possible streams is.
        assert_eq!(preferred(a, b, true), preferred(b, a, false));
        assert_eq!(preferred(b, a, true), preferred(a, b, false));
        assert_ne!(preferred(a, b, true), preferred(b, a, true));
        assert_eq!(admit(TrustDecision::UnknownPeer), Admission::Request);
    }
}

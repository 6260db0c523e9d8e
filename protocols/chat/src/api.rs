//! The chat protocol's control API: route names and the JSON types of requests, replies
//! and events. The service serves them and the CLI calls them, so paths and field names
//! live here once. Field names are part of the control protocol: add fields, do not
//! rename them.

use p2pnode_node::api::Path;
use serde::{Deserialize, Serialize};

/// Control routes (the path after `/v1/`, as [`p2pnode_node::control::ControlClient`]
/// takes it).
pub mod routes {
    /// The route prefixes chat serves: `/v1/chat/...` and `/v1/room/...`.
    pub const PREFIXES: &[&str] = &["chat", "room"];
    /// `GET`: chat events as JSON lines ([`super::ChatEvent`]).
    pub const EVENTS: &str = "chat/events";
    /// `POST` [`super::ChatSendRequest`] -> [`super::ChatMessage`].
    pub const SEND: &str = "chat/send";
    /// `GET ?peer=<id>&limit=<n>`, or `POST` [`super::ChatHistoryRequest`] ->
    /// [`super::ChatMessage`]s, oldest first.
    pub const HISTORY: &str = "chat/history";
    /// `POST` a peer -> [`super::ChatPeerState`] once the peer was tried.
    pub const OPEN: &str = "chat/open";
    /// `POST` a peer -> [`super::ChatPeerState`].
    pub const STATE: &str = "chat/state";
    /// `GET` -> [`super::ChatRequest`]s; `POST` [`super::ChatRequestAction`] ->
    /// [`super::ChatPeerState`].
    pub const REQUESTS: &str = "chat/requests";
    /// `POST` [`super::RoomCreateRequest`] -> [`super::RoomInfo`].
    pub const ROOM_CREATE: &str = "room/create";
    /// `POST` [`super::RoomJoinRequest`] -> [`super::RoomInfo`].
    pub const ROOM_JOIN: &str = "room/join";
    /// `POST` [`super::RoomJoinRequest`] -> [`super::RoomInfo`].
    pub const ROOM_MEMBERS: &str = "room/members";
    /// `POST` [`super::RoomJoinRequest`] -> `{"left": true}`.
    pub const ROOM_LEAVE: &str = "room/leave";
    /// `POST` [`super::RoomSendRequest`] -> [`super::RoomMessageInfo`].
    pub const ROOM_SEND: &str = "room/send";

    /// The history route with its query: the last `limit` messages with `peer`.
    pub fn history(peer: &str, limit: usize) -> String {
        format!("{HISTORY}?peer={peer}&limit={limit}")
    }
}

/// One chat message, as stored in the history and reported in events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    /// The other end of the conversation.
    pub peer_id: String,
    /// The message id (unique, hex).
    pub id: String,
    /// Its sequence number in the sender's numbering.
    pub seq: u64,
    /// Whether we sent it.
    pub outgoing: bool,
    /// When the sender wrote it (unix ms).
    pub sent_at: u64,
    /// The text.
    pub body: String,
    /// For outgoing messages: whether the peer has received it.
    pub delivered: bool,
    /// For incoming messages: whether it arrived as a message request.
    pub request: bool,
}

/// A chat peer's state, for the chat UI.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChatPeerState {
    /// The peer.
    pub peer_id: String,
    /// Whether a conversation with it exists (history or queue).
    pub known: bool,
    /// Whether the chat stream is up.
    pub online: bool,
    /// Whether a connection to the peer is open.
    pub connected: bool,
    /// Direct or relayed, when connected.
    pub path: Option<Path>,
    /// Whether the peer's key was verified by SAS comparison.
    pub verified: bool,
    /// Messages waiting for the peer's receipt.
    pub queued: usize,
    /// Whether its messages arrive as a request.
    pub request: bool,
    /// Whether it is blocked.
    pub blocked: bool,
}

/// A pending message request: a peer we did not accept wrote to us. A peer id says
/// nothing about who holds it; a verified contact who comes back with a new peer id is
/// a new, unverified peer here.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatRequest {
    /// The peer asking.
    pub peer_id: String,
    /// When its first message arrived (unix ms).
    pub first_at: u64,
    /// Whether this peer id's key was verified by SAS comparison (`p2pnode verify`);
    /// false for every stranger, whoever it claims to be.
    #[serde(default)]
    pub verified: bool,
}

/// A joined room.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoomInfo {
    /// The room id (hex).
    pub room_id: String,
    /// Its display name.
    pub name: String,
    /// The invite code (share it to invite).
    pub code: String,
    /// When it closes (unix seconds), if ever.
    pub expires_at: Option<u64>,
    /// Members heard of recently (peer ids), ourselves included.
    pub members: Vec<String>,
}

/// A room text message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoomMessageInfo {
    /// The room id (hex).
    pub room_id: String,
    /// The room's name.
    pub room: String,
    /// The sender's peer id.
    pub sender: String,
    /// The message id.
    pub id: String,
    /// When it was sent (unix ms).
    pub sent_at: u64,
    /// The text.
    pub body: String,
}

/// One line of `GET /v1/chat/events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatEvent {
    /// A message arrived from a peer.
    Message(ChatMessage),
    /// We stored a message to send (it goes out as soon as the peer is reachable).
    Sent(ChatMessage),
    /// The peer received our messages up to `up_to_seq`.
    Delivered {
        /// The peer.
        peer_id: String,
        /// Highest sequence number received.
        up_to_seq: u64,
        /// Ids newly received, oldest first.
        ids: Vec<String>,
    },
    /// A peer not in the trust store wrote: accept or block it.
    Request {
        /// The peer.
        peer_id: String,
    },
    /// The chat stream to a peer came up or went down.
    PeerState {
        /// The peer.
        peer_id: String,
        /// Whether it is up.
        online: bool,
    },
    /// A room message.
    RoomMessage(RoomMessageInfo),
    /// A member appeared in a room.
    MemberJoined {
        /// The room id.
        room_id: String,
        /// The member's peer id.
        member: String,
    },
    /// A member left a room or timed out.
    MemberLeft {
        /// The room id.
        room_id: String,
        /// The member's peer id.
        member: String,
    },
    /// A room's time-to-live ran out; it is closed.
    RoomExpired {
        /// The room id.
        room_id: String,
    },
    /// This subscriber fell behind and missed `missed` events (read the history).
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// Body of `POST /v1/chat/send`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatSendRequest {
    /// The peer.
    pub peer_id: String,
    /// The text (at most 16 KiB).
    pub body: String,
}

/// Body of `POST /v1/chat/history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatHistoryRequest {
    /// The peer.
    pub peer_id: String,
    /// Most messages returned (the newest).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Body of `POST /v1/chat/requests`: accept or block a peer's request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatRequestAction {
    /// The peer.
    pub peer_id: String,
    /// `accept` or `block`.
    pub action: String,
}

/// Body of `POST /v1/room/create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomCreateRequest {
    /// Display name.
    pub name: String,
    /// Close the room after this many seconds.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// Body of `POST /v1/room/join` and `/v1/room/members`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomJoinRequest {
    /// An invite code, or a joined room's id.
    pub code: String,
}

/// Body of `POST /v1/room/send`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomSendRequest {
    /// The invite code or room id.
    #[serde(alias = "room_id")]
    pub code: String,
    /// The text.
    pub body: String,
}

//! The types the node reports, shared by the in-process [`crate::Client`] and the control
//! socket's JSON (version [`API_VERSION`]). Field names are part of the control protocol:
//! add fields, do not rename them.

use serde::{Deserialize, Serialize};

/// Version of the control protocol; it is the first segment of every request path (`/v1/...`).
pub const API_VERSION: u32 = 1;

/// `p2pnode status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Our peer id.
    pub peer_id: String,
    /// Addresses we listen on, including relay circuit addresses.
    pub listen_addrs: Vec<String>,
    /// Addresses confirmed as reachable from outside.
    pub external_addrs: Vec<String>,
    /// AutoNAT's verdict: `public`, `private` or `unknown` (`off` when it does not run).
    pub nat_status: String,
    /// Relays holding a reservation for us, as circuit addresses.
    pub reservations: Vec<String>,
    /// How many peers we have at least one connection to.
    pub connected_peers: usize,
    /// Whether this node serves as a relay.
    pub relay_server: bool,
    /// Peers in the DHT routing table.
    #[serde(default)]
    pub dht_peers: usize,
    /// DHT queries under way (lookups, and the routing-table bootstrap Kademlia starts by
    /// itself after joining).
    #[serde(default)]
    pub dht_queries: usize,
}

/// Whether a connection goes straight to the peer or through a relay.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// A direct connection (dialled, accepted or hole-punched).
    Direct,
    /// A circuit through a relay.
    Relayed,
}

/// One connection to a peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectionInfo {
    /// The remote address.
    pub address: String,
    /// Direct or relayed.
    pub path: Path,
    /// `tcp`, `quic`, `relay`, `memory` or `other`.
    pub transport: String,
    /// Whether we dialled it.
    pub outbound: bool,
    /// Last ping round-trip time on this connection.
    pub rtt_ms: Option<f64>,
}

/// One connected peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerInfo {
    /// The peer id.
    pub peer_id: String,
    /// `direct` when any connection is direct.
    pub path: Path,
    /// Transport of the best connection.
    pub transport: String,
    /// Round-trip time of the best connection.
    pub rtt_ms: Option<f64>,
    /// Every open connection.
    pub connections: Vec<ConnectionInfo>,
}

/// Result of `p2pnode connect`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Connected {
    /// The peer reached.
    pub peer_id: String,
    /// Direct or relayed.
    pub path: Path,
    /// The address of the connection.
    pub address: String,
}

/// Result of `p2pnode find`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Found {
    /// The peer looked up.
    pub peer_id: String,
    /// Where it can be reached: the address we connected to when the lookup reached the
    /// peer itself, otherwise the addresses the DHT knows for it.
    pub addresses: Vec<String>,
}

/// Result of `p2pnode ping`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pinged {
    /// The peer.
    pub peer_id: String,
    /// One round-trip time per echo, in milliseconds.
    pub rtt_ms: Vec<f64>,
    /// The path of the peer's best connection when the echoes were sent.
    pub path: Path,
}

/// Body of `POST /v1/connect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectRequest {
    /// A multiaddr or a peer id.
    pub target: String,
}

/// Body of `POST /v1/ping`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PingRequest {
    /// The peer to ping.
    pub peer_id: String,
    /// How many echoes.
    pub count: u32,
}

/// Result of `p2pnode verify`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifyInfo {
    /// The peer.
    pub peer_id: String,
    /// The short authentication string as words.
    pub sas_words: String,
    /// The same code as digit groups.
    pub sas_digits: String,
    /// Whether the peer's key is already verified.
    pub verified: bool,
}

/// One trust store entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrustInfo {
    /// The peer.
    pub peer_id: String,
    /// Whether its key was verified by SAS comparison.
    pub verified: bool,
    /// Protocols it may use.
    pub allowed_protocols: Vec<String>,
    /// Whether it is revoked.
    pub revoked: bool,
}

impl TrustInfo {
    /// The report for one entry.
    pub fn new(peer: libp2p::PeerId, e: &p2pnode_secure::TrustEntry) -> Self {
        Self {
            peer_id: peer.to_string(),
            verified: e.is_verified(),
            allowed_protocols: e.allowed_protocols.iter().cloned().collect(),
            revoked: e.revoked,
        }
    }
}

/// Body of the requests that name one peer (`find`, `verify`, `trust/revoke`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerRequest {
    /// The peer id.
    pub peer_id: String,
}

/// Body of `POST /v1/trust/allow`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllowRequest {
    /// The peer id.
    pub peer_id: String,
    /// Protocols to allow; empty means all.
    #[serde(default)]
    pub protocols: Vec<String>,
}

/// The body of every failed request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// A stable machine-readable kind, e.g. `not_found`.
    pub kind: String,
    /// A one-line message for people.
    pub message: String,
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

/// A pending message request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatRequest {
    /// The peer asking.
    pub peer_id: String,
    /// When its first message arrived (unix ms).
    pub first_at: u64,
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

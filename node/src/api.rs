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
    /// Keys we announce ourselves a provider of in the DHT (republished while kept).
    #[serde(default)]
    pub provided_keys: usize,
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

/// `GET /v1/diagnostics`, what `p2pnode doctor` asks the daemon: the facts only the
/// running node holds. The doctor judges them; the node only reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Diagnostics {
    /// The daemon's data directory, so a client can tell that the socket it reached is
    /// the daemon of its own data directory.
    pub data_dir: String,
    /// The daemon's process id.
    pub pid: u32,
    /// Whether it runs in relay-only (privacy) mode: no direct connections at all.
    pub relay_only: bool,
    /// Its hole-punching mode: `p2pnode`, `dcutr` or `off`.
    pub hole_punch: String,
    /// Whether the database answers.
    pub database: DatabaseHealth,
    /// How peers with a direct connection see us (identify's observed address), the most
    /// recent first: what tells the kind of NAT in front of us.
    pub observed: Vec<Observation>,
    /// The latest hole-punch outcomes, the most recent first.
    pub punches: Vec<PunchRecord>,
    /// Clock offsets measured just now against some connected peers.
    pub clock: Vec<ClockSample>,
}

/// The database's health, as a read of every table shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatabaseHealth {
    /// Every table opened and counted.
    pub ok: bool,
    /// How many tables.
    pub tables: usize,
    /// Entries in all of them.
    pub entries: u64,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// What failed, when something did.
    pub error: Option<String>,
}

/// What one peer sees of us over a direct connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Observation {
    /// The observing peer.
    pub peer_id: String,
    /// Its address on that connection.
    pub peer_address: String,
    /// Our address as it sees it.
    pub observed: String,
    /// Seconds since the Unix epoch when it told us.
    pub at: u64,
}

/// One hole punch's end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PunchRecord {
    /// With whom.
    pub peer_id: String,
    /// `introduction`, `exchange` or `dcutr`.
    pub method: String,
    /// `success`, `failure` or `refused`.
    pub outcome: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// A peer's clock against ours.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClockSample {
    /// The peer.
    pub peer_id: String,
    /// Its clock minus ours, in milliseconds (from the middle of the round trip).
    pub offset_ms: f64,
    /// The round trip of the measurement; the offset is uncertain by half of it.
    pub rtt_ms: f64,
}

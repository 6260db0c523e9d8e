//! The daemon's JSON answers as the lab reads them (`status`, `peers`, `connect`, `find`,
//! `ping` with `--json`). Fields these structs do not name are skipped; a path kind the
//! lab does not know reads as `Other`.

use serde::{Deserialize, Serialize};

/// Whether a connection goes straight to the peer or through a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// A direct connection.
    Direct,
    /// A relayed (`/p2p-circuit`) connection.
    Relayed,
    /// Anything this lab does not know.
    #[serde(other)]
    Other,
}

/// `p2pnode status --json`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Status {
    /// The node's peer id.
    pub peer_id: String,
    /// Addresses it listens on.
    #[serde(default)]
    pub listen_addrs: Vec<String>,
    /// Confirmed external addresses.
    #[serde(default)]
    pub external_addrs: Vec<String>,
    /// "public", "private", "unknown" or "off".
    #[serde(default)]
    pub nat_status: String,
    /// Relay circuit addresses it holds a reservation for.
    #[serde(default)]
    pub reservations: Vec<String>,
    /// Peers with at least one connection.
    #[serde(default)]
    pub connected_peers: u64,
    /// Whether it serves as relay.
    #[serde(default)]
    pub relay_server: bool,
}

/// One connection in `p2pnode peers --json`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ConnectionInfo {
    /// The remote address.
    pub address: String,
    /// Direct or relayed.
    pub path: PathKind,
    /// "tcp", "quic", "relay", ...
    pub transport: String,
    /// Whether this node dialed it.
    #[serde(default)]
    pub outbound: bool,
}

/// One peer in `p2pnode peers --json`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PeerInfo {
    /// Its peer id.
    pub peer_id: String,
    /// Direct if any connection is direct.
    pub path: PathKind,
    /// Transport of the preferred connection.
    #[serde(default)]
    pub transport: String,
    /// Last measured round trip.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    /// All connections to it.
    #[serde(default)]
    pub connections: Vec<ConnectionInfo>,
}

/// `p2pnode connect --json`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ConnectOutcome {
    /// The peer connected to.
    pub peer_id: String,
    /// Direct or relayed.
    pub path: PathKind,
    /// The address of the connection.
    #[serde(default)]
    pub address: String,
}

/// `p2pnode find --json`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct FindOutcome {
    /// The peer looked up.
    pub peer_id: String,
    /// Its addresses.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// `p2pnode ping --json`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PingOutcome {
    /// The peer pinged.
    pub peer_id: String,
    /// One round trip per echo.
    pub rtt_ms: Vec<f64>,
    /// The path the echoes took.
    pub path: PathKind,
}

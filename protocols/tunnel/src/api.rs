//! The tunnel's control API: route names and the JSON types of requests and replies. The
//! service serves them and the CLI calls them, so paths and field names live here once.
//! Field names are part of the control protocol: add fields, do not rename them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Control routes (the path after `/v1/`).
pub mod routes {
    /// The route prefix the tunnel serves: `/v1/vpn/...`.
    pub const PREFIXES: &[&str] = &["vpn"];
    /// `POST` [`super::UpRequest`] -> [`super::NetStatus`].
    pub const UP: &str = "vpn/up";
    /// `POST` [`super::DownRequest`] -> [`super::Down`].
    pub const DOWN: &str = "vpn/down";
    /// `GET` -> [`super::NetStatus`]es, one per network that is up.
    pub const STATUS: &str = "vpn/status";
}

/// Body of `vpn/up`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpRequest {
    /// The network's name.
    pub network: String,
    /// The TUN device's MTU; the default is [`crate::DEFAULT_MTU`].
    #[serde(default)]
    pub mtu: Option<u16>,
    /// The TUN device's offloads; on when not given.
    #[serde(default)]
    pub offload: Option<bool>,
}

/// Body of `vpn/down`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DownRequest {
    /// The network's name.
    pub network: String,
}

/// Reply of `vpn/down`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Down {
    /// The network.
    pub network: String,
    /// The TUN device that was removed.
    pub interface: String,
}

/// One network's tunnel, as `vpn status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetStatus {
    /// The network's name.
    pub network: String,
    /// The TUN device.
    pub interface: String,
    /// Our IPv4 address.
    pub ipv4: String,
    /// Our IPv6 address.
    pub ipv6: String,
    /// The network's IPv4 prefix (`100.x.0.0/16`).
    pub prefix_v4: String,
    /// The network's IPv6 prefix (`fdxx:xxxx:xxxx::/48`).
    pub prefix_v6: String,
    /// The device's MTU.
    pub mtu: u16,
    /// Whether the device's offloads are on.
    #[serde(default)]
    pub offload: bool,
    /// The other members.
    pub members: Vec<MemberStatus>,
    /// Packets dropped, by reason (all members, both ways), zeros left out.
    pub drops: BTreeMap<String, u64>,
    /// Where the DNS responder for `<name>.p2p` listens (our IPv4 address, port 53), when
    /// it runs.
    #[serde(default)]
    pub dns: Option<String>,
    /// The line that points a resolver at it for `~p2p` (systemd-resolved's commands).
    #[serde(default)]
    pub resolver: String,
    /// The node's UDP port for datagrams (all networks share it), when it has one.
    #[serde(default)]
    pub udp_port: Option<u16>,
}

/// A member of a network, as the tunnel sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberStatus {
    /// Its peer id.
    pub peer_id: String,
    /// Its name in the network, if it has one.
    pub name: Option<String>,
    /// Its IPv4 address.
    pub ipv4: String,
    /// Its IPv6 address.
    pub ipv6: String,
    /// Whether a tunnel stream to it is up.
    pub linked: bool,
    /// Tunnel streams it has had since `vpn up`: over a relay, one more each time a
    /// circuit ends (the tunnel opens a new stream over a new circuit).
    #[serde(default)]
    pub streams: u64,
    /// `direct` or `relayed` while connected; `None` when not connected.
    pub path: Option<String>,
    /// What carries its packets now: `udp` (datagrams on a direct path) or `stream` (the
    /// tunnel stream: relayed, or while the datagram path is not up); `None` when no
    /// stream is up.
    #[serde(default)]
    pub transport: Option<String>,
    /// The member's UDP endpoint, once a datagram from it authenticated.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The addresses probed for the datagram path (announced by the member, and seen on
    /// direct connections to it).
    #[serde(default)]
    pub candidates: Vec<String>,
    /// The connection's round trip, when known.
    pub rtt_ms: Option<f64>,
    /// Packets sent to it.
    pub packets_out: u64,
    /// Bytes sent to it.
    pub bytes_out: u64,
    /// Packets from it that reached our TUN device.
    pub packets_in: u64,
    /// Bytes from it that reached our TUN device.
    pub bytes_in: u64,
    /// Its packets (or ours to it) dropped, by reason, zeros left out.
    pub drops: BTreeMap<String, u64>,
}

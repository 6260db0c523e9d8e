//! Node configuration: built-in defaults, an optional TOML file in the data directory,
//! and command-line flags on top (flags win).

use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

/// The TCP and UDP port a node listens on by default. When it is taken the node falls back
/// to a free port, so several nodes can run on one machine without configuration.
pub const DEFAULT_PORT: u16 = 4701;

/// Name of the optional configuration file inside the data directory.
pub const CONFIG_FILE: &str = "config.toml";

/// Everything a node needs to start. Built by [`Config::load`] or by hand in tests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Addresses to listen on. Empty means the defaults: every interface, IPv4 and IPv6,
    /// TCP and QUIC, on [`DEFAULT_PORT`] (or a free port when that one is taken).
    pub listen: Vec<Multiaddr>,
    /// Bootstrap peers, each a multiaddr ending in `/p2p/<peer-id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses this node knows to be its public ones (a VPS's public IP).
    pub external_addresses: Vec<Multiaddr>,
    /// Run as a relay and bootstrap node: relay server, Kademlia server, AutoNAT server.
    pub relay: bool,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// Limits a relay node applies to the reservations and circuits it serves.
    pub relay_limits: RelayLimits,
    /// How many relays a node behind NAT keeps reservations on.
    pub max_reservations: usize,
    /// Connections with no open stream are closed after this many seconds.
    pub idle_timeout_secs: u64,
    /// A TCP connection whose sent data stays unacknowledged for this many seconds is
    /// closed (Linux `TCP_USER_TIMEOUT`), and redialled when this node dialled it: after a
    /// network outage a fresh connection moves at once, while the old one would wait for a
    /// retransmission timer that backed off during the outage (up to two minutes). A slow
    /// connection that still gets acknowledgements is not affected. 0: the kernel's
    /// default (about 15 minutes of retransmissions).
    pub tcp_user_timeout_secs: u64,
    /// Upper bound on established connections, in and out.
    pub max_connections: u32,
    /// Upper bound on established connections per peer.
    pub max_connections_per_peer: u32,
    /// New connections are refused while the process uses more than this many MiB
    /// (0: no limit; simulations run hundreds of nodes in one process).
    pub max_memory_mb: u64,
    /// A DHT lookup gives up after this many seconds.
    pub dht_query_timeout_secs: u64,
    /// One DHT request to one peer gives up after this many seconds.
    pub dht_request_timeout_secs: u64,
    /// The node refreshes its DHT routing table every this many seconds (0: only when
    /// the table is nearly empty; simulations, whose clock is not the wall clock, use 0).
    pub dht_bootstrap_interval_secs: u64,
    /// Run AutoNAT: ask peers to dial our addresses back to learn whether we are
    /// reachable, and do the same for them. Simulations turn it off: on the memory
    /// transport every connection shows a node a fresh dialer port as its address, and
    /// probing each of those carried more bytes than the DHT itself.
    pub autonat: bool,
    /// Let AutoNAT probe and serve private and loopback addresses. Needed on test
    /// networks (loopback, TEST-NET) where no address is globally routable.
    pub autonat_private_ips: bool,
    /// How a relayed connection is turned into a direct one: `p2pnode` (our own exchange,
    /// started by the peer that dialled through the relay; the fastest, with libp2p's DCUtR
    /// beside it for peers that speak only DCUtR), `dcutr` (libp2p's DCUtR alone) or
    /// `off`. Relay-only nodes never punch.
    pub hole_punch: HolePunchMode,
    /// Privacy mode: never dial or accept direct connections (except to the bootstrap
    /// relays) and never advertise our own addresses; peers only see the relay's.
    pub relay_only: bool,
    /// Pad application frames to a few fixed sizes to hide message lengths. Costs
    /// bandwidth, so it is off by default.
    pub pad: bool,
    /// Serve Prometheus metrics (OpenMetrics text) on this TCP address, e.g.
    /// `127.0.0.1:9464`. Off by default; the metrics say who we talk to and how much, so
    /// keep the address private.
    pub metrics: Option<std::net::SocketAddr>,
}

/// Which hole-punching protocol a node runs (see [`Config::hole_punch`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum HolePunchMode {
    /// `/p2pnode/holepunch/1` ([`crate::holepunch`]).
    #[default]
    P2pnode,
    /// libp2p's DCUtR (`/libp2p/dcutr`).
    Dcutr,
    /// No hole punching: relayed connections stay relayed.
    Off,
}

impl HolePunchMode {
    /// Every mode.
    pub const ALL: [Self; 3] = [Self::P2pnode, Self::Dcutr, Self::Off];

    /// Parses the config and command-line spelling (`p2pnode`, `dcutr`, `off`).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// The config and command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::P2pnode => "p2pnode",
            Self::Dcutr => "dcutr",
            Self::Off => "off",
        }
    }
}

/// Limits of the relay server (`p2pnode start --relay`). libp2p's defaults (120 s and
/// 128 KiB per circuit) are enough to coordinate hole punching but not to carry files or
/// tunnel traffic for peers that cannot punch, so a relay operator can raise them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RelayLimits {
    /// Reservations held at once.
    pub max_reservations: usize,
    /// Reservations one peer may hold.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before the client must renew it, in seconds.
    pub reservation_duration_secs: u64,
    /// Circuits relayed at once.
    pub max_circuits: usize,
    /// Circuits one peer may have relayed at once.
    pub max_circuits_per_peer: usize,
    /// How long one circuit may live, in seconds.
    pub max_circuit_duration_secs: u64,
    /// How many bytes one circuit may carry (both directions).
    pub max_circuit_bytes: u64,
    /// Reservation requests (new or renewed) one network, an IPv4 /24 or an IPv6 /48, may
    /// make at once; fresh peer ids cost nothing, so the per-peer limits alone let one host
    /// take every reservation. 0 turns the limit off.
    pub reservation_burst_per_prefix: u32,
    /// A network gains one more reservation request every this many seconds (1 to 86400).
    /// The default lets a /24 keep about 270 reservations renewed (each every 45 minutes).
    pub reservation_refill_secs: u64,
    /// Circuits one network (IPv4 /24, IPv6 /48) may open through the relay at once, counted
    /// by the dialing side. 0 turns the limit off.
    pub circuit_burst_per_prefix: u32,
    /// A network gains one more circuit every this many seconds (1 to 86400).
    pub circuit_refill_secs: u64,
    /// Inbound connections one network (IPv4 /24, IPv6 /48) may hold at once, pending
    /// handshakes included; past it a new connection is closed before its handshake. Each
    /// reservation lives on a connection, so this also caps a network's reservations:
    /// without it a few hosts with fresh peer ids fill `max_connections` and
    /// `max_reservations` and lock everyone else out. 0 turns the limit off.
    pub max_connections_per_prefix: u32,
    /// How many networks each of the two rate limits above remembers. Past it the network closest
    /// to its full allowance is forgotten, so memory stays bounded however many addresses
    /// a client has.
    pub max_tracked_prefixes: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 512,
            max_reservations_per_peer: 4,
            reservation_duration_secs: 3600,
            max_circuits: 256,
            max_circuits_per_peer: 8,
            max_circuit_duration_secs: 600,
            max_circuit_bytes: 64 * 1024 * 1024,
            // Generous: a NAT of 128 peers restarting at once is served at once, yet one
            // network needs an hour to take the 512 reservations.
            reservation_burst_per_prefix: 128,
            reservation_refill_secs: 10,
            circuit_burst_per_prefix: 64,
            circuit_refill_secs: 5,
            max_tracked_prefixes: 4096,
            // 16 networks to fill the default 512 connections; far above what one home
            // NAT or one VPS runs.
            max_connections_per_prefix: 32,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            external_addresses: Vec::new(),
            relay: false,
            mdns: true,
            relay_limits: RelayLimits::default(),
            max_reservations: 2,
            idle_timeout_secs: 300,
            tcp_user_timeout_secs: 5,
            max_connections: 512,
            max_connections_per_peer: 8,
            max_memory_mb: 1024,
            dht_query_timeout_secs: 30,
            dht_request_timeout_secs: 10,
            dht_bootstrap_interval_secs: 300,
            autonat: true,
            autonat_private_ips: true,
            hole_punch: HolePunchMode::P2pnode,
            relay_only: false,
            pad: false,
            metrics: None,
        }
    }
}

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        source: Box<toml::de::Error>,
    },
}

impl Config {
    /// Reads `config.toml` from the data directory when it exists, else the defaults.
    pub fn load(data_dir: &Path) -> Result<Self, ConfigError> {
        let path = data_dir.join(CONFIG_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Reads the configuration from a file named by the user (`start --config`, as a
    /// service unit does with `/etc/p2pnode/relay.toml`): unlike [`Config::load`], a
    /// missing file is an error, since a typo must not silently start a default node.
    pub fn load_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path.to_path_buf())
    }

    fn parse(text: &str, path: PathBuf) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path,
            source: Box::new(source),
        })
    }

    /// The idle timeout as a [`Duration`].
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// The TCP user timeout, if any (see [`Config::tcp_user_timeout_secs`]).
    pub fn tcp_user_timeout(&self) -> Option<Duration> {
        Some(Duration::from_secs(self.tcp_user_timeout_secs)).filter(|d| !d.is_zero())
    }

    /// The addresses to listen on, and whether they are the defaults (which may fall back to a
    /// free port; explicit addresses may not).
    pub fn listen_addrs(&self) -> (Vec<Multiaddr>, bool) {
        if !self.listen.is_empty() {
            return (self.listen.clone(), false);
        }
        (default_listen_addrs(DEFAULT_PORT), true)
    }
}

/// All interfaces, IPv4 and IPv6, TCP and QUIC, on `port`.
pub fn default_listen_addrs(port: u16) -> Vec<Multiaddr> {
    [
        format!("/ip4/0.0.0.0/tcp/{port}"),
        format!("/ip6/::/tcp/{port}"),
        format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
        format!("/ip6/::/udp/{port}/quic-v1"),
    ]
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect()
}

/// Where a node keeps its identity, database and control socket: `--data-dir`, else
/// `$P2PNODE_HOME`, else the platform's data directory (`~/.local/share/p2pnode` on Linux).
pub fn resolve_data_dir(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = flag {
        return Some(dir.to_path_buf());
    }
    if let Some(home) = std::env::var_os("P2PNODE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(home));
    }
    directories::ProjectDirs::from("", "", "p2pnode").map(|d| d.data_dir().to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Config::load(dir.path()).unwrap(), Config::default());
    }

    #[test]
    fn file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "relay = true\nmdns = false\nmax_memory_mb = 0\ndht_bootstrap_interval_secs = 0\n\
             [relay_limits]\nmax_circuit_bytes = 10\nreservation_burst_per_prefix = 7\n",
        )
        .unwrap();
        let cfg = Config::load(dir.path()).unwrap();
        assert!(cfg.relay);
        assert!(!cfg.mdns);
        assert_eq!(cfg.max_memory_mb, 0);
        assert_eq!(cfg.dht_bootstrap_interval_secs, 0);
        assert_eq!(cfg.dht_query_timeout_secs, 30);
        assert_eq!(cfg.relay_limits.max_circuit_bytes, 10);
        assert_eq!(cfg.relay_limits.reservation_burst_per_prefix, 7);
        assert_eq!(
            cfg.relay_limits.reservation_refill_secs,
            RelayLimits::default().reservation_refill_secs
        );
        assert_eq!(
            cfg.relay_limits.max_circuits,
            RelayLimits::default().max_circuits
        );
    }

    #[test]
    fn bad_file_is_an_error_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), "relay = 3\n").unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.toml"), "{err}");
    }

    #[test]
    fn a_named_file_must_exist_and_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        let err = Config::load_file(&path).unwrap_err().to_string();
        assert!(err.contains("relay.toml"), "{err}");
        std::fs::write(&path, "relay = true\n").unwrap();
        assert!(Config::load_file(&path).unwrap().relay);
    }

    #[test]
    fn default_listen_covers_tcp_and_quic_on_both_families() {
        let addrs = default_listen_addrs(DEFAULT_PORT);
        assert_eq!(addrs.len(), 4);
    }
}

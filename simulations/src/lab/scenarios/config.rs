//! The scenarios' settings: the transport, the hole-punching set-up and the shared
//! [`ScenarioConfig`].

use std::net::Ipv4Addr;
use std::time::Duration;

use p2pnode_node::config::HolePunchMode;
use serde::Serialize;

use crate::lab::{LabBuilder, LabError, LinkFaults};

/// Which transport the peers (and the relay) listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP + Noise + Yamux.
    Tcp,
    /// QUIC v1.
    Quic,
}

impl Transport {
    /// Both, in the order scenarios run them.
    pub const ALL: [Transport; 2] = [Transport::Tcp, Transport::Quic];

    /// The name `peers --json` uses for it.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }

    /// A multiaddr for `ip` and `port` on this transport.
    pub fn addr(self, ip: Ipv4Addr, port: u16) -> String {
        match self {
            Transport::Tcp => format!("/ip4/{ip}/tcp/{port}"),
            Transport::Quic => format!("/ip4/{ip}/udp/{port}/quic-v1"),
        }
    }
}

impl std::str::FromStr for Transport {
    type Err = LabError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Transport::Tcp),
            "quic" => Ok(Transport::Quic),
            other => Err(LabError::Config(format!(
                "unknown transport {other:?} (tcp, quic)"
            ))),
        }
    }
}

/// Settings shared by the scenarios.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    /// One-way delay each router adds per crossing (a path between two NATed peers
    /// crosses two routers, so its round trip grows by four times this).
    pub delay: Duration,
    /// Longest wait for a direct connection after the relayed one exists. A negative
    /// outcome ends earlier once the daemon logs that DCUtR gave up.
    pub direct_window: Duration,
    /// Longest wait for daemons to start and hold reservations.
    pub setup_timeout: Duration,
    /// Interval of `peers` polls while waiting for a direct connection.
    pub poll_interval: Duration,
    /// `p2pnode-sim` binary for the delay links (default: found by the lab).
    pub sim_binary: Option<std::path::PathBuf>,
    /// Peers listen on `0.0.0.0` (all interfaces) instead of their LAN address. Off by
    /// default: with it the daemon advertises `127.0.0.1` too, other daemons dial that
    /// address, reach themselves, and the failed self-dial cancels their relayed dial
    /// (see the lab report); this switch reproduces that.
    pub listen_any: bool,
    /// Keep logs and data directories even on success (always kept on failure; env
    /// `P2PNODE_LAB_KEEP` does the same).
    pub keep_logs: bool,
    /// How the peers punch holes, and whether the relay introduces them.
    pub hole_punch: Punch,
    /// Start the relay and the peers with `--metrics 127.0.0.1:9464` (in their own
    /// namespaces) and scrape them at the end of a hole-punching trial.
    pub metrics: bool,
    /// The relay's per-circuit limits, when a scenario needs circuits that end sooner
    /// than the node's defaults (600 s, 64 MiB); `None` keeps the defaults.
    pub relay_circuit: Option<CircuitLimits>,
}

/// How long one relayed circuit may live and how many bytes (both ways) it may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CircuitLimits {
    /// Its lifetime, in seconds.
    pub secs: u64,
    /// Its bytes, both directions together.
    pub bytes: u64,
}

/// A hole-punching set-up the lab runs: the peers' protocol (`--hole-punch`), and whether
/// the relay introduces the two ends of a circuit (it does only for [`Punch::P2pnode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Punch {
    /// p2pnode's: the relay's introductions, the exchange when they fail (the default).
    #[default]
    P2pnode,
    /// p2pnode's exchange alone: the relay runs with `--hole-punch off`.
    Exchange,
    /// libp2p's DCUtR (the relay introduces nobody either).
    Dcutr,
    /// A runs ours (with DCUtR beside it), B only DCUtR: B stands for another libp2p
    /// implementation (the relay introduces, and skips B, which does not speak it).
    P2pnodeToDcutr,
    /// A only DCUtR, B ours: the other way round.
    DcutrToP2pnode,
}

impl Punch {
    /// Every set-up, in the order `--hole-punch` lists them.
    pub const ALL: [Punch; 5] = [
        Punch::P2pnode,
        Punch::Exchange,
        Punch::Dcutr,
        Punch::P2pnodeToDcutr,
        Punch::DcutrToP2pnode,
    ];

    /// Its name on the command line and in outcomes.
    pub fn as_str(self) -> &'static str {
        match self {
            Punch::P2pnode => "p2pnode",
            Punch::Exchange => "exchange",
            Punch::Dcutr => "dcutr",
            Punch::P2pnodeToDcutr => "p2pnode-dcutr",
            Punch::DcutrToP2pnode => "dcutr-p2pnode",
        }
    }

    /// Parses [`Punch::as_str`]'s spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == text)
    }

    /// The `--hole-punch` mode of A (the peer that connects) or of every other peer.
    pub fn mode(self) -> HolePunchMode {
        match self {
            Punch::P2pnode | Punch::Exchange | Punch::P2pnodeToDcutr => HolePunchMode::P2pnode,
            Punch::Dcutr | Punch::DcutrToP2pnode => HolePunchMode::Dcutr,
        }
    }

    /// The `--hole-punch` mode of B (the peer A connects to).
    pub fn mode_b(self) -> HolePunchMode {
        match self {
            Punch::P2pnodeToDcutr => HolePunchMode::Dcutr,
            Punch::DcutrToP2pnode => HolePunchMode::P2pnode,
            other => other.mode(),
        }
    }

    /// The relay's `--hole-punch` mode: introductions only where they are measured.
    pub(super) fn relay_mode(self) -> HolePunchMode {
        match self {
            Punch::P2pnode | Punch::P2pnodeToDcutr | Punch::DcutrToP2pnode => {
                HolePunchMode::P2pnode
            }
            Punch::Exchange | Punch::Dcutr => HolePunchMode::Off,
        }
    }
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            direct_window: Duration::from_secs(45),
            setup_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(20),
            sim_binary: None,
            listen_any: false,
            keep_logs: false,
            hole_punch: Punch::default(),
            metrics: false,
            relay_circuit: None,
        }
    }
}

impl ScenarioConfig {
    pub(super) fn faults(&self) -> LinkFaults {
        LinkFaults::none().with_delay(self.delay)
    }

    pub(super) fn builder(&self) -> LabBuilder {
        let builder = LabBuilder::new();
        match &self.sim_binary {
            Some(path) => builder.sim_binary(path),
            None => builder,
        }
    }
}

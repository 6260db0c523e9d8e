//! Scenario files (`simulations/scenarios/*.toml`): how many nodes, the link latency model,
//! how they bootstrap, the lookups to run, the churn to apply and the gossip to spread.
//! Everything random in a run is drawn from `seed`, so a file describes one repeatable run.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SimError;

/// One simulation run, as read from a TOML file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name of the run; the report files are named after it.
    pub name: String,
    /// What the run shows, for the report.
    #[serde(default)]
    pub description: String,
    /// Seed of every random choice: identities, latencies, bootstrap peers, lookups, churn.
    pub seed: u64,
    /// Nodes at the start (churn may add more).
    pub nodes: usize,
    /// Latency of the simulated links.
    #[serde(default)]
    pub latency: Latency,
    /// How the network is formed.
    #[serde(default)]
    pub bootstrap: Bootstrap,
    /// Limits applied to every node.
    #[serde(default)]
    pub limits: Limits,
    /// Peer lookups to run once the network is formed.
    #[serde(default)]
    pub lookups: Option<Lookups>,
    /// Nodes leaving and joining while the lookups run.
    #[serde(default)]
    pub churn: Option<Churn>,
    /// A message spreading through the network after the lookups.
    #[serde(default)]
    pub gossip: Option<Gossip>,
    /// Where node data directories go; default: `/dev/shm` when present (the node's
    /// database syncs every write, which costs nothing on tmpfs), else the temp directory.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

/// How the one-way latency of the link between two nodes is drawn.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LatencyModel {
    /// Each link independently, uniform in `[min_ms, max_ms]`.
    #[default]
    Uniform,
    /// Each node is a point in a unit square; a link's latency grows linearly with the
    /// distance from `min_ms` (same place) to `max_ms` (opposite corners), so latencies obey
    /// the triangle inequality as real ones roughly do.
    Geo,
}

/// Link latency.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Latency {
    /// How latencies are drawn.
    pub model: LatencyModel,
    /// Smallest one-way latency, milliseconds.
    pub min_ms: f64,
    /// Largest one-way latency, milliseconds.
    pub max_ms: f64,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            model: LatencyModel::Uniform,
            min_ms: 10.0,
            max_ms: 100.0,
        }
    }
}

/// Network formation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Bootstrap {
    /// The first `peers` nodes are bootstrap peers; they start first and never leave.
    pub peers: usize,
    /// Each other node is given this many of them (drawn from the seed).
    pub per_node: usize,
    /// Nodes joining at once. Joining is a start, a connection to a bootstrap peer and a
    /// lookup of the node's own id, which tells the nodes closest to it that it exists.
    pub join_concurrency: usize,
    /// Virtual seconds the formed network runs before the measurements start.
    pub settle_secs: f64,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Self {
            peers: 4,
            per_node: 2,
            join_concurrency: 32,
            settle_secs: 5.0,
        }
    }
}

/// Limits of every node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Established connections per node; `0` means `2 * nodes + 64`, enough that the
    /// bootstrap peers, which every node dials, are never full.
    pub max_connections: u32,
    /// Bytes a link holds in flight per direction before the writer waits.
    pub link_buffer_bytes: usize,
    /// The node's `idle_timeout_secs`: connections without open streams close after this
    /// long. The swarm times it on the wall clock, not the simulated one. Default 10 s,
    /// so connections a lookup opened close soon after it, as they would over the minutes
    /// of a real network; `0` keeps the node's own default (300 s).
    pub idle_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 0,
            link_buffer_bytes: 1024 * 1024,
            idle_timeout_secs: 10,
        }
    }
}

/// Random peer lookups: from a random running node, for a random other running node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Lookups {
    /// How many.
    pub count: usize,
    /// Started per virtual second, evenly spaced.
    pub rate_per_sec: f64,
    /// In flight at most; a lookup due while this many run waits for one to finish.
    pub max_in_flight: usize,
    /// Under churn: a node is only an origin or target when it has been up this long
    /// (time to announce itself) ...
    pub joined_for_secs: f64,
    /// ... and stays up this long (a lookup for a node that leaves meanwhile says nothing).
    pub stays_for_secs: f64,
}

impl Default for Lookups {
    fn default() -> Self {
        Self {
            count: 100,
            rate_per_sec: 50.0,
            max_in_flight: 256,
            joined_for_secs: 10.0,
            stays_for_secs: 10.0,
        }
    }
}

/// Nodes leaving and joining during the lookups, spread evenly over them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Churn {
    /// Fraction of the initial nodes that leave (never bootstrap peers).
    pub leave_fraction: f64,
    /// A node that left comes back after this many virtual seconds with the same
    /// identity and data directory (its peer store redials the peers it knew); `None`:
    /// it stays away.
    pub rejoin_after_secs: Option<f64>,
    /// Fresh nodes joining, as a fraction of the initial nodes.
    pub join_fraction: f64,
}

impl Default for Churn {
    fn default() -> Self {
        Self {
            leave_fraction: 0.1,
            rejoin_after_secs: Some(5.0),
            join_fraction: 0.0,
        }
    }
}

/// Room messages spreading through the network: every running node joins one gossipsub
/// topic (the node's `join_topic`), then each message is published by a random member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Gossip {
    /// Size of a message, bytes (at least 4: the message number).
    pub message_bytes: usize,
    /// How many messages, each from a different random node, one after the other.
    pub messages: usize,
}

impl Default for Gossip {
    fn default() -> Self {
        Self {
            message_bytes: 256,
            messages: 3,
        }
    }
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::ReadScenario {
            path: path.to_path_buf(),
            source,
        })?;
        let scenario: Self = toml::from_str(&text).map_err(|e| SimError::ParseScenario {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// A small DHT scenario with defaults, for tests and examples.
    pub fn small_dht(name: &str, seed: u64, nodes: usize, lookups: usize) -> Self {
        Self {
            name: name.to_string(),
            description: String::new(),
            seed,
            nodes,
            latency: Latency::default(),
            bootstrap: Bootstrap::default(),
            limits: Limits::default(),
            lookups: Some(Lookups {
                count: lookups,
                ..Lookups::default()
            }),
            churn: None,
            gossip: None,
            data_dir: None,
        }
    }

    /// Checks that the numbers make sense together.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |reason: String| Err(SimError::InvalidScenario(reason));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad(format!(
                "name {:?} must be non-empty ASCII letters, digits, '-' or '_' (it names the report files)",
                self.name
            ));
        }
        if self.nodes < 2 {
            return bad("nodes must be at least 2".into());
        }
        let b = &self.bootstrap;
        if b.peers == 0 || b.peers > self.nodes {
            return bad(format!("bootstrap.peers must be in 1..={}", self.nodes));
        }
        if b.per_node == 0 || b.join_concurrency == 0 {
            return bad(
                "bootstrap.per_node and bootstrap.join_concurrency must be positive".into(),
            );
        }
        if !(b.settle_secs.is_finite() && b.settle_secs >= 0.0) {
            return bad("bootstrap.settle_secs must be a non-negative number".into());
        }
        let l = &self.latency;
        if !(l.min_ms.is_finite()
            && l.max_ms.is_finite()
            && 0.0 <= l.min_ms
            && l.min_ms <= l.max_ms)
        {
            return bad("latency needs 0 <= min_ms <= max_ms".into());
        }
        if self.limits.link_buffer_bytes < 64 * 1024 {
            return bad("limits.link_buffer_bytes must be at least 65536 (one noise frame)".into());
        }
        if let Some(k) = &self.lookups {
            if !(k.rate_per_sec.is_finite() && k.rate_per_sec > 0.0) || k.max_in_flight == 0 {
                return bad("lookups need rate_per_sec > 0 and max_in_flight > 0".into());
            }
            if !(k.joined_for_secs >= 0.0 && k.stays_for_secs >= 0.0) {
                return bad("lookups.joined_for_secs and stays_for_secs must be >= 0".into());
            }
        }
        if let Some(c) = &self.churn {
            if self.lookups.is_none() {
                return bad("churn happens during the lookups: add a [lookups] table".into());
            }
            if !(0.0..=0.9).contains(&c.leave_fraction) || !(0.0..=1.0).contains(&c.join_fraction) {
                return bad(
                    "churn needs leave_fraction in 0..=0.9 and join_fraction in 0..=1".into(),
                );
            }
            if let Some(r) = c.rejoin_after_secs
                && !(r.is_finite() && r >= 0.0)
            {
                return bad("churn.rejoin_after_secs must be a non-negative number".into());
            }
        }
        if let Some(g) = &self.gossip
            && (g.messages == 0 || g.message_bytes < 4 || g.message_bytes > 60 * 1024)
        {
            return bad("gossip needs messages > 0 and 4 <= message_bytes <= 61440".into());
        }
        Ok(())
    }
}

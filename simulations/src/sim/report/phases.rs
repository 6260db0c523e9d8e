//! What each phase measured: forming the network, the lookups, the churn and the gossip
//! spread.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Stats;
use crate::sim::plan::PlannedLookup;

/// Forming the network.
#[derive(Debug, Clone, Serialize)]
pub struct Formation {
    /// Nodes running once formed.
    pub nodes_started: usize,
    /// Nodes that failed to join, with why.
    pub join_failures: Vec<(usize, String)>,
    /// Virtual seconds from the first start to the last join.
    pub virtual_secs: f64,
    /// Wall seconds of the formation, settling included.
    pub wall_secs: f64,
    /// Virtual seconds after the last join until no node had a DHT query running (the
    /// routing-table bootstraps Kademlia starts by itself), or the limit.
    pub settle_virtual_secs: f64,
    /// DHT queries still running when settling stopped (0 unless it hit the limit).
    pub queries_left: usize,
    /// How long each joining node's lookup of its own id took, ms.
    pub self_lookup_ms: Option<Stats>,
    /// Joining nodes whose own-id lookup never reached the network.
    pub self_lookup_failures: usize,
    /// Own-id lookups tried again because the node had lost its connections.
    pub self_lookup_retries: usize,
    /// Of the nodes whose own-id lookup never reached the network, those that got
    /// through when joining again after everyone else had joined.
    pub self_lookup_repaired: usize,
}

/// One lookup.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LookupRecord {
    /// Index in the plan.
    pub index: usize,
    /// Planned start, ms since the lookups began (virtual).
    pub planned_ms: f64,
    /// Actual start (later when too many were in flight).
    pub started_ms: f64,
    /// Node asking.
    pub origin: usize,
    /// Node looked for.
    pub target: usize,
    /// Whether the target was found with an address.
    pub ok: bool,
    /// Virtual time the lookup took, ms.
    pub latency_ms: f64,
    /// Wall-clock time it took, ms. Kademlia gives up on a peer that has not answered
    /// within 10 s of *wall* time (libp2p-kad's fixed peer timeout), so a failed lookup
    /// with a long wall time may be the machine's load rather than the network's doing.
    pub wall_ms: f64,
    /// FIND_NODE requests for the target the origin sent during the lookup (read on the
    /// links; the node does not expose kad's `QueryStats`). `None` when it did not run.
    pub requests: Option<u64>,
    /// The node's error kind when it failed.
    pub error: Option<String>,
}

impl LookupRecord {
    /// A lookup that could not start (its origin was not running).
    pub(in crate::sim) fn not_run(
        index: usize,
        planned: PlannedLookup,
        at: std::time::Duration,
        why: &str,
    ) -> Self {
        Self {
            index,
            planned_ms: planned.at.as_secs_f64() * 1000.0,
            started_ms: at.as_secs_f64() * 1000.0,
            origin: planned.origin,
            target: planned.target,
            ok: false,
            latency_ms: 0.0,
            wall_ms: 0.0,
            requests: None,
            error: Some(why.to_string()),
        }
    }
}

/// The lookups.
#[derive(Debug, Clone, Serialize)]
pub struct LookupReport {
    /// Planned.
    pub planned: usize,
    /// Finished (succeeded or failed).
    pub completed: usize,
    /// Found the target.
    pub succeeded: usize,
    /// `succeeded / planned`.
    pub success_rate: f64,
    /// Failures by error kind.
    pub failures: BTreeMap<String, usize>,
    /// Latency of the successful lookups, ms (virtual).
    pub latency_ms: Option<Stats>,
    /// Kademlia requests per successful lookup.
    pub requests: Option<Stats>,
    /// How many lookups could start later than planned because too many were in flight.
    pub delayed_starts: usize,
    /// Virtual seconds of the lookup phase.
    pub virtual_secs: f64,
    /// Wall seconds of the lookup phase.
    pub wall_secs: f64,
    /// Every lookup.
    pub records: Vec<LookupRecord>,
}

impl LookupReport {
    pub(in crate::sim) fn new(
        planned: usize,
        records: Vec<LookupRecord>,
        delayed_starts: usize,
        virtual_secs: f64,
        wall_secs: f64,
    ) -> Self {
        let ok: Vec<&LookupRecord> = records.iter().filter(|r| r.ok).collect();
        let latencies: Vec<f64> = ok.iter().map(|r| r.latency_ms).collect();
        let requests: Vec<f64> = ok
            .iter()
            .filter_map(|r| r.requests.map(|n| n as f64))
            .collect();
        Self {
            planned,
            completed: records.len(),
            succeeded: ok.len(),
            success_rate: ok.len() as f64 / planned.max(1) as f64,
            failures: crate::sim::runner::count_kinds(
                records.iter().filter_map(|r| r.error.as_deref()),
            ),
            latency_ms: Stats::of(&latencies),
            requests: Stats::of(&requests),
            delayed_starts,
            virtual_secs,
            wall_secs,
            records,
        }
    }
}

/// Churn applied during the lookups.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnReport {
    /// Nodes that left.
    pub leaves: usize,
    /// Nodes that came back.
    pub rejoins: usize,
    /// Fresh nodes that joined.
    pub joins: usize,
    /// (Re)joins that failed, with why.
    pub failed_joins: Vec<(usize, String)>,
    /// The planned events, for the plots.
    pub events: Vec<crate::sim::plan::ChurnEvent>,
}

/// One gossip message.
#[derive(Debug, Clone, Serialize)]
pub struct MessageSpread {
    /// Node that published it.
    pub publisher: usize,
    /// Nodes that received it (the publisher included).
    pub reached: usize,
    /// Nodes running.
    pub of: usize,
    /// Time until the last member got it, ms (virtual); `None` unless all did.
    pub spread_ms: Option<f64>,
    /// Per-member arrival times, ms (the publisher at 0).
    pub arrival_ms: Option<Stats>,
    /// Bytes written on all links while it spread, per member (gossipsub's copies and
    /// control messages, plus whatever else the nodes sent meanwhile).
    pub link_bytes_per_member: f64,
    /// Sorted arrival times, ms, for the spread curve.
    pub arrivals: Vec<f64>,
}

/// The gossip spread.
#[derive(Debug, Clone, Serialize)]
pub struct GossipReport {
    /// How messages travel.
    pub method: String,
    /// Nodes in the room.
    pub members: usize,
    /// Nodes that could not join.
    pub join_failures: usize,
    /// Virtual seconds until every member was connected to a few others.
    pub overlay_virtual_secs: f64,
    /// Wall seconds of the same (provider lookups run on real-time timers).
    pub overlay_wall_secs: f64,
    /// Whether a warm-up message reached every member before the measured ones.
    pub warmed_up: bool,
    /// Each message.
    pub messages: Vec<MessageSpread>,
    /// Wall seconds of the gossip phase.
    pub wall_secs: f64,
}

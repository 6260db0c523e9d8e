//! What a run cost: process memory (from `/proc/self/status`) and the traffic counted on
//! the links.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::sim::link::NodeCounters;

/// Process memory (from `/proc/self/status`).
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// Resident set before any node started.
    pub baseline_rss_bytes: Option<u64>,
    /// Resident set once the network formed.
    pub rss_formed_bytes: Option<u64>,
    /// Resident set after the lookups.
    pub rss_after_lookups_bytes: Option<u64>,
    /// Peak resident set of the process.
    pub peak_rss_bytes: Option<u64>,
    /// Nodes running once formed.
    pub nodes_formed: usize,
    /// Nodes running after the lookups.
    pub nodes_after_lookups: usize,
    /// `(rss_formed - baseline) / nodes_formed`.
    pub per_node_formed_bytes: Option<u64>,
    /// `(rss_after_lookups - baseline) / nodes_after_lookups`: with the connections the
    /// lookups opened.
    pub per_node_after_lookups_bytes: Option<u64>,
    /// Disk (tmpfs) the nodes' data directories use: identity and database. Not in RSS.
    pub data_dir_bytes: u64,
    /// Connections open between the nodes once formed (each counted once).
    pub connections_formed: usize,
    /// Connections open after the lookups.
    pub connections_after_lookups: usize,
}

/// Traffic counted on the links over the whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Traffic {
    /// Kademlia requests sent, all nodes.
    pub kad_requests: u64,
    /// Most Kademlia requests one node served.
    pub max_kad_served: u64,
    /// Median Kademlia requests served per node.
    pub median_kad_served: u64,
    /// Bytes written on all links (encrypted, all protocols).
    pub bytes: u64,
    /// Connections opened, all nodes (closed idle ones come back as new ones).
    pub connections_opened: u64,
}

impl Traffic {
    pub(in crate::sim) fn from_counters(counters: &[Arc<NodeCounters>]) -> Self {
        let mut served: Vec<u64> = counters
            .iter()
            .map(|c| c.kad_in.load(Ordering::Relaxed))
            .collect();
        served.sort_unstable();
        Self {
            kad_requests: counters
                .iter()
                .map(|c| c.kad_out.load(Ordering::Relaxed))
                .sum(),
            max_kad_served: served.last().copied().unwrap_or(0),
            median_kad_served: served.get(served.len() / 2).copied().unwrap_or(0),
            bytes: counters
                .iter()
                .map(|c| c.bytes_out.load(Ordering::Relaxed))
                .sum(),
            connections_opened: counters
                .iter()
                .map(|c| c.dialled.load(Ordering::Relaxed))
                .sum(),
        }
    }
}

/// The process's resident set, bytes.
pub fn rss_bytes() -> Option<u64> {
    proc_status_kb("VmRSS:").map(|kb| kb * 1024)
}

/// The process's peak resident set, bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kb("VmHWM:").map(|kb| kb * 1024)
}

fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn proc_status_is_readable() {
        assert!(rss_bytes().unwrap() > 0);
        assert!(peak_rss_bytes().unwrap() >= rss_bytes().unwrap() / 2);
    }
}

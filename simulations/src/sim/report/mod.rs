//! What a run measured, as JSON (every lookup and message, for further analysis) and as a
//! self-contained HTML page with a summary table and plots: the lookup-latency CDF,
//! requests per lookup, lookups over time with the churn events, and the gossip spread.
//!
//! This file holds the [`Report`] with its [`Stats`], and writes it; `phases` holds what
//! each phase measured, `resources` the memory and traffic, and `html` the HTML page.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::SimError;
use super::scenario::Scenario;

mod html;
mod phases;
mod resources;

pub(super) use html::esc;
pub use phases::{ChurnReport, Formation, GossipReport, LookupRecord, LookupReport, MessageSpread};
pub use resources::{Memory, Traffic, peak_rss_bytes, rss_bytes};

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub name: String,
    /// Scenario description.
    pub description: String,
    /// The seed.
    pub seed: u64,
    /// Initial nodes.
    pub nodes: usize,
    /// Fingerprint of the plan: equal for runs that started the same nodes and asked the
    /// same questions.
    pub plan_fingerprint: String,
    /// The scenario as run.
    pub scenario: Scenario,
    /// Peer id of each node index used in the records.
    pub peers: Vec<String>,
    /// Forming the network.
    pub formation: Formation,
    /// The lookups.
    pub lookups: Option<LookupReport>,
    /// The churn applied during the lookups.
    pub churn: Option<ChurnReport>,
    /// The gossip spread.
    pub gossip: Option<GossipReport>,
    /// Process memory.
    pub memory: Memory,
    /// Traffic counted on the links.
    pub traffic: Traffic,
    /// Virtual (simulated) seconds of the whole run.
    pub virtual_secs: f64,
    /// Wall-clock seconds of the whole run.
    pub wall_secs: f64,
}

/// Summary statistics of a sample (nearest-rank percentiles).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Stats {
    /// Sample size.
    pub count: usize,
    /// Smallest value.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
}

impl Stats {
    /// Statistics of `values`; `None` when empty.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
            v[rank.clamp(1, v.len()) - 1]
        };
        Some(Self {
            count: v.len(),
            min: v[0],
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: pct(50.0),
            p90: pct(90.0),
            p95: pct(95.0),
            p99: pct(99.0),
            max: v[v.len() - 1],
        })
    }
}

impl Report {
    /// Writes `<dir>/<name>.json` and `<dir>/<name>.html` and returns their paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), SimError> {
        std::fs::create_dir_all(dir).map_err(SimError::io(format!(
            "cannot create report directory {}",
            dir.display()
        )))?;
        let json = dir.join(format!("{}.json", self.name));
        let html = dir.join(format!("{}.html", self.name));
        let text = serde_json::to_string_pretty(self).map_err(|e| SimError::Io {
            what: "cannot encode the report".into(),
            source: e.into(),
        })?;
        std::fs::write(&json, text)
            .map_err(SimError::io(format!("cannot write {}", json.display())))?;
        std::fs::write(&html, self.html())
            .map_err(SimError::io(format!("cannot write {}", html.display())))?;
        Ok((json, html))
    }

    /// A one-line summary for people.
    pub fn summary(&self) -> String {
        let mut s = format!("{}: {} nodes", self.name, self.nodes);
        if let Some(l) = &self.lookups {
            let _ = write!(
                s,
                ", lookups {}/{} ({:.2}%)",
                l.succeeded,
                l.planned,
                l.success_rate * 100.0
            );
            if let Some(lat) = &l.latency_ms {
                let _ = write!(s, ", latency p50 {:.0} ms p99 {:.0} ms", lat.p50, lat.p99);
            }
            if let Some(r) = &l.requests {
                let _ = write!(s, ", requests p50 {:.0} p99 {:.0}", r.p50, r.p99);
            }
        }
        if let Some(g) = &self.gossip {
            for m in &g.messages {
                let _ = write!(
                    s,
                    ", message reached {}/{} in {}",
                    m.reached,
                    m.of,
                    m.spread_ms
                        .map_or_else(|| "-".to_string(), |t| format!("{t:.0} ms"))
                );
            }
        }
        if let Some(b) = self.memory.per_node_after_lookups_bytes {
            let _ = write!(s, ", {:.2} MiB/node", b as f64 / MIB);
        }
        if let Some(p) = self.memory.peak_rss_bytes {
            let _ = write!(s, ", peak RSS {:.2} GiB", p as f64 / MIB / 1024.0);
        }
        let _ = write!(s, ", wall {:.1} s", self.wall_secs);
        s
    }
}

const MIB: f64 = 1024.0 * 1024.0;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Stats::of(&v).unwrap();
        assert_eq!(
            (s.p50, s.p90, s.p99, s.max, s.min),
            (50.0, 90.0, 99.0, 100.0, 1.0)
        );
        assert_eq!(Stats::of(&[7.0]).unwrap().p99, 7.0);
        assert!(Stats::of(&[]).is_none());
    }
}

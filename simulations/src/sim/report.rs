//! What a run measured, as JSON (every lookup and message, for further analysis) and as a
//! self-contained HTML page with a summary table and plots: the lookup-latency CDF,
//! requests per lookup, lookups over time with the churn events, and the gossip spread.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::SimError;
use super::link::NodeCounters;
use super::plan::{ChurnKind, PlannedLookup};
use super::scenario::Scenario;
use super::svg::{Chart, Kind, Series};

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
    pub(super) fn not_run(
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
    pub(super) fn new(
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
            failures: super::runner::count_kinds(records.iter().filter_map(|r| r.error.as_deref())),
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
    pub events: Vec<super::plan::ChurnEvent>,
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
    pub(super) fn from_counters(counters: &[Arc<NodeCounters>]) -> Self {
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

    /// The HTML report.
    pub fn html(&self) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{name}</title>\
             <style>body{{font:14px system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}}\
             table{{border-collapse:collapse;margin:1em 0}}td,th{{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}}\
             td.n{{text-align:right;font-variant-numeric:tabular-nums}}h2{{margin-top:1.6em}}\
             .ok{{color:#1a7f37;font-weight:600}}.bad{{color:#cf222e;font-weight:600}}\
             .muted{{color:#666}}svg{{display:block;margin:1em 0}}</style></head><body>\
             <h1>{name}</h1><p>{desc}</p><p class=\"muted\">seed {seed}, plan {fp}, \
             {nodes} nodes, {virt:.1} virtual s in {wall:.1} wall s</p>",
            name = esc(&self.name),
            desc = esc(&self.description),
            seed = self.seed,
            fp = self.plan_fingerprint,
            nodes = self.nodes,
            virt = self.virtual_secs,
            wall = self.wall_secs,
        );
        h.push_str(&self.summary_table());
        if let Some(l) = &self.lookups {
            h.push_str(&self.lookup_section(l));
        }
        if let Some(g) = &self.gossip {
            h.push_str(&gossip_section(g));
        }
        if let Some(s) = &self.formation.self_lookup_ms {
            let _ = write!(
                h,
                "<h2>Joining</h2><p>{} nodes joined in {:.1} virtual s ({:.1} wall s); \
                 own-id lookups p50 {:.0} ms, p99 {:.0} ms; {} of them never reached the \
                 network ({} got through joining again once the others had joined), {} \
                 were tried again after the node lost its connections. The \
                 network then settled for {:.1} virtual s, until no node had a DHT query \
                 running ({} still running).</p>",
                self.formation.nodes_started,
                self.formation.virtual_secs,
                self.formation.wall_secs,
                s.p50,
                s.p99,
                self.formation.self_lookup_failures,
                self.formation.self_lookup_repaired,
                self.formation.self_lookup_retries,
                self.formation.settle_virtual_secs,
                self.formation.queries_left
            );
        }
        h.push_str(
            "<h2>How to read this</h2><p class=\"muted\">Every node runs the p2pnode stack \
             (<code>Node::start_with</code>) in one process, on the memory transport with a \
             one-way latency per link drawn from the seed. Times are virtual: tokio's clock \
             is paused and jumps to the next timer whenever all nodes wait, so latencies are \
             what the links add up to, independent of this machine's speed. Timers inside \
             libp2p that use the wall clock (ping, idle connections, Kademlia's automatic \
             bootstrap and request timeouts, gossipsub's heartbeat) run in wall time. \
             Requests per lookup are the FIND_NODE requests for the target the origin wrote \
             on its links. Memory is the process's resident set less its size before the \
             first node started, divided by the nodes running.</p>",
        );
        h.push_str("</body></html>\n");
        h
    }

    fn summary_table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        if let Some(l) = &self.lookups {
            let class = if l.succeeded == l.planned {
                "ok"
            } else {
                "bad"
            };
            rows.push((
                "Lookup success".into(),
                format!(
                    "<span class=\"{class}\">{:.2}%</span> ({} of {})",
                    l.success_rate * 100.0,
                    l.succeeded,
                    l.planned
                ),
            ));
            if !l.failures.is_empty() {
                let f: Vec<String> = l
                    .failures
                    .iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect();
                rows.push(("Failures".into(), esc(&f.join(", "))));
            }
            if let Some(s) = &l.latency_ms {
                rows.push(("Lookup latency".into(), stats_ms(s)));
            }
            if let Some(s) = &l.requests {
                rows.push((
                    "Requests per lookup".into(),
                    format!(
                        "p50 {:.0} · p90 {:.0} · p99 {:.0} · max {:.0} (FIND_NODE requests sent by the origin)",
                        s.p50, s.p90, s.p99, s.max
                    ),
                ));
            }
        }
        if let Some(c) = &self.churn {
            rows.push((
                "Churn".into(),
                format!(
                    "{} left, {} came back, {} fresh joined, {} (re)joins failed",
                    c.leaves,
                    c.rejoins,
                    c.joins,
                    c.failed_joins.len()
                ),
            ));
        }
        if let Some(g) = &self.gossip {
            for (i, m) in g.messages.iter().enumerate() {
                rows.push((
                    format!("Message {} spread", i + 1),
                    format!(
                        "{} of {} members; all reached in {}{}; {:.1} KiB on the links per member",
                        m.reached,
                        m.of,
                        m.spread_ms
                            .map_or_else(|| "-".to_string(), |t| format!("{t:.0} ms")),
                        m.arrival_ms.map_or_else(String::new, |s| format!(
                            " (p50 {:.0} ms, p90 {:.0} ms)",
                            s.p50, s.p90
                        )),
                        m.link_bytes_per_member / 1024.0
                    ),
                ));
            }
        }
        let m = &self.memory;
        if let Some(b) = m.per_node_after_lookups_bytes.or(m.per_node_formed_bytes) {
            rows.push((
                "Memory per node".into(),
                format!(
                    "{:.2} MiB (RSS − baseline) / nodes; peak RSS {:.2} GiB; {} connections \
                     ({:.0} per node) once formed, {} after the lookups",
                    b as f64 / MIB,
                    m.peak_rss_bytes.unwrap_or(0) as f64 / MIB / 1024.0,
                    m.connections_formed,
                    2.0 * m.connections_formed as f64 / m.nodes_formed.max(1) as f64,
                    m.connections_after_lookups
                ),
            ));
        }
        rows.push((
            "Traffic".into(),
            format!(
                "{} Kademlia requests, busiest node served {} (median {}), {:.1} MiB on the links, \
                 {} connections opened",
                self.traffic.kad_requests,
                self.traffic.max_kad_served,
                self.traffic.median_kad_served,
                self.traffic.bytes as f64 / MIB,
                self.traffic.connections_opened
            ),
        ));
        rows.push((
            "Wall time".into(),
            format!(
                "{:.1} s (forming {:.1} s{})",
                self.wall_secs,
                self.formation.wall_secs,
                self.lookups
                    .as_ref()
                    .map_or_else(String::new, |l| format!(", lookups {:.1} s", l.wall_secs))
            ),
        ));
        let mut t = String::from("<table>");
        for (k, v) in rows {
            let _ = write!(t, "<tr><th>{}</th><td>{v}</td></tr>", esc(&k));
        }
        t.push_str("</table>");
        t
    }

    fn lookup_section(&self, l: &LookupReport) -> String {
        let mut h = String::from("<h2>Lookups</h2>");
        let mut lat: Vec<f64> = l
            .records
            .iter()
            .filter(|r| r.ok)
            .map(|r| r.latency_ms)
            .collect();
        lat.sort_by(f64::total_cmp);
        h.push_str(
            &Chart {
                title: "Lookup latency, CDF (successful lookups, virtual time)".into(),
                x_label: "latency (ms)".into(),
                y_label: "fraction of lookups".into(),
                series: vec![Series {
                    name: format!("{} lookups", lat.len()),
                    points: cdf(&lat),
                    kind: Kind::Step,
                    color: "#0969da",
                }],
                y_max: Some(1.0),
                markers: Vec::new(),
            }
            .render(),
        );
        let requests: Vec<u64> = l.records.iter().filter_map(|r| r.requests).collect();
        if !requests.is_empty() {
            let mut hist: BTreeMap<u64, usize> = BTreeMap::new();
            for r in &requests {
                *hist.entry(*r).or_insert(0) += 1;
            }
            h.push_str(
                &Chart {
                    title: "Kademlia requests per lookup".into(),
                    x_label: "requests sent by the origin".into(),
                    y_label: "lookups".into(),
                    series: vec![Series {
                        name: format!("{} lookups", requests.len()),
                        points: hist.iter().map(|(&k, &n)| (k as f64, n as f64)).collect(),
                        kind: Kind::Bars,
                        color: "#8250df",
                    }],
                    y_max: None,
                    markers: Vec::new(),
                }
                .render(),
            );
        }
        let ok: Vec<(f64, f64)> = l
            .records
            .iter()
            .filter(|r| r.ok)
            .map(|r| (r.started_ms / 1000.0, r.latency_ms))
            .collect();
        let top = ok.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0);
        let failed: Vec<(f64, f64)> = l
            .records
            .iter()
            .filter(|r| !r.ok)
            .map(|r| (r.started_ms / 1000.0, top))
            .collect();
        let mut series = vec![Series {
            name: "found".into(),
            points: ok,
            kind: Kind::Dots,
            color: "#0969da",
        }];
        if !failed.is_empty() {
            series.push(Series {
                name: "failed (drawn at the top)".into(),
                points: failed,
                kind: Kind::Dots,
                color: "#cf222e",
            });
        }
        let markers = self.churn.as_ref().map_or_else(Vec::new, |c| {
            c.events
                .iter()
                .map(|e| {
                    let color = match e.kind {
                        ChurnKind::Leave(_) => "#cf222e",
                        ChurnKind::Rejoin(_) | ChurnKind::Join(_) => "#1a7f37",
                    };
                    (e.at.as_secs_f64(), color)
                })
                .collect()
        });
        let title = if markers.is_empty() {
            "Lookups over time".to_string()
        } else {
            "Lookups over time (ticks: red a node leaves, green a node joins)".to_string()
        };
        h.push_str(
            &Chart {
                title,
                x_label: "start (virtual s since the lookups began)".into(),
                y_label: "latency (ms)".into(),
                series,
                y_max: None,
                markers,
            }
            .render(),
        );
        h
    }
}

fn gossip_section(g: &GossipReport) -> String {
    let mut h = format!(
        "<h2>Gossip</h2><p>{} Members connected to each other in {:.1} wall s; \
         arrivals are virtual time on the formed mesh (a long tail means gossip repair on \
         gossipsub's real-time heartbeat).</p>",
        esc(&g.method),
        g.overlay_wall_secs
    );
    const COLORS: [&str; 6] = [
        "#0969da", "#8250df", "#1a7f37", "#bf8700", "#cf222e", "#57606a",
    ];
    let series = g
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let of = m.of.max(1) as f64;
            let mut points = vec![(0.0, 0.0)];
            points.extend(
                m.arrivals
                    .iter()
                    .enumerate()
                    .map(|(k, &t)| (t, (k + 1) as f64 / of)),
            );
            Series {
                name: format!("message {} from node {}", i + 1, m.publisher),
                points,
                kind: Kind::Step,
                color: COLORS[i % COLORS.len()],
            }
        })
        .collect();
    h.push_str(
        &Chart {
            title: "Message spread: fraction of nodes that have it (virtual time)".into(),
            x_label: "time since publishing (ms)".into(),
            y_label: "fraction of nodes".into(),
            series,
            y_max: Some(1.0),
            markers: Vec::new(),
        }
        .render(),
    );
    h
}

const MIB: f64 = 1024.0 * 1024.0;

fn stats_ms(s: &Stats) -> String {
    format!(
        "p50 {:.0} ms · p90 {:.0} ms · p99 {:.0} ms · max {:.0} ms",
        s.p50, s.p90, s.p99, s.max
    )
}

/// Points of an empirical CDF of sorted values.
fn cdf(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len().max(1) as f64;
    let mut points = vec![(sorted.first().copied().unwrap_or(0.0), 0.0)];
    points.extend(
        sorted
            .iter()
            .enumerate()
            .map(|(i, &v)| (v, (i + 1) as f64 / n)),
    );
    points
}

/// Escapes text for HTML.
pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

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

    #[test]
    fn proc_status_is_readable() {
        assert!(rss_bytes().unwrap() > 0);
        assert!(peak_rss_bytes().unwrap() >= rss_bytes().unwrap() / 2);
    }
}

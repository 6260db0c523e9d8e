//! The HTML report: a summary table and the plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{GossipReport, LookupReport, MIB, Report, Stats};
use crate::sim::plan::ChurnKind;
use crate::sim::svg::{Chart, Kind, Series};

impl Report {
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
pub(in crate::sim) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

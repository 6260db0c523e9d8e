//! Document convergence under churn: a pure simulation of the sync core (crdt's
//! `SyncSession`, the same state machine `protocols/sync` runs per peer), with no network
//! stack, in virtual time (issue #20's scenario).
//!
//! `members` nodes hold one document; each is linked to a few others (a ring plus random
//! chords, so the graph stays connected). Each burst: a share of members (`churn`) leaves,
//! `editors` members (online or not) make `edits_per_member` edits each, then the leavers
//! come back. Sync messages travel the links with a latency each; a member that received
//! something says what its sessions then have to say to its neighbours, at most once per
//! `flush_ms` (what arrives meanwhile goes out together: one message per neighbour carries
//! every change received, where answering each message alone would send each change down
//! every link once per path it arrived by). A burst ends when no
//! message is in flight; at that point every member must hold the same heads. The report
//! gives, per burst, the time from the last edit (or return) until the last member reached
//! those heads, and the messages and bytes it took. The seed fixes the plan (the links,
//! their latencies, who leaves when, what is written); automerge gives every writer a
//! random session tag in its actor id, so change hashes, and with them the sync messages'
//! Bloom filters, differ between runs, and message counts with them, slightly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::{Path, PathBuf};

use p2pnode_crdt::{ChangeHash, Commit, Document, SyncSession};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::report::esc;
use super::svg::{Chart, Kind, Series};

/// What to simulate.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// How many members.
    pub members: usize,
    /// Links per member beyond the ring (random chords).
    pub extra_links: usize,
    /// Bursts of edits.
    pub bursts: usize,
    /// Share of members offline during each burst (0.1 = 10 %).
    pub churn: f64,
    /// Members that edit in each burst (drawn at random; offline ones too).
    pub editors: usize,
    /// Edits each of them makes per burst.
    pub edits_per_member: usize,
    /// A member sends at most once per this many ms after receiving.
    pub flush_ms: u64,
    /// One-way link latency range, ms.
    pub latency_ms: (u64, u64),
    /// The seed.
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            members: 100,
            extra_links: 2,
            bursts: 10,
            churn: 0.1,
            editors: 20,
            edits_per_member: 1,
            flush_ms: 5,
            latency_ms: (10, 60),
            seed: 1,
        }
    }
}

/// One burst's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Burst {
    /// Its index.
    pub burst: usize,
    /// Members that were offline during the edits.
    pub offline: usize,
    /// Which ones.
    pub leavers: Vec<usize>,
    /// Virtual ms from the burst's start (edits made, leavers back) until every member held
    /// the final heads.
    pub converged_ms: u64,
    /// Per member, when it first held the final heads (virtual ms from the start), sorted.
    pub member_ms: Vec<u64>,
    /// Sync messages sent.
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Whether every member ended with the same heads (always, or the run fails).
    pub same_heads: bool,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct ConvergenceReport {
    /// What ran.
    pub settings: Settings,
    /// Each burst.
    pub bursts: Vec<Burst>,
    /// Links in the graph.
    pub links: usize,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
}

/// Errors of the simulation.
#[derive(Debug, thiserror::Error)]
pub enum ConvergenceError {
    /// The crdt failed.
    #[error("crdt: {0}")]
    Crdt(#[from] p2pnode_crdt::Error),
    /// Members ended with different heads.
    #[error("burst {0}: members ended with different heads")]
    Diverged(usize),
    /// Bad settings.
    #[error("{0}")]
    Settings(String),
    /// Writing the report failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn id(i: usize) -> Vec<u8> {
    format!("member-{i:04}").into_bytes()
}

/// What happens at a point in virtual time.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A sync message arrives.
    Deliver {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
    },
    /// A member sends what it has to say.
    Flush { member: usize },
}

/// An event at (ms, sequence for a stable order).
type Scheduled = Reverse<(u64, u64, Event)>;

struct World {
    sessions: Vec<SyncSession>,
    links: Vec<Vec<usize>>,
    latency: BTreeMap<(usize, usize), u64>,
    online: Vec<bool>,
    queue: BinaryHeap<Scheduled>,
    /// Members with a flush scheduled.
    flushing: Vec<bool>,
    flush_ms: u64,
    seq: u64,
    messages: u64,
    bytes: u64,
}

impl World {
    /// Queues what `from` has to say to each online neighbour, at time `now`.
    fn speak(&mut self, from: usize, now: u64) {
        for &to in &self.links[from] {
            if !self.online[to] {
                continue;
            }
            if let Some(m) = self.sessions[from].generate_message(&id(to)) {
                let at = now + self.latency[&(from.min(to), from.max(to))];
                self.messages += 1;
                self.bytes += m.len() as u64;
                self.seq += 1;
                self.queue.push(Reverse((
                    at,
                    self.seq,
                    Event::Deliver { from, to, bytes: m },
                )));
            }
        }
    }

    /// Schedules `member`'s next send, unless one is due already.
    fn flush_later(&mut self, member: usize, now: u64) {
        if !self.flushing[member] {
            self.flushing[member] = true;
            self.seq += 1;
            self.queue.push(Reverse((
                now + self.flush_ms,
                self.seq,
                Event::Flush { member },
            )));
        }
    }

    fn heads(&self, i: usize) -> Vec<ChangeHash> {
        self.sessions[i].document().heads()
    }
}

/// Runs the simulation.
pub fn run(settings: &Settings) -> Result<ConvergenceReport, ConvergenceError> {
    if settings.members < 2 || !(0.0..1.0).contains(&settings.churn) {
        return Err(ConvergenceError::Settings(
            "need at least 2 members and a churn in [0, 1)".into(),
        ));
    }
    let started = std::time::Instant::now();
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let n = settings.members;
    let base = Document::new(b"creator")?;
    let sessions = (0..n)
        .map(|i| base.fork(&id(i)).map(SyncSession::new))
        .collect::<Result<Vec<_>, _>>()?;
    // A ring keeps the graph connected; chords shorten it.
    let mut links = vec![Vec::new(); n];
    let link = |a: usize, b: usize, links: &mut Vec<Vec<usize>>| {
        if a != b && !links[a].contains(&b) {
            links[a].push(b);
            links[b].push(a);
        }
    };
    for i in 0..n {
        link(i, (i + 1) % n, &mut links);
        for _ in 0..settings.extra_links {
            link(i, rng.gen_range(0..n), &mut links);
        }
    }
    let mut latency = BTreeMap::new();
    for (a, peers) in links.iter().enumerate() {
        for &b in peers {
            let (lo, hi) = settings.latency_ms;
            latency
                .entry((a.min(b), a.max(b)))
                .or_insert_with(|| rng.gen_range(lo..=hi.max(lo)));
        }
    }
    let link_count = latency.len();
    let mut world = World {
        sessions,
        links,
        latency,
        online: vec![true; n],
        queue: BinaryHeap::new(),
        flushing: vec![false; n],
        flush_ms: settings.flush_ms,
        seq: 0,
        messages: 0,
        bytes: 0,
    };
    let mut bursts = Vec::new();
    let mut clock_ms: i64 = 1_700_000_000_000;
    for burst in 0..settings.bursts {
        // Some leave; everyone edits (the offline ones on their own copy); they return.
        let offline_count = (n as f64 * settings.churn).round() as usize;
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let leavers = &order[..offline_count];
        for &i in leavers {
            world.online[i] = false;
            for &j in &world.links[i].clone() {
                world.sessions[i].disconnected(&id(j));
                world.sessions[j].disconnected(&id(i));
            }
        }
        let mut editors: Vec<usize> = (0..n).collect();
        editors.shuffle(&mut rng);
        editors.truncate(settings.editors.min(n));
        editors.sort_unstable();
        for &i in &editors {
            for e in 0..settings.edits_per_member {
                clock_ms += 1;
                let commit = Commit::new().time_ms(clock_ms);
                world.sessions[i].document_mut().put_with(
                    &format!("m{i}_b{burst}_e{e}"),
                    &serde_json::json!({"by": i, "burst": burst, "n": rng.gen_range(0..1000)}),
                    &commit,
                )?;
            }
        }
        // The online ones talk while the others are away, then those come back: measure
        // from their return.
        let (messages0, bytes0) = (world.messages, world.bytes);
        let mut now = 0;
        for i in 0..n {
            if world.online[i] {
                world.speak(i, now);
            }
        }
        drain(&mut world, &mut now)?;
        for &i in leavers {
            world.online[i] = true;
        }
        let back = now;
        for i in 0..n {
            world.speak(i, now);
        }
        let mut reached: Vec<Option<u64>> = vec![None; n];
        let final_heads = {
            drain_recording(&mut world, &mut now, &mut reached)?;
            world.heads(0)
        };
        let same = (0..n).all(|i| world.heads(i) == final_heads);
        if !same {
            return Err(ConvergenceError::Diverged(burst));
        }
        // When each member first held the final heads: the last time its heads changed.
        let mut member_ms: Vec<u64> = reached
            .iter()
            .map(|t| t.unwrap_or(back).saturating_sub(back))
            .collect();
        member_ms.sort_unstable();
        bursts.push(Burst {
            burst,
            offline: offline_count,
            leavers: {
                let mut l = leavers.to_vec();
                l.sort_unstable();
                l
            },
            converged_ms: member_ms.last().copied().unwrap_or(0),
            member_ms,
            messages: world.messages - messages0,
            bytes: world.bytes - bytes0,
            same_heads: same,
        });
    }
    Ok(ConvergenceReport {
        settings: settings.clone(),
        bursts,
        links: link_count,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

/// Delivers messages until none is in flight.
fn drain(world: &mut World, now: &mut u64) -> Result<(), ConvergenceError> {
    let mut ignore = vec![None; world.sessions.len()];
    drain_recording(world, now, &mut ignore)
}

/// Delivers messages until none is in flight, noting when each member's heads last
/// changed.
fn drain_recording(
    world: &mut World,
    now: &mut u64,
    changed_at: &mut [Option<u64>],
) -> Result<(), ConvergenceError> {
    while let Some(Reverse((at, _, event))) = world.queue.pop() {
        *now = at;
        match event {
            Event::Deliver { from, to, bytes } => {
                if !world.online[to] {
                    continue;
                }
                let changed = world.sessions[to].receive_message(&id(from), &bytes)?;
                if changed.any() {
                    changed_at[to] = Some(at);
                }
                world.flush_later(to, at);
            }
            Event::Flush { member } => {
                world.flushing[member] = false;
                if world.online[member] {
                    world.speak(member, at);
                }
            }
        }
    }
    Ok(())
}

impl ConvergenceReport {
    /// Writes `<out>/sync-convergence.json` and `.html`; returns their paths.
    pub fn write(&self, out: &Path) -> Result<(PathBuf, PathBuf), ConvergenceError> {
        let write = |path: PathBuf, text: String| {
            std::fs::write(&path, text)
                .map(|()| path.clone())
                .map_err(|source| ConvergenceError::Write { path, source })
        };
        std::fs::create_dir_all(out).map_err(|source| ConvergenceError::Write {
            path: out.to_path_buf(),
            source,
        })?;
        let json = serde_json::to_string_pretty(self).unwrap_or_default();
        let j = write(out.join("sync-convergence.json"), json)?;
        let h = write(out.join("sync-convergence.html"), self.html())?;
        Ok((j, h))
    }

    /// The report as a page with its plots.
    pub fn html(&self) -> String {
        let per_burst = Chart {
            title: "Time until every member holds the same heads, per burst".into(),
            x_label: "burst".into(),
            y_label: "ms after the leavers return".into(),
            series: vec![Series {
                name: "all members".into(),
                points: self
                    .bursts
                    .iter()
                    .map(|b| (b.burst as f64, b.converged_ms as f64))
                    .collect(),
                kind: Kind::Bars,
                color: "#3b6fd4",
            }],
            y_max: None,
            markers: Vec::new(),
        };
        // Share of members converged over time, each burst a line.
        let n = self.settings.members as f64;
        let cdf = Chart {
            title: "Members holding the final heads over time (one line per burst)".into(),
            x_label: "ms after the leavers return".into(),
            y_label: "share of members".into(),
            series: self
                .bursts
                .iter()
                .map(|b| Series {
                    name: format!("burst {}", b.burst),
                    points: b
                        .member_ms
                        .iter()
                        .enumerate()
                        .map(|(k, t)| (*t as f64, (k + 1) as f64 / n))
                        .collect(),
                    kind: Kind::Step,
                    color: "#d4683b",
                })
                .collect(),
            y_max: Some(1.0),
            markers: Vec::new(),
        };
        let rows: String = self
            .bursts
            .iter()
            .map(|b| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    b.burst, b.offline, b.converged_ms, b.messages, b.bytes
                )
            })
            .collect();
        let s = &self.settings;
        format!(
            "<!doctype html><meta charset=\"utf-8\"><title>{title}</title>\
             <body style=\"font-family:system-ui,sans-serif;max-width:960px\">\
             <h1>{title}</h1><p>{members} members, {links} links, {bursts} bursts, {churn:.0} % \
             offline per burst, {editors} members making {edits} edit(s) each per burst, \
             latency {lo} to {hi} ms, sends at most every {flush} ms, seed {seed}; \
             {wall:.1} s of wall time.</p>{a}{b}\
             <table border=\"1\" cellpadding=\"4\"><tr><th>burst</th><th>offline</th>\
             <th>converged (ms)</th><th>messages</th><th>bytes</th></tr>{rows}</table></body>",
            title = esc("Sync convergence under churn"),
            members = s.members,
            links = self.links,
            bursts = s.bursts,
            churn = s.churn * 100.0,
            edits = s.edits_per_member,
            editors = s.editors,
            flush = s.flush_ms,
            lo = s.latency_ms.0,
            hi = s.latency_ms.1,
            seed = s.seed,
            wall = self.wall_s,
            a = per_burst.render(),
            b = cdf.render(),
        )
    }
}

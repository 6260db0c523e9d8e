//! The plan of a run, drawn from the scenario's seed before any node starts: identities,
//! link latencies, bootstrap peers, the churn schedule and the lookups (when, from whom,
//! for whom). Two runs of one scenario share a plan exactly; only what the network does
//! with it is measured.
//!
//! Each kind of choice draws from its own stream derived from the seed, so changing the
//! number of lookups does not change the identities or the latencies.

use std::collections::HashSet;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::identity::Keypair;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::SimError;
use super::scenario::{LatencyModel, Scenario};

/// Seed streams, so each kind of choice is independent of the others.
const KEYS: u64 = 0x6b65_7973;
const LATENCY: u64 = 0x6c61_7465;
const BOOTSTRAP: u64 = 0x626f_6f74;
const CHURN: u64 = 0x6368_7572;
const LOOKUPS: u64 = 0x6c6f_6f6b;
const GOSSIP: u64 = 0x676f_7373;

/// Something that happens to a node during the lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "node")]
pub enum ChurnKind {
    /// The node shuts down.
    Leave(usize),
    /// A node that left starts again with its identity and data directory.
    Rejoin(usize),
    /// A fresh node joins.
    Join(usize),
}

/// A churn event at a time counted from the start of the lookups.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ChurnEvent {
    /// When, virtual time since the lookups began.
    #[serde(serialize_with = "as_ms")]
    pub at: Duration,
    /// What.
    #[serde(flatten)]
    pub kind: ChurnKind,
}

/// One planned lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlannedLookup {
    /// When, virtual time since the lookups began.
    #[serde(serialize_with = "as_ms")]
    pub at: Duration,
    /// The node asking.
    pub origin: usize,
    /// The node looked for.
    pub target: usize,
}

/// Who publishes the gossip messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GossipPlan {
    /// The node publishing each message.
    pub publishers: Vec<usize>,
}

/// Everything a run will do, fixed by the seed.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Nodes at the start; bootstrap peers are `0..bootstrap_peers`.
    pub initial: usize,
    /// How many of the first nodes are bootstrap peers.
    pub bootstrap_peers: usize,
    /// One secret key per node (initial nodes, then fresh joiners).
    keys: Vec<[u8; 32]>,
    /// Peer ids, by node index.
    pub peers: Vec<PeerId>,
    /// For each node, the bootstrap peers it is given.
    pub bootstrap_of: Vec<Vec<usize>>,
    /// Latency between nodes.
    pub latency: LatencyTable,
    /// Churn events, by time.
    pub churn: Vec<ChurnEvent>,
    /// Lookups, by time.
    pub lookups: Vec<PlannedLookup>,
    /// The gossip overlay, when the scenario spreads messages.
    pub gossip: Option<GossipPlan>,
}

/// One-way latency per pair of nodes.
#[derive(Debug, Clone)]
pub struct LatencyTable {
    model: LatencyModel,
    seed: u64,
    min_ms: f64,
    max_ms: f64,
    /// Positions in the unit square (geo model).
    points: Vec<(f64, f64)>,
}

impl LatencyTable {
    /// Latencies drawn uniformly between `min_ms` and `max_ms` per pair, fixed by `seed`.
    pub fn uniform(seed: u64, min_ms: f64, max_ms: f64) -> Self {
        Self {
            model: LatencyModel::Uniform,
            seed: splitmix64(seed ^ LATENCY),
            min_ms,
            max_ms,
            points: Vec::new(),
        }
    }

    /// The largest latency a link can have.
    pub fn max(&self) -> Duration {
        Duration::from_secs_f64(self.max_ms / 1000.0)
    }

    /// One-way latency of the link between `a` and `b` (either order).
    pub fn between(&self, a: usize, b: usize) -> Duration {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let span = self.max_ms - self.min_ms;
        let frac = match self.model {
            LatencyModel::Uniform => {
                // A hash instead of a stored matrix: a million pairs at 1000 nodes.
                let h = splitmix64(self.seed ^ ((lo as u64) << 32 | hi as u64));
                (h >> 11) as f64 / (1u64 << 53) as f64
            }
            LatencyModel::Geo => {
                let (p, q) = (self.points[lo], self.points[hi]);
                ((p.0 - q.0).hypot(p.1 - q.1) / std::f64::consts::SQRT_2).min(1.0)
            }
        };
        Duration::from_secs_f64((self.min_ms + span * frac) / 1000.0)
    }
}

impl Plan {
    /// Draws the plan of `scenario`.
    pub fn new(scenario: &Scenario) -> Result<Self, SimError> {
        scenario.validate()?;
        let seed = scenario.seed;
        let n = scenario.nodes;
        let churn_cfg = scenario.churn.as_ref();
        let leaves = churn_cfg.map_or(0, |c| {
            ((c.leave_fraction * n as f64).round() as usize).min(n - scenario.bootstrap.peers)
        });
        let joins = churn_cfg.map_or(0, |c| (c.join_fraction * n as f64).round() as usize);
        let total = n + joins;

        let mut rng = stream(seed, KEYS);
        let keys: Vec<[u8; 32]> = (0..total).map(|_| rng.r#gen()).collect();
        let peers = keys
            .iter()
            .map(|k| keypair_from(*k).map(|kp| kp.public().to_peer_id()))
            .collect::<Result<Vec<_>, _>>()?;

        let mut rng = stream(seed, LATENCY);
        let points = (0..total).map(|_| (rng.r#gen(), rng.r#gen())).collect();
        let latency = LatencyTable {
            model: scenario.latency.model,
            seed: splitmix64(seed ^ LATENCY),
            min_ms: scenario.latency.min_ms,
            max_ms: scenario.latency.max_ms,
            points,
        };

        let b = scenario.bootstrap.peers;
        let mut rng = stream(seed, BOOTSTRAP);
        let bootstrap_of = (0..total)
            .map(|i| {
                // Bootstrap peers chain to the ones started before them.
                if i < b {
                    return (0..i).collect();
                }
                let mut all: Vec<usize> = (0..b).collect();
                all.shuffle(&mut rng);
                all.truncate(scenario.bootstrap.per_node.min(b));
                all.sort_unstable();
                all
            })
            .collect();

        let (churn, lookups) = match &scenario.lookups {
            None => (Vec::new(), Vec::new()),
            Some(cfg) => {
                let spacing = Duration::from_secs_f64(1.0 / cfg.rate_per_sec);
                let phase = spacing * cfg.count as u32;
                let churn = plan_churn(seed, n, b, leaves, joins, churn_cfg, phase);
                let up = Uptime::new(n, total, &churn);
                let joined_for = Duration::from_secs_f64(cfg.joined_for_secs);
                let stays_for = Duration::from_secs_f64(cfg.stays_for_secs);
                let mut rng = stream(seed, LOOKUPS);
                let mut lookups = Vec::with_capacity(cfg.count);
                let mut used = HashSet::new();
                for k in 0..cfg.count {
                    let at = spacing * k as u32;
                    let candidates = up.available(at, joined_for, stays_for);
                    if candidates.len() < 2 {
                        return Err(SimError::InvalidScenario(format!(
                            "at lookup {k} fewer than two nodes are up long enough to take part"
                        )));
                    }
                    // Each (origin, target) pair once, while pairs are left: a repeated pair
                    // measures a warm path, and two at once would share a request count.
                    let mut pair = (0, 0);
                    for _ in 0..64 {
                        let mut two = candidates.choose_multiple(&mut rng, 2);
                        if let (Some(&o), Some(&t)) = (two.next(), two.next()) {
                            pair = (o, t);
                        }
                        if used.insert(pair) {
                            break;
                        }
                    }
                    let (origin, target) = pair;
                    lookups.push(PlannedLookup { at, origin, target });
                }
                (churn, lookups)
            }
        };

        let gossip = scenario.gossip.as_ref().map(|g| {
            let mut rng = stream(seed, GOSSIP);
            let publishers = (0..g.messages).map(|_| rng.gen_range(0..n)).collect();
            GossipPlan { publishers }
        });

        Ok(Self {
            initial: n,
            bootstrap_peers: b,
            keys,
            peers,
            bootstrap_of,
            latency,
            churn,
            lookups,
            gossip,
        })
    }

    /// All nodes the run may start (initial and fresh joiners).
    pub fn total_nodes(&self) -> usize {
        self.keys.len()
    }

    /// The identity of node `i`.
    pub fn keypair(&self, i: usize) -> Result<Keypair, SimError> {
        keypair_from(self.keys[i])
    }

    /// A short fingerprint of the whole plan (FNV-1a over its canonical text): equal
    /// fingerprints mean the same identities, bootstrap choices, latencies, churn and lookups.
    pub fn fingerprint(&self) -> String {
        let mut h = Fnv::default();
        for p in &self.peers {
            h.write(&p.to_bytes());
        }
        for (i, b) in self.bootstrap_of.iter().enumerate() {
            h.write(format!("{i}:{b:?};").as_bytes());
        }
        for i in 0..self.peers.len().min(64) {
            let j = (i * 7 + 3) % self.peers.len();
            h.write(&self.latency.between(i, j).as_nanos().to_le_bytes());
        }
        for e in &self.churn {
            h.write(format!("{e:?};").as_bytes());
        }
        for l in &self.lookups {
            h.write(format!("{l:?};").as_bytes());
        }
        if let Some(g) = &self.gossip {
            h.write(format!("{g:?}").as_bytes());
        }
        format!("{:016x}", h.0)
    }
}

fn plan_churn(
    seed: u64,
    n: usize,
    bootstrap: usize,
    leaves: usize,
    joins: usize,
    cfg: Option<&super::scenario::Churn>,
    phase: Duration,
) -> Vec<ChurnEvent> {
    let Some(cfg) = cfg else {
        return Vec::new();
    };
    let mut rng = stream(seed, CHURN);
    let mut leavers: Vec<usize> = (bootstrap..n).collect();
    leavers.shuffle(&mut rng);
    leavers.truncate(leaves);
    let mut events = Vec::new();
    // Evenly spaced over the lookups, half a slot in, so none fall on the very first or
    // last lookup.
    for (k, &node) in leavers.iter().enumerate() {
        let at = phase.mul_f64((k as f64 + 0.5) / leaves as f64);
        events.push(ChurnEvent {
            at,
            kind: ChurnKind::Leave(node),
        });
        if let Some(after) = cfg.rejoin_after_secs {
            events.push(ChurnEvent {
                at: at + Duration::from_secs_f64(after),
                kind: ChurnKind::Rejoin(node),
            });
        }
    }
    for k in 0..joins {
        let at = phase.mul_f64((k as f64 + 0.25) / joins as f64);
        events.push(ChurnEvent {
            at,
            kind: ChurnKind::Join(n + k),
        });
    }
    events.sort_by_key(|e| e.at);
    events
}

/// When each node is up, per the churn schedule (lookup-phase time; initial nodes are up
/// from long before it).
struct Uptime {
    /// Per node, the intervals `[from, to)` it is up; `None` for "since before the phase"
    /// or "until after it".
    spans: Vec<Vec<(Option<Duration>, Option<Duration>)>>,
}

impl Uptime {
    fn new(initial: usize, total: usize, churn: &[ChurnEvent]) -> Self {
        let mut spans: Vec<Vec<(Option<Duration>, Option<Duration>)>> = (0..total)
            .map(|i| {
                if i < initial {
                    vec![(None, None)]
                } else {
                    Vec::new()
                }
            })
            .collect();
        for e in churn {
            match e.kind {
                ChurnKind::Leave(i) => {
                    if let Some(last) = spans[i].last_mut() {
                        last.1 = Some(e.at);
                    }
                }
                ChurnKind::Rejoin(i) | ChurnKind::Join(i) => spans[i].push((Some(e.at), None)),
            }
        }
        Self { spans }
    }

    /// Nodes up from `at - joined_for` (or earlier) until `at + stays_for` (or later).
    fn available(&self, at: Duration, joined_for: Duration, stays_for: Duration) -> Vec<usize> {
        (0..self.spans.len())
            .filter(|&i| {
                self.spans[i].iter().any(|&(from, to)| {
                    from.is_none_or(|f| f + joined_for <= at)
                        && to.is_none_or(|t| at + stays_for <= t)
                })
            })
            .collect()
    }
}

fn keypair_from(mut secret: [u8; 32]) -> Result<Keypair, SimError> {
    Keypair::ed25519_from_bytes(&mut secret).map_err(|e| SimError::Identity(e.to_string()))
}

fn stream(seed: u64, kind: u64) -> StdRng {
    StdRng::seed_from_u64(splitmix64(seed ^ kind.rotate_left(17)))
}

/// A well-mixed 64-bit hash of a 64-bit value (the SplitMix64 finaliser).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a, 64 bits: stable across Rust versions, unlike `DefaultHasher`.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::sim::scenario::Churn;

    #[test]
    fn same_seed_same_plan_other_seed_other_plan() {
        let s = Scenario::small_dht("t", 7, 40, 50);
        let a = Plan::new(&s).unwrap();
        let b = Plan::new(&s).unwrap();
        assert_eq!(a.peers, b.peers);
        assert_eq!(a.lookups, b.lookups);
        assert_eq!(a.fingerprint(), b.fingerprint());
        let c = Plan::new(&Scenario::small_dht("t", 8, 40, 50)).unwrap();
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert!(a.lookups.iter().all(|l| l.origin != l.target));
        let pairs: HashSet<_> = a.lookups.iter().map(|l| (l.origin, l.target)).collect();
        assert_eq!(pairs.len(), a.lookups.len(), "a pair repeats");
    }

    #[test]
    fn more_lookups_keep_identities_and_latencies() {
        let a = Plan::new(&Scenario::small_dht("t", 7, 40, 50)).unwrap();
        let b = Plan::new(&Scenario::small_dht("t", 7, 40, 80)).unwrap();
        assert_eq!(a.peers, b.peers);
        assert_eq!(a.latency.between(3, 9), b.latency.between(9, 3));
    }

    #[test]
    fn latencies_stay_in_range() {
        let mut s = Scenario::small_dht("t", 1, 50, 1);
        for model in [LatencyModel::Uniform, LatencyModel::Geo] {
            s.latency.model = model;
            let p = Plan::new(&s).unwrap();
            for i in 0..50 {
                for j in 0..50 {
                    let ms = p.latency.between(i, j).as_secs_f64() * 1000.0;
                    assert!((10.0 - 1e-6..=100.0 + 1e-6).contains(&ms), "{ms}");
                }
            }
        }
    }

    #[test]
    fn churn_lookups_only_involve_nodes_that_are_up() {
        let mut s = Scenario::small_dht("t", 3, 100, 400);
        s.churn = Some(Churn {
            leave_fraction: 0.2,
            rejoin_after_secs: Some(2.0),
            join_fraction: 0.1,
        });
        let p = Plan::new(&s).unwrap();
        let leaves = p
            .churn
            .iter()
            .filter(|e| matches!(e.kind, ChurnKind::Leave(_)))
            .count();
        assert_eq!(leaves, 20);
        assert_eq!(p.total_nodes(), 110);
        for l in &p.lookups {
            for node in [l.origin, l.target] {
                // No event for this node within 10 s either side of the lookup.
                assert!(
                    !p.churn.iter().any(|e| {
                        let n = match e.kind {
                            ChurnKind::Leave(n) | ChurnKind::Rejoin(n) | ChurnKind::Join(n) => n,
                        };
                        n == node && e.at.abs_diff(l.at) < Duration::from_secs(10)
                    }),
                    "{l:?}"
                );
            }
        }
        // Bootstrap peers never leave.
        assert!(p.churn.iter().all(|e| match e.kind {
            ChurnKind::Leave(n) => n >= p.bootstrap_peers,
            _ => true,
        }));
    }
}

//! Runs a [`Plan`]: writes the nodes' identities, forms the network (bootstrap peers
//! first, then everyone else joining a few dozen at a time), runs the lookups while churn
//! takes nodes down and brings others up, spreads the gossip messages, and shuts every
//! node down. All on the caller's current-thread runtime with a paused clock.
//!
//! This file holds what a run shares ([`Ctx`], the nodes' [`Slot`]s) and the run itself;
//! `formation` forms the network, `lookups` runs the lookups and the churn, `status`
//! polls a node's status (its listen address, its own-id lookup), and `files` handles
//! the node data directories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use p2pnode_node::{Client, Config, Multiaddr, Node, TransportKind};
use tokio::time::Instant;

use super::SimError;
use super::link::{self, NodeCounters};
use super::plan::Plan;
use super::report::{Memory, Report, Traffic};
use super::scenario::Scenario;

mod files;
mod formation;
mod lookups;
mod status;

use files::{data_root, dir_bytes, node_dir, write_identity};
use formation::form_network;
use lookups::run_lookups;
use status::{listen_addr, self_lookup};

/// How long a fresh node may take to report its listen address (virtual time).
const LISTEN_WAIT: Duration = Duration::from_secs(10);
/// How often such a condition is checked (virtual time, so it costs no wall time).
const POLL: Duration = Duration::from_millis(5);
/// Kademlia's (wall-clock) lookup and request timeouts in simulated nodes.
const WALL_CLOCK_TIMEOUT_SECS: u64 = 3600;
/// Nodes shut down at once at the end.
const SHUTDOWN_CONCURRENCY: usize = 64;
/// The longest the network is given to settle after forming (virtual time).
const SETTLE_LIMIT: Duration = Duration::from_secs(600);
/// Tries at a joining node's own-id lookup.
const SELF_LOOKUP_ATTEMPTS: u32 = 3;
/// How long a joining node is given to get a connection (back), virtual time.
const RECONNECT_WAIT: Duration = Duration::from_secs(30);

/// What every task of a run shares.
pub(super) struct Ctx {
    pub(super) plan: Plan,
    root: PathBuf,
    latency: Arc<super::plan::LatencyTable>,
    pub(super) counters: Vec<Arc<NodeCounters>>,
    max_connections: u32,
    idle_timeout_secs: Option<u64>,
    link_buffer: usize,
    bootstrap_addrs: OnceLock<Vec<Multiaddr>>,
}

/// A running node.
pub(super) struct Started {
    pub(super) node: Node,
    pub(super) client: Client,
    /// Its listen address, with `/p2p/<id>`.
    pub(super) addr: Multiaddr,
    /// Its own-id lookup, when it ran.
    self_lookup: Option<SelfLookup>,
}

/// How a node's own-id lookup went.
struct SelfLookup {
    /// How long it took, all tries included, when it reached the network.
    took: Option<Duration>,
    tries: u32,
}

/// A node's place in the run.
pub(super) enum Slot {
    /// Not started (yet): a fresh joiner, or a node whose start failed.
    Never,
    /// Running.
    Up(Box<Started>),
    /// Left.
    Down,
}

impl Slot {
    pub(super) fn client(&self) -> Option<&Client> {
        match self {
            Slot::Up(s) => Some(&s.client),
            _ => None,
        }
    }
}

impl Ctx {
    fn new(scenario: &Scenario, plan: &Plan, root: &Path) -> Result<Self, SimError> {
        let total = plan.total_nodes();
        for i in 0..total {
            write_identity(&root.join(node_dir(i)), plan, i)?;
        }
        let max_connections = match scenario.limits.max_connections {
            0 => u32::try_from(2 * total + 64).unwrap_or(u32::MAX),
            n => n,
        };
        Ok(Self {
            plan: plan.clone(),
            root: root.to_path_buf(),
            latency: Arc::new(plan.latency.clone()),
            counters: (0..total).map(|_| Arc::default()).collect(),
            max_connections,
            idle_timeout_secs: Some(scenario.limits.idle_timeout_secs).filter(|&s| s > 0),
            link_buffer: scenario.limits.link_buffer_bytes,
            bootstrap_addrs: OnceLock::new(),
        })
    }

    /// Starts node `i` with the given bootstrap addresses and waits for its listen address.
    async fn start_node(&self, i: usize, bootstrap: Vec<Multiaddr>) -> Result<Started, SimError> {
        let defaults = Config::default();
        let config = Config {
            listen: vec![Multiaddr::empty().with(Protocol::Memory(0))],
            bootstrap,
            mdns: false,
            relay: false,
            max_connections: self.max_connections,
            // The process holds every node: a per-process memory cap would refuse the
            // connections of whichever nodes come after it is reached.
            max_memory_mb: 0,
            // Kademlia times its lookups and requests on the wall clock, which runs on
            // while hundreds of nodes share one core; the simulated network, not the
            // machine's speed, should decide whether a lookup succeeds.
            dht_query_timeout_secs: WALL_CLOCK_TIMEOUT_SECS,
            dht_request_timeout_secs: WALL_CLOCK_TIMEOUT_SECS,
            // The periodic refresh runs on the wall clock too: every node would refresh its
            // whole table every 5 wall minutes of a run that spans far fewer virtual ones.
            dht_bootstrap_interval_secs: 0,
            // The memory transport shows a node a fresh dialer port as its address on each
            // connection: AutoNAT would probe every one of them (a third of the bytes on the
            // links in a 300-node run), and nothing here is behind a NAT.
            autonat: false,
            idle_timeout_secs: self.idle_timeout_secs.unwrap_or(defaults.idle_timeout_secs),
            ..defaults
        };
        let factory = link::transport_factory(
            i,
            self.latency.clone(),
            self.counters[i].clone(),
            self.link_buffer,
        );
        let node = Node::start_with(
            &self.root.join(node_dir(i)),
            config,
            TransportKind::Custom(factory),
        )
        .await
        .map_err(|source| SimError::Start { node: i, source })?;
        let client = node.client().clone();
        let addr = match listen_addr(&client).await {
            Some(addr) => addr,
            None => {
                node.shutdown().await;
                return Err(SimError::NoListenAddr {
                    node: i,
                    secs: LISTEN_WAIT.as_secs(),
                });
            }
        };
        Ok(Started {
            node,
            client,
            addr,
            self_lookup: None,
        })
    }

    /// Starts node `i` with its planned bootstrap peers and looks up its own id, which
    /// makes the nodes closest to it learn it (Kademlia's join).
    async fn join(&self, i: usize) -> Result<Started, SimError> {
        let addrs = self.bootstrap_addrs.get().map(Vec::as_slice).unwrap_or(&[]);
        let bootstrap = self.plan.bootstrap_of[i]
            .iter()
            .filter_map(|&b| addrs.get(b).cloned())
            .collect();
        let mut started = self.start_node(i, bootstrap).await?;
        started.self_lookup = Some(self_lookup(&started.client).await);
        Ok(started)
    }
}

/// Runs the whole plan and reports what happened.
pub(super) async fn run(scenario: &Scenario, plan: &Plan) -> Result<Report, SimError> {
    let wall = std::time::Instant::now();
    let virtual_start = Instant::now();
    let baseline_rss = super::report::rss_bytes();
    let root = data_root(scenario)?;
    let ctx = Arc::new(Ctx::new(scenario, plan, root.path())?);
    let mut slots: Vec<Slot> = (0..plan.total_nodes()).map(|_| Slot::Never).collect();

    let formation = form_network(scenario, &ctx, &mut slots).await?;
    let rss_formed = super::report::rss_bytes();
    let connections_formed = count_connections(&slots).await;
    let formed_nodes = slots.iter().filter(|s| matches!(s, Slot::Up(_))).count();
    tracing::info!(
        nodes = formed_nodes,
        wall_secs = formation.wall_secs,
        virtual_secs = formation.virtual_secs,
        "network formed"
    );

    let (lookups, churn) = match &scenario.lookups {
        Some(cfg) => {
            let (l, c) = run_lookups(scenario, cfg.max_in_flight, &ctx, &mut slots).await;
            (Some(l), c)
        }
        None => (None, None),
    };
    let rss_after_lookups = super::report::rss_bytes();
    let connections_after_lookups = count_connections(&slots).await;
    let up_after_lookups = slots.iter().filter(|s| matches!(s, Slot::Up(_))).count();

    let gossip = match (&scenario.gossip, &ctx.plan.gossip) {
        (Some(cfg), Some(gplan)) => Some(super::gossip::run(cfg, gplan, &ctx, &slots).await),
        _ => None,
    };

    let peak_rss = super::report::peak_rss_bytes();
    let data_dir_bytes = dir_bytes(root.path());
    let traffic = Traffic::from_counters(&ctx.counters);
    let virtual_secs = virtual_start.elapsed().as_secs_f64();

    let wall_teardown = std::time::Instant::now();
    let nodes: Vec<Started> = slots
        .into_iter()
        .filter_map(|s| match s {
            Slot::Up(s) => Some(*s),
            _ => None,
        })
        .collect();
    futures::stream::iter(nodes)
        .for_each_concurrent(SHUTDOWN_CONCURRENCY, |s| s.node.shutdown())
        .await;
    tracing::info!(
        wall_secs = wall_teardown.elapsed().as_secs_f64(),
        "all nodes stopped"
    );

    let per_node = |rss: Option<u64>, n: usize| {
        rss.zip(baseline_rss)
            .map(|(r, b)| r.saturating_sub(b) / n.max(1) as u64)
    };
    Ok(Report {
        name: scenario.name.clone(),
        description: scenario.description.clone(),
        seed: scenario.seed,
        nodes: scenario.nodes,
        plan_fingerprint: plan.fingerprint(),
        scenario: scenario.clone(),
        peers: plan.peers.iter().map(ToString::to_string).collect(),
        formation,
        lookups,
        churn,
        gossip,
        memory: Memory {
            baseline_rss_bytes: baseline_rss,
            rss_formed_bytes: rss_formed,
            rss_after_lookups_bytes: rss_after_lookups,
            peak_rss_bytes: peak_rss,
            nodes_formed: formed_nodes,
            nodes_after_lookups: up_after_lookups,
            per_node_formed_bytes: per_node(rss_formed, formed_nodes),
            per_node_after_lookups_bytes: per_node(rss_after_lookups, up_after_lookups),
            data_dir_bytes,
            connections_formed,
            connections_after_lookups,
        },
        traffic,
        virtual_secs,
        wall_secs: wall.elapsed().as_secs_f64(),
    })
}

/// Connections open between running nodes (each counted once, though both ends hold it).
async fn count_connections(slots: &[Slot]) -> usize {
    let mut ends = 0;
    for client in slots.iter().filter_map(Slot::client) {
        if let Ok(peers) = client.peers().await {
            ends += peers.iter().map(|p| p.connections.len()).sum::<usize>();
        }
    }
    ends / 2
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Failure kinds by count, for the report.
pub(super) fn count_kinds<'a>(kinds: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut map = BTreeMap::new();
    for k in kinds {
        *map.entry(k.to_string()).or_insert(0) += 1;
    }
    map
}

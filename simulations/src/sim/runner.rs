//! Runs a [`Plan`]: writes the nodes' identities, forms the network (bootstrap peers
//! first, then everyone else joining a few dozen at a time), runs the lookups while churn
//! takes nodes down and brings others up, spreads the gossip messages, and shuts every
//! node down. All on the caller's current-thread runtime with a paused clock.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use p2pnode_node::{Client, Config, Multiaddr, Node, NodeError, PeerId, TransportKind};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::SimError;
use super::link::{self, NodeCounters};
use super::plan::{ChurnKind, Plan};
use super::report::{
    ChurnReport, Formation, LookupRecord, LookupReport, Memory, Report, Stats, Traffic,
};
use super::scenario::Scenario;

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

/// Starts the bootstrap peers one by one (each knowing the ones before it), then every
/// other initial node, `join_concurrency` at a time, then lets the network settle.
async fn form_network(
    scenario: &Scenario,
    ctx: &Arc<Ctx>,
    slots: &mut [Slot],
) -> Result<Formation, SimError> {
    let wall = std::time::Instant::now();
    let start = Instant::now();
    let b = ctx.plan.bootstrap_peers;
    let mut addrs = Vec::with_capacity(b);
    let mut self_lookups = Vec::new();
    let (mut self_lookup_failures, mut self_lookup_retries) = (0, 0);
    for (i, slot) in slots.iter_mut().enumerate().take(b) {
        let mut s = ctx
            .start_node(i, addrs.clone())
            .instrument(tracing::info_span!("sim", node = i))
            .await?;
        if i > 0 {
            s.self_lookup = Some(self_lookup(&s.client).await);
        }
        addrs.push(s.addr.clone());
        *slot = Slot::Up(Box::new(s));
    }
    let _ = ctx.bootstrap_addrs.set(addrs);

    let mut failures = Vec::new();
    let mut joins = futures::stream::iter(b..ctx.plan.initial)
        .map(|i| {
            let ctx = ctx.clone();
            async move { (i, ctx.join(i).await) }.instrument(tracing::info_span!("sim", node = i))
        })
        .buffer_unordered(scenario.bootstrap.join_concurrency);
    let mut joined = 0usize;
    while let Some((i, result)) = joins.next().await {
        match result {
            Ok(s) => {
                if let Some(l) = &s.self_lookup {
                    match l.took {
                        Some(d) => self_lookups.push(ms(d)),
                        None => self_lookup_failures += 1,
                    }
                    self_lookup_retries += (l.tries - 1) as usize;
                }
                slots[i] = Slot::Up(Box::new(s));
            }
            Err(e) => {
                tracing::warn!(node = i, "join failed: {e}");
                failures.push((i, e.to_string()));
            }
        }
        joined += 1;
        if joined.is_multiple_of(100) {
            tracing::info!(
                joined,
                of = ctx.plan.initial - b,
                wall_secs = wall.elapsed().as_secs_f64(),
                "joining"
            );
        }
    }
    drop(joins);
    let self_lookup_repaired = rejoin_failed(scenario, slots).await;
    let virtual_secs = start.elapsed().as_secs_f64();
    let settle_start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(scenario.bootstrap.settle_secs)).await;
    let queries_left = settle(slots).await;
    Ok(Formation {
        nodes_started: slots.iter().filter(|s| matches!(s, Slot::Up(_))).count(),
        join_failures: failures,
        virtual_secs,
        wall_secs: wall.elapsed().as_secs_f64(),
        settle_virtual_secs: settle_start.elapsed().as_secs_f64(),
        queries_left,
        self_lookup_ms: Stats::of(&self_lookups),
        self_lookup_failures,
        self_lookup_retries,
        self_lookup_repaired,
    })
}

/// Joins once more every node whose own-id lookup never reached the network, now that
/// the others have joined, and returns how many got through. A real node does the same
/// on its next DHT bootstrap (every `dht_bootstrap_interval_secs`), which simulated nodes
/// run without because their clock is not the wall clock. The join fails when
/// Kademlia's 10 s wall-clock peer timeout runs out under the load of the nodes joining
/// beside it (a far node late in a big run); alone, the same lookup gets through.
async fn rejoin_failed(scenario: &Scenario, slots: &[Slot]) -> usize {
    let failed: Vec<usize> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Slot::Up(s) if s.self_lookup.as_ref().is_some_and(|l| l.took.is_none()) => Some(i),
            _ => None,
        })
        .collect();
    if failed.is_empty() {
        return 0;
    }
    tracing::info!(
        nodes = failed.len(),
        "joining again the nodes whose join failed"
    );
    let clients: Vec<(usize, Client)> = failed
        .iter()
        .filter_map(|&i| slots[i].client().map(|c| (i, c.clone())))
        .collect();
    let results: Vec<(usize, SelfLookup)> = futures::stream::iter(clients)
        .map(|(i, client)| {
            async move { (i, self_lookup(&client).await) }
                .instrument(tracing::info_span!("sim", node = i))
        })
        .buffer_unordered(scenario.bootstrap.join_concurrency)
        .collect()
        .await;
    results
        .into_iter()
        .filter(|(i, l)| {
            if l.took.is_none() {
                tracing::warn!(node = i, "joining again failed too");
            }
            l.took.is_some()
        })
        .count()
}

/// Waits until no node has a DHT query running, checking once a virtual second, for at
/// most [`SETTLE_LIMIT`]; returns the queries still running then. A joined node's Kademlia
/// goes on bootstrapping its routing table (a dozen lookups) after the join itself: until
/// those finish, the lookups measured next would share the process with them, and
/// libp2p's wall-clock timeouts would count the slowdown as lost peers.
async fn settle(slots: &[Slot]) -> usize {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let mut running = 0;
        for client in slots.iter().filter_map(Slot::client) {
            if let Ok(s) = client.status().await {
                running += s.dht_queries;
            }
        }
        if running == 0 || Instant::now() >= deadline {
            tracing::info!(queries = running, "settled");
            return running;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What a finished lookup task hands back.
struct LookupDone {
    index: usize,
    started: Duration,
    latency: Duration,
    wall: std::time::Duration,
    result: Result<usize, NodeError>,
    requests: Option<u64>,
}

/// What a finished churn task hands back.
enum ChurnDone {
    Left(usize),
    Joined(usize, Result<Box<Started>, SimError>),
}

/// Runs the planned lookups at their times, applying the churn events in between.
async fn run_lookups(
    scenario: &Scenario,
    max_in_flight: usize,
    ctx: &Arc<Ctx>,
    slots: &mut [Slot],
) -> (LookupReport, Option<ChurnReport>) {
    let wall = std::time::Instant::now();
    let start = Instant::now();
    let plan = &ctx.plan;
    let mut next_lookup = 0usize;
    let mut next_event = 0usize;
    let mut lookups: JoinSet<LookupDone> = JoinSet::new();
    let mut churn_tasks: JoinSet<ChurnDone> = JoinSet::new();
    let mut records: Vec<Option<LookupRecord>> = vec![None; plan.lookups.len()];
    let mut churn = ChurnReport {
        events: plan.churn.clone(),
        ..ChurnReport::default()
    };
    let mut leaving: HashSet<usize> = HashSet::new();
    let mut deferred_rejoins: Vec<usize> = Vec::new();
    let mut delayed_starts = 0usize;

    loop {
        let due = [
            plan.lookups.get(next_lookup).map(|l| l.at),
            plan.churn.get(next_event).map(|e| e.at),
        ]
        .into_iter()
        .flatten()
        .min();
        if due.is_none() && lookups.is_empty() && churn_tasks.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some(done) = churn_tasks.join_next() => match done {
                Ok(ChurnDone::Left(i)) => {
                    leaving.remove(&i);
                    churn.leaves += 1;
                    if let Some(pos) = deferred_rejoins.iter().position(|&n| n == i) {
                        deferred_rejoins.swap_remove(pos);
                        spawn_join(&mut churn_tasks, ctx, i);
                    }
                }
                Ok(ChurnDone::Joined(i, Ok(s))) => {
                    match slots[i] {
                        Slot::Down => churn.rejoins += 1,
                        _ => churn.joins += 1,
                    }
                    slots[i] = Slot::Up(s);
                }
                Ok(ChurnDone::Joined(i, Err(e))) => {
                    tracing::warn!(node = i, "(re)join failed: {e}");
                    churn.failed_joins.push((i, e.to_string()));
                }
                Err(e) => tracing::warn!("churn task failed: {e}"),
            },
            Some(done) = lookups.join_next() => match done {
                Ok(done) => {
                    let i = done.index;
                    records[i] = Some(record(ctx, done));
                }
                Err(e) => tracing::warn!("lookup task failed: {e}"),
            },
            () = tokio::time::sleep_until(start + due.unwrap_or_default()), if due.is_some() => {
                let lookup_due = plan.lookups.get(next_lookup).map(|l| l.at);
                let event_due = plan.churn.get(next_event).map(|e| e.at);
                // Churn first when both are due: the plan chose lookups among nodes that are
                // up after the events of the same instant.
                if event_due.is_some() && (lookup_due.is_none() || event_due <= lookup_due) {
                    let event = plan.churn[next_event];
                    next_event += 1;
                    match event.kind {
                        ChurnKind::Leave(i) => {
                            if let Slot::Up(s) = std::mem::replace(&mut slots[i], Slot::Down) {
                                leaving.insert(i);
                                churn_tasks.spawn(async move {
                                    s.node.shutdown().await;
                                    ChurnDone::Left(i)
                                });
                            }
                        }
                        ChurnKind::Rejoin(i) if leaving.contains(&i) => deferred_rejoins.push(i),
                        ChurnKind::Rejoin(i) | ChurnKind::Join(i) => {
                            spawn_join(&mut churn_tasks, ctx, i)
                        }
                    }
                    continue;
                }
                let k = next_lookup;
                next_lookup += 1;
                // Bound the lookups in flight: wait for one to finish before starting more.
                if lookups.len() >= max_in_flight {
                    delayed_starts += 1;
                    if let Some(Ok(done)) = lookups.join_next().await {
                        let i = done.index;
                        records[i] = Some(record(ctx, done));
                    }
                }
                let planned = plan.lookups[k];
                let target = plan.peers[planned.target];
                match slots[planned.origin].client() {
                    Some(client) => {
                        let client = client.clone();
                        let ctx = ctx.clone();
                        lookups.spawn(async move {
                            lookup(&ctx, k, planned.origin, client, target, start).await
                        });
                    }
                    None => {
                        records[k] = Some(LookupRecord::not_run(
                            k,
                            planned,
                            start.elapsed(),
                            "origin_not_running",
                        ));
                    }
                }
            },
        }
    }
    let virtual_secs = start.elapsed().as_secs_f64();
    let records: Vec<LookupRecord> = records.into_iter().flatten().collect();
    let report = LookupReport::new(
        plan.lookups.len(),
        records,
        delayed_starts,
        virtual_secs,
        wall.elapsed().as_secs_f64(),
    );
    tracing::info!(
        succeeded = report.succeeded,
        of = report.planned,
        p50_ms = report.latency_ms.as_ref().map(|s| s.p50),
        wall_secs = report.wall_secs,
        "lookups done"
    );
    let churn = scenario.churn.as_ref().map(|_| churn);
    (report, churn)
}

fn spawn_join(tasks: &mut JoinSet<ChurnDone>, ctx: &Arc<Ctx>, i: usize) {
    let ctx = ctx.clone();
    tasks.spawn(
        async move { ChurnDone::Joined(i, ctx.join(i).await.map(Box::new)) }
            .instrument(tracing::info_span!("sim", node = i)),
    );
}

/// One lookup: `client` looks for `target`. Its requests are the FIND_NODE requests for
/// the target's key the origin sends meanwhile, counted on the links.
async fn lookup(
    ctx: &Ctx,
    index: usize,
    origin: usize,
    client: Client,
    target: PeerId,
    phase_start: Instant,
) -> LookupDone {
    let counters = &ctx.counters[origin];
    let key = target.to_bytes();
    counters.watch(&key);
    let begin = Instant::now();
    let wall = std::time::Instant::now();
    let result = client.find(target).await.map(|f| f.addresses.len());
    let latency = begin.elapsed();
    let wall = wall.elapsed();
    let requests = counters.unwatch(&key);
    if let Err(e) = &result {
        tracing::debug!(lookup = index, origin, %target, "lookup failed: {e}");
    }
    LookupDone {
        index,
        started: begin - phase_start,
        latency,
        wall,
        result,
        requests: Some(requests),
    }
}

fn record(ctx: &Ctx, done: LookupDone) -> LookupRecord {
    let planned = ctx.plan.lookups[done.index];
    LookupRecord {
        index: done.index,
        planned_ms: ms(planned.at),
        started_ms: ms(done.started),
        origin: planned.origin,
        target: planned.target,
        ok: done.result.is_ok(),
        latency_ms: ms(done.latency),
        wall_ms: ms(done.wall),
        requests: done.requests,
        error: done.result.err().map(|e| e.kind().to_string()),
    }
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

/// Waits for a first connection, then looks up the node's own id (Kademlia's join). A
/// lookup that finds the node without a connection is tried again once the node has one
/// back: under load a join's connection handshakes can run out their (wall-clock) time,
/// and the node redials its bootstrap peers by itself, as a real node on a bad link would.
async fn self_lookup(client: &Client) -> SelfLookup {
    let start = Instant::now();
    // Look up once connected to a bootstrap peer, as a node's own DHT bootstrap does.
    // Started at once, the lookup would also wait for the bootstrap dials on Kademlia's
    // 10 s wall-clock peer timeout: on a link of 100 ms each way, late in a big run (tens
    // of wall seconds per virtual one), the connection came after it and the lookup ended
    // unanswered. This narrows that window, it does not close it: the request's own round
    // trip can still outlast 10 wall seconds.
    reconnected(client).await;
    let mut tries = 0;
    while tries < SELF_LOOKUP_ATTEMPTS {
        tries += 1;
        match client.find(client.peer_id()).await {
            // Finding ourselves (a peer already knew us) or learning that nobody else has
            // our id both mean the lookup went through the network.
            Ok(_) | Err(NodeError::NotFound { .. }) => {
                return SelfLookup {
                    took: Some(start.elapsed()),
                    tries,
                };
            }
            Err(NodeError::NoPeers) if tries < SELF_LOOKUP_ATTEMPTS => {
                tracing::info!(tries, "own-id lookup found no connection; trying again");
                reconnected(client).await;
            }
            Err(e) => {
                tracing::warn!(tries, "own-id lookup failed: {e}");
                break;
            }
        }
    }
    SelfLookup { took: None, tries }
}

/// Waits until the node is connected to a peer, for at most [`RECONNECT_WAIT`] (virtual
/// time: polling costs no wall time).
async fn reconnected(client: &Client) {
    poll_status(client, RECONNECT_WAIT, |s| {
        (s.connected_peers > 0).then_some(())
    })
    .await;
}

/// The node's first listen address with its peer id, once it reports one.
async fn listen_addr(client: &Client) -> Option<Multiaddr> {
    let addr = poll_status(client, LISTEN_WAIT, |s| {
        s.listen_addrs.first()?.parse::<Multiaddr>().ok()
    })
    .await?;
    Some(addr.with(Protocol::P2p(client.peer_id())))
}

/// Checks the node's status every [`POLL`] until `check` yields a value, for at most
/// `limit` (virtual time).
async fn poll_status<T>(
    client: &Client,
    limit: Duration,
    check: impl Fn(&p2pnode_node::api::Status) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(v) = client.status().await.ok().as_ref().and_then(&check) {
            return Some(v);
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

fn node_dir(i: usize) -> String {
    format!("n{i:05}")
}

/// Writes node `i`'s identity where [`Node::start_with`] looks for it, so the node runs
/// with the planned key instead of making a random one.
fn write_identity(dir: &Path, plan: &Plan, i: usize) -> Result<(), SimError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
        .map_err(SimError::io(format!("cannot create {}", dir.display())))?;
    let bytes = plan
        .keypair(i)?
        .to_protobuf_encoding()
        .map_err(|e| SimError::Identity(e.to_string()))?;
    let path = dir.join(p2pnode_node::identity::IDENTITY_FILE);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(&bytes))
        .map_err(SimError::io(format!("cannot write {}", path.display())))
}

/// A fresh directory for the run's node data, deleted when dropped.
fn data_root(scenario: &Scenario) -> Result<tempfile::TempDir, SimError> {
    let shm = Path::new("/dev/shm");
    let parent = match &scenario.data_dir {
        Some(dir) => dir.clone(),
        None if shm.is_dir() => shm.to_path_buf(),
        None => std::env::temp_dir(),
    };
    tempfile::Builder::new()
        .prefix(&format!("p2pnode-sim-{}-", scenario.name))
        .tempdir_in(&parent)
        .map_err(SimError::io(format!(
            "cannot create a data directory in {}",
            parent.display()
        )))
}

/// Bytes the files under `dir` occupy.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
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

//! A files swarm (issue #19's scenario): one node shares a file, `fetchers` nodes `get` it
//! at once. Run twice on the same plan: with serve-while-fetching (each fetcher serves the
//! groups it has verified, announces itself, and looks for providers again as it goes) and
//! without (only the seed serves). Real nodes with the files service, in one process on
//! the simulator's delayed memory transport ([`link`]), each node's uplink
//! limited to the same rate, so the seed's uplink is what one seed alone is held to.
//!
//! Time is virtual (tokio's paused clock), so the figures are what the links allow, not
//! what this machine's CPU does. The report gives each mode's completions over time, when
//! the last fetcher finished, and how many groups the seed served; every fetcher's file is
//! compared byte for byte with the seed's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use p2pnode_files::api::{FilesEvent, TransferStatus};
use p2pnode_files::service::{Config as FilesConfig, Files, FilesHandle, FilesService};
use p2pnode_node::{Config, Multiaddr, Node, TransportKind};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde::Serialize;
use tokio::time::Instant;

use super::link::{self, NodeCounters, Uplink};
use super::plan::LatencyTable;
use super::report::esc;
use super::svg::{Chart, Kind, Series};

/// What to simulate.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Nodes fetching the file at once.
    pub fetchers: usize,
    /// The file's size in bytes.
    pub size: u64,
    /// Every node's upload rate, bytes per second.
    pub uplink_bytes_per_sec: u64,
    /// One-way link latency range, ms.
    pub latency_ms: (f64, f64),
    /// How often a fetcher serving while it fetches looks for providers again, ms.
    pub rediscover_ms: u64,
    /// Longest a mode may run, virtual seconds; fetchers not done by then failed.
    pub limit_secs: u64,
    /// The seed of the file's bytes and the links' latencies.
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            fetchers: 50,
            size: 4 << 20,
            // 8 MiB/s: one seed alone needs 25 s for 50 copies of 4 MiB.
            uplink_bytes_per_sec: 8 << 20,
            latency_ms: (5.0, 40.0),
            rediscover_ms: 1000,
            limit_secs: 600,
            seed: 1,
        }
    }
}

/// How one mode went.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    /// Whether fetchers served while fetching.
    pub serve_while_fetching: bool,
    /// Each fetcher's completion time, ms after the `get`s (sorted; finished ones only).
    pub done_ms: Vec<f64>,
    /// When the last fetcher finished, ms (`None` if one did not).
    pub all_done_ms: Option<f64>,
    /// Fetchers whose file is byte for byte the seed's.
    pub identical: usize,
    /// Fetchers whose transfer failed or did not finish in time, with why.
    pub failed: Vec<String>,
    /// Groups the seed served (endgame duplicates included).
    pub seed_groups: u64,
    /// Groups the fetchers served each other.
    pub fetcher_groups: u64,
    /// Bytes all nodes wrote to their links.
    pub bytes_on_links: u64,
    /// `get`s run again after a failure (see [`MAX_TRIES`]).
    pub retries: u32,
    /// Wall time of the mode, seconds.
    pub wall_s: f64,
}

/// Both modes, on the same plan.
#[derive(Debug, Clone, Serialize)]
pub struct SwarmReport {
    /// The settings.
    pub settings: Settings,
    /// Groups in the file.
    pub groups: u64,
    /// Only the seed serves.
    pub seed_only: ModeReport,
    /// Every fetcher serves what it has verified.
    pub swarm: ModeReport,
}

/// Why the swarm simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// Bad settings.
    #[error("{0}")]
    Settings(String),
    /// Files or directories could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// A node did not start or did not come up.
    #[error("node {node}: {reason}")]
    Node {
        /// Its index (0 is the seed).
        node: usize,
        /// Why.
        reason: String,
    },
    /// The seed could not share the file.
    #[error("share: {0}")]
    Share(String),
    /// The simulation thread failed.
    #[error("simulation thread: {0}")]
    Thread(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SwarmError {
    let what = what.into();
    move |source| SwarmError::Io { what, source }
}

/// Runs both modes (seed only first) and reports them.
pub fn run(settings: &Settings) -> Result<SwarmReport, SwarmError> {
    if settings.fetchers == 0 || settings.size == 0 || settings.uplink_bytes_per_sec == 0 {
        return Err(SwarmError::Settings(
            "fetchers, size and uplink must be above zero".into(),
        ));
    }
    let seed_only = run_mode(settings, false)?;
    let swarm = run_mode(settings, true)?;
    Ok(SwarmReport {
        settings: settings.clone(),
        groups: p2pnode_files::group_count(settings.size),
        seed_only,
        swarm,
    })
}

/// One mode on its own thread, with a current-thread runtime on a paused clock.
fn run_mode(settings: &Settings, serve_while_fetching: bool) -> Result<ModeReport, SwarmError> {
    let settings = settings.clone();
    std::thread::Builder::new()
        .name("sim-files-swarm".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .map_err(io_err("cannot build the simulation runtime"))?;
            runtime.block_on(mode(&settings, serve_while_fetching))
        })
        .map_err(|e| SwarmError::Thread(e.to_string()))?
        .join()
        .map_err(|_| SwarmError::Thread("the simulation panicked".into()))?
}

/// Times a fetcher runs its `get` at most (within [`Settings::limit_secs`]).
pub const MAX_TRIES: u32 = 100;
/// Pause before a failed `get` runs again (virtual time), as its user would. A burst of
/// strangers beyond the seed's handshake gate (8 pending at once) no longer fails a `get`:
/// one turned away comes back by itself. The report counts the runs again, which should
/// stay at 0.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One `get`, until its transfer ends.
async fn get_once(files: &FilesHandle, content: &str, to: &Path) -> Result<(), String> {
    let mut events = files.subscribe();
    let t = files
        .get(content, to.to_path_buf(), vec![])
        .await
        .map_err(|e| format!("get: {e}"))?;
    loop {
        match events.recv().await {
            Ok(FilesEvent::Transfer(i)) if i.id == t.id => match i.status {
                TransferStatus::Running => {}
                TransferStatus::Done => return Ok(()),
                TransferStatus::Failed => return Err(i.error.unwrap_or_default()),
            },
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// How long a node may take to come up (virtual time).
const UP_WAIT: Duration = Duration::from_secs(30);
/// How often a node's status is checked while it comes up (virtual time).
const POLL: Duration = Duration::from_millis(5);
/// Bytes a link holds in flight beyond its latency: a small socket buffer, so the DHT's
/// messages do not queue behind seconds of file bytes.
const LINK_BUFFER: usize = 64 * 1024;

struct Up {
    node: Node,
    files: FilesHandle,
    dir: PathBuf,
}

async fn start(
    i: usize,
    root: &Path,
    bootstrap: Vec<Multiaddr>,
    files: FilesConfig,
    latency: &Arc<LatencyTable>,
    uplink: u64,
    counters: Arc<NodeCounters>,
) -> Result<(Up, Multiaddr), SwarmError> {
    let node_err = |reason: String| SwarmError::Node { node: i, reason };
    let dir = root.join(format!("n{i:03}"));
    std::fs::create_dir_all(&dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
    let config = Config {
        listen: vec![Multiaddr::empty().with(Protocol::Memory(0))],
        bootstrap,
        mdns: false,
        relay: false,
        max_memory_mb: 0,
        // Kademlia times out on the wall clock (see the runner): generous here too.
        dht_query_timeout_secs: 3600,
        dht_request_timeout_secs: 3600,
        dht_bootstrap_interval_secs: 0,
        autonat: false,
        idle_timeout_secs: 3600,
        ..Config::default()
    };
    let factory = link::transport_factory_with_uplink(
        i,
        latency.clone(),
        counters,
        LINK_BUFFER,
        Some(Arc::new(Uplink::new(uplink))),
    );
    let node = Node::builder(&dir, config)
        .transport(TransportKind::Custom(factory))
        .protocol(Files::new(files))
        .start()
        .await
        .map_err(|e| node_err(e.to_string()))?;
    let client = node.client().clone();
    let deadline = Instant::now() + UP_WAIT;
    let addr = loop {
        let status = client.status().await.ok();
        if let Some(a) = status
            .as_ref()
            .and_then(|s| s.listen_addrs.first())
            .and_then(|a| a.parse::<Multiaddr>().ok())
        {
            break a.with(Protocol::P2p(client.peer_id()));
        }
        if Instant::now() >= deadline {
            return Err(node_err("no listen address".into()));
        }
        tokio::time::sleep(POLL).await;
    };
    let files = node
        .protocol::<FilesService>()
        .ok_or_else(|| node_err("no files service".into()))?
        .handle()
        .clone();
    Ok((Up { node, files, dir }, addr))
}

/// Waits until `node` has a connection (virtual time).
async fn connected(up: &Up, i: usize) -> Result<(), SwarmError> {
    let deadline = Instant::now() + UP_WAIT;
    loop {
        let status = up.node.client().status().await.ok();
        if status.is_some_and(|s| s.connected_peers > 0) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SwarmError::Node {
                node: i,
                reason: "no connection to the seed".into(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn mode(settings: &Settings, serve_while_fetching: bool) -> Result<ModeReport, SwarmError> {
    let wall = std::time::Instant::now();
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let root = tempfile::Builder::new()
        .prefix("p2pnode-sim-files-swarm-")
        .tempdir_in(&parent)
        .map_err(io_err("cannot create the run's directory"))?;
    let latency = Arc::new(LatencyTable::uniform(
        settings.seed,
        settings.latency_ms.0,
        settings.latency_ms.1,
    ));
    let total = settings.fetchers + 1;
    let counters: Vec<Arc<NodeCounters>> = (0..total).map(|_| Arc::default()).collect();
    let files_config = FilesConfig {
        serve_while_fetching,
        rediscover_every: Duration::from_millis(settings.rediscover_ms.max(1)),
        ..FilesConfig::default()
    };

    // The seed first; the fetchers join through it.
    let (seed, seed_addr) = start(
        0,
        root.path(),
        vec![],
        files_config.clone(),
        &latency,
        settings.uplink_bytes_per_sec,
        counters[0].clone(),
    )
    .await?;
    let mut fetchers = Vec::with_capacity(settings.fetchers);
    for (i, counter) in counters.iter().enumerate().skip(1) {
        let (up, _) = start(
            i,
            root.path(),
            vec![seed_addr.clone()],
            files_config.clone(),
            &latency,
            settings.uplink_bytes_per_sec,
            counter.clone(),
        )
        .await?;
        connected(&up, i).await?;
        fetchers.push(up);
    }

    // Then the seed shares the file: its provider record goes to the nodes closest to
    // the content id, which the fetchers' lookups reach (shared before anyone joined,
    // the record would stay with the seed alone until its next announcement).
    let mut data = vec![0u8; usize::try_from(settings.size).unwrap_or(usize::MAX)];
    StdRng::seed_from_u64(settings.seed).fill_bytes(&mut data);
    let source = seed.dir.join("file.bin");
    std::fs::write(&source, &data).map_err(io_err("cannot write the shared file"))?;
    let shared = seed
        .files
        .share(vec![source])
        .await
        .map_err(|e| SwarmError::Share(e.to_string()))?;

    // Every fetcher gets the file at once; each completion is timed as its event comes.
    // A transfer that fails is run again after a pause, as its user would; it resumes
    // from what it verified.
    let start_at = Instant::now();
    let deadline = start_at + Duration::from_secs(settings.limit_secs);
    let mut waits = Vec::with_capacity(fetchers.len());
    for (k, f) in fetchers.iter().enumerate() {
        let (files, content, to) = (
            f.files.clone(),
            shared.content_id.clone(),
            f.dir.join("got"),
        );
        waits.push(async move {
            let mut tries = 0u32;
            loop {
                tries += 1;
                let outcome = tokio::time::timeout_at(deadline, get_once(&files, &content, &to))
                    .await
                    .unwrap_or_else(|_| Err("not done in time".into()));
                match outcome {
                    Err(e) if tries < MAX_TRIES && Instant::now() < deadline => {
                        tracing::debug!(fetcher = k + 1, tries, "get failed, again: {e}");
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                    outcome => return (k, outcome, start_at.elapsed(), tries),
                }
            }
        });
    }
    let ended = futures::future::join_all(waits).await;

    let mut done_ms = Vec::new();
    let mut failed = Vec::new();
    let mut identical = 0;
    let mut retries = 0;
    for (k, outcome, took, tries) in ended {
        retries += tries - 1;
        match outcome {
            Ok(()) => {
                done_ms.push(took.as_secs_f64() * 1000.0);
                let got = std::fs::read(fetchers[k].dir.join("got").join("file.bin"));
                if got.is_ok_and(|g| g == data) {
                    identical += 1;
                } else {
                    failed.push(format!("fetcher {}: the file differs", k + 1));
                }
            }
            Err(e) => failed.push(format!("fetcher {}: {e}", k + 1)),
        }
    }
    done_ms.sort_by(f64::total_cmp);
    let all_done_ms = (failed.is_empty() && done_ms.len() == fetchers.len())
        .then(|| done_ms.last().copied())
        .flatten();
    let seed_groups = seed.files.served_groups();
    let fetcher_groups = fetchers.iter().map(|f| f.files.served_groups()).sum();
    let bytes_on_links = counters
        .iter()
        .map(|c| c.bytes_out.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    tracing::info!(
        serve_while_fetching,
        done = done_ms.len(),
        failed = failed.len(),
        seed_groups,
        "files swarm mode finished"
    );
    let nodes = std::iter::once(seed).chain(fetchers);
    futures::future::join_all(nodes.map(|u| u.node.shutdown())).await;
    Ok(ModeReport {
        serve_while_fetching,
        done_ms,
        all_done_ms,
        identical,
        failed,
        seed_groups,
        fetcher_groups,
        bytes_on_links,
        retries,
        wall_s: wall.elapsed().as_secs_f64(),
    })
}

impl SwarmReport {
    /// Writes `<out>/files-swarm.json` and `.html`; returns their paths.
    pub fn write(&self, out: &Path) -> Result<(PathBuf, PathBuf), SwarmError> {
        std::fs::create_dir_all(out).map_err(io_err(format!("cannot create {}", out.display())))?;
        let json = serde_json::to_string_pretty(self).unwrap_or_default();
        let j = out.join("files-swarm.json");
        std::fs::write(&j, json).map_err(io_err(format!("cannot write {}", j.display())))?;
        let h = out.join("files-swarm.html");
        std::fs::write(&h, self.html()).map_err(io_err(format!("cannot write {}", h.display())))?;
        Ok((j, h))
    }

    /// The report as a page with its plots.
    pub fn html(&self) -> String {
        let steps = |m: &ModeReport| -> Vec<(f64, f64)> {
            std::iter::once((0.0, 0.0))
                .chain(
                    m.done_ms
                        .iter()
                        .enumerate()
                        .map(|(k, t)| (t / 1000.0, (k + 1) as f64)),
                )
                .collect()
        };
        let completions = Chart {
            title: "Fetchers holding the whole file over time".into(),
            x_label: "seconds after every fetcher asked (virtual time)".into(),
            y_label: "fetchers done".into(),
            series: vec![
                Series {
                    name: "seed serves all alone".into(),
                    points: steps(&self.seed_only),
                    kind: Kind::Step,
                    color: "#d4683b",
                },
                Series {
                    name: "fetchers serve what they verified".into(),
                    points: steps(&self.swarm),
                    kind: Kind::Step,
                    color: "#3b6fd4",
                },
            ],
            y_max: Some(self.settings.fetchers as f64),
            markers: Vec::new(),
        };
        let served = Chart {
            title: "Groups served: by the seed (left) and by fetchers (right), each mode".into(),
            x_label: "seed only: 0 seed, 1 fetchers; swarm: 3 seed, 4 fetchers".into(),
            y_label: "groups".into(),
            series: vec![
                Series {
                    name: "seed only".into(),
                    points: vec![
                        (0.0, self.seed_only.seed_groups as f64),
                        (1.0, self.seed_only.fetcher_groups as f64),
                    ],
                    kind: Kind::Bars,
                    color: "#d4683b",
                },
                Series {
                    name: "swarm".into(),
                    points: vec![
                        (3.0, self.swarm.seed_groups as f64),
                        (4.0, self.swarm.fetcher_groups as f64),
                    ],
                    kind: Kind::Bars,
                    color: "#3b6fd4",
                },
            ],
            y_max: None,
            markers: Vec::new(),
        };
        let row = |name: &str, m: &ModeReport| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td></tr>",
                esc(name),
                m.all_done_ms
                    .map_or_else(|| "not all".into(), |t| format!("{:.2}", t / 1000.0)),
                m.identical,
                m.seed_groups,
                m.fetcher_groups,
                m.bytes_on_links,
                m.retries,
                m.wall_s,
            )
        };
        let s = &self.settings;
        format!(
            "<!doctype html><meta charset=\"utf-8\"><title>{title}</title>\
             <body style=\"font-family:system-ui,sans-serif;max-width:960px\">\
             <h1>{title}</h1><p>One seed shares {size} bytes ({groups} groups of 64 KiB); \
             {fetchers} nodes get it at once. Every node's uplink is {rate:.1} MiB/s; links \
             {lo} to {hi} ms one way; fetchers serving while fetching look for providers \
             every {re} ms; seed {seed}. Virtual time.</p>{a}{b}\
             <table border=\"1\" cellpadding=\"4\"><tr><th>mode</th><th>all done (s)</th>\
             <th>identical files</th><th>groups the seed served</th>\
             <th>groups fetchers served</th><th>bytes on links</th><th>gets run again</th>\
             <th>wall (s)</th></tr>\
             {r1}{r2}</table></body>",
            title = esc("Files swarm: serve while fetching against one seed alone"),
            size = s.size,
            groups = self.groups,
            fetchers = s.fetchers,
            rate = s.uplink_bytes_per_sec as f64 / f64::from(1u32 << 20),
            lo = s.latency_ms.0,
            hi = s.latency_ms.1,
            re = s.rediscover_ms,
            seed = s.seed,
            a = completions.render(),
            b = served.render(),
            r1 = row("seed serves all alone", &self.seed_only),
            r2 = row("fetchers serve what they verified", &self.swarm),
        )
    }
}

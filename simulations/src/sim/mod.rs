//! In-process simulations: hundreds of p2pnode nodes in one process, each running the
//! node's own stack ([`p2pnode_node::Node::start_with`] with an injected transport), on
//! libp2p's memory transport with a latency per link, in virtual time.
//!
//! A run is described by a [`Scenario`] file (`simulations/scenarios/*.toml`) and fixed by
//! its seed: [`Plan`] draws identities, link latencies, bootstrap peers, churn and lookups
//! before any node starts, so two runs of one file start the same nodes and ask the same
//! questions. What the network answers is measured: lookup success, latency and requests,
//! gossip spread, memory and wall time, written as JSON and as an HTML report with plots
//! ([`report`]).
//!
//! Time is tokio's paused clock on a current-thread runtime: whenever every node waits, the
//! clock jumps to the next timer, which is usually a link delivering bytes ([`link`]).
//! Latencies measured this way are what the links add up to, whatever the machine's speed;
//! a 1000-node run takes as long as its CPU work. Timers inside libp2p that use real time
//! (ping, idle connections, Kademlia's request timeouts) still run on the wall clock.
//!
//! Parts: [`scenario`] (the file format), [`plan`] (the seeded choices), [`link`] (the
//! delayed transport and the request counters), `runner` (starting nodes, running the
//! phases), `gossip` (the message spread), [`report`] (statistics, JSON, HTML and SVG), and
//! [`convergence`] (documents converging under churn: the sync core alone, no network
//! stack), and [`swarm`] (one seed and many fetchers of one file, with serve-while-
//! fetching and without: the files service on real nodes).

use std::path::{Path, PathBuf};

pub mod convergence;
pub mod link;
pub mod plan;
pub mod report;
pub mod scenario;
pub mod swarm;

mod gossip;
mod runner;
mod svg;

pub use plan::Plan;
pub use report::Report;
pub use scenario::Scenario;

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    ReadScenario {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The scenario file is not valid TOML for a [`Scenario`].
    #[error("invalid scenario {path}: {reason}")]
    ParseScenario {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        reason: String,
    },
    /// The scenario's numbers do not fit together.
    #[error("invalid scenario: {0}")]
    InvalidScenario(String),
    /// A node identity could not be made from the seed.
    #[error("cannot derive a node identity: {0}")]
    Identity(String),
    /// Node data directories or report files could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A node failed to start.
    #[error("node {node} did not start: {source}")]
    Start {
        /// The node index.
        node: usize,
        /// Why.
        source: p2pnode_node::StartError,
    },
    /// A node did not report a listen address in time.
    #[error("node {node} reported no listen address within {secs} s")]
    NoListenAddr {
        /// The node index.
        node: usize,
        /// The wait, virtual seconds.
        secs: u64,
    },
    /// The bootstrap peers did not come up, so no other node could join.
    #[error("bootstrap peer {node} failed: {reason}")]
    Bootstrap {
        /// The node index.
        node: usize,
        /// Why.
        reason: String,
    },
    /// The simulation thread panicked or could not be started.
    #[error("simulation thread: {0}")]
    Thread(String),
}

impl SimError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// What `p2pnode-sim run` produced.
#[derive(Debug)]
pub struct RunOutput {
    /// The measurements.
    pub report: Report,
    /// The JSON report.
    pub json: PathBuf,
    /// The HTML report with plots.
    pub html: PathBuf,
}

/// Runs `scenario` and returns its report. Blocks: the simulation gets a thread of its own
/// with a current-thread runtime on a paused clock, so this may be called from inside
/// another runtime (the binary's) as well as from plain tests.
pub fn run(scenario: &Scenario) -> Result<Report, SimError> {
    let plan = Plan::new(scenario)?;
    let scenario = scenario.clone();
    std::thread::Builder::new()
        .name(format!("sim-{}", scenario.name))
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .map_err(SimError::io("cannot build the simulation runtime"))?;
            runtime.block_on(runner::run(&scenario, &plan))
        })
        .map_err(|e| SimError::Thread(e.to_string()))?
        .join()
        .map_err(|_| SimError::Thread("the simulation panicked".into()))?
}

/// `p2pnode-sim run <scenario> --out <dir>`: runs the scenario file and writes
/// `<dir>/<name>.json` and `<dir>/<name>.html`.
pub fn run_cli(scenario: &Path, out: &Path) -> Result<RunOutput, SimError> {
    let scenario = Scenario::load(scenario)?;
    tracing::info!(name = %scenario.name, nodes = scenario.nodes, seed = scenario.seed, "simulation starting");
    let report = run(&scenario)?;
    let (json, html) = report.write(out)?;
    tracing::info!(json = %json.display(), html = %html.display(), "reports written");
    Ok(RunOutput { report, json, html })
}

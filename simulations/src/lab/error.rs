use std::path::PathBuf;
use std::time::Duration;

/// What went wrong while building, running or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Network namespaces, veths and nftables need root (CAP_NET_ADMIN).
    #[error("the NAT lab needs root (CAP_NET_ADMIN); running as uid {0}")]
    NotRoot(u32),
    /// A command could not be started at all (missing tool, bad path).
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and exited with a failure.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of what it wrote on stderr.
        stderr: String,
    },
    /// A command's output was not what the lab expected (JSON, a line, a number).
    #[error("unexpected output from `{command}`: {reason}")]
    Output {
        /// The command line.
        command: String,
        /// What did not fit.
        reason: String,
    },
    /// A condition did not hold within its time limit.
    #[error("timed out after {after:?} waiting for {what}{}", last.as_ref().map(|l| format!(" (last: {l})")).unwrap_or_default())]
    Timeout {
        /// The condition.
        what: String,
        /// How long the lab waited.
        after: Duration,
        /// The last error or observation while polling, if any.
        last: Option<String>,
    },
    /// The lab description is inconsistent (unknown router, bad name, too many hosts).
    #[error("invalid lab setup: {0}")]
    Config(String),
    /// A process the lab started exited when it should be running.
    #[error("{name} exited unexpectedly ({status}); log {log}: {tail}")]
    Exited {
        /// Which process.
        name: String,
        /// Its exit status.
        status: String,
        /// Where its stderr went.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },
    /// The `p2pnode` binary is not where the lab looked for it.
    #[error(
        "p2pnode binary not found at {0}; build it with `cargo build -p p2pnode` or set P2PNODE_BIN"
    )]
    NodeBinary(PathBuf),
    /// The helper binary (`p2pnode-sim`, for the delay link) is not available.
    #[error("p2pnode-sim binary not found at {0}; set it with LabBuilder::sim_binary")]
    SimBinary(PathBuf),
    /// Local file IO (temp dirs, logs).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

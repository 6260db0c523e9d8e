//! `p2pnode doctor`: checks this node and explains each finding with what to do about it.
//!
//! It gathers facts (the data directory as this user sees it, who answers on the control
//! socket, the daemon's status and diagnostics) and then judges them in [`judge`](mod@judge), which is
//! pure so that every verdict is tested without a network. Exit status 1 when a check fails.

mod judge;
mod nat;

use std::path::Path;

use anyhow::Result;
use p2pnode_node::api::{Diagnostics, Status};
use p2pnode_node::control::{ControlClient, SOCKET_FILE};
use p2pnode_node::diagnostics::{check_data_dir, own_uid};
use serde::Serialize;

use crate::output::{self, AlreadyShown};

pub(crate) use judge::judge;
pub(crate) use nat::NatBehaviour;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Level {
    /// As it should be.
    Ok,
    /// Worth knowing, nothing to do.
    Info,
    /// Works, but something may go wrong.
    Warn,
    /// Broken: the advice says how to fix it.
    Fail,
    /// Could not be checked (no daemon).
    Skipped,
}

/// One check's verdict.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    pub(crate) name: &'static str,
    pub(crate) level: Level,
    pub(crate) summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) advice: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Facts {
    pub(crate) daemon_running: bool,
    pub(crate) nat_status: Option<String>,
    pub(crate) nat_behaviour: NatBehaviour,
    pub(crate) reservations: Vec<String>,
    pub(crate) relay_server: bool,
    pub(crate) relay_only: bool,
    pub(crate) connected_peers: usize,
    pub(crate) punch_successes: usize,
    pub(crate) punch_failures: usize,
    /// The median of the peers' clock offsets.
    pub(crate) clock_offset_ms: Option<f64>,
}

/// What `doctor` prints.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// No check failed.
    pub(crate) ok: bool,
    pub(crate) checks: Vec<Check>,
    pub(crate) facts: Facts,
}

/// Who answers on the control socket.
#[derive(Debug, Clone, Default)]
pub(crate) struct SocketFacts {
    /// The socket file exists.
    pub(crate) exists: bool,
    /// Its owner and mode.
    pub(crate) owner: Option<u32>,
    pub(crate) mode: Option<u32>,
    /// The process that accepted our connection (SO_PEERCRED): uid and pid.
    pub(crate) server: Option<(u32, Option<i32>)>,
    /// Why connecting failed.
    pub(crate) error: Option<String>,
}

/// What the daemon said, when one answered.
#[derive(Debug, Clone)]
pub(crate) struct DaemonFacts {
    pub(crate) status: Status,
    pub(crate) diagnostics: Diagnostics,
}

pub(crate) async fn run(data_dir: &Path, control: &ControlClient, json: bool) -> Result<()> {
    let dir_problems = check_data_dir(data_dir);
    let socket = socket_facts(&data_dir.join(SOCKET_FILE)).await;
    let daemon = if socket.server.is_some() {
        let status = control.get::<Status>("status").await;
        let diagnostics = control.get::<Diagnostics>("diagnostics").await;
        match (status, diagnostics) {
            (Ok(status), Ok(diagnostics)) => Some(DaemonFacts {
                status,
                diagnostics,
            }),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!("the daemon did not answer: {e}");
                None
            }
        }
    } else {
        None
    };
    let report = judge(data_dir, own_uid(), &dir_problems, &socket, daemon.as_ref());
    output::show(json, &report, print);
    let failed = report
        .checks
        .iter()
        .filter(|c| c.level == Level::Fail)
        .count();
    if failed > 0 {
        return Err(AlreadyShown(format!("doctor: {failed} check(s) failed")).into());
    }
    Ok(())
}

fn print(report: &Report) {
    for c in &report.checks {
        let mark = match c.level {
            Level::Ok => "ok  ",
            Level::Info => "info",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
            Level::Skipped => "skip",
        };
        println!("[{mark}] {}: {}", c.name, c.summary);
        if let Some(advice) = &c.advice {
            println!("       -> {advice}");
        }
    }
}

async fn socket_facts(path: &Path) -> SocketFacts {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut facts = SocketFacts::default();
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            facts.exists = true;
            facts.owner = Some(meta.uid());
            facts.mode = Some(meta.permissions().mode() & 0o7777);
        }
        Err(_) => return facts,
    }
    match tokio::net::UnixStream::connect(path).await {
        Ok(stream) => match stream.peer_cred() {
            Ok(cred) => facts.server = Some((cred.uid(), cred.pid())),
            Err(e) => facts.error = Some(format!("cannot tell who answers: {e}")),
        },
        Err(e) => facts.error = Some(e.to_string()),
    }
    facts
}

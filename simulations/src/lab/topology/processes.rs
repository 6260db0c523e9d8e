//! The lab's helper processes (the delay links) and its tear-down.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::{HELPER_READY_TIMEOUT, Helper, Lab};
use crate::lab::LabError;
use crate::lab::cmd;

impl Lab {
    /// The `p2pnode-sim` binary the lab runs its helpers with.
    pub fn sim_binary(&self) -> Result<String, LabError> {
        match &self.sim_binary {
            Ok(path) => Ok(path.to_string_lossy().into_owned()),
            Err(path) => Err(LabError::SimBinary(path.clone())),
        }
    }

    /// Starts a helper process in `name`'s namespace, its stderr in a log file of the
    /// work directory, and waits until it prints `ready` on stdout. The lab owns it and
    /// kills it on drop.
    pub(crate) async fn spawn_helper(
        &mut self,
        helper: &str,
        name: &str,
        program: &str,
        args: &[&str],
    ) -> Result<(), LabError> {
        let file_name: String = helper
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let log = self.workdir().join(format!("{file_name}.log"));
        let mut child = self
            .command(name, program, args)?
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .env("RUST_LOG", "info")
            .spawn()
            .map_err(|source| LabError::Spawn {
                command: cmd::describe(program, args),
                source,
            })?;
        let stdout = child.stdout.take();
        // Owned by the lab before waiting, so a timeout below still kills it.
        self.helpers.push(Helper {
            name: helper.to_string(),
            child,
        });
        let ready = async {
            let mut lines = BufReader::new(stdout?).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == "ready" {
                    return Some(());
                }
            }
            None
        };
        match tokio::time::timeout(HELPER_READY_TIMEOUT, ready).await {
            Ok(Some(())) => Ok(()),
            Ok(None) => Err(LabError::Exited {
                name: helper.to_string(),
                status: "closed stdout before ready".into(),
                tail: cmd::tail(&std::fs::read_to_string(&log).unwrap_or_default(), 2000),
                log,
            }),
            Err(_) => Err(LabError::Timeout {
                what: format!("{helper} to be ready"),
                after: HELPER_READY_TIMEOUT,
                last: None,
            }),
        }
    }

    /// Checks that the lab's helper processes (delay links) still run.
    pub fn check_helpers(&mut self) -> Result<(), LabError> {
        for helper in &mut self.helpers {
            if let Ok(Some(status)) = helper.child.try_wait() {
                return Err(LabError::Exited {
                    name: helper.name.clone(),
                    status: status.to_string(),
                    log: PathBuf::new(),
                    tail: String::new(),
                });
            }
        }
        Ok(())
    }

    /// Kills every process in the lab's namespaces and deletes the namespaces. Called by
    /// `Drop`; errors are logged, not returned, because tear-down must go on.
    fn teardown(&mut self) {
        for helper in &mut self.helpers {
            let _ = helper.child.start_kill();
        }
        for ns in self.namespaces.iter().rev() {
            kill_namespace_processes(ns);
            if let Err(err) = cmd::run_blocking("ip", &["netns", "del", ns]) {
                tracing::warn!(namespace = %ns, %err, "could not delete namespace");
            }
        }
        if !self.namespaces.is_empty() {
            tracing::info!(prefix = %self.prefix, namespaces = self.namespaces.len(), "lab deleted");
        }
        self.namespaces.clear();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// SIGKILLs every process whose network namespace is `ns` (`ip netns pids`), so that
/// nothing started in the lab outlives it, whoever started it.
pub(crate) fn kill_namespace_processes(ns: &str) {
    let pids = match cmd::run_blocking("ip", &["netns", "pids", ns]) {
        Ok(out) => out,
        Err(err) => {
            tracing::debug!(namespace = %ns, %err, "no pids listed");
            return;
        }
    };
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let pid = nix::unistd::Pid::from_raw(pid);
        if let Err(err) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
            tracing::debug!(namespace = %ns, %pid, %err, "kill failed");
        }
    }
}

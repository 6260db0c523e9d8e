//! Helpers for tests that run real `p2pnode` processes on loopback.

#![allow(clippy::unwrap_used)]
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_p2pnode");
pub const WAIT: Duration = Duration::from_secs(30);

/// Runs `p2pnode --data-dir <dir> <args>` to completion.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    run_with(dir, args, &[])
}

/// [`run`], with `env` set in the process's environment.
pub fn run_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("run p2pnode")
}

/// Runs a command that must succeed and returns its stdout parsed as JSON.
pub fn json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = run(dir, &[args, &["--json"]].concat());
    assert!(
        out.status.success(),
        "p2pnode {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json output")
}

/// Polls `check` until it returns `Some`, panicking with `what` after [`WAIT`].
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A daemon process, killed on drop.
pub struct Daemon {
    pub dir: PathBuf,
    pub child: Child,
    pub peer_id: String,
}

impl Daemon {
    /// Starts `p2pnode start` with `args` in `dir` and waits until its control socket answers.
    pub fn start(dir: &Path, args: &[&str]) -> Daemon {
        let log = std::fs::File::create(dir.with_extension("log")).expect("log file");
        let child = Command::new(BIN)
            .arg("--data-dir")
            .arg(dir)
            .arg("start")
            .arg("--no-mdns")
            .args(args)
            .env("RUST_LOG", "info,p2pnode_node=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn p2pnode start");
        let mut d = Daemon {
            dir: dir.to_path_buf(),
            child,
            peer_id: String::new(),
        };
        let status = wait_for("the control socket", || {
            if let Ok(Some(code)) = d.child.try_wait() {
                panic!(
                    "daemon exited early ({code}): {}",
                    std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
                );
            }
            let out = run(dir, &["status", "--json"]);
            out.status
                .success()
                .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
                .flatten()
        });
        d.peer_id = status["peer_id"].as_str().expect("peer id").to_string();
        d
    }

    /// A loopback TCP address of this daemon, with its peer id.
    pub fn tcp_addr(&self) -> String {
        let status = json(&self.dir, &["status"]);
        let addr = status["listen_addrs"]
            .as_array()
            .expect("listen addrs")
            .iter()
            .filter_map(|a| a.as_str())
            .find(|a| a.contains("/tcp/") && !a.contains("p2p-circuit"))
            .expect("a tcp listen address")
            .to_string();
        format!("{addr}/p2p/{}", self.peer_id)
    }

    /// Whether `peer` is in this daemon's `peers --json`.
    pub fn is_connected_to(&self, peer: &str) -> bool {
        let out = run(&self.dir, &["peers", "--json"]);
        out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .any(|p| p["peer_id"] == peer)
    }

    /// Stops the daemon through `p2pnode stop` and waits for it to exit cleanly.
    pub fn stop(mut self) {
        let out = run(&self.dir, &["stop"]);
        assert!(out.status.success(), "stop failed");
        let status = wait_for("the daemon to exit", || {
            self.child.try_wait().ok().flatten()
        });
        assert!(status.success(), "daemon exited with {status}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const LOOPBACK: [&str; 4] = [
    "--listen",
    "/ip4/127.0.0.1/tcp/0",
    "--listen",
    "/ip4/127.0.0.1/udp/0/quic-v1",
];

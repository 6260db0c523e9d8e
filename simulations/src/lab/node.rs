//! `p2pnode` daemons in lab namespaces, and their JSON answers.
//!
//! Each node has its own data directory in the lab's work directory and its stderr in
//! `<name>.log` beside it. Client commands (`status`, `peers`, `connect`, `ping`, ...)
//! run in the node's namespace too, so they reach the daemon however its control
//! socket is bound.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::process::{Child, Command};

use super::poll::{Poll, wait_for};
use super::{Lab, LabError, cmd};

mod answers;
pub use answers::{
    ConnectOutcome, ConnectionInfo, FindOutcome, PathKind, PeerInfo, PingOutcome, Status,
};

/// How long a daemon may take until `status` answers.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a single client command may run (a `connect` through Kademlia and a relay
/// included); past it the command is killed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Default log filter of lab daemons: enough to see reservations and hole punching.
/// Env `P2PNODE_LAB_RUST_LOG` overrides it.
const DEFAULT_RUST_LOG: &str = "info,libp2p_dcutr=debug,libp2p_relay=debug";

/// The `p2pnode` binary: env `P2PNODE_BIN`, else `debug/p2pnode` in the build's target
/// directory (env `CARGO_TARGET_DIR`, which the test process inherits from the build,
/// else `<workspace>/target`).
pub fn p2pnode_binary() -> Result<PathBuf, LabError> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let path = match std::env::var_os("P2PNODE_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::var_os("CARGO_TARGET_DIR")
            // A relative target directory is relative to where cargo ran: the workspace.
            .map(|dir| workspace.join(dir))
            .unwrap_or_else(|| workspace.join("target"))
            .join("debug/p2pnode"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(LabError::NodeBinary(path))
    }
}

/// How to start one daemon (`p2pnode start`).
#[derive(Debug, Clone, Default)]
pub struct NodeSpec {
    /// `--listen` multiaddrs.
    pub listen: Vec<String>,
    /// `--bootstrap` multiaddrs (with `/p2p/<id>`).
    pub bootstrap: Vec<String>,
    /// `--relay`: serve as relay and bootstrap node.
    pub relay: bool,
    /// `--external-address` multiaddrs.
    pub external: Vec<String>,
    /// mDNS on (off adds `--no-mdns`).
    pub mdns: bool,
    /// More arguments for `start`.
    pub extra_args: Vec<String>,
    /// A `config.toml` written into the data directory before the start, if any.
    pub config_toml: Option<String>,
    /// The whole command line after the binary, used as it is instead of the one built from
    /// the fields above (a test that runs a service unit's `ExecStart`). It must name the
    /// node's data directory ([`Lab::node_data_dir`]), or client commands will not reach it.
    pub command_line: Option<Vec<String>>,
    /// A program with its arguments that the daemon is started through, and which must
    /// exec it, as `setpriv` does (a test of a daemon without a capability); empty for
    /// none. Client commands do not go through it.
    pub wrapper: Vec<String>,
}

impl NodeSpec {
    fn start_args(&self, data_dir: &Path) -> Vec<String> {
        if let Some(args) = &self.command_line {
            return args.clone();
        }
        let mut args = vec![
            "start".to_string(),
            "--data-dir".into(),
            data_dir.to_string_lossy().into_owned(),
        ];
        for addr in &self.listen {
            args.extend(["--listen".to_string(), addr.clone()]);
        }
        for addr in &self.bootstrap {
            args.extend(["--bootstrap".to_string(), addr.clone()]);
        }
        if self.relay {
            args.push("--relay".into());
        }
        for addr in &self.external {
            args.extend(["--external-address".to_string(), addr.clone()]);
        }
        if !self.mdns {
            args.push("--no-mdns".into());
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// A `p2pnode` daemon in a lab namespace. Dropping it kills the daemon.
#[derive(Debug)]
pub struct Node {
    name: String,
    host: String,
    namespace: String,
    binary: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    spec: NodeSpec,
    peer_id: String,
    /// Behind a lock so liveness checks work through `&self` inside polling closures.
    child: std::sync::Mutex<Option<Child>>,
}

impl Lab {
    /// The data directory of the daemon called `name`.
    pub fn node_data_dir(&self, name: &str) -> PathBuf {
        self.workdir().join(name)
    }

    /// Starts a daemon called `name` on `host` and waits until it answers `status`.
    pub async fn start_node(
        &self,
        host: &str,
        name: &str,
        spec: NodeSpec,
    ) -> Result<Node, LabError> {
        let binary = p2pnode_binary()?;
        let data_dir = self.node_data_dir(name);
        std::fs::create_dir_all(&data_dir)?;
        // A node refuses a data directory others may write to, whatever the umask was.
        std::fs::set_permissions(
            &data_dir,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
        )?;
        if let Some(config) = &spec.config_toml {
            std::fs::write(data_dir.join(p2pnode_node::config::CONFIG_FILE), config)?;
        }
        let mut node = Node {
            name: name.to_string(),
            host: host.to_string(),
            namespace: self.namespace(host)?.to_string(),
            binary,
            log: self.workdir().join(format!("{name}.log")),
            data_dir,
            spec,
            peer_id: String::new(),
            child: std::sync::Mutex::new(None),
        };
        node.peer_id = node.client_text(&["id"]).await?.trim().to_string();
        node.start().await?;
        Ok(node)
    }
}

impl Node {
    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lab host it runs on.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Its peer id.
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Its log file (stdout and stderr of the daemon, across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `bytes` of its log.
    pub fn log_tail(&self, bytes: usize) -> String {
        cmd::tail(
            &std::fs::read_to_string(&self.log).unwrap_or_default(),
            bytes,
        )
    }

    /// A multiaddr of this node for others to dial: `addr` + `/p2p/<peer id>`.
    pub fn addr_with_id(&self, addr: &str) -> String {
        format!("{addr}/p2p/{}", self.peer_id)
    }

    fn command(&self, args: &[String]) -> Command {
        self.command_through(&[], args)
    }

    /// `args` of the binary run in the node's namespace through `wrapper` (see
    /// [`NodeSpec::wrapper`]).
    fn command_through(&self, wrapper: &[String], args: &[String]) -> Command {
        let binary = self.binary.to_string_lossy().into_owned();
        let (program, args) = match wrapper.split_first() {
            None => (binary, args.to_vec()),
            Some((program, rest)) => {
                let mut all = rest.to_vec();
                all.push(binary);
                all.extend_from_slice(args);
                (program.clone(), all)
            }
        };
        let mut command = Command::new("ip");
        command
            .args(cmd::netns_exec_args(&self.namespace, &program, &args))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Starts the daemon (again, after [`Node::kill`]) with the same spec and data.
    pub async fn start(&self) -> Result<(), LabError> {
        if self.is_running() {
            return Ok(());
        }
        // Reap a previous daemon that died on its own.
        self.take_child();
        let args = self.spec.start_args(&self.data_dir);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let rust_log =
            std::env::var("P2PNODE_LAB_RUST_LOG").unwrap_or_else(|_| DEFAULT_RUST_LOG.into());
        let child = self
            .command_through(&self.spec.wrapper, &args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("RUST_LOG", rust_log)
            .spawn()
            .map_err(|source| LabError::Spawn {
                command: cmd::describe("p2pnode", &args),
                source,
            })?;
        tracing::info!(node = %self.name, host = %self.host, peer = %self.peer_id, "daemon started");
        *self.child_slot() = Some(child);
        let what = format!("{} to answer status", self.name);
        wait_for(&what, READY_TIMEOUT, Duration::from_millis(100), || async {
            if let Err(err) = self.check_running() {
                return Poll::Fail(err);
            }
            match self.status().await {
                Ok(status) => Poll::Ready(status),
                Err(err) => Poll::seen(err),
            }
        })
        .await
        .map(drop)
    }

    fn child_slot(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        // A poisoned lock only means a panic elsewhere; the child handle is still valid.
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take_child(&self) -> Option<Child> {
        self.child_slot().take()
    }

    /// The daemon's process id, while it runs (`ip netns exec` execs the daemon, so this
    /// is the daemon itself: its `/proc/<pid>/status` tells its memory).
    pub fn pid(&self) -> Option<u32> {
        self.child_slot().as_ref().and_then(Child::id)
    }

    /// Whether the daemon process runs.
    pub fn is_running(&self) -> bool {
        self.child_slot()
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// An error with the log's tail if the daemon has exited.
    pub fn check_running(&self) -> Result<(), LabError> {
        let status = match self.child_slot().as_mut() {
            None => "not started".to_string(),
            Some(child) => match child.try_wait() {
                Ok(None) => return Ok(()),
                Ok(Some(status)) => status.to_string(),
                Err(err) => err.to_string(),
            },
        };
        Err(LabError::Exited {
            name: self.name.clone(),
            status,
            log: self.log.clone(),
            tail: self.log_tail(3000),
        })
    }

    /// Kills the daemon with SIGKILL (no clean shutdown) and reaps it.
    pub async fn kill(&self) -> Result<(), LabError> {
        if let Some(mut child) = self.take_child() {
            child.start_kill()?;
            child.wait().await?;
            tracing::info!(node = %self.name, "daemon killed");
        }
        Ok(())
    }

    /// `args` of a client subcommand with this node's `--data-dir`.
    fn client_args(&self, args: &[&str]) -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend([
            "--data-dir".to_string(),
            self.data_dir.to_string_lossy().into_owned(),
        ]);
        all
    }

    /// `p2pnode doctor --json`: its report, also when it found a failure (exit status 1).
    pub async fn doctor(&self) -> Result<serde_json::Value, LabError> {
        let args = ["doctor", "--json"];
        let output = self.client_output(&args, CLIENT_TIMEOUT).await?;
        let command = cmd::describe("p2pnode", &self.client_args(&args));
        let text = String::from_utf8_lossy(&output.stdout);
        serde_json::from_str(text.trim()).map_err(|err| LabError::Output {
            command,
            reason: format!("{err}: {}", cmd::tail(&text, 500)),
        })
    }

    /// Runs a client subcommand with `--data-dir` and returns its stdout.
    pub async fn client_text(&self, args: &[&str]) -> Result<String, LabError> {
        let output = self.client_output(args, CLIENT_TIMEOUT).await?;
        let command = cmd::describe("p2pnode", &self.client_args(args));
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(LabError::Command {
                command,
                status: output.status.to_string(),
                stderr: cmd::tail(&String::from_utf8_lossy(&output.stderr), 2000),
            })
        }
    }

    /// Starts a client subcommand with `--data-dir` that talks over its stdin and stdout
    /// (`chat <peer> --line`): both piped, stderr appended to `<name>-clients.log` beside
    /// the daemon's log. Dropping the child kills it.
    pub fn spawn_client(&self, args: &[&str]) -> Result<Child, LabError> {
        let all = self.client_args(args);
        let log = self
            .log
            .with_file_name(format!("{}-clients.log", self.name));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        self.command(&all)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|source| LabError::Spawn {
                command: cmd::describe("p2pnode", &all),
                source,
            })
    }

    /// Runs a client subcommand with `--data-dir` for at most `timeout` and returns its
    /// whole output whatever the exit status: for long commands (a large `get`) and for
    /// those whose failure, and its message, is what a test checks.
    pub async fn client_output(
        &self,
        args: &[&str],
        timeout: Duration,
    ) -> Result<std::process::Output, LabError> {
        let all = self.client_args(args);
        let command = cmd::describe("p2pnode", &all);
        tokio::time::timeout(timeout, self.command(&all).output())
            .await
            .map_err(|_| LabError::Timeout {
                what: command.clone(),
                after: timeout,
                last: None,
            })?
            .map_err(|source| LabError::Spawn { command, source })
    }

    /// Runs a client subcommand with `--data-dir` and `--json` and parses its stdout.
    pub async fn client_json<T: DeserializeOwned>(&self, args: &[&str]) -> Result<T, LabError> {
        let mut all = args.to_vec();
        all.push("--json");
        let text = self.client_text(&all).await?;
        serde_json::from_str(text.trim()).map_err(|err| LabError::Output {
            command: format!("p2pnode {}", all.join(" ")),
            reason: format!("{err}: {}", cmd::tail(&text, 500)),
        })
    }

    /// `p2pnode status --json`.
    pub async fn status(&self) -> Result<Status, LabError> {
        self.client_json(&["status"]).await
    }

    /// `p2pnode peers --json`.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, LabError> {
        self.client_json(&["peers"]).await
    }

    /// The entry of `peer` in `peers`, if connected.
    pub async fn peer(&self, peer: &str) -> Result<Option<PeerInfo>, LabError> {
        Ok(self.peers().await?.into_iter().find(|p| p.peer_id == peer))
    }

    /// `p2pnode connect <target> --json` (a multiaddr or a bare peer id).
    pub async fn connect(&self, target: &str) -> Result<ConnectOutcome, LabError> {
        self.client_json(&["connect", target]).await
    }

    /// `p2pnode find <peer> --json`.
    pub async fn find(&self, peer: &str) -> Result<FindOutcome, LabError> {
        self.client_json(&["find", peer]).await
    }

    /// `p2pnode ping <peer> --count n --json`.
    pub async fn ping(&self, peer: &str, count: u32) -> Result<PingOutcome, LabError> {
        let count = count.to_string();
        self.client_json(&["ping", peer, "--count", &count]).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = self.child_slot().as_mut() {
            // kill_on_drop is not set on the daemon (a restart replaces the child), so
            // it is killed here; the lab's tear-down would catch it too.
            let _ = child.start_kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_args_follow_the_cli_contract() {
        let spec = NodeSpec {
            listen: vec!["/ip4/0.0.0.0/tcp/4001".into()],
            bootstrap: vec!["/ip4/198.51.100.2/tcp/4001/p2p/12D3Koo".into()],
            relay: false,
            external: vec![],
            mdns: false,
            extra_args: vec![],
            config_toml: None,
            command_line: None,
            wrapper: vec![],
        };
        let args = spec.start_args(Path::new("/d"));
        assert_eq!(
            args,
            [
                "start",
                "--data-dir",
                "/d",
                "--listen",
                "/ip4/0.0.0.0/tcp/4001",
                "--bootstrap",
                "/ip4/198.51.100.2/tcp/4001/p2p/12D3Koo",
                "--no-mdns"
            ]
        );
    }

    #[test]
    fn parses_peers_json() {
        let json = r#"[{"peer_id":"12D3KooA","path":"direct","transport":"quic","rtt_ms":null,
            "connections":[{"address":"/ip4/198.51.100.12/udp/4001/quic-v1","path":"direct",
            "transport":"quic","outbound":true},{"address":"/p2p-circuit","path":"relayed",
            "transport":"relay","outbound":false}]}]"#;
        let peers: Vec<PeerInfo> = serde_json::from_str(json).expect("valid json");
        assert_eq!(peers[0].path, PathKind::Direct);
        assert_eq!(peers[0].connections[1].path, PathKind::Relayed);
        assert_eq!(peers[0].rtt_ms, None);
    }
}

//! Building a lab (namespaces, veths, bridges, NAT routers, link faults) and tearing it
//! down again.
//!
//! This file holds the [`Lab`] guard with its [`Host`]s and [`Router`]s and runs commands
//! in their namespaces; `nat` holds [`NatKind`], [`LinkFaults`] and the router rules made
//! from them, `builder` the [`LabBuilder`], `netns` the build steps, and `processes` the
//! helper processes and the tear-down.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::LabError;
use super::cmd;

mod builder;
mod nat;
mod netns;
mod processes;

pub use builder::LabBuilder;
pub use nat::{LinkFaults, NatKind};
pub(crate) use processes::kill_namespace_processes;

/// Every lab namespace name starts with this, then the owner's pid: `p2l<pid>x<n>-`.
/// `lab cleanup` relies on the pid being there.
pub const PREFIX_TAG: &str = "p2l";

/// The public segment, TEST-NET-2 (RFC 5737): never routed anywhere real.
pub const PUBLIC_NET: &str = "198.51.100.0/24";

/// Name of the TUN device of a router's delay link, inside the router namespace.
pub(crate) const DELAY_TUN: &str = "dly";

/// Routing table that sends packets arriving on a router's LAN or WAN into the delay link.
const DELAY_TABLE: &str = "100";

/// Firewall mark of packets on their way into the delay link.
const DELAY_MARK: &str = "0x1d";

/// How long a helper process (delay link) may take to say it is ready.
const HELPER_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Packets the delay link may hold at once; past that it drops, like a full router queue.
const DELAY_QUEUE_PACKETS: usize = 4096;

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, Clone)]
struct RouterSpec {
    name: String,
    kind: NatKind,
    faults: LinkFaults,
}

#[derive(Debug, Clone)]
struct HostSpec {
    name: String,
    /// `None` for a host on the public segment.
    router: Option<String>,
}

/// A host: a namespace with one interface `eth0`.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its name in the lab description.
    pub name: String,
    /// Its network namespace.
    pub namespace: String,
    /// Its address on the public segment or its router's LAN.
    pub ip: Ipv4Addr,
    /// The router it sits behind; `None` on the public segment.
    pub router: Option<String>,
}

/// A NAT router: a namespace with `wan` on the public segment and the bridge `lan`.
#[derive(Debug, Clone)]
pub struct Router {
    /// Its name in the lab description.
    pub name: String,
    /// Its network namespace.
    pub namespace: String,
    /// How it maps ports.
    pub kind: NatKind,
    /// Its address on the public segment.
    pub wan_ip: Ipv4Addr,
    /// Its LAN address (the gateway of its hosts).
    pub lan_ip: Ipv4Addr,
    /// Its LAN, `10.i.0.0/24`.
    pub lan_net: String,
    /// Its faults.
    pub faults: LinkFaults,
}

/// A helper process the lab runs (the delay links).
#[derive(Debug)]
struct Helper {
    name: String,
    child: Child,
}

/// A built lab. Dropping it kills every process in its namespaces and deletes exactly
/// the namespaces it created (with them go all the links inside), also when a test
/// panics.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    public_ns: String,
    /// In creation order; deleted in reverse.
    namespaces: Vec<String>,
    hosts: BTreeMap<String, Host>,
    routers: BTreeMap<String, Router>,
    helpers: Vec<Helper>,
    /// Logs and node data directories; `None` once kept on purpose.
    workdir: Option<tempfile::TempDir>,
    /// The helper binary, or where it was looked for.
    sim_binary: Result<PathBuf, PathBuf>,
}

impl Lab {
    /// This run's prefix of namespace names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespaces created, in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The directory for logs and data directories (deleted with the lab unless
    /// [`Lab::keep_workdir`] was called).
    pub fn workdir(&self) -> &Path {
        self.workdir
            .as_ref()
            .map(tempfile::TempDir::path)
            .unwrap_or_else(|| Path::new("/tmp"))
    }

    /// Keeps the work directory (logs) after the lab is dropped and returns its path.
    pub fn keep_workdir(&mut self) -> PathBuf {
        match self.workdir.take() {
            Some(dir) => dir.keep(),
            None => PathBuf::from("/tmp"),
        }
    }

    /// A host by name.
    pub fn host(&self, name: &str) -> Result<&Host, LabError> {
        self.hosts
            .get(name)
            .ok_or_else(|| LabError::Config(format!("no host {name}")))
    }

    /// A router by name.
    pub fn router(&self, name: &str) -> Result<&Router, LabError> {
        self.routers
            .get(name)
            .ok_or_else(|| LabError::Config(format!("no router {name}")))
    }

    /// The namespace of a host or router.
    pub fn namespace(&self, name: &str) -> Result<&str, LabError> {
        if let Some(host) = self.hosts.get(name) {
            return Ok(&host.namespace);
        }
        if let Some(router) = self.routers.get(name) {
            return Ok(&router.namespace);
        }
        if name == "pub" {
            return Ok(&self.public_ns);
        }
        Err(LabError::Config(format!("no host or router {name}")))
    }

    /// A command that runs `program args` inside the namespace of host or router `name`.
    pub fn command<S: AsRef<str>>(
        &self,
        name: &str,
        program: &str,
        args: &[S],
    ) -> Result<Command, LabError> {
        let ns = self.namespace(name)?;
        let mut command = Command::new("ip");
        command
            .args(cmd::netns_exec_args(ns, program, args))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        Ok(command)
    }

    /// Runs `program args` inside `name`'s namespace to completion; returns stdout.
    pub async fn exec<S: AsRef<str>>(
        &self,
        name: &str,
        program: &str,
        args: &[S],
    ) -> Result<String, LabError> {
        let ns = self.namespace(name)?;
        cmd::run("ip", &cmd::netns_exec_args(ns, program, args)).await
    }

    /// Like [`Lab::exec`] but returns the whole output, whatever the exit status (for
    /// commands whose failure is the expected result, such as a ping that must not pass).
    pub async fn exec_output<S: AsRef<str>>(
        &self,
        name: &str,
        program: &str,
        args: &[S],
    ) -> Result<std::process::Output, LabError> {
        let mut command = self.command(name, program, args)?;
        command.output().await.map_err(|source| LabError::Spawn {
            command: cmd::describe(program, args),
            source,
        })
    }
}

//! Building a lab (namespaces, veths, bridges, NAT routers, link faults) and tearing it
//! down again.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::LabError;
use super::cmd;

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

/// How a router maps LAN flows to its WAN address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatKind {
    /// nftables `masquerade`: the source port is kept when free, so one LAN socket has
    /// one public mapping for every destination (hole punching can work).
    Cone,
    /// nftables `masquerade random`: each flow gets a random port, so the port a peer
    /// observes is useless to another peer (hole punching should fail).
    Symmetric,
}

impl NatKind {
    fn masquerade(self) -> &'static str {
        match self {
            NatKind::Cone => "masquerade",
            NatKind::Symmetric => "masquerade random",
        }
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NatKind::Cone => "cone",
            NatKind::Symmetric => "symmetric",
        })
    }
}

impl FromStr for NatKind {
    type Err = LabError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cone" => Ok(NatKind::Cone),
            "symmetric" | "sym" => Ok(NatKind::Symmetric),
            other => Err(LabError::Config(format!(
                "unknown NAT kind {other:?} (cone, symmetric)"
            ))),
        }
    }
}

/// Faults on a router: they apply to every packet the router forwards, in both
/// directions (LAN to WAN and WAN to LAN); traffic between hosts on the same LAN is
/// bridged and not affected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFaults {
    /// Added to each packet crossing the router, in each direction: a host's round trip
    /// to the public side grows by twice this, a round trip between hosts behind two
    /// such routers by four times this.
    pub delay: Duration,
    /// Percent of packets crossing the router dropped, in each direction (0 to 100).
    pub loss_percent: u8,
    /// Rate limit of the WAN link in each direction, kbit/s.
    pub rate_kbit: Option<u32>,
}

impl LinkFaults {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// Sets the one-way delay per router crossing.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sets the loss in percent per router crossing.
    pub fn with_loss_percent(mut self, percent: u8) -> Self {
        self.loss_percent = percent;
        self
    }

    /// Sets the WAN rate limit.
    pub fn with_rate_kbit(mut self, kbit: u32) -> Self {
        self.rate_kbit = Some(kbit);
        self
    }
}

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

/// Describes a lab; [`LabBuilder::build`] creates it.
///
/// ```no_run
/// # async fn f() -> Result<(), p2pnode_sim::lab::LabError> {
/// use p2pnode_sim::lab::{LabBuilder, NatKind};
/// let lab = LabBuilder::new()
///     .public_host("relay")
///     .router("r1", NatKind::Cone)
///     .host("a", "r1")
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct LabBuilder {
    routers: Vec<RouterSpec>,
    hosts: Vec<HostSpec>,
    sim_binary: Option<PathBuf>,
}

impl LabBuilder {
    /// An empty lab: just the public segment.
    pub fn new() -> Self {
        Self::default()
    }

    /// A host on the public segment (addresses 198.51.100.2, .3, ... in the order added).
    pub fn public_host(mut self, name: &str) -> Self {
        self.hosts.push(HostSpec {
            name: name.to_string(),
            router: None,
        });
        self
    }

    /// A NAT router without faults (WAN 198.51.100.(10+i), LAN 10.i.0.0/24, i from 1).
    pub fn router(self, name: &str, kind: NatKind) -> Self {
        self.router_with_faults(name, kind, LinkFaults::none())
    }

    /// A NAT router whose forwarding path has `faults`.
    pub fn router_with_faults(mut self, name: &str, kind: NatKind, faults: LinkFaults) -> Self {
        self.routers.push(RouterSpec {
            name: name.to_string(),
            kind,
            faults,
        });
        self
    }

    /// A host behind `router` (10.i.0.2, .3, ... in the order added; default route via
    /// the router).
    pub fn host(mut self, name: &str, router: &str) -> Self {
        self.hosts.push(HostSpec {
            name: name.to_string(),
            router: Some(router.to_string()),
        });
        self
    }

    /// The `p2pnode-sim` binary that runs the delay link inside router namespaces.
    /// Defaults to env `P2PNODE_SIM_BIN`, then to the running executable when it is
    /// `p2pnode-sim`, then to `p2pnode-sim` next to it (the case of integration tests).
    pub fn sim_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.sim_binary = Some(path.into());
        self
    }

    fn validate(&self) -> Result<(), LabError> {
        let valid = |n: &str| {
            !n.is_empty()
                && n.len() <= 10
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        let mut seen = std::collections::BTreeSet::new();
        let names = self
            .routers
            .iter()
            .map(|r| &r.name)
            .chain(self.hosts.iter().map(|h| &h.name));
        for name in names {
            if !valid(name) {
                return Err(LabError::Config(format!(
                    "name {name:?} must be 1 to 10 characters of [a-z0-9]"
                )));
            }
            // "pub" names the public segment's namespace.
            if name == "pub" || !seen.insert(name.clone()) {
                return Err(LabError::Config(format!("name {name:?} is used twice")));
            }
        }
        for host in &self.hosts {
            if let Some(router) = &host.router
                && !self.routers.iter().any(|r| &r.name == router)
            {
                return Err(LabError::Config(format!(
                    "host {} is behind unknown router {router}",
                    host.name
                )));
            }
        }
        if self.hosts.iter().filter(|h| h.router.is_none()).count() > 8 {
            return Err(LabError::Config("at most 8 public hosts".into()));
        }
        if self.routers.len() > 200 {
            return Err(LabError::Config("at most 200 routers".into()));
        }
        for router in &self.routers {
            if router.faults.loss_percent > 100 {
                return Err(LabError::Config(format!(
                    "router {}: loss {}% is over 100%",
                    router.name, router.faults.loss_percent
                )));
            }
            let behind = self
                .hosts
                .iter()
                .filter(|h| h.router.as_deref() == Some(router.name.as_str()))
                .count();
            if behind > 200 {
                return Err(LabError::Config(format!(
                    "router {}: at most 200 hosts",
                    router.name
                )));
            }
        }
        Ok(())
    }

    fn resolve_sim_binary(&self) -> Result<PathBuf, LabError> {
        if let Some(path) = &self.sim_binary {
            return Ok(path.clone());
        }
        if let Some(path) = std::env::var_os("P2PNODE_SIM_BIN") {
            return Ok(PathBuf::from(path));
        }
        let exe = std::env::current_exe()?;
        if exe.file_name().is_some_and(|n| n == "p2pnode-sim") {
            return Ok(exe);
        }
        // Integration tests run from target/<profile>/deps/; the binary is one level up.
        let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        for _ in 0..2 {
            let candidate = dir.join("p2pnode-sim");
            if candidate.is_file() {
                return Ok(candidate);
            }
            if !dir.pop() {
                break;
            }
        }
        Err(LabError::SimBinary(dir.join("p2pnode-sim")))
    }

    /// Creates the namespaces, links and rules. On error everything created so far is
    /// deleted again (the partly built [`Lab`] is dropped).
    pub async fn build(self) -> Result<Lab, LabError> {
        super::require_root()?;
        self.validate()?;
        let needs_delay = self.routers.iter().any(|r| !r.faults.delay.is_zero());
        let sim_binary = match self.resolve_sim_binary() {
            Ok(path) if path.is_file() => Ok(path),
            Ok(path) => Err(path),
            Err(LabError::SimBinary(path)) => Err(path),
            Err(err) => return Err(err),
        };
        if needs_delay && let Err(path) = &sim_binary {
            return Err(LabError::SimBinary(path.clone()));
        }

        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{PREFIX_TAG}{}x{n}-", std::process::id());
        let workdir = tempfile::Builder::new().prefix(&prefix).tempdir()?;
        let mut lab = Lab {
            public_ns: format!("{prefix}pub"),
            prefix,
            namespaces: Vec::new(),
            hosts: BTreeMap::new(),
            routers: BTreeMap::new(),
            helpers: Vec::new(),
            workdir: Some(workdir),
            sim_binary: sim_binary.clone(),
        };
        tracing::info!(prefix = %lab.prefix, "building lab");

        let public = lab.public_ns.clone();
        lab.add_namespace(&public).await?;
        ip(&["-n", &public, "link", "add", "br0", "type", "bridge"]).await?;
        ip(&["-n", &public, "link", "set", "br0", "up"]).await?;
        // A bridge in a namespace would pass frames through the IP hooks when
        // br_netfilter is loaded; the segment is a plain switch.
        lab.sysctl(&public, &BRIDGE_NF_OFF).await?;

        // validate() caps the counts, so the indices fit the address octets.
        for (k, host) in (0u8..).zip(self.hosts.iter().filter(|h| h.router.is_none())) {
            let ip4 = Ipv4Addr::new(198, 51, 100, 2 + k);
            let port = format!("h{k}");
            lab.add_host(&host.name, None, ip4, &public, &port, None)
                .await?;
        }

        for (index, spec) in self.routers.iter().enumerate() {
            let i =
                u8::try_from(index + 1).map_err(|_| LabError::Config("too many routers".into()))?;
            lab.add_router(i, spec, sim_binary.as_deref().ok()).await?;
            let behind = self
                .hosts
                .iter()
                .filter(|h| h.router.as_deref() == Some(spec.name.as_str()));
            for (host_index, host) in (0u8..).zip(behind) {
                let ip4 = Ipv4Addr::new(10, i, 0, 2 + host_index);
                let router_ns = lab.routers[&spec.name].namespace.clone();
                let port = format!("l{host_index}");
                let gateway = Ipv4Addr::new(10, i, 0, 1);
                lab.add_host(
                    &host.name,
                    Some(&spec.name),
                    ip4,
                    &router_ns,
                    &port,
                    Some(gateway),
                )
                .await?;
            }
        }
        tracing::info!(prefix = %lab.prefix, namespaces = lab.namespaces.len(), "lab ready");
        Ok(lab)
    }
}

const BRIDGE_NF_OFF: [&str; 3] = [
    "net.bridge.bridge-nf-call-iptables=0",
    "net.bridge.bridge-nf-call-ip6tables=0",
    "net.bridge.bridge-nf-call-arptables=0",
];

async fn ip(args: &[&str]) -> Result<String, LabError> {
    cmd::run("ip", args).await
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

    async fn add_namespace(&mut self, ns: &str) -> Result<(), LabError> {
        ip(&["netns", "add", ns]).await?;
        // Recorded before anything else can fail, so the guard deletes it.
        self.namespaces.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
        Ok(())
    }

    async fn sysctl(&self, ns: &str, settings: &[&str]) -> Result<(), LabError> {
        // -e: the bridge keys exist only when br_netfilter is loaded.
        let mut args = vec!["netns", "exec", ns, "sysctl", "-q", "-e", "-w"];
        args.extend_from_slice(settings);
        cmd::run("ip", &args).await.map(drop)
    }

    /// Creates host `name` in its own namespace, linked by a veth whose other end,
    /// `port`, is enslaved to the bridge of namespace `upstream_ns` (`br0` on the public
    /// segment, `lan` in a router).
    async fn add_host(
        &mut self,
        name: &str,
        router: Option<&str>,
        ip4: Ipv4Addr,
        upstream_ns: &str,
        port: &str,
        gateway: Option<Ipv4Addr>,
    ) -> Result<(), LabError> {
        let ns = format!("{}{name}", self.prefix);
        self.add_namespace(&ns).await?;
        let bridge = if router.is_some() { "lan" } else { "br0" };
        ip(&[
            "-n",
            upstream_ns,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ])
        .await?;
        ip(&[
            "-n",
            upstream_ns,
            "link",
            "set",
            port,
            "master",
            bridge,
            "up",
        ])
        .await?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip4}/24"),
            "dev",
            "eth0",
        ])
        .await?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"]).await?;
        if let Some(gateway) = gateway {
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &gateway.to_string(),
            ])
            .await?;
        }
        tracing::debug!(host = name, %ip4, namespace = %ns, "host ready");
        self.hosts.insert(
            name.to_string(),
            Host {
                name: name.to_string(),
                namespace: ns,
                ip: ip4,
                router: router.map(str::to_string),
            },
        );
        Ok(())
    }

    async fn add_router(
        &mut self,
        i: u8,
        spec: &RouterSpec,
        sim_binary: Option<&Path>,
    ) -> Result<(), LabError> {
        let ns = format!("{}{}", self.prefix, spec.name);
        let public = self.public_ns.clone();
        self.add_namespace(&ns).await?;
        let mut settings = vec![
            "net.ipv4.ip_forward=1",
            // The delay link re-injects packets through a TUN device, so their input
            // interface differs from the route back to their source.
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.default.send_redirects=0",
        ];
        settings.extend_from_slice(&BRIDGE_NF_OFF);
        self.sysctl(&ns, &settings).await?;

        let wan_ip = Ipv4Addr::new(198, 51, 100, 10 + i);
        let lan_ip = Ipv4Addr::new(10, i, 0, 1);
        let lan_net = format!("10.{i}.0.0/24");
        let port = format!("r{i}");
        ip(&[
            "-n", &public, "link", "add", &port, "type", "veth", "peer", "name", "wan", "netns",
            &ns,
        ])
        .await?;
        ip(&["-n", &public, "link", "set", &port, "master", "br0", "up"]).await?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{wan_ip}/24"),
            "dev",
            "wan",
        ])
        .await?;
        ip(&["-n", &ns, "link", "set", "wan", "up"]).await?;
        ip(&["-n", &ns, "link", "add", "lan", "type", "bridge"]).await?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{lan_ip}/24"),
            "dev",
            "lan",
        ])
        .await?;
        ip(&["-n", &ns, "link", "set", "lan", "up"]).await?;

        let ruleset = router_ruleset(spec.kind, &lan_net, &spec.faults);
        tracing::debug!(router = %spec.name, %ruleset, "nftables");
        cmd::run_with_stdin("ip", &["netns", "exec", &ns, "nft", "-f", "-"], &ruleset).await?;

        if let Some(kbit) = spec.faults.rate_kbit {
            // Upstream shaped on the router's WAN, downstream on the segment's port
            // towards the router: one rate per direction of the WAN link.
            let tbf = tbf_args(kbit);
            let mut up = vec!["-n", &ns, "qdisc", "add", "dev", "wan", "root"];
            up.extend(tbf.iter().map(String::as_str));
            cmd::run("tc", &up).await?;
            let mut down = vec!["-n", &public, "qdisc", "add", "dev", &port, "root"];
            down.extend(tbf.iter().map(String::as_str));
            cmd::run("tc", &down).await?;
        }

        let router = Router {
            name: spec.name.clone(),
            namespace: ns.clone(),
            kind: spec.kind,
            wan_ip,
            lan_ip,
            lan_net,
            faults: spec.faults.clone(),
        };
        self.routers.insert(spec.name.clone(), router);

        if !spec.faults.delay.is_zero() {
            let sim_binary = sim_binary.ok_or_else(|| {
                LabError::Config("a delay link needs the p2pnode-sim binary".into())
            })?;
            self.add_delay_link(&spec.name, &ns, spec.faults.delay, sim_binary)
                .await?;
        }
        tracing::debug!(router = %spec.name, kind = %spec.kind, %wan_ip, "router ready");
        Ok(())
    }

    /// Routes everything the router forwards through a TUN device served by a
    /// `p2pnode-sim delay-link` process (see [`super::delay`] for the packet path).
    async fn add_delay_link(
        &mut self,
        router: &str,
        ns: &str,
        delay: Duration,
        sim_binary: &Path,
    ) -> Result<(), LabError> {
        // A persistent TUN made here rather than by the helper: the routes below can be
        // set before the helper runs, and if the helper dies the device stays without a
        // reader, so packets are dropped instead of bypassing the NAT untracked.
        ip(&["-n", ns, "tuntap", "add", "dev", DELAY_TUN, "mode", "tun"]).await?;
        ip(&["-n", ns, "link", "set", DELAY_TUN, "up"]).await?;
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "dev",
            DELAY_TUN,
            "table",
            DELAY_TABLE,
        ])
        .await?;
        // Only packets that arrive from outside take the detour: nftables marks them
        // (see `router_ruleset`); those the delay link writes back are unmarked and
        // routed by the usual tables. A mark rather than `iif`, because ARP asks the
        // routing tables with the input interface too, and would find the router's own
        // addresses missing.
        ip(&[
            "-n",
            ns,
            "rule",
            "add",
            "pref",
            "100",
            "fwmark",
            DELAY_MARK,
            "lookup",
            DELAY_TABLE,
        ])
        .await?;
        // The `local` table normally comes first (pref 0); it moves behind the delay
        // rules so replies addressed to the WAN address (before de-NAT) are delayed too.
        ip(&["-n", ns, "rule", "add", "pref", "1000", "lookup", "local"]).await?;
        ip(&["-n", ns, "rule", "del", "pref", "0"]).await?;

        let delay_us = delay.as_micros().to_string();
        let queue = DELAY_QUEUE_PACKETS.to_string();
        let args = [
            "delay-link",
            "--tun",
            DELAY_TUN,
            "--delay-us",
            delay_us.as_str(),
            "--queue",
            queue.as_str(),
        ];
        let program = sim_binary.to_string_lossy().into_owned();
        self.spawn_helper(&format!("delay-link {router}"), router, &program, &args)
            .await
    }

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

fn tbf_args(kbit: u32) -> Vec<String> {
    // Burst: 20 ms worth of the rate, at least two full-size packets, so the shaper
    // neither starves at low rates nor turns bursty at high ones.
    let burst_bytes = (u64::from(kbit) * 1000 / 8 / 50).max(3028);
    vec![
        "tbf".into(),
        "rate".into(),
        format!("{kbit}kbit"),
        "burst".into(),
        burst_bytes.to_string(),
        "latency".into(),
        "200ms".into(),
    ]
}

/// The nftables rules of a router, as in DESIGN.md ("A NAT router's nftables rules that
/// behaved like a home router"), extended for the delay link and loss.
///
/// With a delay link every forwarded packet passes the router twice: first from the LAN
/// or WAN into the TUN device, then from the TUN device out. The first pass is
/// `notrack`ed, so conntrack and NAT see each packet once, on the second pass, as if the
/// TUN device were the input interface; that is why the LAN rules also accept the TUN
/// device for packets from the LAN's addresses.
pub(crate) fn router_ruleset(kind: NatKind, lan_net: &str, faults: &LinkFaults) -> String {
    let masquerade = kind.masquerade();
    let delay = !faults.delay.is_zero();
    let mut rules = format!(
        "table ip lab_nat {{
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"wan\" ip saddr {lan_net} {masquerade}
  }}
}}
table ip lab_filter {{
  chain forward_f {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname \"lan\" oifname \"lan\" accept
    iifname {{ \"lan\", \"{DELAY_TUN}\" }} ip saddr {lan_net} oifname \"wan\" accept
"
    );
    if delay {
        rules.push_str(&format!(
            "    ct state untracked iifname {{ \"lan\", \"wan\" }} oifname \"{DELAY_TUN}\" accept\n"
        ));
    }
    rules.push_str(&format!(
        "  }}
  chain input_f {{
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iifname {{ \"lo\", \"lan\" }} accept
    iifname \"{DELAY_TUN}\" ip saddr {lan_net} accept
  }}
}}
"
    ));
    if delay || faults.loss_percent > 0 {
        rules.push_str("table ip lab_faults {\n");
        if faults.loss_percent > 0 {
            // Before conntrack (priority -200) and before the notrack chain, so a lost
            // packet leaves no trace, as on a lossy wire.
            rules.push_str(&format!(
                "  chain loss {{
    type filter hook prerouting priority -310; policy accept;
    iifname {{ \"lan\", \"wan\" }} numgen random mod 100 < {} drop
  }}
",
                faults.loss_percent
            ));
        }
        if delay {
            rules.push_str(&format!(
                "  chain first_pass {{
    type filter hook prerouting priority raw; policy accept;
    iifname {{ \"lan\", \"wan\" }} notrack meta mark set {DELAY_MARK}
  }}
"
            ));
        }
        rules.push_str("}\n");
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cone_ruleset_matches_the_design_rules() {
        let rules = router_ruleset(NatKind::Cone, "10.1.0.0/24", &LinkFaults::none());
        assert!(rules.contains("oifname \"wan\" ip saddr 10.1.0.0/24 masquerade\n"));
        assert!(rules.contains("policy drop;\n    ct state established,related accept"));
        assert!(!rules.contains("lab_faults"));
        assert!(!rules.contains("notrack"));
    }

    #[test]
    fn symmetric_uses_random_ports() {
        let rules = router_ruleset(NatKind::Symmetric, "10.2.0.0/24", &LinkFaults::none());
        assert!(rules.contains("masquerade random\n"));
    }

    #[test]
    fn faults_add_loss_and_first_pass_notrack() {
        let faults = LinkFaults::none()
            .with_delay(Duration::from_millis(5))
            .with_loss_percent(7);
        let rules = router_ruleset(NatKind::Cone, "10.1.0.0/24", &faults);
        assert!(rules.contains("numgen random mod 100 < 7 drop"));
        assert!(rules.contains("iifname { \"lan\", \"wan\" } notrack meta mark set 0x1d"));
        assert!(rules.contains("ct state untracked"));
    }

    #[test]
    fn nat_kind_round_trips() {
        for kind in [NatKind::Cone, NatKind::Symmetric] {
            assert_eq!(kind.to_string().parse::<NatKind>().ok(), Some(kind));
        }
        assert!("full-cone".parse::<NatKind>().is_err());
    }

    #[test]
    fn tbf_burst_has_a_floor() {
        let args = tbf_args(64);
        assert_eq!(args[4], "3028");
    }
}

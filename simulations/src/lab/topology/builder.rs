//! [`LabBuilder`]: a lab's description, checked and then built.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::netns::{BRIDGE_NF_OFF, ip};
use super::{HostSpec, LAB_COUNTER, Lab, LinkFaults, NatKind, PREFIX_TAG, RouterSpec};
use crate::lab::LabError;

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
        crate::lab::require_root()?;
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

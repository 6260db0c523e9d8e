//! The steps that build a lab: namespaces, hosts on a bridge, NAT routers with their
//! rules and shapers, and the routes into a router's delay link.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use super::nat::{router_ruleset, tbf_args};
use super::{
    DELAY_MARK, DELAY_QUEUE_PACKETS, DELAY_TABLE, DELAY_TUN, Host, Lab, Router, RouterSpec,
};
use crate::lab::{LabError, cmd};

pub(super) const BRIDGE_NF_OFF: [&str; 3] = [
    "net.bridge.bridge-nf-call-iptables=0",
    "net.bridge.bridge-nf-call-ip6tables=0",
    "net.bridge.bridge-nf-call-arptables=0",
];

pub(super) async fn ip(args: &[&str]) -> Result<String, LabError> {
    cmd::run("ip", args).await
}

impl Lab {
    pub(super) async fn add_namespace(&mut self, ns: &str) -> Result<(), LabError> {
        ip(&["netns", "add", ns]).await?;
        // Recorded before anything else can fail, so the guard deletes it.
        self.namespaces.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
        Ok(())
    }

    pub(super) async fn sysctl(&self, ns: &str, settings: &[&str]) -> Result<(), LabError> {
        // -e: the bridge keys exist only when br_netfilter is loaded.
        let mut args = vec!["netns", "exec", ns, "sysctl", "-q", "-e", "-w"];
        args.extend_from_slice(settings);
        cmd::run("ip", &args).await.map(drop)
    }

    /// Creates host `name` in its own namespace, linked by a veth whose other end,
    /// `port`, is enslaved to the bridge of namespace `upstream_ns` (`br0` on the public
    /// segment, `lan` in a router).
    pub(super) async fn add_host(
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

    pub(super) async fn add_router(
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

    /// Delays every packet host `name` receives by `delay`, with a delay link in the
    /// host's own namespace like a router's: packets arriving on `eth0` are marked, routed
    /// into the TUN device, held by a `p2pnode-sim delay-link` process, written back and
    /// then delivered. Between two hosts so delayed a round trip grows by twice `delay`.
    /// For hosts on the public segment, whose packets cross no router.
    pub async fn delay_host(&mut self, name: &str, delay: Duration) -> Result<(), LabError> {
        let ns = self.host(name)?.namespace.clone();
        let sim_binary = self.sim_binary.clone().map_err(LabError::SimBinary)?;
        self.sysctl(
            &ns,
            &[
                // The marked first pass is forwarded into the TUN device.
                "net.ipv4.ip_forward=1",
                // Early demux would hand a packet of a known TCP connection (even the
                // last ACK of a handshake) to its socket on the first pass, before the
                // detour: connections then never complete.
                "net.ipv4.ip_early_demux=0",
                "net.ipv4.tcp_early_demux=0",
                "net.ipv4.udp_early_demux=0",
                // The second pass comes in on the TUN device, not on the route back.
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.default.send_redirects=0",
            ],
        )
        .await?;
        let rules = format!(
            "table ip lab_host_delay {{
  chain first_pass {{
    type filter hook prerouting priority raw; policy accept;
    iifname \"eth0\" notrack meta mark set {DELAY_MARK}
  }}
}}
"
        );
        cmd::run_with_stdin("ip", &["netns", "exec", &ns, "nft", "-f", "-"], &rules).await?;
        self.add_delay_link(name, &ns, delay, &sim_binary).await
    }

    /// Routes everything the router forwards through a TUN device served by a
    /// `p2pnode-sim delay-link` process (see [`crate::lab::delay`] for the packet path).
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
}

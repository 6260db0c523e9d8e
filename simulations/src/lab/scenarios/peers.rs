//! The steps the scenarios share: starting the relay and the peers, and waiting for
//! reservations and direct connections.

use std::net::Ipv4Addr;
use std::time::Duration;

use p2pnode_node::config::HolePunchMode;
use tokio::time::Instant;

use super::{RELAY_IP, RELAY_PORT, ScenarioConfig, Transport};
use crate::lab::node::{ConnectionInfo, PathKind, PeerInfo};
use crate::lab::poll::{Poll, wait_for};
use crate::lab::{Lab, LabError, Node, NodeSpec, logscan};

/// Starts the relay on the host `relay` listening on `transports` at [`RELAY_IP`].
pub async fn start_relay(
    lab: &Lab,
    name: &str,
    transports: &[Transport],
    config: &ScenarioConfig,
) -> Result<Node, LabError> {
    let punch = config.hole_punch;
    let mut extra_args = vec!["--hole-punch".into(), punch.relay_mode().as_str().into()];
    if config.metrics {
        extra_args.extend(["--metrics".into(), METRICS_ADDR.into()]);
    }
    let addrs: Vec<String> = transports
        .iter()
        .map(|t| t.addr(RELAY_IP, RELAY_PORT))
        .collect();
    let spec = NodeSpec {
        listen: addrs.clone(),
        bootstrap: vec![],
        relay: true,
        external: addrs,
        mdns: false,
        extra_args,
        // Every NAT router of the lab sits in one /24 (198.51.100.0/24), so the relay's
        // per-network limits would count the whole lab as one host; a benchmark of many
        // trials would run into them.
        config_toml: Some({
            let mut toml = String::from(
                "[relay_limits]\nreservation_burst_per_prefix = 0\ncircuit_burst_per_prefix = 0\n\
                 max_connections_per_prefix = 0\n",
            );
            if let Some(c) = config.relay_circuit {
                toml.push_str(&format!(
                    "max_circuit_duration_secs = {}\nmax_circuit_bytes = {}\n",
                    c.secs, c.bytes
                ));
            }
            toml
        }),
        command_line: None,
        wrapper: vec![],
    };
    lab.start_node("relay", name, spec).await
}

/// The relay's dialable address on `transport`, with its peer id.
pub fn relay_addr(relay: &Node, transport: Transport) -> String {
    relay.addr_with_id(&transport.addr(RELAY_IP, RELAY_PORT))
}

/// How a peer is started.
#[derive(Debug, Clone, Copy)]
pub struct PeerOptions {
    /// The one transport it listens on (and reaches the relay with).
    pub transport: Transport,
    /// Its listen port.
    pub port: u16,
    /// mDNS on.
    pub mdns: bool,
    /// Listen on all interfaces instead of the LAN address (see
    /// [`super::ScenarioConfig::listen_any`]).
    pub listen_any: bool,
    /// Its hole-punching protocol.
    pub hole_punch: HolePunchMode,
    /// Serve metrics on `METRICS_ADDR` in its namespace.
    pub metrics: bool,
}

/// Where a node serves metrics when a scenario asks for them (each host is its own
/// namespace, so every node can use the same address).
pub(super) const METRICS_ADDR: &str = "127.0.0.1:9464";

/// The metrics of the node on `host`, scraped from inside its namespace.
pub(super) async fn scrape_metrics(lab: &Lab, host: &str) -> Result<String, LabError> {
    let url = format!("http://{METRICS_ADDR}/metrics");
    lab.exec(host, "curl", &["-sS", "--max-time", "5", url.as_str()])
        .await
}

/// Starts a peer on `host`, bootstrapping from the relay on the same transport.
pub async fn start_peer(
    lab: &Lab,
    host: &str,
    name: &str,
    relay: &Node,
    options: PeerOptions,
) -> Result<Node, LabError> {
    let PeerOptions {
        transport,
        port,
        mdns,
        listen_any,
        hole_punch,
        metrics,
    } = options;
    let mut extra_args = vec!["--hole-punch".into(), hole_punch.as_str().into()];
    if metrics {
        extra_args.extend(["--metrics".into(), METRICS_ADDR.into()]);
    }
    let ip = if listen_any {
        Ipv4Addr::UNSPECIFIED
    } else {
        lab.host(host)?.ip
    };
    let spec = NodeSpec {
        listen: vec![transport.addr(ip, port)],
        bootstrap: vec![relay_addr(relay, transport)],
        relay: false,
        external: vec![],
        mdns,
        extra_args,
        config_toml: None,
        command_line: None,
        wrapper: vec![],
    };
    lab.start_node(host, name, spec).await
}

/// Waits until `node` holds at least one relay reservation.
pub async fn wait_reservation(node: &Node, timeout: Duration) -> Result<Vec<String>, LabError> {
    let what = format!("{} to hold a relay reservation", node.name());
    wait_for(&what, timeout, Duration::from_millis(50), || async {
        if let Err(err) = node.check_running() {
            return Poll::Fail(err);
        }
        match node.status().await {
            Ok(status) if !status.reservations.is_empty() => Poll::Ready(status.reservations),
            Ok(status) => Poll::seen(format!("nat_status {}", status.nat_status)),
            Err(err) => Poll::seen(err),
        }
    })
    .await
}

/// Whether `conn` is direct on `transport` (any IP transport when `None`): reported
/// direct by the node *and* over an IP transport address. The second check guards
/// against the node calling an inbound relayed connection direct (see the lab report).
pub fn is_direct(conn: &ConnectionInfo, transport: Option<Transport>) -> bool {
    conn.path == PathKind::Direct
        && !conn.address.contains("/p2p-circuit")
        && (conn.address.starts_with("/ip4/") || conn.address.starts_with("/ip6/"))
        && match transport {
            Some(t) => conn.transport == t.name(),
            None => conn.transport == "tcp" || conn.transport == "quic",
        }
}

/// The first direct connection (see [`is_direct`]) in `peer`.
pub fn direct_connection(peer: &PeerInfo, transport: Option<Transport>) -> Option<&ConnectionInfo> {
    peer.connections.iter().find(|c| is_direct(c, transport))
}

/// When `a` or `b` first logged that hole punching to the other gave up (seconds since
/// the epoch), if either did: p2pnode's own protocol logs "hole punch failed: gave up
/// after N attempts", libp2p's DCUtR "hole punch failed: Giving up after N dial
/// attempts", each with the peer's id. A give-up with a third node does not count: in a
/// lab of three, it would end this pair's wait while its own punch may still succeed.
pub fn dcutr_gave_up(a: &Node, b: &Node) -> Option<f64> {
    let gave_up = |n: &Node, other: &Node| {
        let log = std::fs::read_to_string(n.log_path()).ok()?;
        [
            ["hole punch failed", "gave up after", other.peer_id()],
            ["hole punch failed", "Giving up", other.peer_id()],
        ]
        .iter()
        .filter_map(|needles| logscan::first_line_with(&log, needles))
        .reduce(f64::min)
    };
    [gave_up(a, b), gave_up(b, a)]
        .into_iter()
        .flatten()
        .reduce(f64::min)
}

/// Polls `a`'s `peers` every `interval` until it holds a direct connection to `b` on
/// `transport` (see [`is_direct`]) and returns its address and when it was seen; `None`
/// once either daemon logs that DCUtR gave up, or after `window`.
pub async fn wait_direct(
    a: &Node,
    b: &Node,
    transport: Transport,
    window: Duration,
    interval: Duration,
) -> Result<Option<(String, Instant)>, LabError> {
    let direct = wait_for("a direct connection", window, interval, || async {
        if let Err(err) = a.check_running().and_then(|()| b.check_running()) {
            return Poll::Fail(err);
        }
        match a.peer(b.peer_id()).await {
            Ok(Some(peer)) => match direct_connection(&peer, Some(transport)) {
                Some(conn) => Poll::Ready(Some((conn.address.clone(), Instant::now()))),
                None if dcutr_gave_up(a, b).is_some() => Poll::Ready(None),
                None => Poll::seen(format!(
                    "{} connections, none direct",
                    peer.connections.len()
                )),
            },
            Ok(None) => Poll::seen("not connected"),
            Err(err) => Poll::seen(err),
        }
    })
    .await;
    match direct {
        Ok(found) => Ok(found),
        Err(LabError::Timeout { .. }) => Ok(None),
        Err(err) => Err(err),
    }
}

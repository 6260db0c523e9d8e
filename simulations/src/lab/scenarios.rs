//! The p2pnode scenarios of the NAT lab.
//!
//! - hole punching between two NATed peers ([`hole_punch`]): `cone`-`cone` must end
//!   direct and keep working after the relay dies; `symmetric`-`symmetric` must stay
//!   relayed and keep working; `cone`-`symmetric` is reported as it turns out;
//! - two peers behind one router ([`same_lan`]) must connect directly over the LAN;
//! - a relay killed and restarted ([`relay_restart`]): every peer must hold a
//!   reservation again within 30 s.
//!
//! Each returns a serialisable outcome with its timings; verdicts come from the JSON
//! API (`peers`, `ping`, `status`), precise timings from the daemon logs
//! ([`super::logscan`]).

use std::net::Ipv4Addr;
use std::time::Duration;

use p2pnode_node::config::HolePunchMode;
use serde::Serialize;
use tokio::time::Instant;

use super::node::{ConnectionInfo, PathKind, PeerInfo};
use super::poll::{Poll, wait_for};
use super::{Lab, LabBuilder, LabError, LinkFaults, NatKind, Node, NodeSpec, logscan};

/// The relay host's address on the public segment (the first public host).
pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// Port the relay listens on (TCP and UDP).
pub const RELAY_PORT: u16 = 4001;
/// Port peers listen on (TCP or UDP).
pub const PEER_PORT: u16 = 4001;

/// Which transport the peers (and the relay) listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP + Noise + Yamux.
    Tcp,
    /// QUIC v1.
    Quic,
}

impl Transport {
    /// Both, in the order scenarios run them.
    pub const ALL: [Transport; 2] = [Transport::Tcp, Transport::Quic];

    /// The name `peers --json` uses for it.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }

    /// A multiaddr for `ip` and `port` on this transport.
    pub fn addr(self, ip: Ipv4Addr, port: u16) -> String {
        match self {
            Transport::Tcp => format!("/ip4/{ip}/tcp/{port}"),
            Transport::Quic => format!("/ip4/{ip}/udp/{port}/quic-v1"),
        }
    }
}

impl std::str::FromStr for Transport {
    type Err = LabError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Transport::Tcp),
            "quic" => Ok(Transport::Quic),
            other => Err(LabError::Config(format!(
                "unknown transport {other:?} (tcp, quic)"
            ))),
        }
    }
}

/// Settings shared by the scenarios.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    /// One-way delay each router adds per crossing (a path between two NATed peers
    /// crosses two routers, so its round trip grows by four times this).
    pub delay: Duration,
    /// Longest wait for a direct connection after the relayed one exists. A negative
    /// outcome ends earlier once the daemon logs that DCUtR gave up.
    pub direct_window: Duration,
    /// Longest wait for daemons to start and hold reservations.
    pub setup_timeout: Duration,
    /// Interval of `peers` polls while waiting for a direct connection.
    pub poll_interval: Duration,
    /// `p2pnode-sim` binary for the delay links (default: found by the lab).
    pub sim_binary: Option<std::path::PathBuf>,
    /// Peers listen on `0.0.0.0` (all interfaces) instead of their LAN address. Off by
    /// default: with it the daemon advertises `127.0.0.1` too, other daemons dial that
    /// address, reach themselves, and the failed self-dial cancels their relayed dial
    /// (see the lab report); this switch reproduces that.
    pub listen_any: bool,
    /// Keep logs and data directories even on success (always kept on failure; env
    /// `P2PNODE_LAB_KEEP` does the same).
    pub keep_logs: bool,
    /// How the peers punch holes, and whether the relay introduces them.
    pub hole_punch: Punch,
}

/// A hole-punching set-up the lab runs: the peers' protocol (`--hole-punch`), and whether
/// the relay introduces the two ends of a circuit (it does only for [`Punch::P2pnode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Punch {
    /// p2pnode's: the relay's introductions, the exchange when they fail (the default).
    #[default]
    P2pnode,
    /// p2pnode's exchange alone: the relay runs with `--hole-punch off`.
    Exchange,
    /// libp2p's DCUtR (the relay introduces nobody either).
    Dcutr,
}

impl Punch {
    /// Every set-up, in the order `--hole-punch` lists them.
    pub const ALL: [Punch; 3] = [Punch::P2pnode, Punch::Exchange, Punch::Dcutr];

    /// Its name on the command line and in outcomes.
    pub fn as_str(self) -> &'static str {
        match self {
            Punch::P2pnode => "p2pnode",
            Punch::Exchange => "exchange",
            Punch::Dcutr => "dcutr",
        }
    }

    /// Parses [`Punch::as_str`]'s spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == text)
    }

    /// The peers' `--hole-punch` mode.
    pub fn mode(self) -> HolePunchMode {
        match self {
            Punch::P2pnode | Punch::Exchange => HolePunchMode::P2pnode,
            Punch::Dcutr => HolePunchMode::Dcutr,
        }
    }

    /// The relay's `--hole-punch` mode: introductions only where they are measured.
    fn relay_mode(self) -> HolePunchMode {
        match self {
            Punch::P2pnode => HolePunchMode::P2pnode,
            Punch::Exchange | Punch::Dcutr => HolePunchMode::Off,
        }
    }
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            direct_window: Duration::from_secs(45),
            setup_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(20),
            sim_binary: None,
            listen_any: false,
            keep_logs: false,
            hole_punch: Punch::default(),
        }
    }
}

impl ScenarioConfig {
    fn faults(&self) -> LinkFaults {
        LinkFaults::none().with_delay(self.delay)
    }

    fn builder(&self) -> LabBuilder {
        let builder = LabBuilder::new();
        match &self.sim_binary {
            Some(path) => builder.sim_binary(path),
            None => builder,
        }
    }
}

/// How long a daemon may take to notice that the relayed connection died with its relay
/// (QUIC notices only by its idle timeout).
const RELAYED_CLOSE_TIMEOUT: Duration = Duration::from_secs(45);

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Starts the relay on the host `relay` listening on `transports` at [`RELAY_IP`].
pub async fn start_relay(
    lab: &Lab,
    name: &str,
    transports: &[Transport],
    punch: Punch,
) -> Result<Node, LabError> {
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
        extra_args: vec!["--hole-punch".into(), punch.relay_mode().as_str().into()],
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
    /// [`ScenarioConfig::listen_any`]).
    pub listen_any: bool,
    /// Its hole-punching protocol.
    pub hole_punch: HolePunchMode,
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
    } = options;
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
        extra_args: vec!["--hole-punch".into(), hole_punch.as_str().into()],
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

/// When the first line in the logs of `nodes` saying that hole punching gave up was
/// written (seconds since the epoch), if there is one: p2pnode's own protocol logs
/// "hole punch failed: gave up after N attempts", libp2p's DCUtR "hole punch failed:
/// Giving up after N dial attempts".
pub fn dcutr_gave_up(nodes: &[&Node]) -> Option<f64> {
    let lines: [&[&str]; 2] = [
        &["hole punch failed", "gave up after"],
        &["hole punch failed", "Giving up"],
    ];
    nodes.iter().find_map(|n| {
        let log = std::fs::read_to_string(n.log_path()).ok()?;
        lines
            .iter()
            .filter_map(|needles| logscan::first_line_with(&log, needles))
            .reduce(f64::min)
    })
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
                None if dcutr_gave_up(&[a, b]).is_some() => Poll::Ready(None),
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

/// Outcome of one hole-punching run.
#[derive(Debug, Clone, Serialize)]
pub struct HolePunchOutcome {
    /// "cone-cone", "symmetric-symmetric", "cone-symmetric", ...
    pub scenario: String,
    /// Transport the peers and relay listened on.
    pub transport: Transport,
    /// NAT of A's router.
    pub nat_a: NatKind,
    /// NAT of B's router.
    pub nat_b: NatKind,
    /// The peers' hole-punching protocol.
    pub hole_punch: &'static str,
    /// Round trip added between A and B by the delay links.
    pub added_rtt_ms: f64,
    /// Whether A and B ended up with a direct connection.
    pub direct: bool,
    /// The direct connection's address as A sees it.
    pub direct_address: Option<String>,
    /// Whether A and B were already connected before A's `connect` (the daemons reach
    /// each other on their own through DHT walks).
    pub already_connected: bool,
    /// From starting A and B until both held reservations.
    pub time_to_reservations_ms: f64,
    /// From A's `connect <B's peer id>` until it answered.
    pub time_to_relayed_ms: f64,
    /// From A's `connect` until `peers` showed a direct connection (polled).
    pub time_to_direct_ms: Option<f64>,
    /// From the relayed connection to the direct one, from A's log.
    pub relayed_to_direct_ms: Option<f64>,
    /// Whether A's or B's log says the relay's introduction made the direct connection
    /// (rather than the exchange or DCUtR).
    pub introduced: bool,
    /// What `connect` said the path was.
    pub connect_path: PathKind,
    /// Whether A's `find` by peer id returned addresses.
    pub found_by_id: bool,
    /// How long that `find` took.
    pub find_ms: f64,
    /// Whether the relay was killed (SIGKILL) before the final ping.
    pub relay_killed: bool,
    /// Whether A's first ping to B (right after the relay was killed, if it was) got
    /// every echo back.
    pub first_ping_ok: bool,
    /// Pings sent: a second one follows a failed first one once the daemon has dropped
    /// the dead relayed connection.
    pub ping_attempts: u32,
    /// Whether A's final ping to B got every echo back.
    pub ping_ok: bool,
    /// The path A's final ping reported.
    pub ping_path: Option<PathKind>,
    /// Round trips of A's final ping.
    pub ping_rtt_ms: Vec<f64>,
    /// Whether B is still in A's `peers` at the end.
    pub still_connected: bool,
    /// When no direct connection came: ms until the daemon logged that DCUtR gave up.
    pub gave_up_ms: Option<f64>,
}

/// Lab for hole punching: relay on the public segment, A behind r1 (`nat_a`), B behind
/// r2 (`nat_b`), both routers with the config's delay. Reused across trials by the
/// benchmark.
#[derive(Debug)]
pub struct HolePunchLab {
    /// The lab.
    pub lab: Lab,
    /// The relay.
    pub relay: Node,
    nat_a: NatKind,
    nat_b: NatKind,
    transport: Transport,
    config: ScenarioConfig,
}

impl HolePunchLab {
    /// Builds the lab and starts the relay.
    pub async fn new(
        nat_a: NatKind,
        nat_b: NatKind,
        transport: Transport,
        config: ScenarioConfig,
    ) -> Result<Self, LabError> {
        let lab = config
            .builder()
            .public_host("relay")
            .router_with_faults("r1", nat_a, config.faults())
            .router_with_faults("r2", nat_b, config.faults())
            .host("a", "r1")
            .host("b", "r2")
            .build()
            .await?;
        let relay = start_relay(&lab, "relay", &[transport], config.hole_punch).await?;
        Ok(Self {
            lab,
            relay,
            nat_a,
            nat_b,
            transport,
            config,
        })
    }

    /// One run: fresh peers A and B (new identities, listening on `port`), A connects
    /// to B by peer id, waits for a direct connection and pings B. With
    /// `kill_relay_if_direct` the relay is killed before the ping once the connection is
    /// direct, so the ping can only pass over the direct connection (the relay then
    /// stays down: the lab is done).
    pub async fn trial(
        &mut self,
        tag: &str,
        port: u16,
        kill_relay_if_direct: bool,
    ) -> Result<HolePunchOutcome, LabError> {
        let cfg = self.config.clone();
        let t = self.transport;
        let start = Instant::now();
        let (a_name, b_name) = (format!("a{tag}"), format!("b{tag}"));
        let options = PeerOptions {
            transport: t,
            port,
            mdns: false,
            listen_any: cfg.listen_any,
            hole_punch: cfg.hole_punch.mode(),
        };
        let (a, b) = tokio::try_join!(
            start_peer(&self.lab, "a", &a_name, &self.relay, options),
            start_peer(&self.lab, "b", &b_name, &self.relay, options)
        )?;
        tokio::try_join!(
            wait_reservation(&a, cfg.setup_timeout),
            wait_reservation(&b, cfg.setup_timeout)
        )?;
        let time_to_reservations = start.elapsed();
        let b_id = b.peer_id().to_string();

        let already_connected = a.peer(&b_id).await?.is_some();
        let find_start = Instant::now();
        let found = a.find(&b_id).await;
        let find_time = find_start.elapsed();
        let found_by_id = found.as_ref().is_ok_and(|f| !f.addresses.is_empty());
        if let Err(err) = &found {
            tracing::warn!(%err, "find by peer id failed");
        }

        let connect_start = Instant::now();
        let connected = a.connect(&b_id).await?;
        let time_to_relayed = connect_start.elapsed();
        tracing::info!(path = ?connected.path, address = %connected.address, "connected by peer id");

        let direct = wait_direct(&a, &b, t, cfg.direct_window, cfg.poll_interval).await?;
        let (direct_address, time_to_direct) = match direct {
            Some((address, seen)) => (Some(address), Some(seen - connect_start)),
            None => (None, None),
        };
        let a_log = std::fs::read_to_string(a.log_path()).unwrap_or_default();
        let relayed_to_direct_ms = logscan::relayed_to_direct_ms(&a_log, &b_id);
        // Either end's introduced dial may be the one that connected (over QUIC, A's
        // connection can arrive as B's, inbound, while A's own dial is still under way).
        let b_log = std::fs::read_to_string(b.log_path()).unwrap_or_default();
        let a_id = a.peer_id().to_string();
        let introduced = [(&a_log, &b_id), (&b_log, &a_id)]
            .iter()
            .any(|(log, other)| {
                logscan::first_line_with(
                    log,
                    &[
                        "hole punch succeeded",
                        "introduced by the relay",
                        other.as_str(),
                    ],
                )
                .is_some()
            });
        let gave_up_ms = if direct_address.is_none() {
            let first_relayed = logscan::connections_to(&a_log, &b_id)
                .into_iter()
                .find(|c| c.relayed)
                .map(|c| c.at);
            match (dcutr_gave_up(&[&a, &b]), first_relayed) {
                (Some(end), Some(begin)) => {
                    Some((((end - begin) * 1000.0).max(0.0) * 1000.0).round() / 1000.0)
                }
                _ => None,
            }
        } else {
            None
        };

        let kill_relay = kill_relay_if_direct && direct_address.is_some();
        if kill_relay {
            self.relay.kill().await?;
        }
        let first_ping = a.ping(&b_id, 3).await;
        let first_ping_ok = first_ping.as_ref().is_ok_and(|p| p.rtt_ms.len() == 3);
        let mut ping_attempts = 1;
        let ping = if !first_ping_ok && kill_relay {
            // The daemon opens app streams on any connection to the peer, the dead
            // relayed one included (see the lab report); once it has noticed that
            // connection is gone, a second ping can only take the direct one.
            tracing::warn!(err = ?first_ping.err(), "ping right after the relay died failed; waiting for the relayed connection to close");
            wait_for(
                "the relayed connection to close after the relay died",
                RELAYED_CLOSE_TIMEOUT,
                Duration::from_millis(200),
                || async {
                    match a.peer(&b_id).await {
                        Ok(Some(peer)) if peer.connections.iter().all(|c| is_direct(c, None)) => {
                            Poll::Ready(())
                        }
                        Ok(Some(peer)) => {
                            Poll::seen(format!("{} connections", peer.connections.len()))
                        }
                        Ok(None) => Poll::seen("not connected"),
                        Err(err) => Poll::seen(err),
                    }
                },
            )
            .await?;
            ping_attempts += 1;
            a.ping(&b_id, 3).await
        } else {
            first_ping
        };
        let (ping_ok, ping_path, ping_rtt_ms) = match ping {
            Ok(p) => (p.rtt_ms.len() == 3, Some(p.path), p.rtt_ms),
            Err(err) => {
                tracing::warn!(%err, "final ping failed");
                (false, None, vec![])
            }
        };
        let still_connected = a.peer(&b_id).await?.is_some();

        let outcome = HolePunchOutcome {
            scenario: format!("{}-{}", self.nat_a, self.nat_b),
            transport: t,
            hole_punch: self.config.hole_punch.as_str(),
            nat_a: self.nat_a,
            nat_b: self.nat_b,
            added_rtt_ms: ms(self.config.delay * 4),
            direct: direct_address.is_some(),
            direct_address,
            already_connected,
            time_to_reservations_ms: ms(time_to_reservations),
            time_to_relayed_ms: ms(time_to_relayed),
            time_to_direct_ms: time_to_direct.map(ms),
            relayed_to_direct_ms: relayed_to_direct_ms.map(|v| (v * 1000.0).round() / 1000.0),
            introduced,
            connect_path: connected.path,
            found_by_id,
            find_ms: ms(find_time),
            relay_killed: kill_relay,
            first_ping_ok,
            ping_attempts,
            ping_ok,
            ping_path,
            ping_rtt_ms,
            still_connected,
            gave_up_ms,
        };
        a.kill().await?;
        b.kill().await?;
        Ok(outcome)
    }
}

/// Hole punching between A behind `nat_a` and B behind `nat_b` on `transport`; the relay
/// is killed before the final ping when the connection went direct, to prove it is.
pub async fn hole_punch(
    nat_a: NatKind,
    nat_b: NatKind,
    transport: Transport,
    config: ScenarioConfig,
) -> Result<HolePunchOutcome, LabError> {
    let mut lab = HolePunchLab::new(nat_a, nat_b, transport, config.clone()).await?;
    let outcome = lab.trial("", PEER_PORT, true).await;
    keep_logs(&mut lab.lab, &config, outcome)
}

/// Keeps the lab's work directory (daemon logs) when the scenario failed or when asked,
/// and logs where it is.
fn keep_logs<T>(
    lab: &mut Lab,
    config: &ScenarioConfig,
    outcome: Result<T, LabError>,
) -> Result<T, LabError> {
    if outcome.is_err() || config.keep_logs || std::env::var_os("P2PNODE_LAB_KEEP").is_some() {
        let dir = lab.keep_workdir();
        tracing::warn!(logs = %dir.display(), "lab logs kept");
    }
    outcome
}

/// Outcome of the same-LAN scenario.
#[derive(Debug, Clone, Serialize)]
pub struct SameLanOutcome {
    /// "same-lan".
    pub scenario: &'static str,
    /// Whether A and B hold a direct connection.
    pub direct: bool,
    /// The direct connection's address as A sees it.
    pub direct_address: Option<String>,
    /// Whether that address is on the shared LAN (10.1.0.0/24).
    pub lan_address: bool,
    /// Whether a relayed connection between them exists as well.
    pub relayed_too: bool,
    /// Whether they were connected before A's `connect` (mDNS or DHT).
    pub already_connected: bool,
    /// From starting the peers until A saw B directly.
    pub time_to_direct_ms: f64,
    /// What A's `connect` reported.
    pub connect_path: PathKind,
    /// Whether A's ping to B passed after the relay was killed.
    pub ping_ok_without_relay: bool,
    /// The path that ping reported.
    pub ping_path: Option<PathKind>,
}

/// Two peers behind one router (mDNS on) must connect over the LAN, not the relay.
pub async fn same_lan(config: ScenarioConfig) -> Result<SameLanOutcome, LabError> {
    let mut lab = config
        .builder()
        .public_host("relay")
        .router_with_faults("r1", NatKind::Cone, config.faults())
        .host("a", "r1")
        .host("b", "r1")
        .build()
        .await?;
    let outcome = same_lan_in(&lab, &config).await;
    keep_logs(&mut lab, &config, outcome)
}

async fn same_lan_in(lab: &Lab, config: &ScenarioConfig) -> Result<SameLanOutcome, LabError> {
    let t = Transport::Tcp;
    let relay = start_relay(lab, "relay", &[t], config.hole_punch).await?;
    let options = PeerOptions {
        transport: t,
        port: PEER_PORT,
        mdns: true,
        listen_any: config.listen_any,
        hole_punch: config.hole_punch.mode(),
    };
    let start = Instant::now();
    let (a, b) = tokio::try_join!(
        start_peer(lab, "a", "a", &relay, options),
        start_peer(lab, "b", "b", &relay, options)
    )?;
    let b_id = b.peer_id().to_string();
    let already_connected = a.peer(&b_id).await?.is_some();
    let connected = a.connect(&b_id).await?;
    let direct = wait_for(
        "a direct LAN connection",
        config.direct_window,
        config.poll_interval,
        || async {
            match a.peer(&b_id).await {
                Ok(Some(peer)) => match direct_connection(&peer, None) {
                    Some(conn) => Poll::Ready(conn.address.clone()),
                    None => Poll::seen(format!("{:?}", peer.connections)),
                },
                Ok(None) => Poll::seen("not connected"),
                Err(err) => Poll::seen(err),
            }
        },
    )
    .await;
    let time_to_direct = start.elapsed();
    let (direct_address, relayed_too) = match direct {
        Ok(address) => {
            let peer = a.peer(&b_id).await?;
            let relayed = peer.is_some_and(|p| p.connections.iter().any(|c| !is_direct(c, None)));
            (Some(address), relayed)
        }
        Err(LabError::Timeout { .. }) => (None, false),
        Err(err) => return Err(err),
    };
    relay.kill().await?;
    let ping = a.ping(&b_id, 3).await;
    let lan_prefix = "/ip4/10.1.0.";
    Ok(SameLanOutcome {
        scenario: "same-lan",
        direct: direct_address.is_some(),
        lan_address: direct_address
            .as_deref()
            .is_some_and(|addr| addr.starts_with(lan_prefix)),
        direct_address,
        relayed_too,
        already_connected,
        time_to_direct_ms: ms(time_to_direct),
        connect_path: connected.path,
        ping_ok_without_relay: ping.as_ref().is_ok_and(|p| p.rtt_ms.len() == 3),
        ping_path: ping.ok().map(|p| p.path),
    })
}

/// Outcome of the relay-restart scenario.
#[derive(Debug, Clone, Serialize)]
pub struct RelayRestartOutcome {
    /// "relay-restart".
    pub scenario: &'static str,
    /// Transport of the reservations.
    pub transport: Transport,
    /// Peers (behind a cone and a symmetric NAT).
    pub peers: usize,
    /// From SIGKILL until every peer's `status` dropped its reservation.
    pub reservations_dropped_ms: f64,
    /// From the relay's restart until every peer held a new reservation (and the relay
    /// listed it as connected).
    pub time_to_reservations_ms: f64,
    /// The same, per peer.
    pub per_peer_ms: Vec<f64>,
    /// Whether all came back within the 30 s goal.
    pub within_30s: bool,
}

/// The relay is killed with SIGKILL and restarted with the same identity and addresses;
/// every peer must hold a reservation again within 30 s.
pub async fn relay_restart(
    transport: Transport,
    config: ScenarioConfig,
) -> Result<RelayRestartOutcome, LabError> {
    let mut lab = config
        .builder()
        .public_host("relay")
        .router_with_faults("r1", NatKind::Cone, config.faults())
        .router_with_faults("r2", NatKind::Symmetric, config.faults())
        .host("a", "r1")
        .host("b", "r2")
        .build()
        .await?;
    let outcome = relay_restart_in(&lab, transport, &config).await;
    keep_logs(&mut lab, &config, outcome)
}

/// The goal of the relay-restart scenario.
pub const RESERVATION_GOAL: Duration = Duration::from_secs(30);

async fn relay_restart_in(
    lab: &Lab,
    t: Transport,
    config: &ScenarioConfig,
) -> Result<RelayRestartOutcome, LabError> {
    let relay = start_relay(lab, "relay", &[t], config.hole_punch).await?;
    let options = PeerOptions {
        transport: t,
        port: PEER_PORT,
        mdns: false,
        listen_any: config.listen_any,
        hole_punch: config.hole_punch.mode(),
    };
    let (a, b) = tokio::try_join!(
        start_peer(lab, "a", "a", &relay, options),
        start_peer(lab, "b", "b", &relay, options)
    )?;
    let peers = [&a, &b];
    for peer in peers {
        wait_reservation(peer, config.setup_timeout).await?;
    }

    relay.kill().await?;
    let killed = Instant::now();
    // A reservation that outlived its relay in `status` would make "holds one again"
    // meaningless, so the drop is waited for first.
    for peer in peers {
        let what = format!(
            "{} to drop its reservation after the relay died",
            peer.name()
        );
        wait_for(
            &what,
            RESERVATION_GOAL,
            Duration::from_millis(50),
            || async {
                match peer.status().await {
                    Ok(status) if status.reservations.is_empty() => Poll::Ready(()),
                    Ok(status) => Poll::seen(format!("reservations {:?}", status.reservations)),
                    Err(err) => Poll::seen(err),
                }
            },
        )
        .await?;
    }
    let dropped = killed.elapsed();

    relay.start().await?;
    let restarted = Instant::now();
    let relay = &relay;
    // Polled side by side, so each peer's time is its own.
    let per_peer = futures::future::try_join_all(peers.iter().map(|peer| async move {
        let id = peer.peer_id().to_string();
        let what = format!(
            "{} to hold a reservation on the restarted relay",
            peer.name()
        );
        wait_for(
            &what,
            RESERVATION_GOAL,
            Duration::from_millis(50),
            || async {
                if let Err(err) = peer.check_running() {
                    return Poll::Fail(err);
                }
                let reserved = match peer.status().await {
                    Ok(status) => !status.reservations.is_empty(),
                    Err(err) => return Poll::seen(err),
                };
                // The relay lost all state; listing the peer proves a new connection.
                let known_to_relay = relay.peer(&id).await.ok().flatten().is_some();
                if reserved && known_to_relay {
                    Poll::Ready(ms(restarted.elapsed()))
                } else {
                    Poll::seen(format!(
                        "reserved {reserved}, connected to relay {known_to_relay}"
                    ))
                }
            },
        )
        .await
    }))
    .await?;
    let total = restarted.elapsed();
    Ok(RelayRestartOutcome {
        scenario: "relay-restart",
        transport: t,
        peers: peers.len(),
        reservations_dropped_ms: ms(dropped),
        time_to_reservations_ms: ms(total),
        per_peer_ms: per_peer,
        within_30s: total <= RESERVATION_GOAL,
    })
}

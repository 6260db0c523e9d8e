//! The hole-punching scenario: [`HolePunchLab`] (reused by the benchmark) and
//! [`hole_punch`].

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::peers::{
    PeerOptions, dcutr_gave_up, is_direct, scrape_metrics, start_peer, start_relay, wait_direct,
    wait_reservation,
};
use super::{PEER_PORT, ScenarioConfig, Transport, keep_logs, ms};
use crate::lab::node::PathKind;
use crate::lab::poll::{Poll, wait_for};
use crate::lab::{Lab, LabError, NatKind, Node, logscan};

/// How long a daemon may take to notice that the relayed connection died with its relay
/// (QUIC notices only by its idle timeout).
const RELAYED_CLOSE_TIMEOUT: Duration = Duration::from_secs(45);

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
    /// Each node's metrics (`a`, `b`, `relay`), scraped at the end when the config asks
    /// for metrics (kept out of the JSON report: pages of text per node).
    #[serde(skip)]
    pub metrics: std::collections::BTreeMap<String, String>,
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
        Self::build(nat_a, nat_b, false, transport, config).await
    }

    /// The same lab with a third host, C, behind a third router r3 of kind `nat_a`: for
    /// tests of three peers each behind a NAT of its own (the tunnel's mesh). [`trial`]
    /// still runs A and B only.
    ///
    /// [`trial`]: Self::trial
    pub async fn with_third(
        nat_a: NatKind,
        nat_b: NatKind,
        transport: Transport,
        config: ScenarioConfig,
    ) -> Result<Self, LabError> {
        Self::build(nat_a, nat_b, true, transport, config).await
    }

    async fn build(
        nat_a: NatKind,
        nat_b: NatKind,
        third: bool,
        transport: Transport,
        config: ScenarioConfig,
    ) -> Result<Self, LabError> {
        let mut builder = config
            .builder()
            .public_host("relay")
            .router_with_faults("r1", nat_a, config.faults())
            .router_with_faults("r2", nat_b, config.faults())
            .host("a", "r1")
            .host("b", "r2");
        if third {
            builder = builder
                .router_with_faults("r3", nat_a, config.faults())
                .host("c", "r3");
        }
        let lab = builder.build().await?;
        let relay = start_relay(&lab, "relay", &[transport], &config).await?;
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
            metrics: cfg.metrics,
        };
        let options_b = PeerOptions {
            hole_punch: cfg.hole_punch.mode_b(),
            ..options
        };
        let (a, b) = tokio::try_join!(
            start_peer(&self.lab, "a", &a_name, &self.relay, options),
            start_peer(&self.lab, "b", &b_name, &self.relay, options_b)
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
            match (dcutr_gave_up(&a, &b), first_relayed) {
                (Some(end), Some(begin)) => {
                    Some((((end - begin) * 1000.0).max(0.0) * 1000.0).round() / 1000.0)
                }
                _ => None,
            }
        } else {
            None
        };

        // Scraped before the relay may be killed, while every node still runs.
        let mut metrics = std::collections::BTreeMap::new();
        if cfg.metrics {
            for (node, host) in [("a", "a"), ("b", "b"), ("relay", "relay")] {
                metrics.insert(node.to_string(), scrape_metrics(&self.lab, host).await?);
            }
        }

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
            metrics,
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

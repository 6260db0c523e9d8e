//! The same-LAN scenario: two peers behind one router must connect over the LAN.

use serde::Serialize;
use tokio::time::Instant;

use super::peers::{PeerOptions, direct_connection, is_direct, start_peer, start_relay};
use super::{PEER_PORT, ScenarioConfig, Transport, keep_logs, ms};
use crate::lab::node::PathKind;
use crate::lab::poll::{Poll, wait_for};
use crate::lab::{Lab, LabError, NatKind};

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
    let relay = start_relay(lab, "relay", &[t], config).await?;
    let options = PeerOptions {
        transport: t,
        port: PEER_PORT,
        mdns: true,
        listen_any: config.listen_any,
        hole_punch: config.hole_punch.mode(),
        metrics: config.metrics,
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

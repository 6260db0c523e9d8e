//! The relay-restart scenario: every peer must hold a reservation again soon after the
//! relay comes back.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::peers::{PeerOptions, start_peer, start_relay, wait_reservation};
use super::{PEER_PORT, ScenarioConfig, Transport, keep_logs, ms};
use crate::lab::poll::{Poll, wait_for};
use crate::lab::{Lab, LabError, NatKind};

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
    let relay = start_relay(lab, "relay", &[t], config).await?;
    let options = PeerOptions {
        transport: t,
        port: PEER_PORT,
        mdns: false,
        listen_any: config.listen_any,
        hole_punch: config.hole_punch.mode(),
        metrics: config.metrics,
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

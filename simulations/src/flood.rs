//! A reservation flood against a relay (`p2pnode-sim flood-relay`): many fresh libp2p
//! identities in one process, each asking the relay for circuit v2 reservations (HOP
//! RESERVE, through the relay client's `listen_on(<relay>/p2p-circuit)`), at a set total
//! rate, as a host that mints peer ids for free would.
//!
//! Attempt `j` of `n` starts at `j * duration / n` and belongs to identity `j % identities`;
//! each attempt is a fresh connection (Noise, yamux, then the reservation request). An
//! accepted reservation is held, as an attacker would, until the identity's next attempt
//! replaces it or the flood ends. Every attempt ends in one [`Outcome`]; the [`Summary`]
//! counts them.
//!
//! Its own resources are bounded: at most `max_in_flight` attempts run at once (each
//! waits at most `attempt_timeout`), and at most one held connection per identity.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::relay::outbound::hop::ReserveError;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, Swarm, identity, noise, relay, tcp, yamux};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

/// Identities one process may run (each is a task and, when it holds a reservation, a
/// socket).
pub const MAX_IDENTITIES: usize = 10_000;

/// Distinct error texts the summary keeps as examples.
const MAX_ERROR_EXAMPLES: usize = 8;

/// What to flood and how hard.
#[derive(Debug, Clone)]
pub struct FloodConfig {
    /// The relay's address, ending in `/p2p/<peer-id>`.
    pub relay: Multiaddr,
    /// Fresh peer ids this process uses (1 to [`MAX_IDENTITIES`]).
    pub identities: usize,
    /// Reservation attempts this process makes in all.
    pub attempts: usize,
    /// The attempts are spread evenly over this time.
    pub duration: Duration,
    /// Longest wait for one attempt's answer.
    pub attempt_timeout: Duration,
    /// Attempts running at once, at most; a slot that comes while all are busy waits.
    pub max_in_flight: usize,
}

/// Why the flood could not run.
#[derive(Debug, thiserror::Error)]
pub enum FloodError {
    /// The relay address has no `/p2p/<peer-id>`.
    #[error("the relay address {0} does not end in /p2p/<peer-id>")]
    NoPeerId(Multiaddr),
    /// The identity count is out of range.
    #[error("identities must be 1 to {MAX_IDENTITIES}, not {0}")]
    Identities(usize),
    /// The libp2p stack could not be built.
    #[error("libp2p: {0}")]
    Libp2p(String),
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The relay granted the reservation.
    Accepted,
    /// The relay answered the request with a refusal (resource limit exceeded, or
    /// refused).
    Denied,
    /// The connection was closed or refused before the request could be answered (a
    /// limit that acts on connections, or an unreachable relay).
    Refused(String),
    /// No answer within the attempt's timeout.
    TimedOut,
    /// Anything else.
    Failed(String),
}

/// The flood's result, printed as JSON by `p2pnode-sim flood-relay`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Peer ids used.
    pub identities: usize,
    /// Attempts made.
    pub attempts: usize,
    /// Reservations granted.
    pub accepted: usize,
    /// Requests the relay refused.
    pub denied: usize,
    /// Connections closed before an answer.
    pub refused: usize,
    /// Attempts without an answer in time.
    pub timed_out: usize,
    /// Attempts that failed otherwise.
    pub failed: usize,
    /// Reservations held at the end (granted and not replaced).
    pub held_at_end: usize,
    /// From the first attempt to the last answer, ms.
    pub elapsed_ms: u64,
    /// Attempts per second achieved.
    pub attempts_per_s: f64,
    /// A few error texts with how often each was seen (refused and failed attempts).
    pub errors: BTreeMap<String, usize>,
}

impl Summary {
    fn count(&mut self, outcome: Outcome) {
        self.attempts += 1;
        let text = match outcome {
            Outcome::Accepted => {
                self.accepted += 1;
                return;
            }
            Outcome::Denied => {
                self.denied += 1;
                return;
            }
            Outcome::TimedOut => {
                self.timed_out += 1;
                return;
            }
            Outcome::Refused(text) => {
                self.refused += 1;
                text
            }
            Outcome::Failed(text) => {
                self.failed += 1;
                text
            }
        };
        if let Some(n) = self.errors.get_mut(&text) {
            *n += 1;
        } else if self.errors.len() < MAX_ERROR_EXAMPLES {
            self.errors.insert(text, 1);
        }
    }
}

/// Runs the flood to its end and counts the outcomes.
pub async fn run(config: FloodConfig) -> Result<Summary, FloodError> {
    if !config.relay.iter().any(|p| matches!(p, Protocol::P2p(_))) {
        return Err(FloodError::NoPeerId(config.relay));
    }
    if config.identities == 0 || config.identities > MAX_IDENTITIES {
        return Err(FloodError::Identities(config.identities));
    }
    // Build one stack up front so a broken one is an error, not thousands of failures.
    drop(client(identity::Keypair::generate_ed25519())?);

    let per_attempt = config.duration / u32::try_from(config.attempts.max(1)).unwrap_or(u32::MAX);
    let permits = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    // Each identity sends one outcome per attempt; a small buffer is enough as the
    // collector below only counts.
    let (tx, mut rx) = mpsc::channel::<Outcome>(1024);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..config.identities {
        // Attempts k, k + identities, k + 2 * identities, ...
        if k >= config.attempts {
            break;
        }
        let slots = (k..config.attempts).step_by(config.identities);
        let key = identity::Keypair::generate_ed25519();
        let (relay, timeout) = (config.relay.clone(), config.attempt_timeout);
        let (permits, tx) = (permits.clone(), tx.clone());
        tasks.spawn(async move {
            // The swarm of the reservation this identity holds, if any; replacing it
            // closes that connection, which ends the reservation on the relay.
            let mut held: Option<Swarm<relay::client::Behaviour>> = None;
            for j in slots {
                let at = start + per_attempt * u32::try_from(j).unwrap_or(u32::MAX);
                tokio::time::sleep_until(at).await;
                let Ok(_permit) = permits.acquire().await else {
                    return held;
                };
                held = None;
                let outcome = match client(key.clone()) {
                    Ok(mut swarm) => {
                        let outcome = attempt(&mut swarm, relay.clone(), timeout).await;
                        if outcome == Outcome::Accepted {
                            held = Some(swarm);
                        }
                        outcome
                    }
                    Err(e) => Outcome::Failed(e.to_string()),
                };
                if tx.send(outcome).await.is_err() {
                    return held;
                }
            }
            held
        });
    }
    drop(tx);

    let mut summary = Summary {
        identities: config.identities,
        ..Summary::default()
    };
    while let Some(outcome) = rx.recv().await {
        summary.count(outcome);
    }
    let elapsed = start.elapsed();
    // Every task has sent its last outcome; collect what they still hold, then let go.
    let mut held = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(swarm)) = done {
            held.push(swarm);
        }
    }
    summary.held_at_end = held.len();
    summary.elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    summary.attempts_per_s = summary.attempts as f64 / elapsed.as_secs_f64().max(1e-3);
    tracing::info!(?summary, "flood done");
    Ok(summary)
}

/// A fresh swarm for `key`: TCP, Noise, yamux and the relay client, nothing else.
fn client(key: identity::Keypair) -> Result<Swarm<relay::client::Behaviour>, FloodError> {
    let err = |e: &dyn std::fmt::Display| FloodError::Libp2p(e.to_string());
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| err(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| err(&e))?
        .with_behaviour(|_, relay| relay)
        .map_err(|e| err(&e))?
        .build())
}

/// One reservation request from `swarm` to `relay`, waiting at most `timeout`.
async fn attempt(
    swarm: &mut Swarm<relay::client::Behaviour>,
    relay: Multiaddr,
    timeout: Duration,
) -> Outcome {
    let listener = match swarm.listen_on(relay.with(Protocol::P2pCircuit)) {
        Ok(id) => id,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let wait = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(relay::client::Event::ReservationReqAccepted { .. }) => {
                    return Outcome::Accepted;
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    ..
                } if listener_id == listener => {
                    return match reason {
                        Err(e) if relay_refused(&e) => Outcome::Denied,
                        Err(e) => Outcome::Refused(root_cause(&e)),
                        Ok(()) => Outcome::Failed("listener closed".into()),
                    };
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    return Outcome::Refused(root_cause(&error));
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or(Outcome::TimedOut)
}

/// Whether `e` is, or wraps, the relay's refusal of a reservation.
fn relay_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if matches!(
            e.downcast_ref::<ReserveError>(),
            Some(ReserveError::ResourceLimitExceeded | ReserveError::Refused)
        ) {
            return true;
        }
        next = inner(e);
    }
    false
}

/// The innermost error's text (the reason, without libp2p's layers of context).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(e) = inner(last) {
        last = e;
    }
    last.to_string()
}

/// The error `e` wraps; `io::Error::source` skips its payload, so look at that first.
fn inner<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a (dyn std::error::Error + 'static)> {
    match e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        Some(payload) => Some(payload),
        None => e.source(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_every_outcome_and_keeps_few_examples() {
        let mut s = Summary::default();
        s.count(Outcome::Accepted);
        s.count(Outcome::Denied);
        s.count(Outcome::TimedOut);
        for i in 0..20 {
            s.count(Outcome::Refused(format!("reset {}", i % 10)));
        }
        s.count(Outcome::Failed("odd".into()));
        assert_eq!(
            (
                s.attempts,
                s.accepted,
                s.denied,
                s.timed_out,
                s.refused,
                s.failed
            ),
            (24, 1, 1, 1, 20, 1)
        );
        assert_eq!(s.errors.len(), MAX_ERROR_EXAMPLES);
        assert_eq!(s.errors.values().sum::<usize>(), 16);
    }

    #[test]
    fn a_refusal_is_found_under_io_errors() {
        let wrapped = std::io::Error::other(ReserveError::ResourceLimitExceeded);
        assert!(relay_refused(&wrapped));
        let other = std::io::Error::other("connection reset");
        assert!(!relay_refused(&other));
        assert_eq!(root_cause(&other), "connection reset");
    }
}

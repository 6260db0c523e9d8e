//! Admission to the responder's side of the post-quantum handshake. Each handshake we
//! answer costs an ML-KEM encapsulation, two X25519 and a signature, and holds a slot while
//! it waits for the peer, so a stranger must not be able to take them all (the job
//! WireGuard's cookie does). The gate bounds:
//! - pending handshakes per peer ([`MAX_PENDING_PER_PEER`]);
//! - pending handshakes of peers the trust store knows and of strangers, each with its own
//!   budget, so strangers cannot starve contacts;
//! - how often one peer may start handshakes (a token bucket per peer, the buckets
//!   themselves bounded in number).
//!
//! Sans-IO: time comes in as an argument; a [`Slot`] gives its place back when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Handshakes one peer may have pending at once.
pub const MAX_PENDING_PER_PEER: usize = 2;
/// Pending handshakes of peers the trust store knows, all together.
pub const MAX_PENDING_KNOWN: usize = 16;
/// Pending handshakes of strangers, all together.
pub const MAX_PENDING_UNKNOWN: usize = 8;
/// Handshakes a peer may start in a burst.
const BURST: f64 = 8.0;
/// Handshakes a peer may start per second, sustained.
const PER_SECOND: f64 = 2.0;
/// Peers whose rate is tracked; past it the longest idle is forgotten (a forgotten peer
/// starts again with a full burst, which bounds memory, not fairness).
const MAX_TRACKED: usize = 4096;

/// Why a handshake was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The peer already has [`MAX_PENDING_PER_PEER`] handshakes pending.
    #[error("too many pending handshakes from this peer")]
    PeerBusy,
    /// The peer starts handshakes faster than the rate allows.
    #[error("handshakes from this peer too often")]
    RateLimited,
    /// Every slot of the peer's class (known or stranger) is taken.
    #[error("no free handshake slot")]
    Full,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default)]
struct State {
    pending: HashMap<PeerId, usize>,
    known: usize,
    unknown: usize,
    buckets: HashMap<PeerId, Bucket>,
}

/// The gate; shared by every secure listener of a node.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<Mutex<State>>);

/// A pending handshake's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    gate: Gate,
    peer: PeerId,
    /// `Some(known)` once the slot counts against a class budget.
    class: Option<bool>,
}

impl Gate {
    /// Admits a new handshake from `peer` at `now`, or says why not. The slot does not
    /// yet count against a class budget: [`Slot::classify`] does, once the trust store
    /// has said whether the peer is known.
    pub fn enter(&self, peer: PeerId, now: Instant) -> Result<Slot, Refusal> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.pending.get(&peer).copied().unwrap_or(0) >= MAX_PENDING_PER_PEER {
            return Err(Refusal::PeerBusy);
        }
        if s.buckets.len() >= MAX_TRACKED && !s.buckets.contains_key(&peer) {
            let idle = s
                .buckets
                .iter()
                .filter(|(p, _)| !s.pending.contains_key(p))
                .min_by_key(|(_, b)| b.at)
                .map(|(p, _)| *p);
            if let Some(idle) = idle {
                s.buckets.remove(&idle);
            }
        }
        let bucket = s.buckets.entry(peer).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * PER_SECOND).min(BURST);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Err(Refusal::RateLimited);
        }
        bucket.tokens -= 1.0;
        *s.pending.entry(peer).or_insert(0) += 1;
        Ok(Slot {
            gate: self.clone(),
            peer,
            class: None,
        })
    }

    /// Handshakes pending now: (known peers', strangers').
    pub fn pending(&self) -> (usize, usize) {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (s.known, s.unknown)
    }
}

impl Slot {
    /// Counts the slot against the budget of known peers or of strangers, or refuses
    /// when that budget is spent.
    pub fn classify(&mut self, known: bool) -> Result<(), Refusal> {
        if self.class.is_some() {
            return Ok(());
        }
        let mut s = self.gate.0.lock().unwrap_or_else(|e| e.into_inner());
        let (used, max) = if known {
            (&mut s.known, MAX_PENDING_KNOWN)
        } else {
            (&mut s.unknown, MAX_PENDING_UNKNOWN)
        };
        if *used >= max {
            return Err(Refusal::Full);
        }
        *used += 1;
        self.class = Some(known);
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.gate.0.lock().unwrap_or_else(|e| e.into_inner());
        match self.class {
            Some(true) => s.known = s.known.saturating_sub(1),
            Some(false) => s.unknown = s.unknown.saturating_sub(1),
            None => {}
        }
        if let Some(n) = s.pending.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                s.pending.remove(&self.peer);
            }
        }
    }
}

/// How long a peer that opened a stream may take to send the handshake's first message.
/// A real initiator sends it at once; a silent stream is dropped after this.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn one_peer_holds_at_most_two_slots_and_gets_them_back() {
        let gate = Gate::default();
        let (p, now) = (peer(), Instant::now());
        let a = gate.enter(p, now).unwrap();
        let _b = gate.enter(p, now).unwrap();
        assert_eq!(gate.enter(p, now).unwrap_err(), Refusal::PeerBusy);
        // Another peer is not affected.
        assert!(gate.enter(peer(), now).is_ok());
        drop(a);
        assert!(gate.enter(p, now).is_ok());
    }

    #[test]
    fn strangers_cannot_take_the_slots_of_known_peers() {
        let gate = Gate::default();
        let now = Instant::now();
        let mut held = Vec::new();
        for _ in 0..MAX_PENDING_UNKNOWN {
            let mut s = gate.enter(peer(), now).unwrap();
            s.classify(false).unwrap();
            held.push(s);
        }
        let mut stranger = gate.enter(peer(), now).unwrap();
        assert_eq!(stranger.classify(false).unwrap_err(), Refusal::Full);
        let mut contact = gate.enter(peer(), now).unwrap();
        contact.classify(true).unwrap();
        assert_eq!(gate.pending(), (1, MAX_PENDING_UNKNOWN));
        held.clear();
        drop(contact);
        assert_eq!(gate.pending(), (0, 0));
    }

    #[test]
    fn a_peer_is_rate_limited_and_recovers_with_time() {
        let gate = Gate::default();
        let (p, start) = (peer(), Instant::now());
        // Each slot is given back at once: only the rate limits.
        for _ in 0..BURST as usize {
            drop(gate.enter(p, start).unwrap());
        }
        assert_eq!(gate.enter(p, start).unwrap_err(), Refusal::RateLimited);
        let later = start + Duration::from_secs(1);
        for _ in 0..PER_SECOND as usize {
            drop(gate.enter(p, later).unwrap());
        }
        assert_eq!(gate.enter(p, later).unwrap_err(), Refusal::RateLimited);
    }

    #[test]
    fn the_rate_table_stays_bounded() {
        let gate = Gate::default();
        let now = Instant::now();
        for _ in 0..MAX_TRACKED + 100 {
            drop(gate.enter(peer(), now).unwrap());
        }
        let s = gate.0.lock().unwrap();
        assert!(s.buckets.len() <= MAX_TRACKED);
        assert!(s.pending.is_empty());
    }
}

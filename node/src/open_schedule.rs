//! [`OpenSchedule`]: when a protocol opens its stream to a peer again. The protocols that
//! keep one stream per peer (sync, the tunnel) share it: the smaller peer id opens at once,
//! the other only when no stream came after a while, and each attempt that brought no
//! working stream doubles the pause before the next.

use std::time::{Duration, Instant};

/// The pauses of an [`OpenSchedule`].
#[derive(Debug, Clone, Copy)]
pub struct Pauses {
    /// The larger peer id opens only if no stream came after this long.
    pub fallback: Duration,
    /// The pause after a first attempt, doubled after each further one.
    pub retry: Duration,
    /// Most doublings of `retry`.
    pub max_doublings: u32,
}

/// One peer's attempts at opening a stream, since it was first seen without one.
#[derive(Debug, Clone)]
pub struct OpenSchedule {
    first: Instant,
    last_attempt: Option<Instant>,
    attempts: u32,
}

impl OpenSchedule {
    /// A peer seen without a stream at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            first: now,
            last_attempt: None,
            attempts: 0,
        }
    }

    /// When this side may try next; `opens_first`: ours is the smaller peer id.
    pub fn due(&self, opens_first: bool, pauses: &Pauses) -> Instant {
        let turn = if opens_first {
            self.first
        } else {
            self.first + pauses.fallback
        };
        let doublings = self.attempts.saturating_sub(1).min(pauses.max_doublings);
        let retry = self
            .last_attempt
            .map_or(self.first, |t| t + pauses.retry * 2u32.pow(doublings));
        turn.max(retry)
    }

    /// An attempt started at `now`.
    pub fn attempted(&mut self, now: Instant) {
        self.last_attempt = Some(now);
        self.attempts += 1;
    }

    /// The last attempt failed on the connection, not on the peer's answer: the next
    /// pause is the first one again, not a longer one.
    pub fn forget_backoff(&mut self) {
        self.attempts = self.attempts.min(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAUSES: Pauses = Pauses {
        fallback: Duration::from_secs(3),
        retry: Duration::from_secs(2),
        max_doublings: 2,
    };

    #[test]
    fn the_smaller_id_opens_at_once_the_other_after_the_fallback() {
        let t0 = Instant::now();
        let s = OpenSchedule::new(t0);
        assert_eq!(s.due(true, &PAUSES), t0);
        assert_eq!(s.due(false, &PAUSES), t0 + PAUSES.fallback);
    }

    #[test]
    fn pauses_double_after_each_attempt_up_to_the_cap() {
        let t0 = Instant::now();
        let mut s = OpenSchedule::new(t0);
        let mut at = t0;
        for pause in [2, 4, 8, 8] {
            s.attempted(at);
            assert_eq!(s.due(true, &PAUSES), at + Duration::from_secs(pause));
            at += Duration::from_secs(pause);
        }
        let last = at - Duration::from_secs(8);
        // The larger id waits for the fallback and the pause, whichever ends later.
        assert_eq!(s.due(false, &PAUSES), last + Duration::from_secs(8));
        s.forget_backoff();
        assert_eq!(s.due(true, &PAUSES), last + Duration::from_secs(2));
    }
}

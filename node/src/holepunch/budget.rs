//! How often peers and relays can make us dial. An exchange answered ([`AnswerBudget`]):
//! at most [`MAX_ANSWERS`] per peer in [`ANSWER_WINDOW`] (DCUtR stops at 3 attempts too).
//! An introduction obeyed ([`IntroBudget`]): one per (relay, peer) in [`INTRO_WINDOW`], and
//! [`MAX_INTRODUCTIONS`] per relay in it. Each makes us dial addresses someone else named,
//! so repeating one must not make us dial again and again. Sans-IO: time comes in as an
//! argument.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Exchanges answered per peer within [`ANSWER_WINDOW`].
pub const MAX_ANSWERS: u32 = 3;
/// The window the answers count in; a peer that used them up waits until it has passed.
/// Short enough that a new relayed connection after a restart gets its own exchanges
/// (the answers cannot be counted per connection: a stream does not say which one it
/// came over), long enough that a peer repeating the exchange dials us rarely.
pub const ANSWER_WINDOW: Duration = Duration::from_secs(120);
/// Peers tracked at once; past it the oldest window is forgotten.
const MAX_TRACKED: usize = 1024;
/// Introductions a relay gets obeyed within [`INTRO_WINDOW`]: one per circuit it carries
/// to us, and a node rarely gets more than a few new peers a minute through one relay.
pub const MAX_INTRODUCTIONS: u32 = 8;
/// The window introductions count in; a (relay, peer) pair gets one per window (a retried
/// circuit within it punches through the exchange instead).
pub const INTRO_WINDOW: Duration = Duration::from_secs(60);

/// Counts (key, window opening) pairs, forgetting windows that have passed and, past
/// [`MAX_TRACKED`] keys, the oldest.
#[derive(Debug)]
struct Windows<K> {
    window: Duration,
    counts: HashMap<K, (u32, Instant)>,
}

impl<K: std::hash::Hash + Eq + Copy> Windows<K> {
    fn new(window: Duration) -> Self {
        Self {
            window,
            counts: HashMap::new(),
        }
    }

    /// The count of `key` in its window at `now` (0 for a new window).
    fn count(&mut self, key: K, now: Instant) -> u32 {
        let window = self.window;
        self.counts
            .retain(|_, (_, opened)| now.saturating_duration_since(*opened) < window);
        self.counts.get(&key).map_or(0, |(n, _)| *n)
    }

    /// Counts one more for `key`.
    fn add(&mut self, key: K, now: Instant) {
        if self.counts.len() >= MAX_TRACKED && !self.counts.contains_key(&key) {
            let oldest = self
                .counts
                .iter()
                .min_by_key(|(_, (_, opened))| *opened)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.counts.remove(&oldest);
            }
        }
        self.counts.entry(key).or_insert((0, now)).0 += 1;
    }
}

/// Answers given per peer.
#[derive(Debug)]
pub(crate) struct AnswerBudget {
    peers: Windows<PeerId>,
}

impl Default for AnswerBudget {
    fn default() -> Self {
        Self {
            peers: Windows::new(ANSWER_WINDOW),
        }
    }
}

impl AnswerBudget {
    /// Whether `peer` may have another exchange answered at `now`; counts it when so.
    pub(crate) fn admit(&mut self, peer: PeerId, now: Instant) -> bool {
        if self.peers.count(peer, now) >= MAX_ANSWERS {
            return false;
        }
        self.peers.add(peer, now);
        true
    }
}

/// Introductions obeyed per relay and per (relay, peer).
#[derive(Debug)]
pub(crate) struct IntroBudget {
    per_relay: Windows<PeerId>,
    per_pair: Windows<(PeerId, PeerId)>,
}

impl Default for IntroBudget {
    fn default() -> Self {
        Self {
            per_relay: Windows::new(INTRO_WINDOW),
            per_pair: Windows::new(INTRO_WINDOW),
        }
    }
}

impl IntroBudget {
    /// Whether `relay` may have an introduction of `peer` obeyed at `now`; counts it when
    /// so.
    pub(crate) fn admit(&mut self, relay: PeerId, peer: PeerId, now: Instant) -> bool {
        if self.per_relay.count(relay, now) >= MAX_INTRODUCTIONS
            || self.per_pair.count((relay, peer), now) >= 1
        {
            return false;
        }
        self.per_relay.add(relay, now);
        self.per_pair.add((relay, peer), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_answers_per_peer_per_window() {
        let mut budget = AnswerBudget::default();
        let (a, b, start) = (PeerId::random(), PeerId::random(), Instant::now());
        let answered = (0..100).filter(|_| budget.admit(a, start)).count();
        assert_eq!(answered, MAX_ANSWERS as usize);
        assert!(budget.admit(b, start), "another peer has its own budget");
        assert!(!budget.admit(a, start + ANSWER_WINDOW / 2));
        assert!(budget.admit(a, start + ANSWER_WINDOW));
    }

    #[test]
    fn one_introduction_per_pair_and_a_few_per_relay_per_window() {
        let mut budget = IntroBudget::default();
        let (relay, other, start) = (PeerId::random(), PeerId::random(), Instant::now());
        let peer = PeerId::random();
        assert!(budget.admit(relay, peer, start));
        assert!(!budget.admit(relay, peer, start), "once per (relay, peer)");
        assert!(
            budget.admit(other, peer, start),
            "another relay counts apart"
        );
        let obeyed = (0..100)
            .filter(|_| budget.admit(relay, PeerId::random(), start))
            .count();
        assert_eq!(obeyed, MAX_INTRODUCTIONS as usize - 1);
        assert!(!budget.admit(relay, PeerId::random(), start + INTRO_WINDOW / 2));
        assert!(budget.admit(relay, peer, start + INTRO_WINDOW));
        for _ in 0..MAX_TRACKED + 50 {
            budget.admit(PeerId::random(), PeerId::random(), start + INTRO_WINDOW);
        }
        assert!(budget.per_relay.counts.len() <= MAX_TRACKED);
        assert!(budget.per_pair.counts.len() <= MAX_TRACKED);
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut budget = AnswerBudget::default();
        let now = Instant::now();
        for _ in 0..MAX_TRACKED + 50 {
            assert!(budget.admit(PeerId::random(), now));
        }
        assert!(budget.peers.counts.len() <= MAX_TRACKED);
    }
}

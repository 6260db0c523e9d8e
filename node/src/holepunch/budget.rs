//! How many exchanges one peer gets answered: at most [`MAX_ANSWERS`] in
//! [`ANSWER_WINDOW`] (DCUtR stops at 3 attempts too). Each answer makes us dial the peer's
//! addresses, so a peer that repeats the exchange must not make us dial again and again.
//! Sans-IO: time comes in as an argument.

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

/// Answers given per peer.
#[derive(Debug, Default)]
pub(crate) struct AnswerBudget {
    /// Peer -> (answers in the window, when the window opened).
    peers: HashMap<PeerId, (u32, Instant)>,
}

impl AnswerBudget {
    /// Whether `peer` may have another exchange answered at `now`; counts it when so.
    pub(crate) fn admit(&mut self, peer: PeerId, now: Instant) -> bool {
        self.peers
            .retain(|_, (_, opened)| now.saturating_duration_since(*opened) < ANSWER_WINDOW);
        if self.peers.len() >= MAX_TRACKED && !self.peers.contains_key(&peer) {
            let oldest = self
                .peers
                .iter()
                .min_by_key(|(_, (_, opened))| *opened)
                .map(|(p, _)| *p);
            if let Some(oldest) = oldest {
                self.peers.remove(&oldest);
            }
        }
        let (answered, _) = self.peers.entry(peer).or_insert((0, now));
        if *answered >= MAX_ANSWERS {
            return false;
        }
        *answered += 1;
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
    fn the_table_stays_bounded() {
        let mut budget = AnswerBudget::default();
        let now = Instant::now();
        for _ in 0..MAX_TRACKED + 50 {
            assert!(budget.admit(PeerId::random(), now));
        }
        assert!(budget.peers.len() <= MAX_TRACKED);
    }
}

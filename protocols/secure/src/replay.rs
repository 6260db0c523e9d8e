//! Sliding replay window for sessions whose frames may arrive out of order.
//!
//! The window remembers which of the last [`WINDOW`] sequence numbers, up to the highest
//! one accepted, were accepted, in a ring of 64-bit words (the layout of RFC 6479): moving the
//! window forward only clears the words it passes over, so a jump costs at most one pass
//! over the ring, never a loop over the skipped sequence numbers.
//!
//! Checking and marking are separate steps on purpose: the session checks before
//! decrypting, and marks only after the frame authenticated, so forged frames cannot
//! burn sequence numbers or slide the window.

use crate::error::OpenError;

/// Width of the window: the highest accepted sequence number and the 2047 before it.
pub const WINDOW: u64 = 2048;
const WORD_BITS: u64 = 64;
// One word more than the window needs, because the highest block is only partly in use.
const WORDS: usize = (WINDOW / WORD_BITS) as usize + 1;

/// Replay window over 64-bit sequence numbers.
#[derive(Debug, Clone)]
pub(crate) struct ReplayWindow {
    /// One more than the highest accepted sequence number; 0 while none was accepted.
    next: u64,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            next: 0,
            bits: [0; WORDS],
        }
    }
}

fn slot(seq: u64) -> (usize, u64) {
    let block = seq / WORD_BITS;
    // `WORDS` is small, so the remainder always fits in usize.
    ((block % WORDS as u64) as usize, 1 << (seq % WORD_BITS))
}

impl ReplayWindow {
    /// Whether `seq` could be accepted: ahead of everything seen, or inside the window
    /// and not seen yet.
    pub(crate) fn check(&self, seq: u64) -> Result<(), OpenError> {
        // Senders stop before u64::MAX, so refusing it keeps `next` from overflowing.
        if seq == u64::MAX {
            return Err(OpenError::TooOld(seq));
        }
        if seq >= self.next {
            return Ok(());
        }
        if self.next - seq > WINDOW {
            return Err(OpenError::TooOld(seq));
        }
        let (word, mask) = slot(seq);
        if self.bits[word] & mask != 0 {
            return Err(OpenError::Replayed(seq));
        }
        Ok(())
    }

    /// Records `seq` as accepted. Call only after [`check`](Self::check) passed and the
    /// frame authenticated.
    pub(crate) fn mark(&mut self, seq: u64) {
        if seq >= self.next {
            if self.next > 0 {
                // Clear the blocks strictly after the old highest one up to the new one,
                // at most the whole ring.
                let old_block = (self.next - 1) / WORD_BITS;
                let new_block = seq / WORD_BITS;
                let passed = (new_block - old_block).min(WORDS as u64);
                for block in (new_block + 1 - passed)..=new_block {
                    let (word, _) = slot(block * WORD_BITS);
                    self.bits[word] = 0;
                }
            }
            self.next = seq.saturating_add(1);
        }
        let (word, mask) = slot(seq);
        self.bits[word] |= mask;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn accepts_fresh_refuses_replay() {
        let mut w = ReplayWindow::default();
        for seq in [0, 1, 5, 3, 2, 4] {
            assert_eq!(w.check(seq), Ok(()));
            w.mark(seq);
            assert_eq!(w.check(seq), Err(OpenError::Replayed(seq)));
        }
    }

    #[test]
    fn window_edges() {
        let mut w = ReplayWindow::default();
        w.mark(10_000);
        assert_eq!(w.check(10_000 - WINDOW + 1), Ok(()));
        assert_eq!(
            w.check(10_000 - WINDOW),
            Err(OpenError::TooOld(10_000 - WINDOW))
        );
        // A huge jump clears everything once, without looping over the gap.
        w.mark(u64::MAX - 1);
        assert_eq!(w.check(10_000), Err(OpenError::TooOld(10_000)));
        assert_eq!(w.check(u64::MAX - 2), Ok(()));
    }

    proptest! {
        /// The ring agrees with a plain set-based model on any sequence of arrivals.
        #[test]
        fn matches_model(seqs in proptest::collection::vec(0u64..6000, 1..400)) {
            let mut w = ReplayWindow::default();
            let mut seen = BTreeSet::new();
            let mut highest: Option<u64> = None;
            for seq in seqs {
                let expected = match highest {
                    Some(h) if seq <= h && h + 1 - seq > WINDOW => Err(OpenError::TooOld(seq)),
                    _ if seen.contains(&seq) => Err(OpenError::Replayed(seq)),
                    _ => Ok(()),
                };
                prop_assert_eq!(w.check(seq), expected.clone());
                if expected.is_ok() {
                    w.mark(seq);
                    seen.insert(seq);
                    highest = Some(highest.map_or(seq, |h| h.max(seq)));
                }
            }
        }
    }
}

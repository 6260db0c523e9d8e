//! [`PeerChanges`]: what tasks wait on instead of polling the peer list.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Least time between two changes a [`PeerChanges`] gives: peers that connect and drop in
/// a burst (strangers churning, a relay's clients) cost each waiting task at most ten
/// looks at the peer list a second, however fast they come.
pub const PEER_CHANGES_SPACING: Duration = Duration::from_millis(100);

/// A counter the event loop moves when a peer becomes connected (its first connection)
/// or disconnected (its last one closed). [`changed`](Self::changed) ends at the next
/// change, or at once if one came since the last call, but not sooner than
/// [`PEER_CHANGES_SPACING`] after the last time it ended: changes in between are
/// gathered into one.
pub struct PeerChanges {
    rx: watch::Receiver<u64>,
    last: Option<Instant>,
}

impl PeerChanges {
    pub(crate) fn new(rx: watch::Receiver<u64>) -> Self {
        Self { rx, last: None }
    }

    /// Waits for a change (see the type). An error: the node has stopped. Cancel safe:
    /// a change is taken only when the call ends.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        if let Some(last) = self.last {
            tokio::time::sleep_until(last + PEER_CHANGES_SPACING).await;
        }
        self.rx.changed().await?;
        self.last = Some(Instant::now());
        Ok(())
    }

    /// Makes the next [`changed`](Self::changed) end at once: to look at the peers
    /// connected already.
    pub fn mark_changed(&mut self) {
        self.rx.mark_changed();
    }

    /// Whether a change came that [`changed`](Self::changed) has not given yet.
    pub fn has_changed(&self) -> Result<bool, watch::error::RecvError> {
        self.rx.has_changed()
    }

    /// The counter now.
    pub fn count(&self) -> u64 {
        *self.rx.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of changes is given at most once per spacing, and none is lost: the last
    /// one is given after the spacing.
    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_is_given_at_most_once_per_spacing() {
        let (tx, rx) = watch::channel(0u64);
        let mut changes = PeerChanges::new(rx);
        let start = Instant::now();
        let churn = tokio::spawn(async move {
            // 1,000 changes over one second.
            for _ in 0..1000 {
                tx.send_modify(|n| *n += 1);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tx
        });
        let mut given = 0;
        let mut at = Vec::new();
        while start.elapsed() < Duration::from_millis(1500) {
            match tokio::time::timeout(Duration::from_millis(300), changes.changed()).await {
                Ok(r) => {
                    r.unwrap();
                    given += 1;
                    at.push(start.elapsed());
                }
                Err(_) => break,
            }
        }
        let tx = churn.await.unwrap();
        // The first at once, then one per 100 ms over the second of churn (and the last
        // change, made at 1 s, given once its spacing passed).
        assert_eq!(at[0], Duration::ZERO, "{at:?}");
        assert!((10..=12).contains(&given), "given {given} times: {at:?}");
        for pair in at.windows(2) {
            assert!(pair[1] - pair[0] >= PEER_CHANGES_SPACING, "{at:?}");
        }
        assert_eq!(changes.count(), 1000, "the last change was seen");
        assert!(!changes.has_changed().unwrap());
        // One more after a quiet spell is given at once.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let quiet = Instant::now();
        tx.send_modify(|n| *n += 1);
        changes.changed().await.unwrap();
        assert_eq!(quiet.elapsed(), Duration::ZERO);
    }
}

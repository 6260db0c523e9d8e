//! A datagram link's probing: the task that sends probe rounds and keepalives when they
//! are due, and what wakes it sooner.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use p2pnode_secure::session::{HEADER_LEN, TAG_LEN};
use tokio::sync::Notify;

use super::{Udp, UdpLink, on_wire};
use crate::datagram::{self, INDEX_LEN, PathState};

/// The least time between two rounds of a link's probe task, whatever wakes it: a member
/// that keeps moving its endpoint (each move wakes the task) makes at most one new
/// connected socket this often.
const MIN_ROUND_GAP: Duration = Duration::from_millis(100);

/// The link's probe task, for as long as the link lives: woken only when a round is due
/// or the path changed, not on a short tick (a 100 ms tick was ten wake-ups a second per
/// member; an idle link that is up now costs one a keepalive).
pub(super) async fn run(link: Arc<UdpLink>, udp: Arc<Udp>) {
    paced(&link.wake, || {
        let now = Instant::now();
        link.probe_round(now);
        link.keep_connected(&udp, now);
        link.next_probe(now)
    })
    .await;
}

/// Runs `round` again when the time it returned comes, or when `wake` is notified, but
/// never sooner than [`MIN_ROUND_GAP`] after the last round began.
async fn paced(wake: &Notify, mut round: impl FnMut() -> Instant) {
    loop {
        let began = tokio::time::Instant::now();
        let wait = round().saturating_duration_since(Instant::now());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wake.notified() => {}
        }
        tokio::time::sleep_until(began + MIN_ROUND_GAP).await;
    }
}

impl UdpLink {
    /// Adds the member's address `ip` (seen on a direct connection since the negotiation)
    /// as a candidate, with its UDP port.
    pub(in crate::service) fn observed(&self, ip: IpAddr) {
        let added = self
            .state
            .lock()
            .add_candidate(SocketAddr::new(ip, self.peer_port), Instant::now());
        if added {
            tracing::debug!(%ip, "tunnel: a new datagram candidate");
            // Probed at once, not at the next round.
            self.wake.notify_one();
        }
    }

    /// Runs `update` on the path's state. When that
    /// changed where packets go (the path went up or down, or its endpoint moved), the
    /// probe task looks at once: a keepalive's interval, a connected socket for the new
    /// endpoint.
    pub(super) fn update_path<R>(
        &self,
        now: Instant,
        update: impl FnOnce(&mut PathState) -> R,
    ) -> R {
        let (r, changed) = {
            let mut s = self.state.lock();
            let before = s.usable(now);
            let r = update(&mut s);
            (r, s.usable(now) != before)
        };
        if changed {
            self.wake.notify_one();
        }
        r
    }

    /// When the next probe round is due.
    fn next_probe(&self, now: Instant) -> Instant {
        self.state.lock().next_probe(now)
    }

    fn probe_round(&self, now: Instant) {
        let (to, hears) = {
            let mut s = self.state.lock();
            (s.probes_due(now), s.hears(now))
        };
        for addr in to {
            self.send_probe(addr, hears, now);
        }
    }

    pub(super) fn send_probe(&self, to: SocketAddr, hears_you: bool, now: Instant) {
        let mut buf = Vec::with_capacity(INDEX_LEN + HEADER_LEN + 2 + TAG_LEN);
        let sent = on_wire(to, self.dual).is_some_and(|to| {
            self.seal_append(&datagram::probe(hears_you), &mut buf, now)
                && self.socket.send_to(&buf, to).is_ok()
        });
        if !sent {
            self.send_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Rounds run in `secs` of virtual time, the round asking to come back `every` later
    /// and, with `spam`, the task notified every millisecond.
    async fn rounds(every: Duration, spam: bool, secs: u64) -> usize {
        let wake = Arc::new(Notify::new());
        let count = Arc::new(AtomicUsize::new(0));
        let task = {
            let (wake, count) = (wake.clone(), count.clone());
            tokio::spawn(async move {
                paced(&wake, || {
                    count.fetch_add(1, Ordering::Relaxed);
                    Instant::now() + every
                })
                .await;
            })
        };
        let end = tokio::time::Instant::now() + Duration::from_secs(secs);
        while tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if spam {
                wake.notify_one();
            }
        }
        task.abort();
        count.load(Ordering::Relaxed)
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_runs_when_due_and_no_oftener_however_often_it_is_woken() {
        // Left alone: one round a second for a round due every second (the first at once).
        let alone = rounds(Duration::from_secs(1), false, 10).await;
        assert!((10..=11).contains(&alone), "{alone} rounds");
        // Woken every millisecond (a member moving its endpoint with every datagram): at
        // most one round per gap.
        let spammed = rounds(Duration::from_secs(1), true, 10).await;
        let most = (10 * 1000 / MIN_ROUND_GAP.as_millis()) as usize + 1;
        assert!(spammed <= most, "{spammed} rounds, at most {most}");
        assert!(
            spammed >= most - 2,
            "woken, it still runs about every gap: {spammed}"
        );
    }
}

//! A datagram link's probing: the task that sends probe rounds and keepalives when they
//! are due, and what wakes it sooner.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use p2pnode_secure::session::{HEADER_LEN, TAG_LEN};

use super::{Udp, UdpLink, on_wire};
use crate::datagram::{self, INDEX_LEN};

/// The shortest sleep of a link's probe task between two looks (it sleeps until the next
/// probe round is due, or until the data thread says the path changed).
const MIN_PROBE_WAIT: Duration = Duration::from_millis(10);

/// The link's probe task, for as long as the link lives: woken only when a round is due
/// or the path changed, not on a short tick (a 100 ms tick was ten wake-ups a second per
/// member; an idle link that is up now costs one a keepalive).
pub(super) async fn run(link: Arc<UdpLink>, udp: Arc<Udp>) {
    loop {
        let now = Instant::now();
        link.probe_round(now);
        link.keep_connected(&udp, now);
        let wait = link.next_probe(now).saturating_duration_since(now);
        tokio::select! {
            () = tokio::time::sleep(wait.max(MIN_PROBE_WAIT)) => {}
            () = link.wake.notified() => {}
        }
    }
}

impl UdpLink {
    /// Adds the member's address `ip` (seen on a direct connection since the negotiation)
    /// as a candidate, with its UDP port.
    pub(in crate::service) fn observed(&self, ip: IpAddr) {
        if let Ok(mut s) = self.state.lock()
            && s.add_candidate(SocketAddr::new(ip, self.peer_port), Instant::now())
        {
            tracing::debug!(%ip, "tunnel: a new datagram candidate");
            // Probed at once, not at the next round.
            self.wake.notify_one();
        }
    }

    /// The path went up or down, or its endpoint moved: the probe task looks at once (a
    /// keepalive's interval, a connected socket for the new endpoint).
    pub(super) fn path_changed(&self) {
        self.wake.notify_one();
    }

    /// When the next probe round is due.
    fn next_probe(&self, now: Instant) -> Instant {
        self.state
            .lock()
            .map_or(now + datagram::PROBE_EVERY, |s| s.next_probe(now))
    }

    fn probe_round(&self, now: Instant) {
        let (to, hears) = match self.state.lock() {
            Ok(mut s) => (s.probes_due(now), s.hears(now)),
            Err(_) => return,
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

//! One network's data path, shared by the TUN device's reader and every stream reader:
//! the engine (routing, checks, counts) and the queue of each member's stream.
//! Each packet takes the lock once, briefly; nothing in it allocates per packet.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::device::{ReadBatch, TunDevice};
use crate::{DropReason, Engine, MemberId, Outbound, Slot};

use super::data::{Done, Reader};
use super::link::Outgoing;
use super::udp::{Batch, UdpLink};

/// Most reads from the TUN device at one readiness before their datagrams go out (the
/// rest is read at the next: no device or socket waits long behind another).
const BURST: usize = 64;

/// A device not read for this long is quiet: a packet read from it is most likely alone.
const QUIET: Duration = Duration::from_millis(1);

/// Drops the service counts beside the engine's: packets it could not hand on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Unsent {
    /// Routed to a member with no stream up.
    pub(super) no_stream: u64,
    /// A member sent a packet larger than our MTU.
    pub(super) too_big_in: u64,
}

/// A network's data path as the readers, the streams and the service share it. Its lock
/// does not poison: taking a std one reads the process's panic count, a cold cache line
/// of its own on a lone packet's path.
pub(super) type SharedPath = Arc<parking_lot::Mutex<DataPath>>;

/// The engine, the members' queues and their datagram links.
pub(super) struct DataPath {
    pub(super) engine: Engine,
    pub(super) out: HashMap<MemberId, Arc<Outgoing>>,
    /// Members' datagram links by the engine's slot (a lone packet's route costs an index,
    /// not a hash of the member's id); packets take a link while it is up.
    udp: Vec<Option<Arc<UdpLink>>>,
    pub(super) unsent: BTreeMap<Slot, Unsent>,
}

/// What the TUN reader does with a packet once the lock is let go.
pub(super) enum FromTun {
    /// Queued, or dropped and counted: nothing more to do.
    Done,
    /// Send it as a datagram on this link, to this address.
    Udp(Arc<UdpLink>, SocketAddr),
    /// Write this ICMP error back into the device.
    Reply(Vec<u8>),
}

impl DataPath {
    pub(super) fn new(engine: Engine) -> Self {
        Self {
            engine,
            out: HashMap::new(),
            udp: Vec::new(),
            unsent: BTreeMap::new(),
        }
    }

    /// A data path to share.
    pub(super) fn shared(engine: Engine) -> SharedPath {
        Arc::new(parking_lot::Mutex::new(Self::new(engine)))
    }

    /// Packets to the member of `slot` take `link` while it is up.
    pub(super) fn set_udp(&mut self, slot: Slot, link: Arc<UdpLink>) {
        let i = slot.index();
        if self.udp.len() <= i {
            self.udp.resize(i + 1, None);
        }
        self.udp[i] = Some(link);
    }

    /// The member of `slot` no longer has `link` (one that replaced it stays).
    pub(super) fn unset_udp(&mut self, slot: Slot, link: &Arc<UdpLink>) {
        if let Some(entry) = self.udp.get_mut(slot.index())
            && entry.as_ref().is_some_and(|l| Arc::ptr_eq(l, link))
        {
            *entry = None;
        }
    }

    /// A packet read from our TUN device: routed, and queued for the member that holds
    /// its destination.
    pub(super) fn on_tun_packet(&mut self, packet: &[u8], now: Instant) -> FromTun {
        match self.engine.from_tun(packet) {
            Outbound::Send(slot) => {
                if let Some(Some(link)) = self.udp.get(slot.index())
                    && let Some(to) = link.usable(now)
                {
                    return FromTun::Udp(link.clone(), to);
                }
                let queued = self
                    .engine
                    .member(slot)
                    .and_then(|m| self.out.get(m))
                    .is_some_and(|o| o.push(packet, now));
                if !queued {
                    self.unsent.entry(slot).or_default().no_stream += 1;
                }
                FromTun::Done
            }
            Outbound::TooBig(reply) => FromTun::Reply(reply),
            Outbound::Drop(_) => FromTun::Done,
        }
    }

    /// A packet the member of `sender` sent: whether it may be written into our TUN
    /// device.
    pub(super) fn on_peer_packet(&mut self, sender: Slot, packet: &[u8], mtu: u16) -> bool {
        if packet.len() > usize::from(mtu) {
            // Its sender's device has a larger MTU than ours: the kernel would take it,
            // but a member must not make us carry more than we set.
            self.unsent.entry(sender).or_default().too_big_in += 1;
            return false;
        }
        self.engine.from_peer(sender, packet)
    }

    /// Drops by reason for `member` (or all members for `None`), zeros left out.
    pub(super) fn drops(&self, member: Option<&MemberId>) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let mut add = |name: &str, n: u64| {
            if n > 0 {
                *out.entry(name.to_string()).or_insert(0) += n;
            }
        };
        match member {
            Some(m) => {
                let c = self.engine.counts(m);
                for r in DropReason::ALL {
                    add(r.as_str(), c.dropped[r as usize]);
                }
            }
            None => {
                for (r, n) in self.engine.drops().iter() {
                    add(r.as_str(), n);
                }
            }
        }
        let slot = member.map(|m| self.engine.find(m));
        let unsent = self
            .unsent
            .iter()
            .filter(|(s, _)| slot.is_none_or(|x| x == Some(**s)));
        for (_, u) in unsent {
            add("no_stream", u.no_stream);
            add("too_big_in", u.too_big_in);
        }
        let queues = self
            .out
            .iter()
            .filter(|(m, _)| member.is_none_or(|x| x == *m));
        for (_, o) in queues {
            let (full, stale) = o.dropped();
            add("queue_full", full);
            add("stale", stale);
        }
        out
    }
}

/// Reads one network's TUN device on the data thread: each packet routed by the engine
/// to its member's queue or datagram link; "too big" answers written back into the
/// device. A read may be a super-packet of many segments (offloads on); a burst of reads
/// is taken at once and its datagrams sent as batches.
pub(super) struct TunReader {
    pub(super) network: String,
    pub(super) device: Arc<TunDevice>,
    pub(super) path: SharedPath,
    pub(super) reads: ReadBatch,
    pub(super) batch: Option<Batch>,
    /// When the device was last read (see [`TunReader::burst`]).
    pub(super) last_read: Option<Instant>,
}

impl Reader for TunReader {
    fn fd(&self) -> BorrowedFd<'_> {
        self.device.fd()
    }

    fn on_readable(&mut self) -> Result<Done, String> {
        let result = self.burst();
        if let Some(b) = &mut self.batch {
            b.flush();
        }
        result
            .map(|()| Done::Read)
            .map_err(|e| format!("network {}: {e}", self.network))
    }
}

impl TunReader {
    /// Up to [`BURST`] reads, until the device has nothing more.
    ///
    /// The first read's datagrams are sent before the next read: a lone packet (an echo, a
    /// keystroke) goes out at once, not after the read that finds the device empty, as
    /// boringtun orders it (traced warm, that read cost our round trip 2 to 4 µs a side).
    /// The reads after it, a busy device's queue, are batched into GSO runs.
    ///
    /// After a quiet spell ([`QUIET`]) a read of one packet ends the burst: its datagram
    /// goes out and the thread waits again, without the read that would find the device
    /// empty (a packet queued meanwhile is reported by the level-triggered wait at once).
    /// The peer's data thread, which our datagram woke, may be waiting for this CPU; the
    /// same cut after the socket's hand-over gained about 4 % of the round trip.
    fn burst(&mut self) -> Result<(), String> {
        for read in 0..BURST {
            if read == 1
                && let Some(b) = &mut self.batch
            {
                b.flush();
            }
            let n = match self.device.try_recv_batch(&mut self.reads) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                // Not the device failing but a super-packet the split refused (malformed,
                // or more segments than the buffers hold): it is dropped and counted, and
                // the device is read on. Ending here would stop the network's tunnel.
                Err(e) if e.raw_os_error().is_none() => {
                    tracing::debug!("tunnel: an unreadable super-packet from the TUN device: {e}");
                    self.path.lock().engine.unreadable_from_tun();
                    continue;
                }
                Err(e) => return Err(format!("cannot read the TUN device: {e}")),
            };
            // One clock read per read, not per packet of a super-packet.
            let now = Instant::now();
            let last = self.last_read.replace(now);
            let quiet = read == 0 && after_quiet(last, now);
            for i in 0..n {
                let packet = self.reads.packet(i);
                let action = self.path.lock().on_tun_packet(packet, now);
                match action {
                    FromTun::Done => {}
                    FromTun::Udp(link, to) => match &mut self.batch {
                        Some(b) => b.push(&link, to, packet, now),
                        None => tracing::debug!("tunnel: a datagram link without a socket"),
                    },
                    FromTun::Reply(reply) => {
                        if let Err(e) = self.device.try_send(&reply) {
                            tracing::debug!(
                                "tunnel: cannot write an ICMP error into the TUN device: {e}"
                            );
                        }
                    }
                }
            }
            if quiet && n == 1 {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Whether a read at `now` comes after a quiet spell, the one before it at `last`.
fn after_quiet(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= QUIET)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::IpAddr;

    use super::*;
    use crate::Claim;
    use crate::packet::build_packet;

    fn member(i: u8) -> MemberId {
        MemberId(vec![i; 4])
    }

    fn path() -> DataPath {
        let claims: Vec<Claim> = (0..3)
            .map(|i| Claim {
                member: member(i),
                lease: None,
            })
            .collect();
        DataPath::new(Engine::new([4; 32], member(0), 1280, &claims, BTreeSet::new()).unwrap())
    }

    fn to(p: &DataPath, i: u8, len: usize) -> Vec<u8> {
        let ours = p.engine.our_lease().unwrap();
        let theirs = p.engine.table().lease(&member(i)).unwrap();
        build_packet(IpAddr::V4(ours.v4), IpAddr::V4(theirs.v4), &vec![0; len])
    }

    #[test]
    fn packets_go_to_the_members_queue_or_are_counted_unsent() {
        let now = Instant::now();
        let mut p = path();
        let out = Arc::new(Outgoing::new(1280, now));
        p.out.insert(member(1), out.clone());
        // No stream yet on either member: both counted as unsent.
        let (a, b) = (to(&p, 1, 10), to(&p, 2, 10));
        assert!(matches!(p.on_tun_packet(&a, now), FromTun::Done));
        assert!(matches!(p.on_tun_packet(&b, now), FromTun::Done));
        let unsent = |p: &DataPath, i| p.drops(Some(&member(i))).get("no_stream").copied();
        assert_eq!(unsent(&p, 1), Some(1));
        assert_eq!(unsent(&p, 2), Some(1));
        out.set_link(1);
        p.on_tun_packet(&a, now);
        assert_eq!(unsent(&p, 1), Some(1), "queued this time");
        let all = p.drops(None);
        assert_eq!(all.get("no_stream"), Some(&2));
        assert_eq!(p.drops(Some(&member(2))).get("no_stream"), Some(&1));
        // Too big: an ICMP error to write back, counted by the engine.
        let big = to(&p, 1, 2000);
        assert!(matches!(p.on_tun_packet(&big, now), FromTun::Reply(_)));
        assert_eq!(p.drops(None).get("too_big"), Some(&1));
    }

    #[test]
    fn a_packet_over_our_mtu_from_a_member_is_refused_and_counted() {
        let mut p = path();
        let theirs = p.engine.table().lease(&member(1)).unwrap();
        let ours = p.engine.our_lease().unwrap();
        let ok = build_packet(IpAddr::V4(theirs.v4), IpAddr::V4(ours.v4), &[0; 100]);
        let big = build_packet(IpAddr::V4(theirs.v4), IpAddr::V4(ours.v4), &[0; 1300]);
        let m1 = p.engine.slot(&member(1));
        assert!(p.on_peer_packet(m1, &ok, 1280));
        assert!(!p.on_peer_packet(m1, &big, 1280));
        assert_eq!(p.drops(Some(&member(1))).get("too_big_in"), Some(&1));
        assert_eq!(p.engine.counts(&member(1)).packets_in, 1);
    }

    #[test]
    fn a_read_is_after_a_quiet_spell_when_the_last_was_long_enough_ago() {
        let t = Instant::now();
        assert!(after_quiet(None, t), "the first read of a device");
        assert!(!after_quiet(Some(t), t + QUIET / 2), "a busy device");
        assert!(after_quiet(Some(t), t + QUIET), "a pause of QUIET");
        assert!(
            after_quiet(Some(t), t + Duration::from_millis(20)),
            "a ping's pause"
        );
        assert!(
            !after_quiet(Some(t + QUIET), t),
            "a clock read out of order"
        );
    }
}

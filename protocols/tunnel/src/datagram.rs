//! The datagram path to one member, sans-IO: where its UDP packets may reach it, when to
//! probe, and whether the path works both ways so packets may take it.
//!
//! Packets between members travel as UDP datagrams when a direct path exists, each one a
//! secure frame (a second session, keyed by its own hybrid handshake over the member's
//! tunnel stream, in windowed receive mode): no ordered, reliable stream under the inner
//! TCP, and one AEAD pass per side instead of two. The stream stays as the fallback: the
//! relayed path, and any time the datagrams stop.
//!
//! How the path opens (the shape of Tailscale's disco on its own socket): both members
//! announce their UDP port and addresses over the stream; each adds the address it sees
//! the other's libp2p connection come from (its NAT's public address, when that connection
//! is direct). Both then send authenticated probes to every candidate at once, so each
//! side's NAT has a mapping out before the other's probe comes in (a cone NAT that keeps
//! ports, as Linux masquerade does, lets them meet). The source of any authenticated
//! datagram becomes the endpoint, so a member that moves or whose NAT re-maps is followed.
//! A probe says whether its sender hears us; packets take the datagram path only while
//! both sides hear each other, and fall back to the stream within [`ALIVE`] when not.
//!
//! Datagram: `[receiver's index, 4 bytes BE][secure frame]`. The index, chosen at random
//! by the receiver, finds the session without trying keys; a frame's payload is either an
//! IP packet (first nibble 4 or 6) or a probe (`[0, flags]`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Bytes of the receiver's index in front of each frame.
pub const INDEX_LEN: usize = 4;
/// A path is alive while datagrams came within this long (both ways, for sending).
pub const ALIVE: Duration = Duration::from_secs(3);
/// Probes go out this often while the path is not up, for [`FAST_PROBING`] after start.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How long probing stays fast; after it, probes go out every [`SLOW_PROBE_EVERY`].
pub const FAST_PROBING: Duration = Duration::from_secs(20);
/// Probe interval once fast probing gave up (a NAT that never lets the probes meet).
pub const SLOW_PROBE_EVERY: Duration = Duration::from_secs(5);
/// Keepalive probes while the path is up: they also keep the NAT mappings open.
pub const KEEPALIVE: Duration = Duration::from_secs(1);
/// Most candidate addresses kept per member.
pub const MAX_CANDIDATES: usize = 8;
/// Most addresses one offer may carry.
pub const MAX_OFFER_ADDRS: usize = 8;

/// A probe's payload is `[PROBE, flags]`: an IP packet never starts with a zero byte.
pub const PROBE: u8 = 0;
/// Flag: the probe's sender heard an authenticated datagram from us within [`ALIVE`].
pub const HEARS_YOU: u8 = 1;

/// A probe payload.
pub fn probe(hears_you: bool) -> [u8; 2] {
    [PROBE, if hears_you { HEARS_YOU } else { 0 }]
}

/// What an opened payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// An IP packet.
    Packet(&'a [u8]),
    /// A probe; whether its sender hears us.
    Probe {
        /// The sender heard us within [`ALIVE`].
        hears_you: bool,
    },
    /// Neither: refused.
    Unknown,
}

/// Tells an opened payload's kind.
pub fn classify(payload: &[u8]) -> Payload<'_> {
    match payload {
        [PROBE, flags] => Payload::Probe {
            hears_you: flags & HEARS_YOU != 0,
        },
        [first, ..] if matches!(first >> 4, 4 | 6) => Payload::Packet(payload),
        _ => Payload::Unknown,
    }
}

/// Splits a datagram into the receiver's index and the frame.
pub fn split(datagram: &mut [u8]) -> Option<(u32, &mut [u8])> {
    let (index, frame) = datagram.split_first_chunk_mut::<INDEX_LEN>()?;
    Some((u32::from_be_bytes(*index), frame))
}

/// One member's datagram path: candidates, the endpoint that answered, who hears whom.
#[derive(Debug, Clone)]
pub struct PathState {
    candidates: Vec<SocketAddr>,
    endpoint: Option<SocketAddr>,
    /// Last authenticated datagram from the member.
    heard: Option<Instant>,
    /// Last probe from the member saying it hears us.
    heard_by: Option<Instant>,
    started: Instant,
    last_probe: Option<Instant>,
}

impl PathState {
    /// A path to try at `candidates` (deduplicated, at most [`MAX_CANDIDATES`] kept).
    pub fn new(candidates: impl IntoIterator<Item = SocketAddr>, now: Instant) -> Self {
        let mut kept: Vec<SocketAddr> = Vec::new();
        for c in candidates {
            if kept.len() == MAX_CANDIDATES {
                break;
            }
            if c.port() != 0 && !c.ip().is_unspecified() && !kept.contains(&c) {
                kept.push(c);
            }
        }
        Self {
            candidates: kept,
            endpoint: None,
            heard: None,
            heard_by: None,
            started: now,
            last_probe: None,
        }
    }

    /// An authenticated datagram came from `from`: it is where the member is now.
    pub fn on_datagram(&mut self, from: SocketAddr, now: Instant) {
        self.endpoint = Some(from);
        self.heard = Some(now);
    }

    /// An authenticated probe came from `from`. Returns whether to answer it at once: the
    /// member does not hear us yet, so a probe back (which now passes its NAT) opens the
    /// path without waiting for our next round.
    pub fn on_probe(&mut self, from: SocketAddr, hears_you: bool, now: Instant) -> bool {
        self.on_datagram(from, now);
        if hears_you {
            self.heard_by = Some(now);
        }
        !hears_you
    }

    /// Whether the member's datagrams reached us within [`ALIVE`].
    pub fn hears(&self, now: Instant) -> bool {
        within(self.heard, now)
    }

    /// Where to send packets: the endpoint, while both sides hear each other.
    pub fn usable(&self, now: Instant) -> Option<SocketAddr> {
        if self.hears(now) && within(self.heard_by, now) {
            self.endpoint
        } else {
            None
        }
    }

    /// The time between probe rounds now: keepalives while the path is up, fast probing
    /// for a while after start (and while the member's datagrams come), slow after.
    fn probe_interval(&self, now: Instant) -> Duration {
        if self.usable(now).is_some() {
            KEEPALIVE
        } else if now.saturating_duration_since(self.started) < FAST_PROBING || self.hears(now) {
            PROBE_EVERY
        } else {
            SLOW_PROBE_EVERY
        }
    }

    /// When the next probe round is due, as things stand at `now` (a round already due
    /// gives a time at or before `now`). The path going down shortens the interval
    /// without an event: waking at this time, the caller finds the shorter one then.
    pub fn next_probe(&self, now: Instant) -> Instant {
        match self.last_probe {
            Some(at) => at + self.probe_interval(now),
            None => now,
        }
    }

    /// The addresses to probe now, if a round is due: the endpoint only while the path is
    /// up (a keepalive), else the endpoint and every candidate.
    pub fn probes_due(&mut self, now: Instant) -> Vec<SocketAddr> {
        let up = self.usable(now).is_some();
        let every = self.probe_interval(now);
        let due = self
            .last_probe
            .is_none_or(|at| now.saturating_duration_since(at) >= every);
        if !due {
            return Vec::new();
        }
        self.last_probe = Some(now);
        let mut to: Vec<SocketAddr> = self.endpoint.into_iter().collect();
        if !up {
            to.extend(
                self.candidates
                    .iter()
                    .filter(|c| Some(**c) != self.endpoint),
            );
        }
        to
    }

    /// Adds `candidate` (an address seen since the start, such as the public one of a
    /// connection that became direct); `false` when it was known or there is no room.
    pub fn add_candidate(&mut self, candidate: SocketAddr, now: Instant) -> bool {
        if self.candidates.len() == MAX_CANDIDATES
            || candidate.port() == 0
            || candidate.ip().is_unspecified()
            || self.candidates.contains(&candidate)
        {
            return false;
        }
        self.candidates.push(candidate);
        // Probe the newcomer at once, and fast again for a while.
        self.last_probe = None;
        self.started = now;
        true
    }

    /// The endpoint that last answered, if any.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    /// The candidates announced and observed.
    pub fn candidates(&self) -> &[SocketAddr] {
        &self.candidates
    }
}

fn within(at: Option<Instant>, now: Instant) -> bool {
    at.is_some_and(|t| now.saturating_duration_since(t) < ALIVE)
}

/// One side's part of the datagram negotiation, sent over the tunnel stream: its half of
/// the datagram session's handshake, the index it wants in front of frames sent to it,
/// and where it listens (`port` 0: it has no datagram socket, the stream carries all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The receiver's index for frames sent to this side.
    pub index: u32,
    /// The UDP port; 0 for none.
    pub port: u16,
    /// Addresses this side has (at most [`MAX_OFFER_ADDRS`]).
    pub addrs: Vec<IpAddr>,
    /// The handshake message (msg1 from the opener, msg2 from the other side).
    pub handshake: Vec<u8>,
}

/// A malformed offer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed datagram offer: {0}")]
pub struct OfferError(&'static str);

const V4: u8 = 4;
const V6: u8 = 6;

impl Offer {
    /// `[index u32][port u16][n u8]{[4|6][address]}*n[handshake]`, all big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let addrs = &self.addrs[..self.addrs.len().min(MAX_OFFER_ADDRS)];
        let mut out = Vec::with_capacity(7 + addrs.len() * 17 + self.handshake.len());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.port.to_be_bytes());
        // At most MAX_OFFER_ADDRS (8): fits a byte.
        out.push(addrs.len() as u8);
        for a in addrs {
            match a {
                IpAddr::V4(v4) => {
                    out.push(V4);
                    out.extend_from_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    out.push(V6);
                    out.extend_from_slice(&v6.octets());
                }
            }
        }
        out.extend_from_slice(&self.handshake);
        out
    }

    /// Reads an offer; refuses more than [`MAX_OFFER_ADDRS`] addresses or a short one.
    pub fn decode(bytes: &[u8]) -> Result<Self, OfferError> {
        let mut r = bytes;
        let index = u32::from_be_bytes(take(&mut r)?);
        let port = u16::from_be_bytes(take(&mut r)?);
        let [n] = take::<1>(&mut r)?;
        if usize::from(n) > MAX_OFFER_ADDRS {
            return Err(OfferError("too many addresses"));
        }
        let mut addrs = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let addr = match take::<1>(&mut r)? {
                [V4] => IpAddr::V4(Ipv4Addr::from(take::<4>(&mut r)?)),
                [V6] => IpAddr::V6(Ipv6Addr::from(take::<16>(&mut r)?)),
                _ => return Err(OfferError("unknown address family")),
            };
            addrs.push(addr);
        }
        Ok(Self {
            index,
            port,
            addrs,
            handshake: r.to_vec(),
        })
    }

    /// The socket addresses the offer names.
    pub fn candidates(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.addrs.iter().map(|ip| SocketAddr::new(*ip, self.port))
    }
}

fn take<const N: usize>(r: &mut &[u8]) -> Result<[u8; N], OfferError> {
    let (head, rest) = r.split_first_chunk::<N>().ok_or(OfferError("too short"))?;
    *r = rest;
    Ok(*head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn offers_round_trip_and_bad_ones_are_refused() {
        let offer = Offer {
            index: 0xdead_beef,
            port: 51820,
            addrs: vec!["198.51.100.7".parse().unwrap(), "fd00::1".parse().unwrap()],
            handshake: vec![9; 100],
        };
        let bytes = offer.encode();
        assert_eq!(Offer::decode(&bytes).unwrap(), offer);
        assert_eq!(
            offer.candidates().collect::<Vec<_>>(),
            vec![addr("198.51.100.7:51820"), addr("[fd00::1]:51820")]
        );
        for cut in 0..7 {
            assert!(Offer::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut many = bytes.clone();
        many[6] = 9;
        assert!(Offer::decode(&many).is_err());
        let mut family = bytes;
        family[7] = 5;
        assert!(Offer::decode(&family).is_err());
    }

    #[test]
    fn payloads_are_probes_or_packets() {
        assert_eq!(classify(&probe(true)), Payload::Probe { hears_you: true });
        assert_eq!(classify(&probe(false)), Payload::Probe { hears_you: false });
        assert_eq!(classify(&[0x45, 0, 0]), Payload::Packet(&[0x45, 0, 0]));
        assert_eq!(classify(&[0x60]), Payload::Packet(&[0x60]));
        assert_eq!(classify(&[]), Payload::Unknown);
        assert_eq!(classify(&[0, 1, 2]), Payload::Unknown);
        assert_eq!(classify(&[0x10]), Payload::Unknown);
    }

    #[test]
    fn datagrams_split_into_index_and_frame() {
        let mut d = [0, 0, 1, 2, 7, 7];
        let (index, frame) = split(&mut d).unwrap();
        assert_eq!((index, &*frame), (258, &[7u8, 7][..]));
        assert!(split(&mut [1, 2, 3]).is_none());
    }

    #[test]
    fn candidates_are_deduplicated_and_bounded() {
        let now = Instant::now();
        let many = (1..20).map(|p| addr(&format!("10.0.0.1:{p}")));
        let dup = [addr("10.0.0.1:1"), addr("0.0.0.0:5"), addr("10.0.0.2:0")];
        let s = PathState::new(dup.into_iter().chain(many), now);
        assert_eq!(s.candidates().len(), MAX_CANDIDATES);
        assert_eq!(s.candidates()[0], addr("10.0.0.1:1"));
        assert!(s.candidates().iter().all(|c| c.port() != 0));
    }

    /// Two sides that both probe find each other: the path is used only once each hears
    /// the other, keepalives replace the probing rounds, and silence falls back.
    #[test]
    fn the_path_opens_when_both_hear_and_closes_on_silence() {
        let t0 = Instant::now();
        let (a_at, b_at) = (addr("198.51.100.1:4000"), addr("198.51.100.2:4000"));
        let mut a = PathState::new([b_at, addr("10.0.0.2:4000")], t0);
        let mut b = PathState::new([a_at], t0);
        assert_eq!(a.probes_due(t0).len(), 2, "every candidate");
        assert!(a.probes_due(t0).is_empty(), "not again at once");
        assert_eq!(a.usable(t0), None);

        // B's probe reaches A (A's own probe opened A's NAT): A answers at once.
        assert!(a.on_probe(b_at, false, t0));
        assert_eq!(a.usable(t0), None, "B does not hear A yet");
        assert!(!b.on_probe(a_at, true, t0), "A hears B: no need to answer");
        assert_eq!(b.usable(t0), Some(a_at), "each hears the other, as B knows");
        // B's next keepalive tells A that B hears it.
        let t1 = t0 + KEEPALIVE;
        assert_eq!(b.probes_due(t1), vec![a_at], "the endpoint only");
        a.on_probe(b_at, b.hears(t1), t1);
        assert_eq!(a.usable(t1), Some(b_at));
        b.on_probe(a_at, a.hears(t1), t1);
        assert_eq!(b.usable(t1), Some(a_at));
        // Up: keepalives to the endpoint only, every KEEPALIVE.
        let t2 = t1 + KEEPALIVE;
        assert_eq!(a.probes_due(t2), vec![b_at]);
        assert!(a.probes_due(t2 + KEEPALIVE / 2).is_empty());
        // Silence: down after ALIVE, back to probing every candidate.
        let t3 = t1 + ALIVE;
        assert_eq!(a.usable(t3), None);
        assert_eq!(a.probes_due(t3).len(), 2);
    }

    #[test]
    fn a_candidate_found_later_is_probed_at_once() {
        let t0 = Instant::now();
        let mut s = PathState::new([addr("10.0.0.2:1")], t0);
        assert_eq!(s.probes_due(t0).len(), 1);
        let late = t0 + FAST_PROBING * 2;
        assert!(s.add_candidate(addr("198.51.100.2:1"), late));
        assert!(!s.add_candidate(addr("198.51.100.2:1"), late), "known");
        assert_eq!(s.probes_due(late).len(), 2, "at once, every candidate");
        assert_eq!(s.probes_due(late + PROBE_EVERY).len(), 2, "fast again");
    }

    #[test]
    fn the_next_probe_time_is_when_probes_due_gives_the_next_round() {
        let t0 = Instant::now();
        let at = addr("198.51.100.9:1");
        let mut s = PathState::new([at], t0);
        assert_eq!(s.next_probe(t0), t0, "never probed: due now");
        assert_eq!(s.probes_due(t0).len(), 1);
        // Probing fast: due again PROBE_EVERY later, not a moment before.
        let next = s.next_probe(t0);
        assert_eq!(next, t0 + PROBE_EVERY);
        assert!(s.probes_due(next - Duration::from_millis(1)).is_empty());
        assert_eq!(s.probes_due(next).len(), 1);
        // Up: keepalives, KEEPALIVE apart.
        s.on_probe(at, true, next);
        assert_eq!(s.next_probe(next), next + KEEPALIVE);
        // The path went down unannounced: at the keepalive's time the shorter interval
        // applies, so the round is due at once.
        let silent = next + ALIVE + KEEPALIVE;
        assert!(s.next_probe(silent) <= silent);
        assert_eq!(s.probes_due(silent).len(), 1);
        // Slow after fast probing gave up: SLOW_PROBE_EVERY apart.
        let late = t0 + FAST_PROBING + ALIVE + KEEPALIVE;
        assert_eq!(s.probes_due(late).len(), 1);
        assert_eq!(s.next_probe(late), late + SLOW_PROBE_EVERY);
        // A new candidate: due at once.
        s.add_candidate(addr("198.51.100.10:1"), late);
        assert_eq!(s.next_probe(late), late);
    }

    #[test]
    fn probing_slows_after_a_while_without_an_answer() {
        let t0 = Instant::now();
        let mut s = PathState::new([addr("198.51.100.9:1")], t0);
        let late = t0 + FAST_PROBING;
        assert_eq!(s.probes_due(late).len(), 1);
        assert!(s.probes_due(late + PROBE_EVERY).is_empty());
        assert_eq!(s.probes_due(late + SLOW_PROBE_EVERY).len(), 1);
    }
}

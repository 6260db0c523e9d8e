//! Per-network rate limits for the relay server: reservations and circuits are counted
//! per IPv4 /24 and per IPv6 /48, not per peer id or per address, because one host can make
//! fresh peer ids for free and usually holds a whole /24 or /48 (a VPS, a home IPv6 prefix).
//!
//! Sans-IO: [`PrefixLimiter::allow`] takes the address and the time, so tests drive it with
//! a made-up clock. It implements libp2p's [`relay::RateLimiter`], which the relay server
//! asks with the remote address of the connection a request arrived on.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, relay};

/// The longest refill interval a limiter uses: a prefix's arrival time then stays within
/// `burst` days of now, far from the end of an [`Instant`].
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// The network a request is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Prefix {
    /// The first three bytes of an IPv4 address (its /24).
    V4([u8; 3]),
    /// The first six bytes of an IPv6 address (its /48).
    V6([u8; 6]),
    /// Every address without an IP (the memory transport in tests and simulations, or a
    /// transport added later). They share one allowance: an address we cannot place must not
    /// be a way around the limit, and a real relay only listens on IP transports.
    NonIp,
}

impl Prefix {
    /// The prefix of an IP address. An IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`, as a
    /// dual-stack socket reports IPv4 peers) counts as the IPv4 address, so all of IPv4 does
    /// not land in one /48.
    pub fn of_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::of_v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::of_v4(v4),
                None => Self::of_v6(v6),
            },
        }
    }

    fn of_v4(ip: Ipv4Addr) -> Self {
        let [a, b, c, _] = ip.octets();
        Self::V4([a, b, c])
    }

    fn of_v6(ip: Ipv6Addr) -> Self {
        let o = ip.octets();
        Self::V6([o[0], o[1], o[2], o[3], o[4], o[5]])
    }

    /// The prefix a request arriving from `addr` counts against, or `None` for a relayed
    /// address (`/p2p-circuit`). libp2p's relay server already refuses reservations and
    /// circuits over relayed connections (circuit v2 forbids chaining relays), so this never
    /// happens there; were it to, the first IP in such an address is the other relay's, which
    /// would charge the wrong network, so the request is refused instead of counted.
    pub fn of_addr(addr: &Multiaddr) -> Option<Self> {
        if addr.iter().any(|p| p == Protocol::P2pCircuit) {
            return None;
        }
        let ip = addr.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
            Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
            _ => None,
        });
        Some(ip.map_or(Self::NonIp, Self::of_ip))
    }
}

/// A rate limit per [`Prefix`]: each prefix may make `burst` requests at once and gains one
/// more every `interval` (a token bucket, kept as the generic cell rate algorithm: one
/// timestamp per prefix). At most `capacity` prefixes are tracked.
///
/// A prefix that has its full allowance again needs no entry and is forgotten. When the
/// table is full, the prefix closest to its full allowance is forgotten (it owes the least).
/// An attacker who controls more prefixes than `capacity` can so win back some requests,
/// but each of his prefixes already has its own allowance, which is the bound that matters;
/// refusing unknown prefixes instead would let him lock everyone else out.
#[derive(Debug)]
pub struct PrefixLimiter {
    interval: Duration,
    /// How far ahead of now a prefix's arrival time may be and still be served:
    /// `(burst - 1) * interval`.
    tolerance: Duration,
    capacity: usize,
    /// Theoretical arrival time per prefix: when it has its full allowance back, `burst`
    /// intervals after it had it last. Only prefixes with a time in the future are kept.
    due: HashMap<Prefix, Instant>,
    /// The same entries ordered by time: the front is the next to expire and the first
    /// to evict.
    order: BTreeSet<(Instant, Prefix)>,
}

impl PrefixLimiter {
    /// `burst` requests at once per prefix, one more every `interval` (at least 1 ms, at
    /// most a day), for at most `capacity` prefixes.
    pub fn new(burst: NonZeroU32, interval: Duration, capacity: NonZeroUsize) -> Self {
        let interval = interval.clamp(Duration::from_millis(1), MAX_INTERVAL);
        Self {
            interval,
            tolerance: interval.saturating_mul(burst.get() - 1),
            capacity: capacity.get(),
            due: HashMap::new(),
            order: BTreeSet::new(),
        }
    }

    /// Whether a request from `addr` at `now` is within its prefix's allowance; if so it is
    /// counted.
    pub fn allow(&mut self, addr: &Multiaddr, now: Instant) -> bool {
        match Prefix::of_addr(addr) {
            Some(prefix) => self.allow_prefix(prefix, now),
            None => {
                tracing::debug!(%addr, "relay request over a relayed connection refused");
                false
            }
        }
    }

    /// Whether a request from `prefix` at `now` is within its allowance; if so it is counted.
    pub fn allow_prefix(&mut self, prefix: Prefix, now: Instant) -> bool {
        self.expire(now);
        let tat = self.due.get(&prefix).copied().unwrap_or(now).max(now);
        if tat.duration_since(now) > self.tolerance {
            tracing::debug!(?prefix, "relay request over the prefix's rate limit");
            return false;
        }
        // `tat` is at most `burst` days ahead (see MAX_INTERVAL); refuse rather than panic.
        let Some(next) = tat.checked_add(self.interval) else {
            return false;
        };
        match self.due.insert(prefix, next) {
            Some(old) => {
                self.order.remove(&(old, prefix));
            }
            None if self.due.len() > self.capacity => self.evict_one(),
            None => {}
        }
        self.order.insert((next, prefix));
        true
    }

    /// How many prefixes are tracked now.
    pub fn tracked(&self) -> usize {
        self.due.len()
    }

    /// Forgets prefixes that have their full allowance back.
    fn expire(&mut self, now: Instant) {
        while let Some(&(tat, prefix)) = self.order.first() {
            if tat > now {
                break;
            }
            self.order.pop_first();
            self.due.remove(&prefix);
        }
    }

    /// Forgets the prefix closest to its full allowance (the one just added is not in
    /// `order` yet, so it is never the one).
    fn evict_one(&mut self) {
        if let Some((_, prefix)) = self.order.pop_first() {
            self.due.remove(&prefix);
        }
    }
}

impl relay::RateLimiter for PrefixLimiter {
    fn try_next(&mut self, _peer: PeerId, addr: &Multiaddr, now: Instant) -> bool {
        self.allow(addr, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn limiter(burst: u32, interval: Duration, capacity: usize) -> PrefixLimiter {
        PrefixLimiter::new(
            NonZeroU32::new(burst).unwrap(),
            interval,
            NonZeroUsize::new(capacity).unwrap(),
        )
    }

    fn tcp(ip: &str) -> Multiaddr {
        let ip: IpAddr = ip.parse().unwrap();
        let proto = match ip {
            IpAddr::V4(v4) => Protocol::Ip4(v4),
            IpAddr::V6(v6) => Protocol::Ip6(v6),
        };
        Multiaddr::empty().with(proto).with(Protocol::Tcp(4001))
    }

    /// Spends `n` requests from `ip` at `now`, returning how many were allowed.
    fn spend(l: &mut PrefixLimiter, ip: &str, n: usize, now: Instant) -> usize {
        (0..n).filter(|_| l.allow(&tcp(ip), now)).count()
    }

    #[test]
    fn ipv4_is_grouped_by_24() {
        let now = Instant::now();
        let mut l = limiter(3, 60 * SEC, 16);
        assert_eq!(spend(&mut l, "192.0.2.1", 2, now), 2);
        assert_eq!(spend(&mut l, "192.0.2.254", 5, now), 1);
        assert!(!l.allow(&tcp("192.0.2.77"), now));
        // The neighbouring /24 has its own allowance.
        assert_eq!(spend(&mut l, "192.0.3.1", 5, now), 3);
        // So does IPv4 mapped into IPv6, counted as the IPv4 address it is.
        assert!(!l.allow(&tcp("::ffff:192.0.2.9"), now));
        assert!(l.allow(&tcp("::ffff:198.51.100.9"), now));
    }

    #[test]
    fn ipv6_is_grouped_by_48() {
        let now = Instant::now();
        let mut l = limiter(2, 60 * SEC, 16);
        assert!(l.allow(&tcp("2001:db8:1::1"), now));
        assert!(l.allow(&tcp("2001:db8:1:ffff:ffff::2"), now));
        assert!(!l.allow(&tcp("2001:db8:1:1234::3"), now));
        assert_eq!(spend(&mut l, "2001:db8:2::1", 5, now), 2);
    }

    #[test]
    fn the_allowance_refills_one_per_interval() {
        let t0 = Instant::now();
        let mut l = limiter(4, 10 * SEC, 16);
        assert_eq!(spend(&mut l, "203.0.113.5", 10, t0), 4);
        assert!(!l.allow(&tcp("203.0.113.5"), t0 + 9 * SEC));
        assert!(l.allow(&tcp("203.0.113.5"), t0 + 10 * SEC));
        assert!(!l.allow(&tcp("203.0.113.5"), t0 + 10 * SEC));
        assert_eq!(spend(&mut l, "203.0.113.5", 10, t0 + 30 * SEC), 2);
        // After a whole burst of intervals the prefix is forgotten: it owes nothing.
        assert_eq!(l.tracked(), 1);
        assert_eq!(spend(&mut l, "198.51.100.1", 1, t0 + 100 * SEC), 1);
        assert_eq!(l.tracked(), 1, "the refilled prefix was not forgotten");
        assert_eq!(spend(&mut l, "203.0.113.5", 10, t0 + 100 * SEC), 4);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_least_indebted() {
        let t0 = Instant::now();
        let mut l = limiter(2, 60 * SEC, 8);
        // One prefix spends its whole allowance...
        assert_eq!(spend(&mut l, "192.0.2.1", 2, t0), 2);
        // ...then a flood of others, each spending one request, later.
        for i in 0..10_000u32 {
            let ip = Ipv4Addr::from(0x0a00_0000 + (i << 8));
            let now = t0 + Duration::from_millis(u64::from(i));
            assert!(l.allow(&tcp(&ip.to_string()), now));
            assert!(l.tracked() <= 8);
        }
        // The spent prefix owed the most and is still refused.
        assert!(!l.allow(&tcp("192.0.2.1"), t0 + 11 * SEC));
    }

    #[test]
    fn relayed_and_non_ip_sources_do_not_escape() {
        let now = Instant::now();
        let mut l = limiter(2, 60 * SEC, 16);
        let relayed = tcp("198.51.100.1")
            .with(Protocol::P2p(PeerId::random()))
            .with(Protocol::P2pCircuit);
        assert!(!l.allow(&relayed, now));
        // Every memory address is a fresh port; they share one allowance.
        let memory = |n: u64| Multiaddr::empty().with(Protocol::Memory(n));
        assert!(l.allow(&memory(1), now));
        assert!(l.allow(&memory(2), now));
        assert!(!l.allow(&memory(3), now));
        assert!(l.allow(&tcp("192.0.2.1"), now));
    }
}

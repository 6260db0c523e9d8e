//! Reading multiaddresses: peer id, path, transport, and which addresses are dialable
//! or only local.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::api::Path;

/// The peer id an address ends in, if any.
pub(crate) fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().last().and_then(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

/// `addr` without a trailing `/p2p/<id>`.
pub(super) fn strip_p2p(addr: &Multiaddr) -> Multiaddr {
    let mut addr = addr.clone();
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

/// Whether the address goes through a relay.
pub fn path_of(addr: &Multiaddr) -> Path {
    if addr.iter().any(|p| p == Protocol::P2pCircuit) {
        Path::Relayed
    } else {
        Path::Direct
    }
}

/// The transport an address uses, as the API names it.
/// The one transport of `addrs` (`tcp`, `quic`, ...), `mixed` when they differ, `unknown`
/// when there are none: a hole punch's metrics label.
pub fn transport_of_all(addrs: &[Multiaddr]) -> &'static str {
    let mut names = addrs.iter().map(transport_of);
    match names.next() {
        None => "unknown",
        Some(first) if names.all(|n| n == first) => first,
        Some(_) => "mixed",
    }
}

/// The transport of an address: `tcp`, `quic`, `memory`, `relay` or `other`.
pub fn transport_of(addr: &Multiaddr) -> &'static str {
    let mut name = "other";
    for p in addr.iter() {
        match p {
            Protocol::P2pCircuit => return "relay",
            Protocol::Tcp(_) => name = "tcp",
            Protocol::QuicV1 => name = "quic",
            Protocol::Memory(_) => name = "memory",
            _ => {}
        }
    }
    name
}

/// Whether an address is on the loopback interface.
pub(super) fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// Whether an address is on a private network (RFC 1918, shared CGNAT space, link-local,
/// IPv6 unique-local): reachable only from inside that network.
pub(super) fn is_private(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => {
            let [a, b, ..] = ip.octets();
            ip.is_private() || ip.is_link_local() || (a == 100 && (b & 0xc0) == 64)
        }
        Protocol::Ip6(ip) => {
            let first = ip.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
        _ => false,
    })
}

/// The relay an address goes through (`.../p2p/<relay>/p2p-circuit...`), if any.
pub(super) fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut previous = None;
    for p in addr.iter() {
        if p == Protocol::P2pCircuit {
            return match previous {
                Some(Protocol::P2p(relay)) => Some(relay),
                _ => None,
            };
        }
        previous = Some(p);
    }
    None
}

/// How far an address reaches, from the narrowest to the widest. Hole punching dials only
/// addresses no narrower than the network we reached the relay over: a relay on the
/// Internet has no business sending us into our own LAN or to our own loopback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Scope {
    /// The in-process memory transport (tests and the simulator).
    Memory,
    /// This host's loopback interface.
    Loopback,
    /// A private network (see [`is_private`]).
    Private,
    /// The Internet.
    Global,
}

impl Scope {
    /// Whether an address of this scope may be dialled on the word of a relay reached
    /// over `reach`.
    pub(crate) fn allowed_from(self, reach: Scope) -> bool {
        match (self, reach) {
            (Scope::Memory, reach) => reach == Scope::Memory,
            (scope, Scope::Memory) => scope == Scope::Global,
            (scope, reach) => scope >= reach,
        }
    }
}

/// The scope of a dialable IP or memory address; `None` for anything a hole punch must not
/// dial: names (a DNS name resolves to whatever its owner likes, loopback included),
/// unspecified, multicast or broadcast addresses, relay circuits.
pub(crate) fn scope_of(addr: &Multiaddr) -> Option<Scope> {
    if path_of(addr) == Path::Relayed {
        return None;
    }
    match addr.iter().next()? {
        Protocol::Memory(_) => Some(Scope::Memory),
        Protocol::Ip4(ip) if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() => None,
        Protocol::Ip6(ip) if ip.is_unspecified() || ip.is_multicast() => None,
        Protocol::Ip4(_) | Protocol::Ip6(_) if is_loopback(addr) => Some(Scope::Loopback),
        Protocol::Ip4(_) | Protocol::Ip6(_) if is_private(addr) => Some(Scope::Private),
        Protocol::Ip4(_) | Protocol::Ip6(_) => Some(Scope::Global),
        _ => None,
    }
}

/// The addresses a hole punch may dial, out of those a relay or a peer named: at most
/// `max`, each allowed from `reach`, the scope we reached the relay over.
pub(crate) fn punch_addrs(addrs: Vec<Multiaddr>, reach: Scope, max: usize) -> Vec<Multiaddr> {
    let mut out: Vec<Multiaddr> = Vec::new();
    for addr in addrs {
        let allowed = scope_of(&addr).is_some_and(|s| s.allowed_from(reach));
        if allowed && !out.contains(&addr) {
            out.push(addr);
            if out.len() == max {
                break;
            }
        }
    }
    out
}

/// Whether an address can be dialled: not `0.0.0.0`/`::` (which listeners report).
pub(super) fn is_concrete(addr: &Multiaddr) -> bool {
    !addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_circuit_addresses_are_told_apart() {
        let private = |a: &str| is_private(&a.parse().unwrap());
        assert!(private("/ip4/10.1.0.2/tcp/4001"));
        assert!(private("/ip4/192.168.1.5/udp/1/quic-v1"));
        assert!(private("/ip4/100.64.3.4/tcp/1"));
        assert!(private("/ip6/fd00::1/tcp/1"));
        assert!(private("/ip6/fe80::1/tcp/1"));
        assert!(!private("/ip4/198.51.100.2/tcp/4001"));
        assert!(!private("/ip4/100.128.0.1/tcp/1"));
        assert!(!private("/ip6/2001:db8::1/tcp/1"));
        assert!(!private("/memory/5"));

        let relay = PeerId::random();
        let circuit: Multiaddr = format!("/ip4/198.51.100.2/tcp/4001/p2p/{relay}/p2p-circuit")
            .parse()
            .unwrap();
        assert_eq!(relay_of(&circuit), Some(relay));

        let direct: Multiaddr = format!("/ip4/198.51.100.2/tcp/4001/p2p/{relay}")
            .parse()
            .unwrap();
        assert_eq!(relay_of(&direct), None);
    }

    #[test]
    fn punch_addresses_reach_no_further_in_than_the_relay() {
        let list: Vec<Multiaddr> = [
            "/ip4/127.0.0.1/tcp/1",
            "/dns4/example.com/tcp/1",
            "/ip4/192.168.1.2/tcp/1",
            "/ip4/0.0.0.0/tcp/1",
            "/ip4/224.0.0.1/udp/1/quic-v1",
            "/ip4/198.51.100.2/tcp/1",
            "/ip4/198.51.100.2/tcp/1",
            "/memory/7",
            "/ip6/::1/tcp/1",
            "/ip6/2001:db8::2/udp/1/quic-v1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let show = |reach| -> Vec<String> {
            punch_addrs(list.clone(), reach, 16)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        let global = ["/ip4/198.51.100.2/tcp/1", "/ip6/2001:db8::2/udp/1/quic-v1"];
        assert_eq!(show(Scope::Global), global);
        assert_eq!(
            show(Scope::Private),
            ["/ip4/192.168.1.2/tcp/1", global[0], global[1]]
        );
        assert_eq!(show(Scope::Loopback).len(), 5);
        assert_eq!(
            show(Scope::Memory),
            ["/ip4/198.51.100.2/tcp/1", "/memory/7", global[1]]
        );
        assert_eq!(punch_addrs(list.clone(), Scope::Loopback, 2).len(), 2);
        let relay = PeerId::random();
        let circuit: Multiaddr = format!("/ip4/198.51.100.2/tcp/1/p2p/{relay}/p2p-circuit")
            .parse()
            .unwrap();
        assert_eq!(relay_of(&circuit), Some(relay));
        assert_eq!(scope_of(&circuit), None);
        assert_eq!(relay_of(&list[5]), None);
    }

    #[test]
    fn paths_and_transports_are_read_from_addresses() {
        let tcp: Multiaddr = "/ip4/1.2.3.4/tcp/1".parse().unwrap();
        let quic: Multiaddr = "/ip4/1.2.3.4/udp/1/quic-v1".parse().unwrap();
        let relayed: Multiaddr = format!("/ip4/1.2.3.4/tcp/1/p2p/{}/p2p-circuit", PeerId::random())
            .parse()
            .unwrap();
        assert_eq!((path_of(&tcp), transport_of(&tcp)), (Path::Direct, "tcp"));
        assert_eq!(
            (path_of(&quic), transport_of(&quic)),
            (Path::Direct, "quic")
        );
        assert_eq!(
            (path_of(&relayed), transport_of(&relayed)),
            (Path::Relayed, "relay")
        );
    }

    #[test]
    fn p2p_suffix_is_stripped_and_read() {
        let peer = PeerId::random();
        let addr: Multiaddr = format!("/ip4/1.2.3.4/tcp/1/p2p/{peer}").parse().unwrap();
        assert_eq!(peer_of(&addr), Some(peer));
        assert_eq!(strip_p2p(&addr).to_string(), "/ip4/1.2.3.4/tcp/1");
        assert!(!is_concrete(&"/ip4/0.0.0.0/tcp/1".parse().unwrap()));
    }
}

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

/// Whether `addr` is a relay circuit through `relay` (`.../p2p/<relay>/p2p-circuit`).
pub(super) fn is_circuit_via(addr: &Multiaddr, relay: &PeerId) -> bool {
    let mut previous = None;
    for p in addr.iter() {
        if p == Protocol::P2pCircuit {
            return previous == Some(Protocol::P2p(*relay));
        }
        previous = Some(p);
    }
    false
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
        assert!(is_circuit_via(&circuit, &relay));
        assert!(!is_circuit_via(&circuit, &PeerId::random()));
        let direct: Multiaddr = format!("/ip4/198.51.100.2/tcp/4001/p2p/{relay}")
            .parse()
            .unwrap();
        assert!(!is_circuit_via(&direct, &relay));
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

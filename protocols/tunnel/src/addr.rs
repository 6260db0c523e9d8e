//! Tunnel addresses: each network has an IPv4 /16 inside 100.64.0.0/10 (the shared address
//! space of RFC 6598, which no LAN or ISP customer network uses) and an IPv6 ULA /48
//! (RFC 4193), both derived from the network id; a member's addresses inside them are
//! derived from its member id. Derivation is only the first choice: the lease tie-break
//! ([`crate::lease`]) settles the rare IPv4 collision.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A network's id: the hash of its genesis operation (32 bytes).
pub type NetworkId = [u8; 32];

/// A member's id: its peer id's bytes. Ordered bytewise, which is what the tie-break uses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId(pub Vec<u8>);

impl MemberId {
    /// The id as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The domain separators of the derivations: a change of scheme changes them.
const V4_PREFIX_CONTEXT: &str = "p2pnode tunnel 2026-12 ipv4 prefix";
const V4_HOST_CONTEXT: &str = "p2pnode tunnel 2026-12 ipv4 host";
const V6_PREFIX_CONTEXT: &str = "p2pnode tunnel 2026-12 ipv6 prefix";
const V6_HOST_CONTEXT: &str = "p2pnode tunnel 2026-12 ipv6 host";

/// How many /16s 100.64.0.0/10 holds.
const V4_PREFIXES: u8 = 64;

/// A network's address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefixes {
    /// The IPv4 /16: `100.64.0.0/16` to `100.127.0.0/16`.
    pub v4: Ipv4Addr,
    /// The IPv6 /48: `fdXX:XXXX:XXXX::/48`.
    pub v6: Ipv6Addr,
}

/// The IPv4 prefix length of a network.
pub const V4_PREFIX_LEN: u8 = 16;
/// The IPv6 prefix length of a network.
pub const V6_PREFIX_LEN: u8 = 48;

fn derive(context: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(context);
    for part in parts {
        // Length-prefixed, so that no two different lists of parts hash alike.
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    *hasher.finalize().as_bytes()
}

impl Prefixes {
    /// The address space of network `net`.
    pub fn of(net: &NetworkId) -> Self {
        let h = derive(V4_PREFIX_CONTEXT, &[net]);
        let v4 = Ipv4Addr::new(100, 64 + h[0] % V4_PREFIXES, 0, 0);
        let h = derive(V6_PREFIX_CONTEXT, &[net]);
        // fd + 40 random bits (RFC 4193 section 3.2), subnet 0.
        let v6 = Ipv6Addr::from([
            0xfd, h[0], h[1], h[2], h[3], h[4], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ]);
        Self { v4, v6 }
    }

    /// Whether `ip` is in the IPv4 /16.
    pub fn contains_v4(&self, ip: Ipv4Addr) -> bool {
        ip.octets()[..2] == self.v4.octets()[..2]
    }

    /// Whether `ip` is in the IPv6 /48.
    pub fn contains_v6(&self, ip: Ipv6Addr) -> bool {
        ip.octets()[..6] == self.v6.octets()[..6]
    }

    /// The IPv4 address with host part `host` (the low 16 bits).
    pub fn v4_host(&self, host: u16) -> Ipv4Addr {
        let [a, b, _, _] = self.v4.octets();
        let [c, d] = host.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    }

    /// The host part of an address in the /16.
    pub fn v4_host_of(ip: Ipv4Addr) -> u16 {
        let [_, _, c, d] = ip.octets();
        u16::from_be_bytes([c, d])
    }

    /// A member's first-choice addresses in this network.
    pub fn derive(&self, net: &NetworkId, member: &MemberId) -> (Ipv4Addr, Ipv6Addr) {
        let h = derive(V4_HOST_CONTEXT, &[net, member.as_bytes()]);
        let host = usable_v4_host(u16::from_be_bytes([h[0], h[1]]));
        let h = derive(V6_HOST_CONTEXT, &[net, member.as_bytes()]);
        let mut v6 = self.v6.octets();
        // Subnet 0 (bytes 6..8), interface id from the hash.
        v6[8..].copy_from_slice(&h[..8]);
        (self.v4_host(host), Ipv6Addr::from(v6))
    }
}

/// Whether a host part may be a member's: not the network's own address (`.0.0`) or its
/// broadcast (`.255.255`).
pub fn is_usable_v4_host(host: u16) -> bool {
    host != 0 && host != u16::MAX
}

/// `host`, or the next usable one after it.
pub fn usable_v4_host(host: u16) -> u16 {
    if is_usable_v4_host(host) { host } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_in_the_shared_space_and_a_ula() {
        for i in 0..=255u8 {
            let p = Prefixes::of(&[i; 32]);
            let [a, b, c, d] = p.v4.octets();
            assert_eq!((a, c, d), (100, 0, 0));
            assert!((64..128).contains(&b), "{}", p.v4);
            assert_eq!(p.v6.octets()[0], 0xfd);
            assert_eq!(&p.v6.octets()[6..], &[0; 10]);
        }
    }

    #[test]
    fn derivation_is_stable_inside_the_prefixes_and_differs_by_network() {
        let (n1, n2) = ([1; 32], [2; 32]);
        let m = MemberId(b"member".to_vec());
        let p = Prefixes::of(&n1);
        let (v4, v6) = p.derive(&n1, &m);
        assert_eq!((v4, v6), p.derive(&n1, &m));
        assert!(p.contains_v4(v4) && p.contains_v6(v6));
        assert!(is_usable_v4_host(Prefixes::v4_host_of(v4)));
        let p2 = Prefixes::of(&n2);
        assert_ne!(p2.derive(&n2, &m).1, v6);
    }

    #[test]
    fn the_network_and_broadcast_hosts_are_never_used() {
        assert_eq!(usable_v4_host(0), 1);
        assert_eq!(usable_v4_host(u16::MAX), 1);
        assert_eq!(usable_v4_host(7), 7);
    }
}

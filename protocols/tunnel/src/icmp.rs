//! ICMP "packet too big" replies: IPv4 "destination unreachable, fragmentation needed"
//! (RFC 792, RFC 1191) and ICMPv6 "packet too big" (RFC 4443), which tell the sender's
//! stack the tunnel's MTU so it sends smaller packets (path MTU discovery).

use std::net::IpAddr;

use crate::packet::IpHeader;

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
/// IPv6's minimum MTU: an ICMPv6 error never makes a packet larger (RFC 4443 2.4 c).
const IPV6_MIN_MTU: usize = 1280;

/// The Internet checksum (RFC 1071) of `data`, starting from the partial sum `initial`.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = match chunk {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether the packet is itself an ICMP error, which must never be answered with another
/// (RFC 1122 3.2.2, RFC 4443 2.4 e): ICMP types 3, 4, 5, 11, 12; ICMPv6 types below 128.
fn is_icmp_error(packet: &[u8], header: &IpHeader) -> bool {
    let Some(kind) = packet.get(header.header_len) else {
        return false;
    };
    match header.protocol {
        PROTO_ICMP => matches!(kind, 3 | 4 | 5 | 11 | 12),
        PROTO_ICMPV6 => *kind < 128,
        _ => false,
    }
}

/// The reply to a packet larger than `mtu`, from our tunnel address `from` back to its
/// source; `None` when none may be sent (the packet is an ICMP error itself, or the
/// families differ).
pub fn too_big(packet: &[u8], header: &IpHeader, mtu: u16, from: IpAddr) -> Option<Vec<u8>> {
    if is_icmp_error(packet, header) {
        return None;
    }
    match (from, header.src) {
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            // The original header and the first 8 bytes of its payload.
            let quoted = &packet[..(header.header_len + 8).min(packet.len())];
            let total = 20 + 8 + quoted.len();
            let mut p = Vec::with_capacity(total);
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&u16::try_from(total).ok()?.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0, 64, PROTO_ICMP, 0, 0]);
            p.extend_from_slice(&from.octets());
            p.extend_from_slice(&to.octets());
            let sum = checksum(&p, 0);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
            // Type 3 (unreachable), code 4 (fragmentation needed), next-hop MTU.
            let icmp_start = p.len();
            p.extend_from_slice(&[3, 4, 0, 0, 0, 0]);
            p.extend_from_slice(&mtu.to_be_bytes());
            p.extend_from_slice(quoted);
            let sum = checksum(&p[icmp_start..], 0);
            p[icmp_start + 2..icmp_start + 4].copy_from_slice(&sum.to_be_bytes());
            Some(p)
        }
        (IpAddr::V6(from), IpAddr::V6(to)) => {
            let quoted = &packet[..packet.len().min(IPV6_MIN_MTU - 40 - 8)];
            let icmp_len = 8 + quoted.len();
            let mut p = Vec::with_capacity(40 + icmp_len);
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&u16::try_from(icmp_len).ok()?.to_be_bytes());
            p.extend_from_slice(&[PROTO_ICMPV6, 64]);
            p.extend_from_slice(&from.octets());
            p.extend_from_slice(&to.octets());
            // Type 2 (packet too big), code 0, the MTU as 32 bits.
            p.extend_from_slice(&[2, 0, 0, 0]);
            p.extend_from_slice(&u32::from(mtu).to_be_bytes());
            p.extend_from_slice(quoted);
            // The checksum covers a pseudo-header: source, destination, length, next header.
            let mut pseudo = Vec::with_capacity(40);
            pseudo.extend_from_slice(&from.octets());
            pseudo.extend_from_slice(&to.octets());
            pseudo.extend_from_slice(&u32::try_from(icmp_len).ok()?.to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, PROTO_ICMPV6]);
            let partial = u32::from(!checksum(&pseudo, 0));
            let sum = checksum(&p[40..], partial);
            p[42..44].copy_from_slice(&sum.to_be_bytes());
            Some(p)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{build_packet, parse};

    #[test]
    fn ipv4_fragmentation_needed_carries_the_mtu_and_valid_checksums() {
        let src: IpAddr = "100.70.1.2".parse().unwrap();
        let dst: IpAddr = "100.70.3.4".parse().unwrap();
        let big = build_packet(src, dst, &[7; 1400]);
        let h = parse(&big).unwrap();
        let reply = too_big(&big, &h, 1280, dst).unwrap();
        let rh = parse(&reply).unwrap();
        assert_eq!((rh.src, rh.dst, rh.protocol), (dst, src, PROTO_ICMP));
        assert_eq!(checksum(&reply[..20], 0), 0, "IP header checksum");
        assert_eq!(checksum(&reply[20..], 0), 0, "ICMP checksum");
        assert_eq!(&reply[20..22], &[3, 4]);
        assert_eq!(u16::from_be_bytes([reply[26], reply[27]]), 1280);
        assert_eq!(&reply[28..48], &big[..20], "the original header is quoted");
        assert_eq!(reply.len(), 20 + 8 + 28);
    }

    #[test]
    fn ipv6_packet_too_big_is_at_most_1280_bytes_with_a_valid_checksum() {
        let src: IpAddr = "fd12:3456:789a::1".parse().unwrap();
        let dst: IpAddr = "fd12:3456:789a::2".parse().unwrap();
        let big = build_packet(src, dst, &[9; 3000]);
        let h = parse(&big).unwrap();
        let reply = too_big(&big, &h, 1280, dst).unwrap();
        assert_eq!(reply.len(), IPV6_MIN_MTU);
        let rh = parse(&reply).unwrap();
        assert_eq!((rh.src, rh.dst, rh.protocol), (dst, src, PROTO_ICMPV6));
        assert_eq!(reply[40], 2);
        assert_eq!(u32::from_be_bytes(reply[44..48].try_into().unwrap()), 1280);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&reply[8..40]);
        pseudo.extend_from_slice(&u32::try_from(reply.len() - 40).unwrap().to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, PROTO_ICMPV6]);
        let partial = u32::from(!checksum(&pseudo, 0));
        assert_eq!(checksum(&reply[40..], partial), 0);
    }

    #[test]
    fn an_icmp_error_is_never_answered() {
        let src: IpAddr = "100.70.1.2".parse().unwrap();
        let dst: IpAddr = "100.70.3.4".parse().unwrap();
        let mut p = build_packet(src, dst, &[3, 4, 0, 0, 0, 0, 5, 0]);
        p[9] = PROTO_ICMP;
        let h = parse(&p).unwrap();
        assert_eq!(too_big(&p, &h, 1280, dst), None);
    }
}

//! The checks every packet passes, both ways, and the counts of what they drop.
//!
//! Inbound (from a member, on its way to our TUN device): the sender is a member and not
//! revoked, the packet parses, its source is the sender's own lease (anti-spoofing, as
//! boringtun's `allowed_ips`), and its destination is ours. Outbound (read from the TUN):
//! it parses, fits the MTU (else an ICMP "too big" goes back to the sender), and its
//! destination is held by a member, who is where it goes.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::addr::MemberId;
use crate::icmp;
use crate::lease::{AddressTable, Lease};

/// The parts of an IP header the checks read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeader {
    /// The source address.
    pub src: IpAddr,
    /// The destination address.
    pub dst: IpAddr,
    /// The header's length in bytes (IPv4's IHL; 40 for IPv6).
    pub header_len: usize,
    /// The packet's length as its header gives it.
    pub total_len: usize,
    /// The upper-layer protocol (IPv4 protocol, IPv6 next header).
    pub protocol: u8,
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Not an IPv4 or IPv6 packet, or its lengths do not add up.
    Malformed,
    /// From a peer that is not a member of the network.
    NotMember,
    /// From a member that was revoked.
    Revoked,
    /// Its source address is not the sender's lease.
    SpoofedSource,
    /// Not addressed to us.
    NotForUs,
    /// To an address no member holds.
    NoRoute,
    /// Larger than the tunnel's MTU.
    TooBig,
}

impl DropReason {
    /// Every reason, in a fixed order.
    pub const ALL: [DropReason; 7] = [
        Self::Malformed,
        Self::NotMember,
        Self::Revoked,
        Self::SpoofedSource,
        Self::NotForUs,
        Self::NoRoute,
        Self::TooBig,
    ];

    /// A short name (status output, metrics labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::NotMember => "not_member",
            Self::Revoked => "revoked",
            Self::SpoofedSource => "spoofed_source",
            Self::NotForUs => "not_for_us",
            Self::NoRoute => "no_route",
            Self::TooBig => "too_big",
        }
    }
}

/// Dropped packets by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drops([u64; DropReason::ALL.len()]);

impl Drops {
    /// Counts one drop.
    pub fn record(&mut self, reason: DropReason) {
        let slot = &mut self.0[reason as usize];
        *slot = slot.saturating_add(1);
    }

    /// How many were dropped for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    /// Every reason with its count.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// Reads the header of an IPv4 or IPv6 packet.
pub fn parse(packet: &[u8]) -> Result<IpHeader, DropReason> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => {
            if packet.len() < 20 {
                return Err(DropReason::Malformed);
            }
            let header_len = usize::from(packet[0] & 0x0f) * 4;
            let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            if header_len < 20 || total_len < header_len || total_len > packet.len() {
                return Err(DropReason::Malformed);
            }
            let src: [u8; 4] = packet[12..16]
                .try_into()
                .map_err(|_| DropReason::Malformed)?;
            let dst: [u8; 4] = packet[16..20]
                .try_into()
                .map_err(|_| DropReason::Malformed)?;
            Ok(IpHeader {
                src: IpAddr::from(src),
                dst: IpAddr::from(dst),
                header_len,
                total_len,
                protocol: packet[9],
            })
        }
        Some(6) => {
            if packet.len() < 40 {
                return Err(DropReason::Malformed);
            }
            let total_len = 40 + usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            if total_len > packet.len() {
                return Err(DropReason::Malformed);
            }
            let src: [u8; 16] = packet[8..24]
                .try_into()
                .map_err(|_| DropReason::Malformed)?;
            let dst: [u8; 16] = packet[24..40]
                .try_into()
                .map_err(|_| DropReason::Malformed)?;
            Ok(IpHeader {
                src: IpAddr::from(src),
                dst: IpAddr::from(dst),
                header_len: 40,
                total_len,
                protocol: packet[6],
            })
        }
        _ => Err(DropReason::Malformed),
    }
}

fn holds(lease: &Lease, ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => lease.v4 == v4,
        IpAddr::V6(v6) => lease.v6 == v6,
    }
}

/// Checks a packet `sender` sent us before it reaches our TUN device; `ours` is our own
/// lease in `table` (kept beside it by the engine: no lookup per packet).
pub fn check_inbound(
    table: &AddressTable,
    revoked: &BTreeSet<MemberId>,
    ours: Option<Lease>,
    sender: &MemberId,
    packet: &[u8],
) -> Result<IpHeader, DropReason> {
    let theirs = if revoked.contains(sender) {
        Err(DropReason::Revoked)
    } else {
        table.lease(sender).ok_or(DropReason::NotMember)
    };
    check_from(theirs, ours, packet)
}

/// [`check_inbound`] once the sender is known: `theirs` is its lease, or why it has none
/// that counts (revoked, not a member). The engine calls it with what it keeps per member,
/// so a packet costs no search by member id.
pub fn check_from(
    theirs: Result<Lease, DropReason>,
    ours: Option<Lease>,
    packet: &[u8],
) -> Result<IpHeader, DropReason> {
    let theirs = theirs?;
    let header = parse(packet)?;
    if !holds(&theirs, header.src) {
        return Err(DropReason::SpoofedSource);
    }
    let ours = ours.ok_or(DropReason::NotForUs)?;
    if !holds(&ours, header.dst) {
        return Err(DropReason::NotForUs);
    }
    Ok(header)
}

/// What to do with a packet read from our TUN device; `M` names the member it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound<M> {
    /// Send it to this member (borrowed from the table, or the engine's index of it:
    /// nothing is copied per packet).
    Send(M),
    /// Too big: drop it and write this ICMP error back into the TUN device, to the sender.
    TooBig(Vec<u8>),
    /// Drop it.
    Drop(DropReason),
}

/// Routes a packet read from our TUN device, whose MTU is `mtu`; `ours` is our own lease
/// in `table`, as for [`check_inbound`].
pub fn route_outbound<'t>(
    table: &'t AddressTable,
    ours: Option<Lease>,
    packet: &[u8],
    mtu: u16,
) -> Outbound<&'t MemberId> {
    route_by(ours, packet, mtu, |dst| match dst {
        IpAddr::V4(v4) => table.holder_v4(v4),
        IpAddr::V6(v6) => table.holder_v6(v6),
    })
}

/// [`route_outbound`] with the holder of a destination found by `holder`: the engine looks
/// it up in its own index of the table.
pub fn route_by<M>(
    ours: Option<Lease>,
    packet: &[u8],
    mtu: u16,
    holder: impl FnOnce(IpAddr) -> Option<M>,
) -> Outbound<M> {
    let header = match parse(packet) {
        Ok(h) => h,
        Err(reason) => return Outbound::Drop(reason),
    };
    if header.total_len > usize::from(mtu) {
        let from = match (header.src, ours) {
            (IpAddr::V4(_), Some(l)) => IpAddr::V4(l.v4),
            (IpAddr::V6(_), Some(l)) => IpAddr::V6(l.v6),
            _ => return Outbound::Drop(DropReason::TooBig),
        };
        return match icmp::too_big(packet, &header, mtu, from) {
            Some(reply) => Outbound::TooBig(reply),
            None => Outbound::Drop(DropReason::TooBig),
        };
    }
    // Our own address, by our lease: no member id compared (each is a cache miss when a
    // lone packet finds the caches cold).
    if ours.is_some_and(|l| holds(&l, header.dst)) {
        return Outbound::Drop(DropReason::NotForUs);
    }
    match holder(header.dst) {
        Some(m) => Outbound::Send(m),
        None => Outbound::Drop(DropReason::NoRoute),
    }
}

/// Builds test packets: a minimal IPv4 or IPv6 packet from `src` to `dst` with `payload`
/// (UDP protocol number, no checksum: the checks do not read it).
pub fn build_packet(src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = u16::try_from(20 + payload.len()).unwrap_or(u16::MAX);
            let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
            p[2..4].copy_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let sum = icmp::checksum(&p, 0);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
            p.extend_from_slice(payload);
            p
        }
        (s, d) => {
            let to16 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
            let mut p = vec![0x60, 0, 0, 0];
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(&[17, 64]);
            p.extend_from_slice(&to16(s));
            p.extend_from_slice(&to16(d));
            p.extend_from_slice(payload);
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::addr::NetworkId;
    use crate::lease::Claim;

    const NET: NetworkId = [3; 32];

    fn member(i: u8) -> MemberId {
        MemberId(vec![i; 4])
    }

    fn table(n: u8) -> AddressTable {
        let claims: Vec<Claim> = (0..n)
            .map(|i| Claim {
                member: member(i),
                lease: None,
            })
            .collect();
        AddressTable::settle(&NET, &claims).unwrap()
    }

    fn v4(t: &AddressTable, i: u8) -> IpAddr {
        IpAddr::V4(t.lease(&member(i)).unwrap().v4)
    }

    fn v6(t: &AddressTable, i: u8) -> IpAddr {
        IpAddr::V6(t.lease(&member(i)).unwrap().v6)
    }

    #[test]
    fn a_members_packet_to_us_passes_on_both_families() {
        let t = table(3);
        let none = BTreeSet::new();
        for (src, dst) in [(v4(&t, 1), v4(&t, 0)), (v6(&t, 1), v6(&t, 0))] {
            let p = build_packet(src, dst, b"hello");
            let h = check_inbound(&t, &none, t.lease(&member(0)), &member(1), &p).unwrap();
            assert_eq!((h.src, h.dst), (src, dst));
        }
    }

    #[test]
    fn each_bad_packet_is_dropped_for_its_reason() {
        let t = table(3);
        let me = member(0);
        let mut revoked = BTreeSet::new();
        revoked.insert(member(2));
        let good = build_packet(v4(&t, 1), v4(&t, 0), b"x");
        let cases = [
            // Another member's source address: spoofed.
            (
                member(1),
                build_packet(v4(&t, 2), v4(&t, 0), b"x"),
                DropReason::SpoofedSource,
            ),
            // An address outside the network entirely.
            (
                member(1),
                build_packet("10.0.0.1".parse().unwrap(), v4(&t, 0), b"x"),
                DropReason::SpoofedSource,
            ),
            (
                member(1),
                build_packet(v4(&t, 1), v4(&t, 2), b"x"),
                DropReason::NotForUs,
            ),
            (member(9), good.clone(), DropReason::NotMember),
            (
                member(2),
                build_packet(v4(&t, 2), v4(&t, 0), b"x"),
                DropReason::Revoked,
            ),
            (member(1), good[..19].to_vec(), DropReason::Malformed),
            (member(1), vec![0x50; 40], DropReason::Malformed),
        ];
        let mut drops = Drops::default();
        for (sender, packet, reason) in cases {
            let got = check_inbound(&t, &revoked, t.lease(&me), &sender, &packet);
            assert_eq!(got, Err(reason));
            drops.record(reason);
        }
        assert_eq!(drops.get(DropReason::SpoofedSource), 2);
        assert_eq!(drops.total(), 7);
    }

    #[test]
    fn outbound_goes_to_the_holder_or_is_dropped() {
        let t = table(3);
        let me = t.lease(&member(0));
        let to = |dst| build_packet(v4(&t, 0), dst, b"payload");
        assert_eq!(
            route_outbound(&t, me, &to(v4(&t, 2)), 1280),
            Outbound::Send(&member(2))
        );
        assert_eq!(
            route_outbound(&t, me, &build_packet(v6(&t, 0), v6(&t, 1), b"p"), 1280),
            Outbound::Send(&member(1))
        );
        let free = (1..u16::MAX)
            .map(|h| t.prefixes().v4_host(h))
            .find(|ip| t.holder_v4(*ip).is_none())
            .unwrap();
        assert_eq!(
            route_outbound(&t, me, &to(IpAddr::V4(free)), 1280),
            Outbound::Drop(DropReason::NoRoute)
        );
        assert_eq!(
            route_outbound(&t, me, &to("8.8.8.8".parse().unwrap()), 1280),
            Outbound::Drop(DropReason::NoRoute)
        );
        let big = build_packet(v4(&t, 0), v4(&t, 1), &[0; 1400]);
        assert!(matches!(
            route_outbound(&t, me, &big, 1280),
            Outbound::TooBig(_)
        ));
        // To our own address, on both families: not for the tunnel.
        for dst in [v4(&t, 0), v6(&t, 0)] {
            assert_eq!(
                route_outbound(&t, me, &build_packet(v4(&t, 1), dst, b"p"), 1280),
                Outbound::Drop(DropReason::NotForUs)
            );
        }
        // Without a lease of ours, a packet to a member still goes to it.
        assert_eq!(
            route_outbound(&t, None, &to(v4(&t, 2)), 1280),
            Outbound::Send(&member(2))
        );
    }

    proptest! {
        #[test]
        fn no_spoofed_packet_ever_passes(src in any::<[u8; 4]>(), sender in 0u8..4, payload in prop::collection::vec(any::<u8>(), 0..64)) {
            let t = table(4);
            let none = BTreeSet::new();
            let packet = build_packet(IpAddr::from(src), v4(&t, 0), &payload);
            let verdict = check_inbound(&t, &none, t.lease(&member(0)), &member(sender), &packet);
            if verdict.is_ok() {
                prop_assert_eq!(IpAddr::from(src), v4(&t, sender));
            }
        }

        #[test]
        fn parse_never_panics_and_never_reads_past_the_packet(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(h) = parse(&bytes) {
                prop_assert!(h.total_len <= bytes.len());
                prop_assert!(h.header_len <= h.total_len);
            }
        }
    }
}

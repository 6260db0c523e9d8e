//! One network's tunnel as a state machine: the member table it routes by, the revoked
//! members it refuses, and the counts `p2pnode vpn status` shows. The service hands it each
//! packet (read from the TUN device, or received from a member) and does what it answers;
//! the engine never copies or allocates per packet, and the caller owns every buffer.

use std::collections::{BTreeMap, BTreeSet};

use crate::addr::{MemberId, NetworkId};
use crate::lease::{AddressTable, Claim, Lease, LeaseError};
use crate::packet::{DropReason, Drops, Outbound, check_inbound, route_outbound};

/// Traffic with one member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounts {
    /// Packets and bytes sent to it.
    pub packets_out: u64,
    /// Bytes sent to it.
    pub bytes_out: u64,
    /// Packets received from it that reached the TUN device.
    pub packets_in: u64,
    /// Bytes received from it that reached the TUN device.
    pub bytes_in: u64,
    /// Packets from it that were dropped, by reason.
    pub dropped: [u64; DropReason::ALL.len()],
}

/// A network's tunnel.
#[derive(Debug, Clone)]
pub struct Engine {
    net: NetworkId,
    me: MemberId,
    mtu: u16,
    table: AddressTable,
    /// Our lease in `table`, kept beside it: each packet's checks need it.
    ours: Option<Lease>,
    revoked: BTreeSet<MemberId>,
    drops: Drops,
    peers: BTreeMap<MemberId, PeerCounts>,
}

impl Engine {
    /// A tunnel for `me` in network `net` with these members.
    pub fn new(
        net: NetworkId,
        me: MemberId,
        mtu: u16,
        members: &[Claim],
        revoked: BTreeSet<MemberId>,
    ) -> Result<Self, LeaseError> {
        let table = AddressTable::settle(&net, members)?;
        Ok(Self {
            ours: table.lease(&me),
            table,
            net,
            me,
            mtu,
            revoked,
            drops: Drops::default(),
            peers: BTreeMap::new(),
        })
    }

    /// The membership changed (a join, a revocation, a new lease): settle the table anew.
    /// Counts of members no longer in it are kept, so status still shows what a revoked
    /// member sent.
    pub fn update(
        &mut self,
        members: &[Claim],
        revoked: BTreeSet<MemberId>,
    ) -> Result<(), LeaseError> {
        self.table = AddressTable::settle(&self.net, members)?;
        self.ours = self.table.lease(&self.me);
        self.revoked = revoked;
        Ok(())
    }

    /// Our lease.
    pub fn our_lease(&self) -> Option<Lease> {
        self.ours
    }

    /// Whether our node must record the lease the tie-break gave us.
    pub fn must_record_ours(&self) -> bool {
        self.table.must_record(&self.me)
    }

    /// The settled table.
    pub fn table(&self) -> &AddressTable {
        &self.table
    }

    /// A packet read from our TUN device: where it goes. A packet sent is counted.
    pub fn from_tun(&mut self, packet: &[u8]) -> Outbound<'_> {
        let out = route_outbound(&self.table, self.ours, packet, self.mtu);
        match &out {
            Outbound::Send(member) => count(&mut self.peers, member, |c| {
                c.packets_out += 1;
                c.bytes_out += packet.len() as u64;
            }),
            Outbound::TooBig(_) => self.drops.record(DropReason::TooBig),
            Outbound::Drop(reason) => self.drops.record(*reason),
        }
        out
    }

    /// A packet `sender` sent us: whether it may be written to our TUN device. A drop is
    /// counted against the sender and in all.
    pub fn from_peer(&mut self, sender: &MemberId, packet: &[u8]) -> bool {
        let verdict = check_inbound(&self.table, &self.revoked, self.ours, sender, packet);
        count(&mut self.peers, sender, |c| match verdict {
            Ok(_) => {
                c.packets_in += 1;
                c.bytes_in += packet.len() as u64;
            }
            Err(reason) => c.dropped[reason as usize] += 1,
        });
        match verdict {
            Ok(_) => true,
            Err(reason) => {
                self.drops.record(reason);
                false
            }
        }
    }

    /// A read from our TUN device that could not be split into packets (a malformed
    /// super-packet): counted as malformed.
    pub fn unreadable_from_tun(&mut self) {
        self.drops.record(DropReason::Malformed);
    }

    /// Drops in all, by reason.
    pub fn drops(&self) -> &Drops {
        &self.drops
    }

    /// Traffic with `member`.
    pub fn counts(&self, member: &MemberId) -> PeerCounts {
        self.peers.get(member).copied().unwrap_or_default()
    }
}

/// Adds to `member`'s counts: one search of the map for every packet but a member's
/// first (the id is copied then only).
fn count(
    peers: &mut BTreeMap<MemberId, PeerCounts>,
    member: &MemberId,
    add: impl FnOnce(&mut PeerCounts),
) {
    if let Some(counts) = peers.get_mut(member) {
        add(counts);
        return;
    }
    let mut counts = PeerCounts::default();
    add(&mut counts);
    peers.insert(member.clone(), counts);
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::packet::build_packet;

    const NET: NetworkId = [5; 32];

    fn member(i: u8) -> MemberId {
        MemberId(vec![i; 4])
    }

    fn members(n: u8) -> Vec<Claim> {
        (0..n)
            .map(|i| Claim {
                member: member(i),
                lease: None,
            })
            .collect()
    }

    /// Two engines, 0 and 1, each routing to the other: a packet crosses and is counted.
    #[test]
    fn a_packet_crosses_between_two_members() {
        let mut a = Engine::new(NET, member(0), 1280, &members(2), BTreeSet::new()).unwrap();
        let mut b = Engine::new(NET, member(1), 1280, &members(2), BTreeSet::new()).unwrap();
        let (la, lb) = (a.our_lease().unwrap(), b.our_lease().unwrap());
        assert_eq!(a.table(), b.table(), "both settle the same table");
        let p = build_packet(IpAddr::V4(la.v4), IpAddr::V4(lb.v4), b"ping");
        assert_eq!(a.from_tun(&p), Outbound::Send(&member(1)));
        assert!(b.from_peer(&member(0), &p));
        assert_eq!(a.counts(&member(1)).packets_out, 1);
        assert_eq!(b.counts(&member(0)).bytes_in, p.len() as u64);
        // The second packet adds to the counts the first one made.
        assert_eq!(a.from_tun(&p), Outbound::Send(&member(1)));
        assert!(b.from_peer(&member(0), &p));
        assert_eq!(a.counts(&member(1)).bytes_out, 2 * p.len() as u64);
        assert_eq!(b.counts(&member(0)).packets_in, 2);
    }

    /// A read from the device that could not be split counts as malformed, in all (it has
    /// no member to count against).
    #[test]
    fn an_unreadable_read_counts_as_malformed() {
        let mut a = Engine::new(NET, member(0), 1280, &members(2), BTreeSet::new()).unwrap();
        a.unreadable_from_tun();
        a.unreadable_from_tun();
        assert_eq!(a.drops().get(DropReason::Malformed), 2);
        assert_eq!(a.counts(&member(1)), PeerCounts::default());
    }

    /// A member revoked while packets flow: its packets are refused from the update on,
    /// and counted as such against it.
    #[test]
    fn a_revoked_members_packets_are_dropped_from_the_update_on() {
        let mut b = Engine::new(NET, member(1), 1280, &members(3), BTreeSet::new()).unwrap();
        let (l0, l1) = (b.table().lease(&member(0)).unwrap(), b.our_lease().unwrap());
        let p = build_packet(IpAddr::V4(l0.v4), IpAddr::V4(l1.v4), b"x");
        assert!(b.from_peer(&member(0), &p));
        let revoked: BTreeSet<_> = [member(0)].into();
        let rest: Vec<Claim> = members(3)
            .into_iter()
            .filter(|c| c.member != member(0))
            .collect();
        b.update(&rest, revoked).unwrap();
        for _ in 0..5 {
            assert!(!b.from_peer(&member(0), &p));
        }
        let c = b.counts(&member(0));
        assert_eq!(c.packets_in, 1);
        assert_eq!(c.dropped[DropReason::Revoked as usize], 5);
        assert_eq!(b.drops().get(DropReason::Revoked), 5);
    }

    /// Forged sources from a member: none reaches the TUN device, all counted.
    #[test]
    fn forged_sources_never_pass_and_are_counted() {
        let mut b = Engine::new(NET, member(1), 1280, &members(3), BTreeSet::new()).unwrap();
        let ours = b.our_lease().unwrap();
        let other = b.table().lease(&member(2)).unwrap();
        let mut passed = 0;
        for i in 0..100u8 {
            let forged = if i % 2 == 0 {
                IpAddr::V4(other.v4)
            } else {
                IpAddr::from([100, 64, i, 1])
            };
            let p = build_packet(forged, IpAddr::V4(ours.v4), b"spoof");
            passed += usize::from(b.from_peer(&member(0), &p));
        }
        assert_eq!(passed, 0);
        assert_eq!(
            b.counts(&member(0)).dropped[DropReason::SpoofedSource as usize],
            100
        );
    }

    /// Two networks on one node: a packet of one is never routed by the other.
    #[test]
    fn two_networks_do_not_cross() {
        let n1 = Engine::new([1; 32], member(0), 1280, &members(2), BTreeSet::new()).unwrap();
        let mut n2 = Engine::new([2; 32], member(0), 1280, &members(2), BTreeSet::new()).unwrap();
        let to_n1 = build_packet(
            IpAddr::V4(n1.our_lease().unwrap().v4),
            IpAddr::V4(n1.table().lease(&member(1)).unwrap().v4),
            b"x",
        );
        if n1.table().prefixes().v4 != n2.table().prefixes().v4 {
            assert_eq!(n2.from_tun(&to_n1), Outbound::Drop(DropReason::NoRoute));
        }
        let to_n1_v6 = build_packet(
            IpAddr::V6(n1.our_lease().unwrap().v6),
            IpAddr::V6(n1.table().lease(&member(1)).unwrap().v6),
            b"x",
        );
        assert_eq!(n2.from_tun(&to_n1_v6), Outbound::Drop(DropReason::NoRoute));
        assert!(!n2.from_peer(&member(1), &to_n1_v6));
    }
}

//! One network's tunnel as a state machine: the member table it routes by, the revoked
//! members it refuses, and the counts `p2pnode vpn status` shows. The service hands it each
//! packet (read from the TUN device, or received from a member) and does what it answers;
//! the engine never copies or allocates per packet, and the caller owns every buffer.
//!
//! Per packet the engine searches nothing by member id. Each member it meets gets a
//! [`Slot`], an index into what it keeps per member (lease, revoked or not, counts); the
//! service keeps a member's slot beside its link, and the routes from an address to a
//! slot are a sorted list. On an idle tunnel a lone packet finds the caches cold, and each
//! id compared or hashed was a miss of its own (the ids live on the heap).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::addr::{MemberId, NetworkId};
use crate::lease::{AddressTable, Claim, Lease, LeaseError};
use crate::packet::{DropReason, Drops, Outbound, check_from, route_by};

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

/// A member's index in one engine, given the first time the engine meets its id (in the
/// table, or from [`Engine::slot`]) and kept for the engine's life, through revocations
/// and table updates. Only the engine that gave it knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(u32);

impl Slot {
    /// Its position, for a caller's own table indexed by slot.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// What the engine keeps per member, by slot.
#[derive(Debug, Clone)]
struct Known {
    id: MemberId,
    /// Its settled lease; `None` when it is not in the table (not a member, or no more).
    lease: Option<Lease>,
    revoked: bool,
    counts: PeerCounts,
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
    /// Every member met, by slot; ids are only ever added (a member of the table, or a
    /// sender the service named), so the list is bounded by the network's membership.
    known: Vec<Known>,
    slots: BTreeMap<MemberId, Slot>,
    /// Who holds each address of the table, sorted by address.
    v4: Vec<(Ipv4Addr, Slot)>,
    v6: Vec<(Ipv6Addr, Slot)>,
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
        let mut engine = Self {
            ours: table.lease(&me),
            table,
            net,
            me,
            mtu,
            revoked,
            drops: Drops::default(),
            known: Vec::new(),
            slots: BTreeMap::new(),
            v4: Vec::new(),
            v6: Vec::new(),
        };
        engine.index();
        Ok(engine)
    }

    /// The membership changed (a join, a revocation, a new lease): settle the table anew.
    /// Counts of members no longer in it are kept, so status still shows what a revoked
    /// member sent, and every member keeps its slot.
    pub fn update(
        &mut self,
        members: &[Claim],
        revoked: BTreeSet<MemberId>,
    ) -> Result<(), LeaseError> {
        self.table = AddressTable::settle(&self.net, members)?;
        self.ours = self.table.lease(&self.me);
        self.revoked = revoked;
        self.index();
        Ok(())
    }

    /// Brings what is kept per slot, and the routes, in line with the table and the
    /// revoked set.
    fn index(&mut self) {
        let members: Vec<MemberId> = self.table.iter().map(|(m, _)| m.clone()).collect();
        for m in &members {
            self.slot(m);
        }
        for k in &mut self.known {
            k.lease = self.table.lease(&k.id);
            k.revoked = self.revoked.contains(&k.id);
        }
        let slots = &self.slots;
        let slot_of = |m: &MemberId| slots.get(m).copied();
        self.v4 = self
            .table
            .iter()
            .filter_map(|(m, l)| Some((l.v4, slot_of(m)?)))
            .collect();
        self.v6 = self
            .table
            .iter()
            .filter_map(|(m, l)| Some((l.v6, slot_of(m)?)))
            .collect();
        self.v4.sort_unstable();
        self.v6.sort_unstable();
    }

    /// `member`'s slot, given now if the engine has not met it.
    pub fn slot(&mut self, member: &MemberId) -> Slot {
        if let Some(s) = self.slots.get(member) {
            return *s;
        }
        // More members than a u32 counts cannot be: the table holds at most 2^16.
        let slot = Slot(u32::try_from(self.known.len()).unwrap_or(u32::MAX));
        self.known.push(Known {
            id: member.clone(),
            lease: self.table.lease(member),
            revoked: self.revoked.contains(member),
            counts: PeerCounts::default(),
        });
        self.slots.insert(member.clone(), slot);
        slot
    }

    /// The member of `slot`.
    pub fn member(&self, slot: Slot) -> Option<&MemberId> {
        self.known.get(slot.index()).map(|k| &k.id)
    }

    /// `member`'s slot, if the engine has met it (nothing is given).
    pub fn find(&self, member: &MemberId) -> Option<Slot> {
        self.slots.get(member).copied()
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

    /// Who holds `ip`, by the routes.
    fn holder(&self, ip: IpAddr) -> Option<Slot> {
        fn find<A: Ord>(routes: &[(A, Slot)], a: A) -> Option<Slot> {
            let i = routes.binary_search_by(|(x, _)| x.cmp(&a)).ok()?;
            Some(routes[i].1)
        }
        match ip {
            IpAddr::V4(v4) => find(&self.v4, v4),
            IpAddr::V6(v6) => find(&self.v6, v6),
        }
    }

    /// A packet read from our TUN device: where it goes. A packet sent is counted.
    pub fn from_tun(&mut self, packet: &[u8]) -> Outbound<Slot> {
        let out = route_by(self.ours, packet, self.mtu, |dst| self.holder(dst));
        match &out {
            Outbound::Send(slot) => {
                if let Some(k) = self.known.get_mut(slot.index()) {
                    k.counts.packets_out += 1;
                    k.counts.bytes_out += packet.len() as u64;
                }
            }
            Outbound::TooBig(_) => self.drops.record(DropReason::TooBig),
            Outbound::Drop(reason) => self.drops.record(*reason),
        }
        out
    }

    /// A packet the member of `sender` sent us: whether it may be written to our TUN
    /// device. A drop is counted against the sender and in all; a slot this engine did not
    /// give is no member.
    pub fn from_peer(&mut self, sender: Slot, packet: &[u8]) -> bool {
        let Some(k) = self.known.get_mut(sender.index()) else {
            self.drops.record(DropReason::NotMember);
            return false;
        };
        let theirs = match (k.revoked, k.lease) {
            (true, _) => Err(DropReason::Revoked),
            (false, lease) => lease.ok_or(DropReason::NotMember),
        };
        match check_from(theirs, self.ours, packet) {
            Ok(_) => {
                k.counts.packets_in += 1;
                k.counts.bytes_in += packet.len() as u64;
                true
            }
            Err(reason) => {
                k.counts.dropped[reason as usize] += 1;
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
        self.find(member)
            .and_then(|s| self.known.get(s.index()))
            .map(|k| k.counts)
            .unwrap_or_default()
    }
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
        let (to_b, from_a) = (a.slot(&member(1)), b.slot(&member(0)));
        let p = build_packet(IpAddr::V4(la.v4), IpAddr::V4(lb.v4), b"ping");
        assert_eq!(a.from_tun(&p), Outbound::Send(to_b));
        assert!(b.from_peer(from_a, &p));
        assert_eq!(a.counts(&member(1)).packets_out, 1);
        assert_eq!(b.counts(&member(0)).bytes_in, p.len() as u64);
        // The second packet adds to the counts the first one made.
        assert_eq!(a.from_tun(&p), Outbound::Send(to_b));
        assert!(b.from_peer(from_a, &p));
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
        let m0 = b.slot(&member(0));
        assert!(b.from_peer(m0, &p));
        let revoked: BTreeSet<_> = [member(0)].into();
        let rest: Vec<Claim> = members(3)
            .into_iter()
            .filter(|c| c.member != member(0))
            .collect();
        b.update(&rest, revoked).unwrap();
        assert_eq!(b.slot(&member(0)), m0, "a revoked member keeps its slot");
        for _ in 0..5 {
            assert!(!b.from_peer(m0, &p));
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
        let m0 = b.slot(&member(0));
        let mut passed = 0;
        for i in 0..100u8 {
            let forged = if i % 2 == 0 {
                IpAddr::V4(other.v4)
            } else {
                IpAddr::from([100, 64, i, 1])
            };
            let p = build_packet(forged, IpAddr::V4(ours.v4), b"spoof");
            passed += usize::from(b.from_peer(m0, &p));
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
        let m1 = n2.slot(&member(1));
        assert!(!n2.from_peer(m1, &to_n1_v6));
    }

    /// A sender the table does not hold is refused as no member, counted against it; a
    /// slot no engine of ours gave is refused too, counted in all.
    #[test]
    fn a_stranger_or_an_unknown_slot_is_no_member() {
        let mut b = Engine::new(NET, member(1), 1280, &members(2), BTreeSet::new()).unwrap();
        let (l0, l1) = (b.table().lease(&member(0)).unwrap(), b.our_lease().unwrap());
        let p = build_packet(IpAddr::V4(l0.v4), IpAddr::V4(l1.v4), b"x");
        let stranger = b.slot(&member(9));
        assert!(!b.from_peer(stranger, &p));
        assert_eq!(
            b.counts(&member(9)).dropped[DropReason::NotMember as usize],
            1
        );
        let mut other = Engine::new(NET, member(1), 1280, &members(40), BTreeSet::new()).unwrap();
        let far = other.slot(&member(39));
        assert!(b.member(far).is_none());
        assert!(!b.from_peer(far, &p));
        assert_eq!(b.drops().get(DropReason::NotMember), 2);
        // The stranger joins: its slot is the same, and its packets pass from the update on.
        let mut claims = members(2);
        claims.push(Claim {
            member: member(9),
            lease: None,
        });
        b.update(&claims, BTreeSet::new()).unwrap();
        let l9 = b.table().lease(&member(9)).unwrap();
        assert_eq!(b.slot(&member(9)), stranger);
        let p9 = build_packet(IpAddr::V4(l9.v4), IpAddr::V4(l1.v4), b"x");
        assert!(b.from_peer(stranger, &p9));
    }

    proptest::proptest! {
        /// The engine's index routes and checks as the table does ([`route_outbound`] and
        /// [`check_inbound`]), whatever the claims (collisions included), the revoked and
        /// the packet, before and after an update.
        #[test]
        fn the_index_agrees_with_the_table(
            claims in proptest::collection::vec((0u8..12, proptest::option::of(0u16..6)), 1..10),
            revoked in proptest::collection::btree_set(0u8..12, 0..3),
            packets in proptest::collection::vec((0u8..12, 0u8..12, proptest::bool::ANY, 0u16..6), 1..20),
        ) {
            use crate::packet::{check_inbound, route_outbound};
            let prefixes = crate::Prefixes::of(&NET);
            // Recorded leases on a few hosts, so that members collide.
            let claims: Vec<Claim> = claims
                .iter()
                .map(|(m, host)| Claim {
                    member: member(*m),
                    lease: host.map(|h| Lease {
                        v4: prefixes.v4_host(h + 10),
                        v6: prefixes.derive(&NET, &member(*m)).1,
                    }),
                })
                .collect();
            let revoked: BTreeSet<MemberId> = revoked.iter().map(|m| member(*m)).collect();
            let mut e = Engine::new(NET, member(0), 1280, &claims, BTreeSet::new()).unwrap();
            for round in 0..2 {
                if round == 1 {
                    e.update(&claims[1..], revoked.clone()).unwrap();
                }
                let (table, revoked_now) = (e.table().clone(), e.revoked.clone());
                let ours = e.our_lease();
                for (from, to, v6, host) in &packets {
                    let addr = |m: u8| {
                        table.lease(&member(m)).map_or_else(
                            || IpAddr::V4(prefixes.v4_host(*host + 10)),
                            |l| if *v6 { IpAddr::V6(l.v6) } else { IpAddr::V4(l.v4) },
                        )
                    };
                    let (src, dst) = (addr(*from), addr(*to));
                    if src.is_ipv4() != dst.is_ipv4() {
                        continue;
                    }
                    let p = build_packet(src, dst, b"p");
                    let want = route_outbound(&table, ours, &p, 1280);
                    let got = e.from_tun(&p);
                    match (&want, &got) {
                        (Outbound::Send(m), Outbound::Send(s)) => {
                            proptest::prop_assert_eq!(e.member(*s), Some(*m))
                        }
                        _ => proptest::prop_assert_eq!(format!("{want:?}"), format!("{got:?}")),
                    }
                    let sender = e.slot(&member(*from));
                    let want = check_inbound(&table, &revoked_now, ours, &member(*from), &p);
                    proptest::prop_assert_eq!(e.from_peer(sender, &p), want.is_ok());
                }
            }
        }
    }
}

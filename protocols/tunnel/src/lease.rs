//! Address leases and their tie-break. Every member computes the address table from the
//! same input (the network's members, each with the addresses its latest lease names, or
//! none yet) with the same pure function, so every member reaches the same table with no
//! allocator and no coordination:
//!
//! - a member without a lease takes its derived addresses ([`Prefixes::derive`]);
//! - when several members claim one address, a recorded lease beats a derived claim, and
//!   among equals the lowest member id keeps it: a member that came up first (and
//!   recorded its addresses) keeps them when a later joiner derives the same ones;
//! - each loser, in that order, takes the next free address after its claim (wrapping
//!   inside the /16, skipping the network and broadcast addresses);
//! - every member records the lease it settled on when it has none recorded or was moved,
//!   so the address stays its own when others join later. Two that record one address
//!   at once (apart, say) settle it by member id when their records meet, and the loser
//!   moves.
//!
//! The function looks at the set of claims only, never at their order.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::addr::{MemberId, NetworkId, Prefixes, is_usable_v4_host};

/// A member's addresses in one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Its IPv4 address.
    pub v4: Ipv4Addr,
    /// Its IPv6 address.
    pub v6: Ipv6Addr,
}

/// The first byte of an encoded lease: the encoding's version.
const LEASE_V1: u8 = 1;
/// The length of an encoded lease: version, IPv4, IPv6.
pub const LEASE_BYTES: usize = 1 + 4 + 16;

impl Lease {
    /// The lease as a member records it in the network's membership record (the node
    /// keeps it as opaque bytes): version 1, then the IPv4 and IPv6 addresses.
    pub fn to_bytes(&self) -> [u8; LEASE_BYTES] {
        let mut out = [0; LEASE_BYTES];
        out[0] = LEASE_V1;
        out[1..5].copy_from_slice(&self.v4.octets());
        out[5..].copy_from_slice(&self.v6.octets());
        out
    }

    /// A recorded lease read back; `None` for bytes of another version or length, which
    /// count as no lease (the member's derived addresses stand in).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; LEASE_BYTES] = bytes.try_into().ok()?;
        if bytes[0] != LEASE_V1 {
            return None;
        }
        let v4: [u8; 4] = bytes[1..5].try_into().ok()?;
        let v6: [u8; 16] = bytes[5..].try_into().ok()?;
        Some(Self {
            v4: Ipv4Addr::from(v4),
            v6: Ipv6Addr::from(v6),
        })
    }
}

/// A member and the lease its latest lease operation names, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The member.
    pub member: MemberId,
    /// Its recorded lease; `None` before it recorded one.
    pub lease: Option<Lease>,
}

/// Errors settling the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// More members than the /16 has addresses.
    #[error("the network has more members ({0}) than its IPv4 prefix has addresses")]
    Full(usize),
}

/// The settled addresses of a network's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressTable {
    prefixes: Prefixes,
    by_member: BTreeMap<MemberId, Lease>,
    by_v4: BTreeMap<Ipv4Addr, MemberId>,
    by_v6: BTreeMap<Ipv6Addr, MemberId>,
    /// Members whose settled lease differs from the one they claim, or who recorded none:
    /// each must record it.
    moved: BTreeSet<MemberId>,
}

impl AddressTable {
    /// Settles the addresses of `claims` (one per member; a member listed twice counts once,
    /// with the claim that sorts first) in network `net`.
    pub fn settle(net: &NetworkId, claims: &[Claim]) -> Result<Self, LeaseError> {
        let prefixes = Prefixes::of(net);
        // One claim per member (a recorded one before a derived one, then the smaller),
        // whatever order they came in.
        let mut wanted: BTreeMap<&MemberId, (Lease, bool)> = BTreeMap::new();
        for claim in claims {
            let recorded = claim.lease.filter(|l| valid(&prefixes, l));
            let lease = recorded.unwrap_or_else(|| {
                let (v4, v6) = prefixes.derive(net, &claim.member);
                Lease { v4, v6 }
            });
            let key = |l: &Lease, rec: bool| (!rec, l.v4, l.v6);
            let this = (lease, recorded.is_some());
            wanted
                .entry(&claim.member)
                .and_modify(|old| {
                    if key(&this.0, this.1) < key(&old.0, old.1) {
                        *old = this;
                    }
                })
                .or_insert(this);
        }
        // Recorded claims first, then derived ones; each in member order.
        let order: Vec<(&MemberId, Lease)> = wanted
            .iter()
            .filter(|(_, (_, rec))| *rec)
            .chain(wanted.iter().filter(|(_, (_, rec))| !*rec))
            .map(|(m, (l, _))| (*m, *l))
            .collect();
        let usable = usize::from(u16::MAX) - 1;
        if wanted.len() > usable {
            return Err(LeaseError::Full(wanted.len()));
        }
        // Winners first: the first in that order keeps each claimed address.
        let mut by_v4: BTreeMap<Ipv4Addr, MemberId> = BTreeMap::new();
        let mut by_v6: BTreeMap<Ipv6Addr, MemberId> = BTreeMap::new();
        let mut losers_v4 = Vec::new();
        let mut losers_v6 = Vec::new();
        for (member, lease) in &order {
            match by_v4.entry(lease.v4) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert((*member).clone());
                }
                std::collections::btree_map::Entry::Occupied(_) => losers_v4.push(*member),
            }
            match by_v6.entry(lease.v6) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert((*member).clone());
                }
                std::collections::btree_map::Entry::Occupied(_) => losers_v6.push(*member),
            }
        }
        // Members with nothing recorded record what they settle on, moved or not.
        let mut moved: BTreeSet<MemberId> = wanted
            .iter()
            .filter(|(_, (_, rec))| !*rec)
            .map(|(m, _)| (*m).clone())
            .collect();
        let mut settled: BTreeMap<MemberId, Lease> =
            order.iter().map(|(m, l)| ((*m).clone(), *l)).collect();
        // Then each loser, in that order, takes the next free address after its claim.
        for member in losers_v4 {
            let start = Prefixes::v4_host_of(wanted[member].0.v4);
            let host = (1..=u16::MAX)
                .map(|step| start.wrapping_add(step))
                .find(|h| is_usable_v4_host(*h) && !by_v4.contains_key(&prefixes.v4_host(*h)))
                .ok_or(LeaseError::Full(wanted.len()))?;
            let v4 = prefixes.v4_host(host);
            by_v4.insert(v4, member.clone());
            if let Some(l) = settled.get_mut(member) {
                l.v4 = v4;
            }
            moved.insert(member.clone());
        }
        for member in losers_v6 {
            let mut octets = wanted[member].0.v6.octets();
            // Count up in the interface id; 2^64 of them, so this ends at once.
            let v6 = loop {
                let iid = u64::from_be_bytes(octets[8..].try_into().unwrap_or([0; 8]));
                octets[8..].copy_from_slice(&iid.wrapping_add(1).to_be_bytes());
                let candidate = Ipv6Addr::from(octets);
                if !by_v6.contains_key(&candidate) {
                    break candidate;
                }
            };
            by_v6.insert(v6, member.clone());
            if let Some(l) = settled.get_mut(member) {
                l.v6 = v6;
            }
            moved.insert(member.clone());
        }
        Ok(Self {
            prefixes,
            by_member: settled,
            by_v4,
            by_v6,
            moved,
        })
    }

    /// The network's prefixes.
    pub fn prefixes(&self) -> Prefixes {
        self.prefixes
    }

    /// A member's settled lease.
    pub fn lease(&self, member: &MemberId) -> Option<Lease> {
        self.by_member.get(member).copied()
    }

    /// Who holds an IPv4 address.
    pub fn holder_v4(&self, ip: Ipv4Addr) -> Option<&MemberId> {
        self.by_v4.get(&ip)
    }

    /// Who holds an IPv6 address.
    pub fn holder_v6(&self, ip: Ipv6Addr) -> Option<&MemberId> {
        self.by_v6.get(&ip)
    }

    /// Whether `member` lost a tie-break, or has recorded no valid lease yet, and must
    /// record the lease it was given.
    pub fn must_record(&self, member: &MemberId) -> bool {
        self.moved.contains(member)
    }

    /// Every member with its lease, in member order.
    pub fn iter(&self) -> impl Iterator<Item = (&MemberId, &Lease)> {
        self.by_member.iter()
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.by_member.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_member.is_empty()
    }
}

/// Whether a recorded lease lies in the network's prefixes on a usable address; one that
/// does not (a forged or stale operation) is ignored and the member's derived addresses
/// stand in.
fn valid(p: &Prefixes, l: &Lease) -> bool {
    p.contains_v4(l.v4) && is_usable_v4_host(Prefixes::v4_host_of(l.v4)) && p.contains_v6(l.v6)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NET: NetworkId = [7; 32];

    fn member(i: u8) -> MemberId {
        MemberId(vec![i; 4])
    }

    fn claim(i: u8, lease: Option<Lease>) -> Claim {
        Claim {
            member: member(i),
            lease,
        }
    }

    #[test]
    fn a_forced_collision_is_settled_by_member_id_and_the_loser_moves_up() {
        let p = Prefixes::of(&NET);
        let same = Lease {
            v4: p.v4_host(500),
            v6: p.derive(&NET, &member(9)).1,
        };
        let claims = [claim(3, Some(same)), claim(1, Some(same)), claim(2, None)];
        let table = AddressTable::settle(&NET, &claims).unwrap();
        assert_eq!(table.lease(&member(1)), Some(same), "lowest id wins");
        let loser = table.lease(&member(3)).unwrap();
        assert_eq!(loser.v4, p.v4_host(501), "the next free address");
        assert_ne!(loser.v6, same.v6);
        assert!(table.must_record(&member(3)));
        assert!(!table.must_record(&member(1)));
        assert!(table.must_record(&member(2)), "nothing recorded yet");
        assert_eq!(table.holder_v4(p.v4_host(500)), Some(&member(1)));
    }

    /// A member that recorded its address keeps it against a later joiner with a lower id
    /// that derives the same one; among recorded claims the lower id wins again.
    #[test]
    fn a_recorded_lease_beats_a_derived_claim_of_a_lower_id() {
        let p = Prefixes::of(&NET);
        let derived = |i: u8| {
            let (v4, v6) = p.derive(&NET, &member(i));
            Lease { v4, v6 }
        };
        // Member 5 recorded member 1's derived addresses (as if it had come first with
        // them); member 1 has recorded nothing.
        let taken = derived(1);
        let claims = [claim(5, Some(taken)), claim(1, None)];
        let table = AddressTable::settle(&NET, &claims).unwrap();
        assert_eq!(
            table.lease(&member(5)),
            Some(taken),
            "the recorded lease stays"
        );
        let moved = table.lease(&member(1)).unwrap();
        assert_ne!(moved.v4, taken.v4);
        assert!(table.must_record(&member(1)) && !table.must_record(&member(5)));
        // Both recorded: the lower id wins.
        let claims = [claim(5, Some(taken)), claim(1, Some(taken))];
        let table = AddressTable::settle(&NET, &claims).unwrap();
        assert_eq!(table.lease(&member(1)), Some(taken));
        assert!(table.must_record(&member(5)));
    }

    #[test]
    fn a_lease_reads_back_and_other_bytes_are_no_lease() {
        let p = Prefixes::of(&NET);
        let (v4, v6) = p.derive(&NET, &member(4));
        let lease = Lease { v4, v6 };
        let bytes = lease.to_bytes();
        assert_eq!(Lease::from_bytes(&bytes), Some(lease));
        assert_eq!(Lease::from_bytes(&bytes[1..]), None);
        let mut other = bytes;
        other[0] = 2;
        assert_eq!(Lease::from_bytes(&other), None);
        assert_eq!(Lease::from_bytes(&[]), None);
    }

    #[test]
    fn leases_outside_the_prefix_are_ignored() {
        let p = Prefixes::of(&NET);
        let bogus = Lease {
            v4: Ipv4Addr::new(10, 0, 0, 1),
            v6: p.derive(&NET, &member(1)).1,
        };
        let table = AddressTable::settle(&NET, &[claim(1, Some(bogus))]).unwrap();
        let (v4, _) = p.derive(&NET, &member(1));
        assert_eq!(table.lease(&member(1)).unwrap().v4, v4);
    }

    #[test]
    fn the_loser_wraps_past_the_broadcast_address() {
        let p = Prefixes::of(&NET);
        let top = Lease {
            v4: p.v4_host(u16::MAX - 1),
            v6: p.derive(&NET, &member(1)).1,
        };
        let other = Lease {
            v6: p.derive(&NET, &member(2)).1,
            ..top
        };
        let table =
            AddressTable::settle(&NET, &[claim(1, Some(top)), claim(2, Some(other))]).unwrap();
        assert_eq!(table.lease(&member(2)).unwrap().v4, p.v4_host(1));
    }

    fn arb_claims() -> impl Strategy<Value = Vec<Claim>> {
        // Few distinct host parts, so collisions are common.
        // One claim per member (a member's latest lease is one operation).
        prop::collection::btree_map(0u8..40, prop::option::of(1u16..6), 1..40).prop_map(|v| {
            let p = Prefixes::of(&NET);
            v.into_iter()
                .map(|(id, host)| Claim {
                    member: member(id),
                    lease: host.map(|h| Lease {
                        v4: p.v4_host(h),
                        v6: p.derive(&NET, &member(id)).1,
                    }),
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn every_delivery_order_settles_the_same_table(claims in arb_claims(), seed in any::<u64>()) {
            let table = AddressTable::settle(&NET, &claims).unwrap();
            let mut shuffled = claims.clone();
            // A cheap deterministic shuffle from the seed.
            let n = shuffled.len();
            let mut s = seed;
            for i in (1..n).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(table, AddressTable::settle(&NET, &shuffled).unwrap());
        }

        #[test]
        fn no_two_members_share_an_address_and_all_are_usable(claims in arb_claims()) {
            let table = AddressTable::settle(&NET, &claims).unwrap();
            let p = table.prefixes();
            let mut v4s = BTreeSet::new();
            let mut v6s = BTreeSet::new();
            for (m, l) in table.iter() {
                prop_assert!(v4s.insert(l.v4), "v4 {} twice", l.v4);
                prop_assert!(v6s.insert(l.v6), "v6 {} twice", l.v6);
                prop_assert!(p.contains_v4(l.v4) && p.contains_v6(l.v6));
                prop_assert!(is_usable_v4_host(Prefixes::v4_host_of(l.v4)));
                prop_assert_eq!(table.holder_v4(l.v4), Some(m));
                prop_assert_eq!(table.holder_v6(l.v6), Some(m));
            }
        }

        #[test]
        fn a_member_that_keeps_its_claim_is_the_first_claimant(claims in arb_claims()) {
            let table = AddressTable::settle(&NET, &claims).unwrap();
            let p = Prefixes::of(&NET);
            let recorded = |c: &Claim| c.lease.filter(|l| valid(&p, l));
            let wants = |c: &Claim| recorded(c).map_or_else(|| p.derive(&NET, &c.member).0, |l| l.v4);
            for c in &claims {
                let wanted = wants(c);
                // Recorded claims first, then the lowest id.
                let lowest = claims
                    .iter()
                    .filter(|o| wants(o) == wanted)
                    .map(|o| (recorded(o).is_none(), &o.member))
                    .min()
                    .map(|(_, m)| m)
                    .unwrap();
                let holder = table.holder_v4(wanted).unwrap();
                prop_assert_eq!(holder, lowest);
            }
        }
    }
}

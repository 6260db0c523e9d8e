//! The evaluation: which ops take effect and who is a member, computed from the DAG
//! alone, so every member holding the same ops reaches the same answer.

use std::collections::{BTreeMap, HashMap};

use libp2p::PeerId;

use super::super::invite::InviteId;
use super::super::op::{Op, Role};
use super::{Bits, Member, Membership, any_in};

/// The effective ops of one evaluation pass, indexed for "is any of these in that past?".
#[derive(Default)]
struct Pass {
    valid: Vec<bool>,
    adds: HashMap<PeerId, Vec<usize>>,
    admins: HashMap<PeerId, Vec<usize>>,
    revokes: HashMap<PeerId, Vec<usize>>,
    names: HashMap<PeerId, Vec<usize>>,
    leases: HashMap<PeerId, Vec<usize>>,
    uses: HashMap<InviteId, Vec<usize>>,
}

impl Membership {
    /// Recomputes effectiveness and the member set from the DAG alone (see `network`'s
    /// docs) in two passes: the first judges everything on causal pasts with nothing voided
    /// and fixes the revocations; the second voids the ops of revoked peers that no
    /// revocation of theirs had seen, and judges the rest again.
    pub(super) fn evaluate(&mut self) {
        let n = self.ops.len();
        let first = self.pass(&vec![false; n], None);
        let mut voided = vec![false; n];
        for (peer, revokes) in &first.revokes {
            for &j in self.by_author.get(peer).into_iter().flatten() {
                let is_revoke = matches!(self.ops[j].op.op(), Op::Revoke { .. });
                if !is_revoke && !revokes.iter().any(|&r| self.ops[r].past.has(j)) {
                    voided[j] = true;
                }
            }
        }
        let pass = self.pass(&voided, Some(&first.valid));
        self.members = self.member_set(&pass);
        self.valid = pass.valid;
    }

    /// Judges every op in causal order, on the effective ops of its own past only.
    /// `revokes_from`: revocations already judged, kept as they were.
    fn pass(&self, voided: &[bool], revokes_from: Option<&[bool]>) -> Pass {
        let mut p = Pass {
            valid: vec![false; self.ops.len()],
            ..Pass::default()
        };
        for (i, s) in self.ops.iter().enumerate() {
            if voided[i] {
                continue;
            }
            let past = &s.past;
            let author = s.op.author();
            let revoked = |p: &Pass, peer: &PeerId| any_in(p.revokes.get(peer), past);
            let member = |p: &Pass, peer: &PeerId| {
                *peer == self.creator || (any_in(p.adds.get(peer), past) && !revoked(p, peer))
            };
            let admin = |p: &Pass, peer: &PeerId| {
                *peer == self.creator || (any_in(p.admins.get(peer), past) && !revoked(p, peer))
            };
            let ok = match s.op.op() {
                Op::Create { .. } => i == 0,
                Op::Add {
                    peer, role, invite, ..
                } => {
                    *peer != self.creator
                        && !revoked(&p, peer)
                        && match invite {
                            None => admin(&p, author),
                            Some(req) => {
                                let inv = &req.invite;
                                let used = p
                                    .uses
                                    .get(&inv.id())
                                    .map_or(0, |l| l.iter().filter(|&&j| past.has(j)).count());
                                member(&p, author)
                                    && admin(&p, &inv.issuer)
                                    && s.op.time_ms() <= inv.expires_ms
                                    && *role == inv.role
                                    && used < inv.max_uses as usize
                            }
                        }
                }
                Op::Revoke { .. } if revokes_from.is_some() => revokes_from.is_some_and(|v| v[i]),
                Op::Revoke { peer } => {
                    *peer != self.creator
                        && (admin(&p, author) || (author == peer && member(&p, author)))
                }
                Op::Promote { peer } => admin(&p, author) && member(&p, peer),
                Op::SetName { peer, .. } | Op::SetLease { peer, .. } => {
                    member(&p, peer) && (author == peer || admin(&p, author))
                }
            };
            if !ok {
                continue;
            }
            p.valid[i] = true;
            match s.op.op() {
                Op::Create { .. } => {}
                Op::Add {
                    peer,
                    role,
                    name,
                    invite,
                } => {
                    p.adds.entry(*peer).or_default().push(i);
                    if *role == Role::Admin {
                        p.admins.entry(*peer).or_default().push(i);
                    }
                    if name.is_some() {
                        p.names.entry(*peer).or_default().push(i);
                    }
                    if let Some(req) = invite {
                        p.uses.entry(req.invite.id()).or_default().push(i);
                    }
                }
                Op::Revoke { peer } => p.revokes.entry(*peer).or_default().push(i),
                Op::Promote { peer } => p.admins.entry(*peer).or_default().push(i),
                Op::SetName { peer, .. } => p.names.entry(*peer).or_default().push(i),
                Op::SetLease { peer, .. } => p.leases.entry(*peer).or_default().push(i),
            }
        }
        p
    }

    /// Order-free choice among ops: the earliest by (time, id).
    fn earliest(&self, list: Option<&Vec<usize>>) -> Option<usize> {
        list?
            .iter()
            .copied()
            .min_by_key(|&i| (self.ops[i].op.time_ms(), self.ops[i].op.id()))
    }

    /// Order-free choice of the current value among ops setting it: those no other one has
    /// seen, then the latest by (time, id).
    fn latest(&self, list: Option<&Vec<usize>>) -> Option<usize> {
        let list = list?;
        // One union of pasts, not a pairwise check: linear in the number of setters.
        let mut seen = Bits::default();
        for &o in list {
            seen.union_with(&self.ops[o].past);
        }
        list.iter()
            .copied()
            .filter(|&c| !seen.has(c))
            .max_by_key(|&i| (self.ops[i].op.time_ms(), self.ops[i].op.id()))
    }

    fn member_set(&self, p: &Pass) -> BTreeMap<PeerId, Member> {
        let mut peers: Vec<PeerId> = vec![self.creator];
        peers.extend(p.adds.keys().copied());
        peers.extend(p.revokes.keys().copied());
        let mut out = BTreeMap::new();
        for peer in peers {
            let added = if peer == self.creator {
                Some(0)
            } else {
                self.earliest(p.adds.get(&peer))
            };
            let is_admin = peer == self.creator || p.admins.contains_key(&peer);
            let name = self
                .latest(p.names.get(&peer))
                .and_then(|i| match self.ops[i].op.op() {
                    Op::Add { name, .. } => name.clone(),
                    Op::SetName { name, .. } => Some(name.clone()),
                    _ => None,
                });
            let lease = self
                .latest(p.leases.get(&peer))
                .and_then(|i| match self.ops[i].op.op() {
                    Op::SetLease { lease, .. } => Some(lease.clone()),
                    _ => None,
                });
            let revoked_by = self
                .earliest(p.revokes.get(&peer))
                .map(|i| *self.ops[i].op.author());
            out.insert(
                peer,
                Member {
                    peer,
                    role: if is_admin { Role::Admin } else { Role::Member },
                    name,
                    lease,
                    added_by: added.map(|i| *self.ops[i].op.author()),
                    added_at_ms: added.map(|i| self.ops[i].op.time_ms()),
                    revoked_by,
                },
            );
        }
        out
    }
}

//! The record: a DAG of signed ops and the member set computed from it.

use std::collections::{BTreeMap, HashMap};

use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use rand::{CryptoRng, RngCore};

use super::invite::{InviteToken, JoinRequest};
use super::op::{Lease, NetworkId, Op, OpId, Role, SignedOp, peer_of_key};
use super::{MAX_DEPS, MAX_HEADS, MAX_OPS, MAX_PENDING, MAX_SYNC_BATCH, OpError};

mod evaluate;

/// A fixed set of op indices.
#[derive(Debug, Clone, Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn with_len(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        if i / 64 >= self.0.len() {
            self.0.resize(i / 64 + 1, 0);
        }
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn has(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn union_with(&mut self, other: &Bits) {
        if other.0.len() > self.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
}

/// Whether any op of `list` is in `past`.
fn any_in(list: Option<&Vec<usize>>, past: &Bits) -> bool {
    list.is_some_and(|l| l.iter().any(|&j| past.has(j)))
}

/// One stored op and its strict causal past.
#[derive(Debug)]
struct Stored {
    op: SignedOp,
    past: Bits,
}

/// A member as the record says, revoked ones included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its peer id.
    pub peer: PeerId,
    /// Its role (the last it held, if revoked).
    pub role: Role,
    /// Its name, if one was set.
    pub name: Option<String>,
    /// Its address lease, if one was set.
    pub lease: Option<Lease>,
    /// Who added it (`None` for a peer revoked without ever being added).
    pub added_by: Option<PeerId>,
    /// When, by the adder's clock (ms since the Unix epoch).
    pub added_at_ms: Option<u64>,
    /// Who revoked it, if revoked.
    pub revoked_by: Option<PeerId>,
}

impl Member {
    /// Revoked for good.
    pub fn revoked(&self) -> bool {
        self.revoked_by.is_some()
    }
}

/// What [`Membership::apply`] did with an op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Stored, with any pending ops it unblocked. Whether it took effect is
    /// [`Membership::is_effective`]'s answer (it may change as concurrent ops arrive,
    /// except for a `Revoke`).
    Stored {
        /// Ids stored, this op first.
        ids: Vec<OpId>,
    },
    /// Held until its deps arrive.
    Pending {
        /// The deps not held yet.
        missing: Vec<OpId>,
    },
    /// Already held (stored or pending).
    Duplicate,
}

/// One network's membership record.
#[derive(Debug)]
pub struct Membership {
    network: NetworkId,
    name: String,
    creator: PeerId,
    /// In arrival order, which is causal: an op is stored only after its deps.
    ops: Vec<Stored>,
    index: HashMap<OpId, usize>,
    is_head: Vec<bool>,
    /// Ops naming a peer as added or promoted, whatever their validity: an author must
    /// appear here in its op's past for the op to be stored.
    named: HashMap<PeerId, Vec<usize>>,
    by_author: HashMap<PeerId, Vec<usize>>,
    pending: HashMap<OpId, SignedOp>,
    valid: Vec<bool>,
    members: BTreeMap<PeerId, Member>,
}

impl Membership {
    /// Creates a network named `name` with `key`'s owner as creator and first admin.
    pub fn create(
        name: &str,
        key: &SigningKey,
        time_ms: u64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, OpError> {
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        let genesis = SignedOp::sign(
            key,
            None,
            Vec::new(),
            time_ms,
            Op::Create {
                name: name.to_owned(),
                creator: peer_of_key(&key.verifying_key()),
                nonce,
            },
        )?;
        Self::from_genesis(genesis)
    }

    /// A record holding only `genesis`, a network's `Create` op (a joiner gets it first).
    pub fn from_genesis(genesis: SignedOp) -> Result<Self, OpError> {
        let Op::Create { name, creator, .. } = genesis.op() else {
            return Err(OpError::Genesis);
        };
        let mut m = Self {
            network: NetworkId(genesis.id().0),
            name: name.clone(),
            creator: *creator,
            ops: Vec::new(),
            index: HashMap::new(),
            is_head: Vec::new(),
            named: HashMap::new(),
            by_author: HashMap::new(),
            pending: HashMap::new(),
            valid: Vec::new(),
            members: BTreeMap::new(),
        };
        m.store(genesis)?;
        m.evaluate();
        Ok(m)
    }

    /// The network's id.
    pub fn network(&self) -> NetworkId {
        self.network
    }
    /// Its name, as created.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its creator.
    pub fn creator(&self) -> &PeerId {
        &self.creator
    }
    /// The `Create` op.
    pub fn genesis(&self) -> &SignedOp {
        &self.ops[0].op
    }
    /// Number of stored ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// Never true: the genesis is always held.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Number of ops waiting for their deps.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
    /// All stored ops in causal order (to save, or to send).
    pub fn ops(&self) -> impl Iterator<Item = &SignedOp> {
        self.ops.iter().map(|s| &s.op)
    }

    /// Everyone the record names, revoked ones included, by peer id.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }
    /// One peer's entry.
    pub fn member(&self, peer: &PeerId) -> Option<&Member> {
        self.members.get(peer)
    }
    /// A current (not revoked) member's role; `None` for anyone else. What the trust gate
    /// will ask.
    pub fn role(&self, peer: &PeerId) -> Option<Role> {
        self.members
            .get(peer)
            .filter(|m| !m.revoked())
            .map(|m| m.role)
    }
    /// A current member.
    pub fn is_member(&self, peer: &PeerId) -> bool {
        self.role(peer).is_some()
    }
    /// Whether a stored op takes effect in the record as held now.
    pub fn is_effective(&self, id: &OpId) -> bool {
        self.index.get(id).is_some_and(|&i| self.valid[i])
    }

    /// Whether stored op `a` is in the causal past of stored op `b`.
    #[cfg(test)]
    pub(crate) fn is_ancestor(&self, a: &OpId, b: &OpId) -> bool {
        match (self.index.get(a), self.index.get(b)) {
            (Some(&a), Some(&b)) => self.ops[b].past.has(a),
            _ => false,
        }
    }

    /// The ops nothing stored depends on, sorted.
    pub fn heads(&self) -> Vec<OpId> {
        let mut h: Vec<OpId> = (0..self.ops.len())
            .filter(|&i| self.is_head[i])
            .map(|i| self.ops[i].op.id())
            .collect();
        h.sort();
        h
    }

    /// The stored ops a peer whose heads are `their_heads` lacks, in causal order, at most
    /// [`MAX_SYNC_BATCH`]; call again after they applied these. Heads we do not know are
    /// skipped (they hold something we lack; our own sync asks for it).
    pub fn missing_for(&self, their_heads: &[OpId]) -> Vec<SignedOp> {
        let mut known = Bits::with_len(self.ops.len());
        for h in their_heads.iter().take(MAX_HEADS) {
            if let Some(&j) = self.index.get(h) {
                known.set(j);
                known.union_with(&self.ops[j].past);
            }
        }
        (0..self.ops.len())
            .filter(|&i| !known.has(i))
            .take(MAX_SYNC_BATCH)
            .map(|i| self.ops[i].op.clone())
            .collect()
    }

    /// Takes in a received op: stored if its deps are held (then any pending op it
    /// unblocks), else held pending. The member set is recomputed.
    pub fn apply(&mut self, op: SignedOp) -> Result<Applied, OpError> {
        let applied = self.take(op)?;
        if matches!(applied, Applied::Stored { .. }) {
            self.evaluate();
        }
        Ok(applied)
    }

    /// [`Membership::apply`] for many ops (a sync batch, a saved record), recomputing the
    /// member set once.
    pub fn apply_all(
        &mut self,
        ops: impl IntoIterator<Item = SignedOp>,
    ) -> Vec<Result<Applied, OpError>> {
        let out: Vec<_> = ops.into_iter().map(|op| self.take(op)).collect();
        self.evaluate();
        out
    }

    fn take(&mut self, op: SignedOp) -> Result<Applied, OpError> {
        let id = op.id();
        if self.index.contains_key(&id) || self.pending.contains_key(&id) {
            return Ok(Applied::Duplicate);
        }
        if matches!(op.op(), Op::Create { .. }) {
            return Err(OpError::Genesis);
        }
        if op.network() != Some(self.network) {
            return Err(OpError::WrongNetwork);
        }
        let missing: Vec<OpId> = op
            .deps()
            .iter()
            .filter(|d| !self.index.contains_key(d))
            .copied()
            .collect();
        if !missing.is_empty() {
            if self.pending.len() >= MAX_PENDING {
                return Err(OpError::PendingFull);
            }
            tracing::debug!(op = ?id, missing = missing.len(), "network op pending");
            self.pending.insert(id, op);
            return Ok(Applied::Pending { missing });
        }
        self.store(op)?;
        let mut ids = vec![id];
        // Unblock pending ops until none is ready; each round stores at least one or stops.
        loop {
            let ready: Vec<OpId> = self
                .pending
                .iter()
                .filter(|(_, p)| p.deps().iter().all(|d| self.index.contains_key(d)))
                .map(|(id, _)| *id)
                .collect();
            if ready.is_empty() {
                break;
            }
            for pid in ready {
                if let Some(p) = self.pending.remove(&pid) {
                    match self.store(p) {
                        Ok(()) => ids.push(pid),
                        Err(e) => {
                            tracing::debug!(op = ?pid, error = %e, "pending network op dropped")
                        }
                    }
                }
            }
        }
        Ok(Applied::Stored { ids })
    }

    /// Appends an op whose deps are all held.
    fn store(&mut self, op: SignedOp) -> Result<(), OpError> {
        let n = self.ops.len();
        if n >= MAX_OPS {
            return Err(OpError::Full);
        }
        let mut past = Bits::with_len(n);
        for d in op.deps() {
            let j = self.index[d];
            past.set(j);
            past.union_with(&self.ops[j].past);
        }
        // Intrinsic to the op and its past, so every replica decides alike: an author never
        // named before cannot have had any right, and storing it would let anyone fill the
        // record.
        let author = *op.author();
        if n > 0 && author != self.creator && !any_in(self.named.get(&author), &past) {
            return Err(OpError::UnknownAuthor);
        }
        for d in op.deps() {
            self.is_head[self.index[d]] = false;
        }
        if let Op::Add { peer, .. } | Op::Promote { peer } = op.op() {
            self.named.entry(*peer).or_default().push(n);
        }
        self.by_author.entry(author).or_default().push(n);
        self.index.insert(op.id(), n);
        self.is_head.push(true);
        self.ops.push(Stored { op, past });
        Ok(())
    }

    /// Deps for a new local op: the heads, the newest first if there are more than
    /// [`MAX_DEPS`] (the rest count as unseen).
    fn deps_for_new(&self) -> Vec<OpId> {
        let mut heads: Vec<usize> = (0..self.ops.len()).filter(|&i| self.is_head[i]).collect();
        heads.reverse();
        heads.truncate(MAX_DEPS);
        heads.into_iter().map(|i| self.ops[i].op.id()).collect()
    }

    /// Makes, stores and returns a local op (to send to the members we are connected to).
    /// Refused up front when the record as held would not let `key`'s owner make it.
    pub fn make(&mut self, key: &SigningKey, op: Op, now_ms: u64) -> Result<SignedOp, OpError> {
        let me = peer_of_key(&key.verifying_key());
        let admin = self.role(&me) == Some(Role::Admin);
        let allowed = match &op {
            Op::Create { .. } => return Err(OpError::Genesis),
            Op::Add { peer, invite, .. } => {
                !self.member(peer).is_some_and(Member::revoked)
                    && (invite.is_some() && self.is_member(&me) || admin)
            }
            Op::Revoke { peer } => {
                *peer != self.creator && (admin || (*peer == me && self.is_member(&me)))
            }
            Op::Promote { peer } => admin && self.is_member(peer),
            Op::SetName { peer, .. } | Op::SetLease { peer, .. } => {
                self.is_member(peer) && (admin || *peer == me)
            }
        };
        if !allowed {
            return Err(OpError::NotAuthorized);
        }
        let signed = SignedOp::sign(key, Some(self.network), self.deps_for_new(), now_ms, op)?;
        self.apply(signed.clone())?;
        if !self.is_effective(&signed.id()) {
            // Our own view said yes; the record's rules said no (an invite check, say).
            return Err(OpError::NotAuthorized);
        }
        Ok(signed)
    }

    /// Issues an invite, if `key`'s owner is an admin.
    pub fn invite(
        &self,
        key: &SigningKey,
        expires_ms: u64,
        max_uses: u32,
        role: Role,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<InviteToken, OpError> {
        if self.role(&peer_of_key(&key.verifying_key())) != Some(Role::Admin) {
            return Err(OpError::NotAuthorized);
        }
        InviteToken::issue(self.network, key, expires_ms, max_uses, role, rng)
    }

    /// Admits a joiner who presented `request` for `joiner` (the peer id its connection
    /// authenticated): checks it against this record and `now_ms`, then makes the `Add`.
    pub fn admit(
        &mut self,
        key: &SigningKey,
        joiner: &PeerId,
        request: JoinRequest,
        name: Option<String>,
        now_ms: u64,
    ) -> Result<SignedOp, OpError> {
        let inv = &request.invite;
        if inv.network != self.network {
            return Err(OpError::WrongNetwork);
        }
        request.verify_for(joiner)?;
        if now_ms > inv.expires_ms {
            return Err(OpError::InviteExpired);
        }
        if self.role(&inv.issuer) != Some(Role::Admin) {
            return Err(OpError::NotAuthorized);
        }
        let id = inv.id();
        let used = self
            .ops
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                self.valid[*i]
                    && matches!(s.op.op(), Op::Add { invite: Some(r), .. } if r.invite.id() == id)
            })
            .count();
        if used >= inv.max_uses as usize {
            return Err(OpError::InviteUsedUp);
        }
        let role = inv.role;
        self.make(
            key,
            Op::Add {
                peer: *joiner,
                role,
                name,
                invite: Some(Box::new(request)),
            },
            now_ms,
        )
    }
}

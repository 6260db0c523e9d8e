//! The records' side of the exchange with other members (see [`super::exchange`]): what
//! we share with a peer, the ops it lacks, taking in its ops, and admitting a joiner.

use libp2p::PeerId;

use super::db::NetworkDb;
use super::{MAX_NETWORKS, NetError, NetInfo, Networks, now_ms};
use crate::network::{Applied, JoinRequest, Membership, NetworkId, OpError, OpId, SignedOp};

impl Networks {
    /// The networks in which our record names `peer` as a current member.
    pub(crate) fn shared_with(&self, peer: &PeerId) -> Vec<NetworkId> {
        self.state()
            .values()
            .filter(|m| m.is_member(peer) && m.is_member(&self.inner.me))
            .map(|m| m.network())
            .collect()
    }

    /// The current members of `network` other than us.
    pub(crate) fn members_of(&self, network: &NetworkId) -> Vec<PeerId> {
        self.state()
            .get(network)
            .map(|m| {
                m.members()
                    .filter(|x| !x.revoked() && x.peer != self.inner.me)
                    .map(|x| x.peer)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn heads(&self, network: &NetworkId) -> Option<Vec<OpId>> {
        self.state().get(network).map(|m| m.heads())
    }

    /// The ops a peer with `their_heads` lacks (all of them for `None`), one batch.
    pub(crate) fn missing_for(&self, network: &NetworkId, their_heads: &[OpId]) -> Vec<SignedOp> {
        self.state()
            .get(network)
            .map(|m| m.missing_for(their_heads))
            .unwrap_or_default()
    }

    /// Takes in ops `from` sent for `network`. Ops are judged by their signatures and the
    /// record's rules, not by who relayed them, so they are taken from anyone; unknown
    /// networks are ignored. Returns how many ops were stored.
    pub(crate) fn apply_remote(
        &self,
        from: PeerId,
        network: &NetworkId,
        ops: Vec<SignedOp>,
    ) -> Result<usize, NetError> {
        if ops.is_empty() {
            return Ok(0);
        }
        let _order = self.writer();
        let (name, stored, row) = {
            let mut state = self.state();
            let Some(m) = state.get_mut(network) else {
                return Ok(0);
            };
            let stored: usize = m
                .apply_all(ops.clone())
                .into_iter()
                .map(|r| match r {
                    Ok(Applied::Stored { ids }) => ids.len(),
                    Ok(_) => 0,
                    Err(e) => {
                        tracing::debug!(peer = %from, "network op refused: {e}");
                        0
                    }
                })
                .sum();
            if stored == 0 {
                return Ok(0);
            }
            (m.name().to_string(), stored, NetworkDb::encode(m))
        };
        self.commit(*network, row)?;
        tracing::debug!(peer = %from, network = name, "network record changed");
        self.changed(*network, &name, Some(from), ops);
        Ok(stored)
    }

    /// Answers a join request from `joiner` (authenticated by its connection): admits it
    /// and returns the first batch of the record. A joiner already in gets the record
    /// again without a new op.
    pub(crate) fn admit(
        &self,
        joiner: PeerId,
        request: JoinRequest,
        name: Option<String>,
    ) -> Result<Vec<SignedOp>, NetError> {
        let network = request.invite.network;
        let _order = self.writer();
        let (ops, name_of, add, row) = {
            let mut state = self.state();
            let m = state.get_mut(&network).ok_or_else(|| NetError::Refused {
                what: "join",
                source: OpError::WrongNetwork,
            })?;
            let mut add = Vec::new();
            let mut row = None;
            if !m.is_member(&joiner) {
                add.push(
                    m.admit(&self.inner.key, &joiner, request, name, now_ms())
                        .map_err(NetError::refused("join"))?,
                );
                row = Some(NetworkDb::encode(m));
            }
            (m.missing_for(&[]), m.name().to_string(), add, row)
        };
        if let Some(row) = row {
            self.commit(network, row)?;
        }
        tracing::info!(peer = %joiner, network = name_of, "admitted a member");
        self.changed(network, &name_of, Some(joiner), add);
        Ok(ops)
    }

    /// Stores the record a member sent us when we joined: it must be the invite's
    /// network, and name us a member.
    pub(crate) fn joined(
        &self,
        network: NetworkId,
        ops: Vec<SignedOp>,
    ) -> Result<Membership, NetError> {
        let mut ops = ops.into_iter();
        let bad =
            |reason: &str| NetError::Invalid(format!("the member sent a bad record: {reason}"));
        let genesis = ops.next().ok_or_else(|| bad("empty"))?;
        let mut m = Membership::from_genesis(genesis).map_err(|e| bad(&e.to_string()))?;
        if m.network() != network {
            return Err(bad("another network"));
        }
        m.apply_all(ops);
        Ok(m)
    }

    /// Keeps a joined record once it names us: saved, then announced.
    pub(crate) fn keep_joined(&self, m: Membership) -> Result<NetInfo, NetError> {
        if !m.is_member(&self.inner.me) {
            return Err(NetError::Invalid(
                "the member's record does not name us a member".into(),
            ));
        }
        let (id, name) = (m.network(), m.name().to_string());
        {
            let _order = self.writer();
            {
                let state = self.state();
                if state
                    .values()
                    .any(|o| o.name() == name && o.network() != id)
                {
                    return Err(NetError::Exists(name));
                }
                if state.len() >= MAX_NETWORKS && !state.contains_key(&id) {
                    return Err(NetError::Invalid(format!(
                        "this node is in {MAX_NETWORKS} networks, the most it may"
                    )));
                }
            }
            self.inner.db.save(&m)?;
            self.state().insert(id, m);
        }
        self.changed(id, &name, None, Vec::new());
        self.list()
            .into_iter()
            .find(|n| n.name == name)
            .ok_or(NetError::UnknownNetwork(name))
    }

    /// How many exchanges of a network we hold were answered with nothing because the
    /// asker is no current member (a revoked or never-admitted peer).
    pub fn refused_exchanges(&self) -> u64 {
        self.inner
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn count_refused(&self) {
        self.inner
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Our peer id.
    pub(crate) fn me(&self) -> PeerId {
        self.inner.me
    }

    /// Whether we hold `network`.
    pub(crate) fn holds(&self, network: &NetworkId) -> bool {
        self.state().contains_key(network)
    }

    /// Whether `peer` is a current member of `network` by id.
    pub(crate) fn is_member_id(&self, network: &NetworkId, peer: &PeerId) -> bool {
        self.state().get(network).is_some_and(|m| m.is_member(peer))
    }
}

//! Networks wired into the node (issue #20): the membership records of [`crate::network`]
//! kept in the node's database ([`db`]), exchanged between members over the node-internal
//! stream protocol [`exchange::NET_PROTOCOL`], joined with invite tickets, and served on
//! the control socket under `/v1/net/...` ([`routes`]).
//!
//! [`Networks`] is the one handle: protocols ask it whether a peer is a current member of
//! a network ([`Networks::is_member`]) and subscribe to changes ([`Networks::subscribe`])
//! so they can close a revoked member's streams at once; they never read records. The
//! node knows which networks exist, not what a protocol does inside one.
//!
//! # Exchange
//! Whenever a connection to a peer comes up, the node syncs every network in which its
//! record names that peer as a current member (a peer we do not know as a member learns
//! nothing, not even which networks we are in). A change made here, or received and new,
//! is pushed at once to every connected member of that network. See [`exchange`].
//!
//! # Tickets
//! What `net invite` prints and `net join` takes: the invite token of
//! [`crate::network::InviteToken`] (network, invite key and secret, expiry, uses, role,
//! the issuing admin's peer id, signed by that admin), then `.` and the base32 CBOR of up
//! to [`MAX_TICKET_ADDRS`] addresses: where the issuer listened when it issued the ticket,
//! then one address each (ending in `/p2p/<id>`) of up to [`MAX_TICKET_MEMBERS`] other
//! members it was connected to. Any member can admit the joiner, so the joiner asks the
//! issuer first (at its addresses, or else found in the DHT by its peer id), then each of
//! those members in turn, until one answers: a ticket works while its issuer is offline.

pub mod db;
pub mod exchange;
pub mod routes;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use crate::error::NodeError;
use crate::network::{
    Applied, InviteToken, JoinRequest, Lease, Member, Membership, NetworkId, Op, OpError, OpId,
    Role, SignedOp,
};
use crate::store::StoreError;
use db::NetworkDb;

/// Most networks one node is in.
pub const MAX_NETWORKS: usize = 256;
/// Most addresses a ticket carries.
pub const MAX_TICKET_ADDRS: usize = 8;
/// Of those, most that name other members than the issuer.
pub const MAX_TICKET_MEMBERS: usize = 3;
/// Longest address in a ticket, in bytes of text.
const MAX_TICKET_ADDR_LEN: usize = 256;
/// Longest ticket text accepted.
pub const MAX_TICKET_TEXT: usize = 4096;
/// Changes buffered per subscriber; a slower one gets `Lagged` and should re-check all.
const EVENT_QUEUE: usize = 256;
/// Ops waiting to be pushed to connected members; past it a push is dropped (the members
/// get the ops when they next connect).
const PUSH_QUEUE: usize = 256;

/// Why a network command failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No network of that name here.
    #[error("no network named `{0}` here (see `p2pnode net list`)")]
    UnknownNetwork(String),
    /// A network of that name is already here.
    #[error("a network named `{0}` is already here")]
    Exists(String),
    /// Bad input: a name, a duration, a peer.
    #[error("{0}")]
    Invalid(String),
    /// The membership rules refused it (not an admin, a forged or used-up invite, ...).
    #[error("{what}: {source}")]
    Refused {
        /// What was refused.
        what: &'static str,
        /// The rule.
        #[source]
        source: OpError,
    },
    /// The member we asked refused our join request.
    #[error("join refused by {peer}: {reason}")]
    JoinRefused {
        /// The member.
        peer: String,
        /// Its reason.
        reason: String,
    },
    /// The peer broke the exchange protocol.
    #[error("network exchange with {peer} failed: {reason}")]
    Exchange {
        /// The peer.
        peer: String,
        /// What went wrong.
        reason: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node failed (dial, stream, stopped).
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl NetError {
    /// A stable machine-readable name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownNetwork(_) => "unknown_network",
            Self::Exists(_) => "exists",
            Self::Invalid(_) => "invalid_input",
            Self::Refused { .. } => "refused",
            Self::JoinRefused { .. } => "join_refused",
            Self::Exchange { .. } => "exchange",
            Self::Store(_) => "store",
            Self::Node(e) => e.kind(),
        }
    }

    fn refused(what: &'static str) -> impl FnOnce(OpError) -> Self {
        move |source| Self::Refused { what, source }
    }
}

impl crate::route::ApiError for NetError {
    fn kind(&self) -> &str {
        NetError::kind(self)
    }

    fn status(&self) -> u16 {
        match self {
            Self::UnknownNetwork(_) => 404,
            Self::Exists(_) => 409,
            Self::Invalid(_) => 400,
            Self::Refused { .. } | Self::JoinRefused { .. } => 403,
            Self::Exchange { .. } => 502,
            Self::Store(_) => 500,
            Self::Node(e) => crate::route::ApiError::status(e),
        }
    }
}

/// A network as `net list` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetInfo {
    /// Its name.
    pub name: String,
    /// Its id (hex): the hash of its creation.
    pub id: String,
    /// Our role, or `revoked`.
    pub role: String,
    /// Current members (not revoked).
    pub members: usize,
    /// Ops in its record.
    pub ops: usize,
}

/// A member as `net members` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberInfo {
    /// Its peer id.
    pub peer_id: String,
    /// The name the record gives it, if any.
    pub name: Option<String>,
    /// `admin` or `member`.
    pub role: String,
    /// Who added it (the creator was added by nobody).
    pub added_by: Option<String>,
    /// When, by the adder's clock (ms since the Unix epoch).
    pub added_at_ms: Option<u64>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// Revoked for good.
    pub revoked: bool,
}

/// What `net invite` returns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InviteInfo {
    /// The network.
    pub network: String,
    /// The ticket to give the joiner.
    pub ticket: String,
    /// When it expires (ms since the Unix epoch).
    pub expires_at_ms: u64,
    /// How many peers may join with it.
    pub uses: u32,
    /// The role it grants.
    pub role: String,
}

/// A network as a protocol that hands out addresses sees it (the tunnel): its id and
/// everyone its record names, revoked ones included, with the lease each recorded. The
/// node does not read leases: they are the protocol's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    /// The network's id.
    pub id: NetworkId,
    /// Its members, revoked ones included.
    pub members: Vec<Member>,
}

/// A change to a record, for protocols that act on membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// The record of the network named `name` changed: re-check its members.
    Changed {
        /// The network's id.
        network: NetworkId,
        /// Its name.
        name: String,
    },
    /// We left the network (or were revoked from it).
    Left {
        /// Its name.
        name: String,
    },
}

/// New ops to push to the members of a network that are connected.
#[derive(Debug)]
pub(crate) struct Push {
    pub(crate) network: NetworkId,
    pub(crate) ops: Vec<SignedOp>,
    /// The current members when the ops were made or taken, the peer they came from left
    /// out (a snapshot: after `leave` the record is gone but the push still goes out).
    pub(crate) to: Vec<PeerId>,
}

struct Inner {
    me: PeerId,
    key: ed25519_dalek::SigningKey,
    db: NetworkDb,
    state: Mutex<BTreeMap<NetworkId, Membership>>,
    events: broadcast::Sender<NetEvent>,
    push: mpsc::Sender<Push>,
    /// Exchanges of a network we hold answered with nothing: the asker is no member.
    refused: std::sync::atomic::AtomicU64,
}

/// The node's networks. Cheap to clone.
#[derive(Clone)]
pub struct Networks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Networks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Networks")
    }
}

/// Milliseconds since the Unix epoch now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Checks a network name: 1 to 64 of `A-Z a-z 0-9 . _ -` (it names documents' networks
/// in paths and on the command line).
pub fn check_name(name: &str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name.len() <= crate::network::MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NetError::Invalid(format!(
            "invalid network name `{name}`: use 1 to 64 of A-Z a-z 0-9 . _ -"
        )))
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

fn member_info(m: &Member) -> MemberInfo {
    MemberInfo {
        peer_id: m.peer.to_string(),
        name: m.name.clone(),
        role: role_name(m.role).into(),
        added_by: m.added_by.map(|p| p.to_string()),
        added_at_ms: m.added_at_ms,
        revoked_by: m.revoked_by.map(|p| p.to_string()),
        revoked: m.revoked(),
    }
}

impl Networks {
    /// Loads every stored record. A record that does not read back is logged as an error
    /// and left out (its row stays untouched on disk), so one bad record does not keep
    /// the node from starting. Returns the handle and the receiver of pushes, for the
    /// exchange task.
    pub(crate) fn open(
        db: NetworkDb,
        key: ed25519_dalek::SigningKey,
    ) -> Result<(Self, mpsc::Receiver<Push>), StoreError> {
        let me = crate::network::peer_of_key(&key.verifying_key());
        let mut state = BTreeMap::new();
        for loaded in db.load_all()? {
            match loaded {
                Ok(m) => {
                    state.insert(m.network(), m);
                }
                Err(e) => tracing::error!("network record not loaded: {e}"),
            }
        }
        let (push, push_rx) = mpsc::channel(PUSH_QUEUE);
        let networks = Self {
            inner: Arc::new(Inner {
                me,
                key,
                db,
                state: Mutex::new(state),
                events: broadcast::channel(EVENT_QUEUE).0,
                push,
                refused: Default::default(),
            }),
        };
        Ok((networks, push_rx))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BTreeMap<NetworkId, Membership>> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn by_name<'a>(
        state: &'a mut BTreeMap<NetworkId, Membership>,
        name: &str,
    ) -> Result<&'a mut Membership, NetError> {
        state
            .values_mut()
            .find(|m| m.name() == name)
            .ok_or_else(|| NetError::UnknownNetwork(name.to_string()))
    }

    /// Whether `peer` is a current (not revoked) member of the network named `network`.
    /// What protocols ask before serving a peer anything of that network.
    pub fn is_member(&self, network: &str, peer: &PeerId) -> bool {
        self.state()
            .values()
            .any(|m| m.name() == network && m.is_member(peer))
    }

    /// Whether some network names both us and `peer` current members.
    pub fn shares_a_network(&self, peer: &PeerId) -> bool {
        self.state()
            .values()
            .any(|m| m.is_member(peer) && m.is_member(&self.inner.me))
    }

    /// Whether we hold the network named `network` and are a current member of it.
    pub fn is_in(&self, network: &str) -> bool {
        self.is_member(network, &self.inner.me)
    }

    /// Changes to the records, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<NetEvent> {
        self.inner.events.subscribe()
    }

    /// The networks we hold.
    pub fn list(&self) -> Vec<NetInfo> {
        let me = self.inner.me;
        self.state()
            .values()
            .map(|m| NetInfo {
                name: m.name().to_string(),
                id: m.network().to_string(),
                role: m.role(&me).map(role_name).unwrap_or("revoked").to_string(),
                members: m.members().filter(|x| !x.revoked()).count(),
                ops: m.len(),
            })
            .collect()
    }

    /// Everyone the record of `network` names, revoked ones included.
    pub fn members(&self, network: &str) -> Result<Vec<MemberInfo>, NetError> {
        let mut state = self.state();
        let m = Self::by_name(&mut state, network)?;
        Ok(m.members().map(member_info).collect())
    }

    /// The id and members (with names and leases) of `network`.
    pub fn roster(&self, network: &str) -> Result<Roster, NetError> {
        let mut state = self.state();
        let m = Self::by_name(&mut state, network)?;
        Ok(Roster {
            id: m.network(),
            members: m.members().cloned().collect(),
        })
    }

    /// Records our own address lease in `network` (opaque bytes, at most
    /// [`crate::network::MAX_LEASE_LEN`]), stores it and pushes it to the members.
    pub fn set_lease(&self, network: &str, lease: Vec<u8>) -> Result<(), NetError> {
        let lease = Lease::new(lease).map_err(NetError::refused("lease"))?;
        let peer = self.inner.me;
        self.make(network, Op::SetLease { peer, lease }, "lease")
    }

    /// Names us `name` in `network` (the name protocols show and resolve, as the
    /// tunnel's `<name>.p2p`), stores it and pushes it to the members. Refused when
    /// another current member holds the name.
    pub fn set_name(&self, network: &str, name: &str) -> Result<(), NetError> {
        let peer = self.inner.me;
        {
            let mut state = self.state();
            let m = Self::by_name(&mut state, network)?;
            let taken = m
                .members()
                .any(|o| o.peer != peer && !o.revoked() && o.name.as_deref() == Some(name));
            if taken {
                return Err(NetError::Invalid(format!(
                    "the name `{name}` is already taken in network `{network}`"
                )));
            }
        }
        let op = Op::SetName {
            peer,
            name: name.to_string(),
        };
        self.make(network, op, "name")
    }

    /// Creates a network with us as its first admin.
    pub fn create(&self, name: &str) -> Result<NetInfo, NetError> {
        check_name(name)?;
        {
            let mut state = self.state();
            if state.values().any(|m| m.name() == name) {
                return Err(NetError::Exists(name.to_string()));
            }
            if state.len() >= MAX_NETWORKS {
                return Err(NetError::Invalid(format!(
                    "this node is in {MAX_NETWORKS} networks, the most it may"
                )));
            }
            let m = Membership::create(name, &self.inner.key, now_ms(), &mut rand::rngs::OsRng)
                .map_err(NetError::refused("create"))?;
            self.inner.db.save(&m)?;
            state.insert(m.network(), m);
        }
        self.list()
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| NetError::UnknownNetwork(name.to_string()))
    }

    /// Issues an invite ticket for `network` (we must be an admin), carrying `addrs`.
    pub fn invite(
        &self,
        network: &str,
        expires_in: Duration,
        uses: u32,
        admin: bool,
        addrs: &[Multiaddr],
    ) -> Result<InviteInfo, NetError> {
        let role = if admin { Role::Admin } else { Role::Member };
        let expires_at_ms = now_ms().saturating_add(expires_in.as_millis() as u64);
        let mut state = self.state();
        let m = Self::by_name(&mut state, network)?;
        let token = m
            .invite(
                &self.inner.key,
                expires_at_ms,
                uses,
                role,
                &mut rand::rngs::OsRng,
            )
            .map_err(NetError::refused("invite"))?;
        Ok(InviteInfo {
            network: network.to_string(),
            ticket: ticket_text(&token, addrs),
            expires_at_ms,
            uses,
            role: role_name(role).into(),
        })
    }

    /// Makes a local op in `network` (revoke, promote), stores it and pushes it.
    fn make(&self, network: &str, op: Op, what: &'static str) -> Result<(), NetError> {
        let id = {
            let mut state = self.state();
            let m = Self::by_name(&mut state, network)?;
            let op = m
                .make(&self.inner.key, op, now_ms())
                .map_err(NetError::refused(what))?;
            self.save(m)?;
            (m.network(), op)
        };
        self.changed(id.0, network, None, vec![id.1]);
        Ok(())
    }

    /// Revokes `peer` from `network`.
    pub fn revoke(&self, network: &str, peer: PeerId) -> Result<MemberInfo, NetError> {
        self.make(network, Op::Revoke { peer }, "revoke")?;
        self.member(network, &peer)
    }

    /// Makes `peer` an admin of `network`.
    pub fn promote(&self, network: &str, peer: PeerId) -> Result<MemberInfo, NetError> {
        self.make(network, Op::Promote { peer }, "promote")?;
        self.member(network, &peer)
    }

    fn member(&self, network: &str, peer: &PeerId) -> Result<MemberInfo, NetError> {
        let mut state = self.state();
        let m = Self::by_name(&mut state, network)?;
        m.member(peer)
            .map(member_info)
            .ok_or_else(|| NetError::Invalid(format!("{peer} is not in network `{network}`")))
    }

    /// Leaves `network`: revokes ourselves (pushed to the connected members, so they stop
    /// serving us at once), then forgets the record. The creator cannot leave.
    pub fn leave(&self, network: &str) -> Result<NetInfo, NetError> {
        let me = self.inner.me;
        let info = self
            .list()
            .into_iter()
            .find(|n| n.name == network)
            .ok_or_else(|| NetError::UnknownNetwork(network.to_string()))?;
        if info.role != "revoked" {
            self.make(network, Op::Revoke { peer: me }, "leave")?;
        }
        let id = Self::by_name(&mut self.state(), network)?.network();
        // The revocation's push carries its own op and recipients: it goes out after the
        // record is gone.
        self.inner.db.remove(&id)?;
        self.state().remove(&id);
        let _ = self.inner.events.send(NetEvent::Left {
            name: network.to_string(),
        });
        Ok(NetInfo {
            role: "revoked".into(),
            ..info
        })
    }

    /// Saves `m`; on failure reloads what is on disk so memory never runs ahead of it.
    fn save(&self, m: &mut Membership) -> Result<(), NetError> {
        if let Err(e) = self.inner.db.save(m) {
            tracing::error!(network = m.name(), "cannot save the network record: {e}");
            let id = m.network();
            if let Ok(all) = self.inner.db.load_all()
                && let Some(Ok(old)) = all
                    .into_iter()
                    .find(|r| r.as_ref().is_ok_and(|o| o.network() == id))
            {
                *m = old;
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Tells subscribers and queues a push of `ops` to the members.
    fn changed(&self, network: NetworkId, name: &str, except: Option<PeerId>, ops: Vec<SignedOp>) {
        let _ = self.inner.events.send(NetEvent::Changed {
            network,
            name: name.to_string(),
        });
        let mut to = self.members_of(&network);
        to.retain(|p| Some(*p) != except);
        if ops.is_empty() || to.is_empty() {
            return;
        }
        if self.inner.push.try_send(Push { network, ops, to }).is_err() {
            tracing::warn!(
                network = name,
                "network push queue full; members get it on reconnect"
            );
        }
    }

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
        let (name, stored) = {
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
            self.save(m)?;
            (m.name().to_string(), stored)
        };
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
        let (ops, name_of, add) = {
            let mut state = self.state();
            let m = state.get_mut(&network).ok_or_else(|| NetError::Refused {
                what: "join",
                source: OpError::WrongNetwork,
            })?;
            let mut add = Vec::new();
            if !m.is_member(&joiner) {
                add.push(
                    m.admit(&self.inner.key, &joiner, request, name, now_ms())
                        .map_err(NetError::refused("join"))?,
                );
                self.save(m)?;
            }
            (m.missing_for(&[]), m.name().to_string(), add)
        };
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
            let mut state = self.state();
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
            self.inner.db.save(&m)?;
            state.insert(id, m);
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

/// A ticket's text: the invite token, `.`, the base32 CBOR of the issuer's addresses.
fn ticket_text(token: &InviteToken, addrs: &[Multiaddr]) -> String {
    let addrs: Vec<String> = addrs
        .iter()
        .map(|a| a.to_string())
        .filter(|a| a.len() <= MAX_TICKET_ADDR_LEN)
        .take(MAX_TICKET_ADDRS)
        .collect();
    format!(
        "{}.{}",
        token.to_text(),
        crate::network::base32_encode(&crate::network::cbor(&addrs))
    )
}

/// A ticket read back: the token (its invite's signature checked) and the addresses.
pub fn parse_ticket(text: &str) -> Result<(InviteToken, Vec<Multiaddr>), NetError> {
    let text = text.trim();
    let invalid = |e: OpError| NetError::Refused {
        what: "invalid invite",
        source: e,
    };
    if text.len() > MAX_TICKET_TEXT {
        return Err(invalid(OpError::TooLarge { len: text.len() }));
    }
    let (token, addrs) = text.split_once('.').unwrap_or((text, ""));
    let token = InviteToken::from_text(token).map_err(invalid)?;
    let addrs: Vec<String> = if addrs.is_empty() {
        Vec::new()
    } else {
        let bytes = crate::network::base32_decode(addrs)
            .ok_or(invalid(OpError::Malformed("ticket addresses")))?;
        ciborium::from_reader(bytes.as_slice())
            .map_err(|_| invalid(OpError::Malformed("ticket addresses")))?
    };
    let addrs = addrs
        .iter()
        .take(MAX_TICKET_ADDRS)
        .filter_map(|a| a.parse().ok())
        .collect();
    Ok((token, addrs))
}

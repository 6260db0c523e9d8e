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
//!
//! Files: this one holds [`Networks`] and the commands a user runs (`create`, `invite`,
//! `revoke`, `leave`, ...); `remote` what the exchange asks of the records; `api` the
//! errors and JSON types; `ticket` the ticket text; `db`, `exchange` and `routes` as above.

mod api;
pub mod db;
pub mod exchange;
mod remote;
pub mod routes;
mod ticket;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{broadcast, mpsc};

use crate::network::{Lease, Member, Membership, NetworkId, Op, Role, SignedOp};
use crate::store::StoreError;
pub use api::{InviteInfo, MemberInfo, NetError, NetEvent, NetInfo, Roster};
use db::NetworkDb;
pub use ticket::parse_ticket;
use ticket::ticket_text;

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
    /// The records. Held only briefly: never across a disk write, so the async code
    /// that asks it per packet or frame (is this peer a member?) never waits on an fsync.
    state: Mutex<BTreeMap<NetworkId, Membership>>,
    /// Orders the writers: held from a change through its commit, so records reach the
    /// disk in the order they changed in memory. Only blocking code (the routes' and the
    /// exchange's `spawn_blocking`) takes it.
    writer: Mutex<()>,
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
                writer: Mutex::new(()),
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

    fn writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner.writer.lock().unwrap_or_else(|e| e.into_inner())
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
            let _order = self.writer();
            {
                let state = self.state();
                if state.values().any(|m| m.name() == name) {
                    return Err(NetError::Exists(name.to_string()));
                }
                if state.len() >= MAX_NETWORKS {
                    return Err(NetError::Invalid(format!(
                        "this node is in {MAX_NETWORKS} networks, the most it may"
                    )));
                }
            }
            let m = Membership::create(name, &self.inner.key, now_ms(), &mut rand::rngs::OsRng)
                .map_err(NetError::refused("create"))?;
            self.inner.db.save(&m)?;
            self.state().insert(m.network(), m);
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
        let _order = self.writer();
        let (id, op, row) = {
            let mut state = self.state();
            let m = Self::by_name(&mut state, network)?;
            let op = m
                .make(&self.inner.key, op, now_ms())
                .map_err(NetError::refused(what))?;
            (m.network(), op, NetworkDb::encode(m))
        };
        self.commit(id, row)?;
        self.changed(id, network, None, vec![op]);
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
        {
            let _order = self.writer();
            let id = Self::by_name(&mut self.state(), network)?.network();
            // The revocation's push carries its own op and recipients: it goes out after
            // the record is gone.
            self.inner.db.remove(&id)?;
            self.state().remove(&id);
        }
        let _ = self.inner.events.send(NetEvent::Left {
            name: network.to_string(),
        });
        Ok(NetInfo {
            role: "revoked".into(),
            ..info
        })
    }

    /// Writes a changed record's row (made under the state lock, written outside it; the
    /// caller holds the writer lock). On failure the record is read back from disk, so
    /// memory runs ahead of the disk only while a commit is under way. The change is
    /// pushed, and its caller answered, only after the commit; a peer's exchange that
    /// runs meanwhile may already be sent the new op (signed, so it is as good as any: if
    /// the commit fails, that peer gives it back on the next exchange).
    fn commit(&self, id: NetworkId, row: Result<db::Encoded, StoreError>) -> Result<(), NetError> {
        let Err(e) = row.and_then(|row| self.inner.db.put(&row)) else {
            return Ok(());
        };
        tracing::error!(network = %id, "cannot save the network record: {e}");
        if let Ok(all) = self.inner.db.load_all()
            && let Some(Ok(old)) = all
                .into_iter()
                .find(|r| r.as_ref().is_ok_and(|o| o.network() == id))
        {
            self.state().insert(id, old);
        }
        Err(e.into())
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
}

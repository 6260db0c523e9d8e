//! Ops, their signed encoding and its checks.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::bytes::Bin;
use super::invite::{JoinRequest, WireJoin};
use super::{MAX_DEPS, MAX_LEASE_LEN, MAX_NAME_LEN, MAX_OP_BYTES, OpError};

/// Signature domain, so an op signature can never be taken for another kind of message.
const OP_DOMAIN: &[u8] = b"p2pnode/network/op/v1";
/// The encoding version inside the signed body.
const VERSION: u8 = 1;

/// The id of an op: BLAKE3 of its signed encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub [u8; 32]);

/// A network's id: the [`OpId`] of its `Create` op, so it commits to the creator, the name
/// and a random nonce.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkId(pub [u8; 32]);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}
impl fmt::Debug for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpId({})", &hex(&self.0)[..12])
    }
}
impl fmt::Display for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}
impl fmt::Debug for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkId({})", &hex(&self.0)[..12])
    }
}

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// May use the network's protocols, set its own name and lease, and admit holders of an
    /// admin's invite.
    Member,
    /// May also add, revoke and promote, and issue invites.
    Admin,
}

/// An address lease: opaque here, interpreted by the tunnel (later work).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease(Vec<u8>);

impl Lease {
    /// A lease of at most [`MAX_LEASE_LEN`] bytes.
    pub fn new(bytes: Vec<u8>) -> Result<Self, OpError> {
        if bytes.len() > MAX_LEASE_LEN {
            return Err(OpError::LeaseTooLong);
        }
        Ok(Self(bytes))
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// One change to a network's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The genesis: makes the network, `creator` its first admin.
    Create {
        /// The network's name.
        name: String,
        /// Its creator (also the op's author).
        creator: PeerId,
        /// Random, so two networks of one creator and name differ.
        nonce: [u8; 16],
    },
    /// Adds `peer` with `role`; by an admin, or by a member on an admin's invite.
    Add {
        /// The new member.
        peer: PeerId,
        /// Its role.
        role: Role,
        /// Its name, if known.
        name: Option<String>,
        /// The joiner's proof of holding an invite, when a member admits it.
        invite: Option<Box<JoinRequest>>,
    },
    /// Revokes `peer`, for good. By an admin, or by the peer itself (leaving).
    Revoke {
        /// The revoked peer.
        peer: PeerId,
    },
    /// Makes member `peer` an admin.
    Promote {
        /// The promoted member.
        peer: PeerId,
    },
    /// Names member `peer`; by an admin or the member itself.
    SetName {
        /// The member.
        peer: PeerId,
        /// Its name.
        name: String,
    },
    /// Sets member `peer`'s address lease; by an admin or the member itself.
    SetLease {
        /// The member.
        peer: PeerId,
        /// The lease.
        lease: Lease,
    },
}

impl Op {
    /// The peer the op is about (the creator for `Create`).
    pub fn subject(&self) -> &PeerId {
        match self {
            Op::Create { creator, .. } => creator,
            Op::Add { peer, .. }
            | Op::Revoke { peer }
            | Op::Promote { peer }
            | Op::SetName { peer, .. }
            | Op::SetLease { peer, .. } => peer,
        }
    }
}

/// An op as signed and exchanged: immutable once made; its fields are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedOp {
    id: OpId,
    bytes: Vec<u8>,
    network: Option<NetworkId>,
    author: PeerId,
    deps: Vec<OpId>,
    time_ms: u64,
    op: Op,
}

#[derive(Serialize, Deserialize)]
enum WireOp {
    Create {
        name: String,
        creator: Bin,
        nonce: Bin,
    },
    Add {
        peer: Bin,
        role: Role,
        name: Option<String>,
        invite: Option<WireJoin>,
    },
    Revoke {
        peer: Bin,
    },
    Promote {
        peer: Bin,
    },
    SetName {
        peer: Bin,
        name: String,
    },
    SetLease {
        peer: Bin,
        lease: Bin,
    },
}

#[derive(Serialize, Deserialize)]
struct WireBody {
    v: u8,
    network: Option<Bin>,
    author: Bin,
    deps: Vec<Bin>,
    time_ms: u64,
    op: WireOp,
}

#[derive(Serialize, Deserialize)]
struct WireSigned {
    body: Bin,
    sig: Bin,
}

pub(crate) fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail, and our types always serialise.
    ciborium::into_writer(v, &mut out).expect("CBOR into a Vec");
    out
}

/// The peer id of an Ed25519 key.
pub fn peer_of_key(key: &VerifyingKey) -> PeerId {
    // A 32-byte Ed25519 key from dalek is always a valid libp2p key.
    let public = libp2p::identity::ed25519::PublicKey::try_from_bytes(key.as_bytes())
        .expect("an Ed25519 public key");
    libp2p::identity::PublicKey::from(public).to_peer_id()
}

/// The Ed25519 key a peer id embeds.
pub(crate) fn key_of_peer(peer: &PeerId) -> Result<VerifyingKey, OpError> {
    crate::peer::ed25519_key_of(peer)
        .and_then(|k| VerifyingKey::from_bytes(&k.to_bytes()).ok())
        .ok_or(OpError::NotEd25519)
}

/// Reads a peer id from bytes; only ids that embed an Ed25519 key can sign.
pub(crate) fn peer_from(b: &Bin) -> Result<PeerId, OpError> {
    let peer = PeerId::from_bytes(&b.0).map_err(|_| OpError::Malformed("peer id"))?;
    key_of_peer(&peer)?;
    Ok(peer)
}

fn check_name(name: &str) -> Result<(), OpError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(OpError::BadName);
    }
    Ok(())
}

fn to_wire(op: &Op) -> WireOp {
    let p = |p: &PeerId| Bin(p.to_bytes());
    match op {
        Op::Create {
            name,
            creator,
            nonce,
        } => WireOp::Create {
            name: name.clone(),
            creator: p(creator),
            nonce: Bin(nonce.to_vec()),
        },
        Op::Add {
            peer,
            role,
            name,
            invite,
        } => WireOp::Add {
            peer: p(peer),
            role: *role,
            name: name.clone(),
            invite: invite.as_deref().map(JoinRequest::to_wire),
        },
        Op::Revoke { peer } => WireOp::Revoke { peer: p(peer) },
        Op::Promote { peer } => WireOp::Promote { peer: p(peer) },
        Op::SetName { peer, name } => WireOp::SetName {
            peer: p(peer),
            name: name.clone(),
        },
        Op::SetLease { peer, lease } => WireOp::SetLease {
            peer: p(peer),
            lease: Bin(lease.0.clone()),
        },
    }
}

fn from_wire(w: WireOp, network: Option<NetworkId>) -> Result<Op, OpError> {
    Ok(match w {
        WireOp::Create {
            name,
            creator,
            nonce,
        } => {
            check_name(&name)?;
            Op::Create {
                name,
                creator: peer_from(&creator)?,
                nonce: nonce.array().ok_or(OpError::Malformed("nonce"))?,
            }
        }
        WireOp::Add {
            peer,
            role,
            name,
            invite,
        } => {
            if let Some(n) = &name {
                check_name(n)?;
            }
            let peer = peer_from(&peer)?;
            let invite = match invite {
                Some(w) => {
                    let req = JoinRequest::from_wire(w)?;
                    // Everything about the invite that needs no state is checked here.
                    if Some(req.invite.network) != network {
                        return Err(OpError::WrongNetwork);
                    }
                    if req.invite.role != role {
                        return Err(OpError::Malformed("role differs from the invite's"));
                    }
                    req.verify_for(&peer)?;
                    Some(Box::new(req))
                }
                None => None,
            };
            Op::Add {
                peer,
                role,
                name,
                invite,
            }
        }
        WireOp::Revoke { peer } => Op::Revoke {
            peer: peer_from(&peer)?,
        },
        WireOp::Promote { peer } => Op::Promote {
            peer: peer_from(&peer)?,
        },
        WireOp::SetName { peer, name } => {
            check_name(&name)?;
            Op::SetName {
                peer: peer_from(&peer)?,
                name,
            }
        }
        WireOp::SetLease { peer, lease } => Op::SetLease {
            peer: peer_from(&peer)?,
            lease: Lease::new(lease.0)?,
        },
    })
}

fn signing_input(body: &[u8]) -> Vec<u8> {
    [OP_DOMAIN, body].concat()
}

impl SignedOp {
    /// Signs `op` as the owner of `key`. `network` is `None` only for `Create`; `deps` are
    /// sorted and deduplicated here. Fails on what [`SignedOp::decode`] would refuse.
    pub fn sign(
        key: &SigningKey,
        network: Option<NetworkId>,
        mut deps: Vec<OpId>,
        time_ms: u64,
        op: Op,
    ) -> Result<Self, OpError> {
        deps.sort();
        deps.dedup();
        let body = WireBody {
            v: VERSION,
            network: network.map(|n| Bin(n.0.to_vec())),
            author: Bin(peer_of_key(&key.verifying_key()).to_bytes()),
            deps: deps.iter().map(|d| Bin(d.0.to_vec())).collect(),
            time_ms,
            op: to_wire(&op),
        };
        let body = cbor(&body);
        let sig = key.sign(&signing_input(&body));
        let bytes = cbor(&WireSigned {
            body: Bin(body),
            sig: Bin(sig.to_bytes().to_vec()),
        });
        // Decoding what we made runs every check once, in one place.
        Self::decode(&bytes)
    }

    /// Reads and checks an op: size first, then the encoding, the fields, that the encoding
    /// is canonical, and the signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, OpError> {
        if bytes.len() > MAX_OP_BYTES {
            return Err(OpError::TooLarge { len: bytes.len() });
        }
        let signed: WireSigned =
            ciborium::from_reader(bytes).map_err(|_| OpError::Malformed("op encoding"))?;
        let body: WireBody = ciborium::from_reader(signed.body.0.as_slice())
            .map_err(|_| OpError::Malformed("op body"))?;
        if body.v != VERSION {
            return Err(OpError::Malformed("unknown version"));
        }
        // One content, one encoding: otherwise one op could circulate under several ids.
        if cbor(&body) != signed.body.0 || cbor(&signed) != bytes {
            return Err(OpError::NotCanonical);
        }
        let network = match &body.network {
            Some(b) => Some(NetworkId(
                b.array().ok_or(OpError::Malformed("network id"))?,
            )),
            None => None,
        };
        let author = peer_from(&body.author)?;
        if body.deps.len() > MAX_DEPS {
            return Err(OpError::BadDeps);
        }
        let deps = body
            .deps
            .iter()
            .map(|d| d.array().map(OpId).ok_or(OpError::Malformed("dep id")))
            .collect::<Result<Vec<_>, _>>()?;
        if deps.windows(2).any(|w| w[0] >= w[1]) {
            return Err(OpError::BadDeps);
        }
        let op = from_wire(body.op, network)?;
        match &op {
            Op::Create { creator, .. } => {
                if network.is_some() || !deps.is_empty() || *creator != author {
                    return Err(OpError::Malformed("create"));
                }
            }
            _ => {
                if network.is_none() {
                    return Err(OpError::Malformed("no network id"));
                }
                if deps.is_empty() {
                    return Err(OpError::BadDeps);
                }
            }
        }
        let sig: [u8; 64] = signed.sig.array().ok_or(OpError::BadSignature)?;
        key_of_peer(&author)?
            .verify_strict(&signing_input(&signed.body.0), &Signature::from_bytes(&sig))
            .map_err(|_| OpError::BadSignature)?;
        Ok(Self {
            id: OpId(*blake3::hash(bytes).as_bytes()),
            bytes: bytes.to_vec(),
            network,
            author,
            deps,
            time_ms: body.time_ms,
            op,
        })
    }

    /// Its id.
    pub fn id(&self) -> OpId {
        self.id
    }
    /// Its signed encoding, as sent.
    pub fn encoded(&self) -> &[u8] {
        &self.bytes
    }
    /// The network it belongs to (`None` for `Create`, whose id is the network's).
    pub fn network(&self) -> Option<NetworkId> {
        self.network
    }
    /// Who signed it.
    pub fn author(&self) -> &PeerId {
        &self.author
    }
    /// The ops its author had seen (sorted).
    pub fn deps(&self) -> &[OpId] {
        &self.deps
    }
    /// The author's clock when made, in ms since the Unix epoch; informational, except as
    /// the time an invite's expiry is checked against.
    pub fn time_ms(&self) -> u64 {
        self.time_ms
    }
    /// The change.
    pub fn op(&self) -> &Op {
        &self.op
    }
}

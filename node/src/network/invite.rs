//! Invites: an admin's signed, pre-authorised permission for whoever holds its secret to be
//! added by any member.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use libp2p::PeerId;
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use super::bytes::{Bin, base32_decode, base32_encode};
use super::op::{NetworkId, Role, cbor, key_of_peer, peer_from, peer_of_key};
use super::{MAX_INVITE_TEXT, OpError};

const INVITE_DOMAIN: &[u8] = b"p2pnode/network/invite/v1";
const JOIN_DOMAIN: &[u8] = b"p2pnode/network/join/v1";
/// The text form's prefix, so a pasted token of another kind is named as such.
const TEXT_PREFIX: &str = "p2pnet1";

/// An invite's id: its public key, fresh per invite.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InviteId(pub [u8; 32]);

impl fmt::Debug for InviteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InviteId({})", &base32_encode(&self.0)[..10])
    }
}

/// The public part of an invite, signed by the admin who issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// The network it admits to.
    pub network: NetworkId,
    /// The invite's public key; a joiner proves it holds the secret half.
    pub key: VerifyingKey,
    /// No member admits on it after this time (ms since the Unix epoch).
    pub expires_ms: u64,
    /// How many joiners it admits.
    pub max_uses: u32,
    /// The role joiners get.
    pub role: Role,
    /// The admin who issued it.
    pub issuer: PeerId,
    sig: Signature,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct WireInvite {
    network: Bin,
    key: Bin,
    expires_ms: u64,
    max_uses: u32,
    role: Role,
    issuer: Bin,
    sig: Bin,
}

impl Invite {
    /// Its id.
    pub fn id(&self) -> InviteId {
        InviteId(self.key.to_bytes())
    }

    /// Fixed-layout bytes, canonical by construction.
    fn signing_input(
        network: &NetworkId,
        key: &VerifyingKey,
        expires_ms: u64,
        max_uses: u32,
        role: Role,
        issuer: &PeerId,
    ) -> Vec<u8> {
        let mut m = INVITE_DOMAIN.to_vec();
        m.extend_from_slice(&network.0);
        m.extend_from_slice(key.as_bytes());
        m.extend_from_slice(&expires_ms.to_be_bytes());
        m.extend_from_slice(&max_uses.to_be_bytes());
        m.push(role as u8);
        m.extend_from_slice(&issuer.to_bytes());
        m
    }

    /// Checks the issuer's signature (not whether the issuer is an admin: that depends on
    /// the record).
    pub fn verify(&self) -> Result<(), OpError> {
        let m = Self::signing_input(
            &self.network,
            &self.key,
            self.expires_ms,
            self.max_uses,
            self.role,
            &self.issuer,
        );
        key_of_peer(&self.issuer)?
            .verify_strict(&m, &self.sig)
            .map_err(|_| OpError::BadSignature)
    }

    pub(crate) fn to_wire(&self) -> WireInvite {
        WireInvite {
            network: Bin(self.network.0.to_vec()),
            key: Bin(self.key.to_bytes().to_vec()),
            expires_ms: self.expires_ms,
            max_uses: self.max_uses,
            role: self.role,
            issuer: Bin(self.issuer.to_bytes()),
            sig: Bin(self.sig.to_bytes().to_vec()),
        }
    }

    pub(crate) fn from_wire(w: WireInvite) -> Result<Self, OpError> {
        let invite = Self {
            network: NetworkId(w.network.array().ok_or(OpError::Malformed("network id"))?),
            key: w
                .key
                .array()
                .and_then(|k| VerifyingKey::from_bytes(&k).ok())
                .ok_or(OpError::Malformed("invite key"))?,
            expires_ms: w.expires_ms,
            max_uses: w.max_uses,
            role: w.role,
            issuer: peer_from(&w.issuer)?,
            sig: Signature::from_bytes(&w.sig.array().ok_or(OpError::BadSignature)?),
        };
        invite.verify()?;
        Ok(invite)
    }
}

/// An invite with its secret: what the issuing admin hands to the joiner, as text.
pub struct InviteToken {
    invite: Invite,
    secret: SigningKey,
}

impl fmt::Debug for InviteToken {
    // The secret stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InviteToken")
            .field("invite", &self.invite)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct WireToken {
    invite: WireInvite,
    secret: Bin,
}

impl InviteToken {
    /// A fresh invite to `network`, signed by `issuer`. Whether the issuer is an admin is
    /// [`Membership::invite`](super::Membership::invite)'s check.
    pub fn issue(
        network: NetworkId,
        issuer: &SigningKey,
        expires_ms: u64,
        max_uses: u32,
        role: Role,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, OpError> {
        if max_uses == 0 {
            return Err(OpError::Malformed("an invite needs at least one use"));
        }
        let secret = SigningKey::generate(rng);
        let key = secret.verifying_key();
        let issuer_peer = peer_of_key(&issuer.verifying_key());
        let m = Invite::signing_input(&network, &key, expires_ms, max_uses, role, &issuer_peer);
        let invite = Invite {
            network,
            key,
            expires_ms,
            max_uses,
            role,
            issuer: issuer_peer,
            sig: issuer.sign(&m),
        };
        Ok(Self { invite, secret })
    }

    /// The public part.
    pub fn invite(&self) -> &Invite {
        &self.invite
    }

    /// The joiner's proof for `joiner`, to present to any member.
    pub fn join_request(&self, joiner: &PeerId) -> JoinRequest {
        let proof = self
            .secret
            .sign(&JoinRequest::signing_input(&self.invite, joiner));
        JoinRequest {
            invite: self.invite.clone(),
            proof,
        }
    }

    /// The text form, `p2pnet1` then base32 of the CBOR token.
    pub fn to_text(&self) -> String {
        let token = WireToken {
            invite: self.invite.to_wire(),
            secret: Bin(self.secret.to_bytes().to_vec()),
        };
        format!("{TEXT_PREFIX}{}", base32_encode(&cbor(&token)))
    }

    /// Reads the text form; the length is checked first, and the issuer's signature.
    pub fn from_text(s: &str) -> Result<Self, OpError> {
        let s = s.trim();
        if s.len() > MAX_INVITE_TEXT {
            return Err(OpError::TooLarge { len: s.len() });
        }
        let body = s
            .strip_prefix(TEXT_PREFIX)
            .ok_or(OpError::Malformed("not a p2pnode network invite"))?;
        let bytes = base32_decode(body).ok_or(OpError::Malformed("invite text"))?;
        let w: WireToken =
            ciborium::from_reader(bytes.as_slice()).map_err(|_| OpError::Malformed("invite"))?;
        let invite = Invite::from_wire(w.invite)?;
        let secret = SigningKey::from_bytes(
            &w.secret
                .array()
                .ok_or(OpError::Malformed("invite secret"))?,
        );
        if secret.verifying_key() != invite.key {
            return Err(OpError::Malformed("invite secret does not match its key"));
        }
        Ok(Self { invite, secret })
    }
}

/// A joiner's request: the invite and the joiner's peer id signed with the invite's
/// secret. It travels inside the `Add` that admits the joiner, so every member can check
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// The invite presented.
    pub invite: Invite,
    proof: Signature,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct WireJoin {
    invite: WireInvite,
    proof: Bin,
}

impl JoinRequest {
    fn signing_input(invite: &Invite, joiner: &PeerId) -> Vec<u8> {
        let mut m = JOIN_DOMAIN.to_vec();
        m.extend_from_slice(&invite.network.0);
        m.extend_from_slice(invite.key.as_bytes());
        m.extend_from_slice(&joiner.to_bytes());
        m
    }

    /// Checks the invite's signature and that the proof is for `joiner`.
    pub fn verify_for(&self, joiner: &PeerId) -> Result<(), OpError> {
        self.invite.verify()?;
        self.invite
            .key
            .verify_strict(&Self::signing_input(&self.invite, joiner), &self.proof)
            .map_err(|_| OpError::BadSignature)
    }

    pub(crate) fn to_wire(&self) -> WireJoin {
        WireJoin {
            invite: self.invite.to_wire(),
            proof: Bin(self.proof.to_bytes().to_vec()),
        }
    }

    pub(crate) fn from_wire(w: WireJoin) -> Result<Self, OpError> {
        Ok(Self {
            invite: Invite::from_wire(w.invite)?,
            proof: Signature::from_bytes(&w.proof.array().ok_or(OpError::BadSignature)?),
        })
    }
}

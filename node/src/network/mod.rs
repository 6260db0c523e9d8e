//! A network's membership record (issue #20): who belongs to a network and with which role,
//! as a DAG of signed operations that members exchange whenever they connect. Sans-IO: no
//! sockets, no clock (callers pass `now_ms`), no tokio; the RNG is passed in. The wiring
//! (storage, exchange between members, joins, control routes) is [`crate::networks`].
//!
//! # Operations
//! Every change is a [`SignedOp`]: an [`Op`] (create, add, revoke, promote, set name, set
//! lease), its author's peer id, the ids of the ops the author had seen (its *deps*: the
//! heads of its record), an informational wall-clock time, and the author's Ed25519
//! signature over the op's CBOR encoding. An op's id ([`OpId`]) is the BLAKE3 hash of its
//! signed encoding; the [`NetworkId`] is the id of the network's `Create` op (the genesis),
//! so it commits to the creator, the name and a random nonce, and every other op names it
//! so an op cannot be replayed into another network. Decoding checks the size before
//! parsing, then the encoding is canonical (re-encoding gives the same bytes), then the
//! signature (`verify_strict`, so signatures are not malleable).
//!
//! # Validity in causal history
//! The member set is a pure function of the set of ops held, never of their arrival order:
//! [`Membership`] recomputes it from the DAG after every change. An op is *effective* when
//! - its author had the right in the op's causal past, judged only on the effective ops in
//!   that past: an admin for add, revoke and promote; for set name and set lease the admin
//!   or the member itself; any member may revoke itself (leave); the creator is the first
//!   admin, implicitly, and can be neither revoked nor removed;
//! - and it is not voided by a revocation of its author (below).
//!
//! Since every check looks only at an op's causal past, any topological order gives the
//! same verdicts; the arrival order is one, so the stored order is used.
//!
//! # Revocation: revoke wins, and a revoked peer's unseen ops are void
//! - A revocation is permanent: a peer with an effective `Revoke` is revoked whatever else
//!   happened, so an `Add` concurrent with (or after) a `Revoke` of the same peer loses, and
//!   a later merge can never bring the peer back. To return, a peer joins with a new
//!   identity.
//! - Ops whose causal past holds the author's revocation are void by the rule above. Ops
//!   *concurrent* with it are void too: an op of a revoked peer stays effective only if it is
//!   in the causal past of one of the effective revocations of that peer (the revoker had
//!   seen it and revoked anyway). Why: deps are chosen by the author, so a revoked (perhaps
//!   stolen) admin key could otherwise keep minting ops that claim not to have seen its
//!   revocation, adding itself new identities or promoting accomplices forever.
//! - `Revoke` ops are judged once, on their causal past before any voiding, and never
//!   voided by concurrency: a revocation that took effect stays in effect whatever arrives
//!   later, so a revoked member stays revoked after any merge. This also breaks the cycles
//!   a concurrent mutual revocation (A revokes B while B revokes A, directly or through
//!   admins they appointed) would create: both revocations take effect, in the spirit of
//!   revoke-wins. The cost, stated plainly: a revoked admin can still backdate revocations
//!   of others (directly, or through an admin it backdates an appointment of), which it
//!   could equally have made the moment its key was stolen; it can no longer add, promote,
//!   name or lease anyone.
//! - So the evaluation is two passes over the DAG: the first judges every op on its causal
//!   past and fixes the revocations; the second voids the ops of revoked peers that none of
//!   their revocations had seen and judges every other op again on the effective ops of its
//!   past, so the voids cascade (an `Add` by an admin appointed through a voided op is void
//!   too). Both passes depend on the DAG alone.
//!
//! # Invites
//! An admin issues an [`InviteToken`]: a fresh Ed25519 key pair, whose public half, with the
//! network id, an expiry, a maximum number of uses and the role granted, forms an [`Invite`]
//! signed by the admin; the token (invite + secret key) is printed as text. The joiner signs
//! its peer id with the invite's secret ([`JoinRequest`]) and presents it to *any* member,
//! who then authors an `Add` carrying the request. The secret never enters the record, so
//! other members cannot reuse an invite they saw in an op. Receivers judge the `Add` in its
//! causal past: the author is a member, the issuer is an admin, the op's time is not past
//! the expiry, the role is the invite's, and fewer than `max_uses` effective adds citing the
//! invite ([`InviteId`] = its public key) are in the causal past. Expiry is checked by the
//! admitting member against its clock ([`Membership::admit`]) and by everyone against the
//! op's recorded time, the only time all replicas share (so a dishonest member can admit
//! late by lying about its clock; it could as well leak the network's data). Members admitting in different
//! partitions at once can exceed `max_uses` by one use per partition; the alternative (void
//! an add later when a concurrent use turns up) would take members away after the fact.
//!
//! # Sync
//! [`Membership::heads`] and [`Membership::missing_for`] (the ops the other side lacks, in
//! causal order, a bounded batch per call): each side sends its heads, applies what comes
//! back, and repeats until nothing is missing. An op whose deps are unknown waits in a
//! bounded pending set until they arrive.
//!
//! # Bounds
//! [`MAX_OP_BYTES`] before decoding, [`MAX_OPS`] per network, [`MAX_PENDING`],
//! [`MAX_DEPS`], [`MAX_NAME_LEN`], [`MAX_LEASE_LEN`], [`MAX_SYNC_BATCH`], [`MAX_HEADS`],
//! [`MAX_INVITE_TEXT`]. An op is stored only if its author was named (created the network
//! or was the subject of an add or promote) in its causal past, so strangers cannot fill
//! the record; a revoked member still can, up to [`MAX_OPS`]. A pending op has only its
//! signature and network checked, so the sync layer should take ops from members only.
//! Every stored change re-evaluates the whole record (two passes over the ops, each
//! checking small per-peer lists against a bitset of the op's past; about 1 MB of bitsets
//! at [`MAX_OPS`]): a sync batch or a saved record goes through
//! [`Membership::apply_all`], which evaluates once.

mod bytes;
mod invite;
mod op;
mod state;
#[cfg(test)]
mod tests;

pub(crate) use bytes::{Bin, base32_decode, base32_encode};
pub(crate) use invite::WireJoin;
pub use invite::{Invite, InviteId, InviteToken, JoinRequest};
pub(crate) use op::cbor;
pub use op::{Lease, NetworkId, Op, OpId, Role, SignedOp, peer_of_key};
pub use state::{Applied, Member, Membership};

/// Largest encoded op accepted; checked before decoding.
pub const MAX_OP_BYTES: usize = 4096;
/// Most ops one network's record holds.
pub const MAX_OPS: usize = 4096;
/// Most ops held while waiting for their deps.
pub const MAX_PENDING: usize = 256;
/// Most deps (heads seen) one op names.
pub const MAX_DEPS: usize = 32;
/// Longest network or member name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest address lease value, in bytes.
pub const MAX_LEASE_LEN: usize = 32;
/// Most ops [`Membership::missing_for`] returns per call.
pub const MAX_SYNC_BATCH: usize = 256;
/// Most of the other side's heads [`Membership::missing_for`] looks at.
pub const MAX_HEADS: usize = 64;
/// Longest invite text accepted.
pub const MAX_INVITE_TEXT: usize = 1024;

/// Why an op, an invite or a local change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The encoding is larger than [`MAX_OP_BYTES`] (or the invite text than
    /// [`MAX_INVITE_TEXT`]).
    #[error("too large: {len} bytes")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The bytes are not a well-formed op or invite.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// The encoding decodes but is not the one canonical encoding of its content.
    #[error("not canonically encoded")]
    NotCanonical,
    /// A signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// A peer id that does not embed an Ed25519 key.
    #[error("peer id holds no Ed25519 key")]
    NotEd25519,
    /// A name longer than [`MAX_NAME_LEN`], or empty where a name is required.
    #[error("name empty or longer than {MAX_NAME_LEN} bytes")]
    BadName,
    /// A lease longer than [`MAX_LEASE_LEN`].
    #[error("lease longer than {MAX_LEASE_LEN} bytes")]
    LeaseTooLong,
    /// More than [`MAX_DEPS`] deps, unsorted or repeated deps, or none on a non-genesis op.
    #[error("bad deps")]
    BadDeps,
    /// The op or invite belongs to another network.
    #[error("op of another network")]
    WrongNetwork,
    /// A `Create` where the record already has its genesis, or a record started from an op
    /// that is not a `Create`.
    #[error("not this network's genesis")]
    Genesis,
    /// The record holds [`MAX_OPS`] ops.
    #[error("record full ({MAX_OPS} ops)")]
    Full,
    /// [`MAX_PENDING`] ops already wait for their deps.
    #[error("too many pending ops ({MAX_PENDING})")]
    PendingFull,
    /// The author was never named in the op's causal past, so the op can never take effect.
    #[error("author unknown in the op's causal past")]
    UnknownAuthor,
    /// The local node may not make this change (not an admin, not a member, revoked).
    #[error("not authorised")]
    NotAuthorized,
    /// The invite's expiry has passed.
    #[error("invite expired")]
    InviteExpired,
    /// The invite has been used `max_uses` times.
    #[error("invite used up")]
    InviteUsedUp,
}

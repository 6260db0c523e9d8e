//! What the networks show: the errors, the JSON of the `net` commands, and the events and
//! roster protocols read.

use serde::{Deserialize, Serialize};

use crate::error::NodeError;
use crate::network::{Member, NetworkId, OpError};
use crate::store::StoreError;

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

    pub(super) fn refused(what: &'static str) -> impl FnOnce(OpError) -> Self {
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

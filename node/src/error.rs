//! Errors of the node's operations. Each has a stable [`NodeError::kind`] that the control
//! socket sends beside the message, so scripts can match on it.

use std::sync::Arc;

use libp2p::TransportError;

use crate::store::StoreError;

/// Why a node operation failed.
// Clone: one outcome may answer several waiters (the sources are shared for that).
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// The DHT answered but does not know the peer.
    #[error("peer {peer} was not found in the DHT (is it online and connected to the network?)")]
    NotFound {
        /// The peer looked for.
        peer: String,
    },
    /// We know no peer to ask.
    #[error("not connected to any peer to ask; start the node with --bootstrap <multiaddr>")]
    NoPeers,
    /// Dialling failed on every address.
    #[error("cannot reach {target}: {reason}")]
    Unreachable {
        /// The peer or address.
        target: String,
        /// What each address answered.
        reason: String,
    },
    /// The target is this node itself.
    #[error("that is this node's own peer id")]
    SelfDial,
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The operation did not finish in time.
    #[error("{what} timed out after {secs} s")]
    Timeout {
        /// What was being done.
        what: String,
        /// The limit.
        secs: u64,
    },
    /// A stream to the peer failed.
    #[error("stream to {peer} failed: {reason}")]
    Stream {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
    /// The input was not valid (a malformed peer id or address).
    #[error("{0}")]
    InvalidInput(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Stopped,
    /// The peer is revoked in the trust store.
    #[error("peer {peer} is revoked; `p2pnode trust allow {peer}` lifts it")]
    Revoked {
        /// The peer.
        peer: String,
    },
    /// The peer presented a key other than the verified one: a possible impostor.
    #[error(
        "SECURITY ALARM: {peer} presented a different key than the one you verified; refusing until you run `p2pnode verify {peer}` again"
    )]
    KeyChanged {
        /// The peer.
        peer: String,
    },
    /// The post-quantum handshake failed.
    #[error("secure handshake with {peer} failed: {source}")]
    Handshake {
        /// The peer.
        peer: String,
        /// Why.
        #[source]
        source: Arc<p2pnode_secure::HandshakeError>,
    },
    /// The trust store could not be read or written.
    #[error("trust store: {0}")]
    Trust(#[source] Arc<StoreError>),
}

impl From<StoreError> for NodeError {
    fn from(e: StoreError) -> Self {
        Self::Trust(Arc::new(e))
    }
}

impl NodeError {
    /// A stable, machine-readable name for the error.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::NoPeers => "no_peers",
            Self::Unreachable { .. } => "unreachable",
            Self::SelfDial => "self_dial",
            Self::Listen { .. } => "listen",
            Self::Timeout { .. } => "timeout",
            Self::Stream { .. } => "stream",
            Self::InvalidInput(_) => "invalid_input",
            Self::Stopped => "stopped",
            Self::Revoked { .. } => "revoked",
            Self::KeyChanged { .. } => "key_changed",
            Self::Handshake { .. } => "handshake",
            Self::Trust(_) => "trust",
        }
    }
}

/// A short reason for a transport error, naming the common cases plainly.
pub(crate) fn transport_reason(e: &TransportError<std::io::Error>) -> String {
    match e {
        TransportError::MultiaddrNotSupported(addr) => {
            format!("address {addr} is not supported by any transport")
        }
        TransportError::Other(io) => match io.kind() {
            std::io::ErrorKind::AddrInUse => "address already in use".to_string(),
            std::io::ErrorKind::AddrNotAvailable => {
                "address not available on this machine".to_string()
            }
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => innermost(io),
        },
    }
}

/// The most specific message in an error chain (libp2p wraps errors several times).
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

//! Why a sync operation failed, and how the control socket shows it.

use p2pnode_node::NodeError;

/// Why a sync operation failed. Each prints as one line a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The input is not valid (a name, a network, a value).
    #[error("{0}")]
    Invalid(String),
    /// No document of this name.
    #[error("unknown document `{0}`")]
    UnknownDocument(String),
    /// The document refused the operation (path, JSON, conflict, storage).
    #[error(transparent)]
    Crdt(#[from] p2pnode_crdt::Error),
    /// The change was made in memory but could not be saved: it is not acknowledged.
    #[error("not saved: {0}")]
    NotSaved(String),
    /// The service stopped (the node is shutting down).
    #[error("the sync service has stopped")]
    Stopped,
    /// A node operation failed.
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl SyncError {
    /// The stable kind for the control socket.
    pub fn kind(&self) -> &'static str {
        use p2pnode_crdt::Error as E;
        match self {
            Self::Invalid(_) => "invalid_input",
            Self::UnknownDocument(_) | Self::Crdt(E::UnknownDocument(_) | E::UnknownPath(_)) => {
                "not_found"
            }
            Self::Crdt(E::Conflict { .. }) => "conflict",
            Self::Crdt(E::Io { .. } | E::Corrupt { .. } | E::Automerge(_)) | Self::NotSaved(_) => {
                "storage"
            }
            Self::Crdt(_) => "invalid_input",
            Self::Stopped => "stopped",
            Self::Node(e) => e.kind(),
        }
    }
}

impl p2pnode_node::control::ApiError for SyncError {
    fn kind(&self) -> &str {
        SyncError::kind(self)
    }

    fn status(&self) -> u16 {
        match SyncError::kind(self) {
            "invalid_input" => 400,
            "not_found" => 404,
            "conflict" => 409,
            "stopped" => 503,
            _ => match self {
                Self::Node(e) => p2pnode_node::control::ApiError::status(e),
                _ => 500,
            },
        }
    }
}

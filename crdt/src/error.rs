//! One error type for the crate: every variant prints as one line a user can act on.

use std::path::PathBuf;

/// What went wrong in a document, store or sync operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The JSON given cannot be stored (too deep, a non-finite number, or not an object where
    /// one is needed).
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// The path is not well formed (see the crate docs for the syntax).
    #[error("invalid path `{path}`: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Nothing is stored at this path (or a segment names a key or index that is not there).
    #[error("unknown path `{0}`")]
    UnknownPath(String),
    /// The path goes through a value that is neither an object nor a list.
    #[error("`{0}` is not an object or a list")]
    NotAContainer(String),
    /// The document nests deeper than [`MAX_DEPTH`](crate::MAX_DEPTH) levels at this path.
    #[error("`{0}` nests deeper than 64 levels")]
    TooDeep(String),
    /// Under [`Strategy::Manual`](crate::Strategy::Manual) a read or write met concurrent
    /// values that nobody has resolved yet.
    #[error("conflict at `{path}`: {values} concurrent values, resolve it first")]
    Conflict {
        /// Where the concurrent values are.
        path: String,
        /// How many there are.
        values: usize,
    },
    /// `resolve` was asked to keep a local or remote value that the conflict does not have.
    #[error("no {which} value to keep at `{path}`")]
    NoCandidate {
        /// The path of the conflict.
        path: String,
        /// `local` or `remote`.
        which: &'static str,
    },
    /// A document or peer name that cannot be a file name here.
    #[error("invalid name `{0}`: use 1 to 128 of A-Z a-z 0-9 . _ - (not starting with .)")]
    InvalidName(String),
    /// A peer id longer than [`MAX_PEER_ID_LEN`](crate::MAX_PEER_ID_LEN) or empty.
    #[error("invalid peer id: {0} bytes (1 to {max} allowed)", max = crate::MAX_PEER_ID_LEN)]
    InvalidPeerId(usize),
    /// A sync message that is too large, malformed, or carries changes automerge refuses.
    #[error("bad sync message: {0}")]
    BadMessage(String),
    /// A session already tracks as many peers as it may.
    #[error("too many peers in one sync session (at most {0})")]
    TooManyPeers(usize),
    /// Stored bytes (a snapshot, a log record in the middle of the log, a sync state) do not
    /// decode: the file was damaged outside a save.
    #[error("corrupt {what} in {path}: {reason}")]
    Corrupt {
        /// `document`, `log` or `sync state`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// The store has no document of this name.
    #[error("unknown document `{0}`")]
    UnknownDocument(String),
    /// Reading or writing the store failed.
    #[error("io error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// automerge refused an operation (a bug here, or a document from a newer automerge).
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

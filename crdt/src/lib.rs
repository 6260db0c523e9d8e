//! JSON documents that many peers edit offline and merge, for p2pnode's `db` commands.
//!
//! This crate is the data half of sync: automerge documents and their storage, with no
//! network (no libp2p, no tokio). `protocols/sync` moves the bytes [`SyncSession`] makes
//! between a network's members; the node's control API calls [`Document`] for `db put/get`.
//!
//! - [`Document`]: create, put, get, delete and list by path with `serde_json` values,
//!   history (author peer id, time, message per change), conflicts, and the four conflict
//!   [`Strategy`]s, per document or per call, with [`Document::resolve`].
//! - [`Store`]: a directory of documents: atomic fsynced snapshots, an incremental log
//!   with periodic compaction, and the per-peer sync states.
//! - [`SyncSession`]: automerge's sync protocol for one document and its peers, sans-IO.
//!
//! Paths: `todos/3/title`. Segments are separated by `/` and the empty path is the root.
//! A segment is a map key, or under a list a decimal index (`-` appends in `put`). A key
//! holding `/` or `~` is written with JSON Pointer's escapes, `~1` and `~0`. There is no
//! leading `/`. Paths are at most 4096 bytes and 64 segments deep.
//!
//! Values: JSON objects become automerge maps, arrays lists, and scalars registers (strings
//! are whole values, not collaborative text: concurrent writes to a string conflict rather
//! than merge by character). Integers stay integers (i64, or u64 above i64's range),
//! other numbers are f64. Reading maps automerge's other kinds back as numbers (counters,
//! timestamps), strings (text objects) or arrays of numbers (bytes).
//! Objects and lists have an identity: two peers that each `put` an object at the same
//! key concurrently make two objects in conflict, and a read shows one of them with only
//! the edits made inside it. Create shared containers once (with the document), then
//! write inside them.
//!
//! Authors: the actor id of each change is the writing peer's id followed by 8 random
//! bytes per opened document (a fresh actor per process, as automerge requires); history
//! strips the suffix. Peer ids are opaque bytes here (libp2p's `PeerId::to_bytes`).
//! Change times are milliseconds since the Unix epoch (automerge's field is advisory and
//! documented in seconds; milliseconds make "latest wins" meaningful within a second).
//!
//! ```
//! use p2pnode_crdt::{Document, SyncSession};
//! use serde_json::json;
//!
//! let mut a = SyncSession::new(Document::new(b"peer-a")?);
//! let mut b = SyncSession::new(Document::new(b"peer-b")?);
//! a.document_mut().put("todos", &json!([{"title": "milk"}]))?;
//! // What a transport does: carry each message to the other side until both are quiet.
//! loop {
//!     let to_b = a.generate_message(b"peer-b");
//!     if let Some(m) = &to_b {
//!         b.receive_message(b"peer-a", m)?;
//!     }
//!     let to_a = b.generate_message(b"peer-a");
//!     if let Some(m) = &to_a {
//!         a.receive_message(b"peer-b", m)?;
//!     }
//!     if to_b.is_none() && to_a.is_none() {
//!         break;
//!     }
//! }
//! assert_eq!(b.document().get("todos/0/title")?, json!("milk"));
//! # Ok::<(), p2pnode_crdt::Error>(())
//! ```

#![deny(missing_docs)]

mod document;
mod error;
mod path;
mod storage;
mod sync;

pub use automerge::ChangeHash;
pub use document::{
    Candidate, Commit, Conflict, Document, HistoryEntry, Keep, MAX_PEER_ID_LEN, Strategy,
};
pub use error::{Error, Result};
pub use path::{MAX_DEPTH, MAX_PATH_LEN};
pub use storage::{DEFAULT_COMPACT_BYTES, Saved, Store};
pub use sync::{Changed, DEFAULT_MAX_MESSAGE_BYTES, MAX_PEERS, SyncSession};

/// Adds `automerge=warn` to a log filter (`tracing`'s `EnvFilter` syntax) that does not
/// name automerge itself.
///
/// automerge 0.12 instruments some functions at info level with their arguments
/// Debug-formatted, and one of them (`load_changes`, run for every batch of received
/// changes) formats the document's whole change graph. Under an `info` filter that turned
/// each received batch into work in the size of the document: five lab daemons syncing a
/// 10,000-change document spent most of their CPU on hex-formatting change hashes.
pub fn quiet_automerge_spans(filter: &str) -> String {
    if filter.contains("automerge") {
        filter.to_string()
    } else if filter.trim().is_empty() {
        "automerge=warn".to_string()
    } else {
        format!("{filter},automerge=warn")
    }
}

#[cfg(test)]
mod tests {
    use super::quiet_automerge_spans;

    #[test]
    fn automerge_spans_are_quieted_unless_the_filter_names_automerge() {
        assert_eq!(quiet_automerge_spans("info"), "info,automerge=warn");
        assert_eq!(quiet_automerge_spans(" "), "automerge=warn");
        assert_eq!(
            quiet_automerge_spans("debug,automerge=trace"),
            "debug,automerge=trace"
        );
    }
}

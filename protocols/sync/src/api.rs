//! The sync protocol's control API: route names and the JSON types of requests and
//! replies. The service serves them and the CLI calls them, so paths and field names live
//! here once. Field names are part of the control protocol: add fields, do not rename them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Control routes (the path after `/v1/`).
pub mod routes {
    /// The route prefix sync serves: `/v1/db/...`.
    pub const PREFIXES: &[&str] = &["db"];
    /// `POST` [`super::CreateRequest`] -> [`super::DocInfo`].
    pub const CREATE: &str = "db/create";
    /// `POST` [`super::PutRequest`] -> [`super::Written`], after the write is on disk.
    pub const PUT: &str = "db/put";
    /// `POST` [`super::PathRequest`] (path optional) -> the JSON value.
    pub const GET: &str = "db/get";
    /// `POST` [`super::PathRequest`] -> [`super::Written`], after the write is on disk.
    pub const DELETE: &str = "db/delete";
    /// `GET` -> [`super::DocInfo`]s.
    pub const LIST: &str = "db/list";
    /// `GET ?doc=<name>`: [`super::WatchEvent`]s as JSON lines.
    pub const WATCH: &str = "db/watch";
    /// `POST` [`super::DocRequest`] -> [`super::HistoryItem`]s, oldest first.
    pub const HISTORY: &str = "db/history";
    /// `POST` [`super::DocRequest`] -> [`super::ConflictInfo`]s.
    pub const CONFLICTS: &str = "db/conflicts";
    /// `POST` [`super::ResolveRequest`] -> [`super::Written`].
    pub const RESOLVE: &str = "db/resolve";
    /// `POST` [`super::DocRequest`] -> [`super::Export`].
    pub const EXPORT: &str = "db/export";
    /// `POST` [`super::ImportRequest`] -> [`super::Written`].
    pub const IMPORT: &str = "db/import";

    /// The watch route for `doc`.
    pub fn watch(doc: &str) -> String {
        format!("{WATCH}?doc={doc}")
    }
}

/// Body of `db/create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The document's name (1 to 128 of `A-Z a-z 0-9 . _ -`).
    pub doc: String,
    /// The network it belongs to.
    pub network: String,
}

/// Body of `db/put`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutRequest {
    /// The document.
    pub doc: String,
    /// Where (`todos/0/title`; empty for the whole document).
    pub path: String,
    /// The value.
    pub value: Value,
}

/// Body of `db/get` and `db/delete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathRequest {
    /// The document.
    pub doc: String,
    /// Where; `db/get` reads the whole document without it.
    #[serde(default)]
    pub path: Option<String>,
}

/// Body of the routes that name only a document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocRequest {
    /// The document.
    pub doc: String,
    /// `db/history`: most entries (the newest).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// What `db/resolve` keeps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum KeepChoice {
    /// Our value.
    Local,
    /// Another peer's value.
    Remote,
    /// This value instead.
    Value(Value),
}

/// Body of `db/resolve`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolveRequest {
    /// The document.
    pub doc: String,
    /// The path of the conflict.
    pub path: String,
    /// What to keep.
    pub keep: KeepChoice,
}

/// Body of `db/import`: the value replaces the document's content in one change; an
/// unknown document is created when `network` is given.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportRequest {
    /// The document.
    pub doc: String,
    /// The network, to create the document.
    #[serde(default)]
    pub network: Option<String>,
    /// The whole content (an object).
    pub value: Value,
}

/// A document, as `db/list` and `db/create` report it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DocInfo {
    /// The name.
    pub doc: String,
    /// Its network.
    pub network: String,
    /// How many changes it holds.
    pub changes: u64,
    /// Its heads (hex change hashes).
    pub heads: Vec<String>,
}

/// An acknowledged write: on disk when this is returned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Written {
    /// The document.
    pub doc: String,
    /// The change made, or `None` when nothing needed writing.
    pub change: Option<String>,
    /// The heads afterwards.
    pub heads: Vec<String>,
}

/// One change of a document's history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryItem {
    /// The change's hash.
    pub hash: String,
    /// Its author's peer id.
    pub author: String,
    /// When (unix ms, the author's clock).
    pub time_ms: i64,
    /// Its message, if any.
    pub message: Option<String>,
    /// The changes it was made on.
    pub deps: Vec<String>,
}

/// One of the concurrent values at a path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CandidateInfo {
    /// The value.
    pub value: Value,
    /// Its author's peer id.
    pub author: String,
    /// Whether we wrote it.
    pub local: bool,
    /// When (unix ms).
    pub time_ms: i64,
    /// The change that wrote it.
    pub change: String,
}

/// A path holding concurrent values.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConflictInfo {
    /// Where.
    pub path: String,
    /// The values.
    pub candidates: Vec<CandidateInfo>,
    /// The index the document's strategy reads.
    pub pick: Option<usize>,
}

/// `db/export`: a document as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Export {
    /// The name.
    pub doc: String,
    /// Its network.
    pub network: String,
    /// Its heads.
    pub heads: Vec<String>,
    /// Its content.
    pub value: Value,
}

/// One line of `db/watch`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchEvent {
    /// The document changed (after the change is on disk).
    Changed {
        /// The document.
        doc: String,
        /// `local` or the peer id the changes came from.
        source: String,
        /// How many changes arrived.
        changes: u64,
        /// The heads afterwards.
        heads: Vec<String>,
    },
    /// This watcher fell behind and missed `missed` events (read the document again).
    Lagged {
        /// How many.
        missed: u64,
    },
}

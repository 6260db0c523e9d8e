//! The files protocol's control API: route names and the JSON types of requests and
//! replies. The service serves them and the CLI calls them, so paths and field names live
//! here once. Field names are part of the control protocol: add fields, do not rename
//! them.

use serde::{Deserialize, Serialize};

/// Control routes (the path after `/v1/`).
pub mod routes {
    /// The route prefix files serves: `/v1/files/...`.
    pub const PREFIXES: &[&str] = &["files"];
    /// `POST` [`super::ShareRequest`] -> [`super::ShareInfo`].
    pub const SHARE: &str = "files/share";
    /// `POST` [`super::ContentRequest`] -> [`super::ShareInfo`] of what was removed.
    pub const UNSHARE: &str = "files/unshare";
    /// `GET` -> [`super::ShareInfo`]s.
    pub const SHARES: &str = "files/shares";
    /// `POST` [`super::GetRequest`] -> [`super::TransferInfo`] of the started transfer.
    pub const GET: &str = "files/get";
    /// `GET` -> [`super::TransferInfo`]s; `GET ?id=<n>` -> one [`super::TransferInfo`];
    /// `GET ?id=<n>&wait_ms=<ms>` -> the same once it has ended, or after `ms` (at most
    /// 10 s) if it still runs.
    pub const TRANSFERS: &str = "files/transfers";
    /// `POST` [`super::SendRequest`] -> [`super::SendInfo`] once the peer took the offer.
    pub const SEND: &str = "files/send";
    /// `GET` -> [`super::OfferInfo`]s waiting for an answer.
    pub const INBOX: &str = "files/inbox";
    /// `POST` [`super::AcceptRequest`] -> [`super::TransferInfo`] of the started transfer.
    pub const ACCEPT: &str = "files/accept";
    /// `POST` [`super::OfferRequest`] -> the removed [`super::OfferInfo`].
    pub const REJECT: &str = "files/reject";

    /// `GET`: events as JSON lines ([`super::FilesEvent`]): offers as they arrive, and
    /// transfers as they start, progress and end.
    pub const EVENTS: &str = "files/events";

    /// The transfers route asking for one transfer.
    pub fn transfer(id: u64) -> String {
        format!("{TRANSFERS}?id={id}")
    }

    /// The transfers route waiting up to `wait_ms` for one transfer to end.
    pub fn transfer_wait(id: u64, wait_ms: u64) -> String {
        format!("{TRANSFERS}?id={id}&wait_ms={wait_ms}")
    }
}

/// Share files or directories (absolute paths, as the daemon sees them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShareRequest {
    /// The paths; each becomes a top-level name of the manifest.
    pub paths: Vec<String>,
}

/// A share: what others fetch with its content id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShareInfo {
    /// The content id (`b3:...`), the root of the manifest.
    pub content_id: String,
    /// The first file's path, to name the share.
    pub name: String,
    /// Files in it.
    pub files: u64,
    /// Bytes in all.
    pub size: u64,
    /// Whether it is announced in the DHT (false for content only offered to one peer).
    pub announced: bool,
}

/// Names a content by id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContentRequest {
    /// The content id (`b3:...`).
    pub content_id: String,
}

/// Fetch a content into a directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetRequest {
    /// The content id (`b3:...`).
    pub content_id: String,
    /// The target directory (absolute); the manifest's paths are created under it.
    pub to: String,
    /// Peers to ask besides the providers the DHT names.
    #[serde(default)]
    pub from: Vec<String>,
}

/// Where a transfer is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    /// Finding providers, fetching the manifest or groups.
    Running,
    /// Every file verified, synced and in place.
    Done,
    /// Stopped with an error; what was verified stays on disk for a resume.
    Failed,
}

/// One provider's part in a transfer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProviderInfo {
    /// The provider.
    pub peer_id: String,
    /// Groups it served that verified.
    pub groups: u64,
    /// Whether it was dropped (a group failed verification).
    pub dropped: bool,
    /// Whether it is reached over a relay (whose circuits end at the relay's limits).
    #[serde(default)]
    pub relayed: bool,
    /// Times its stream ended and another was opened (a new relay circuit, say).
    #[serde(default)]
    pub reopened: u32,
}

/// A transfer (a `get`, or an accepted offer).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TransferInfo {
    /// Its id on this node.
    pub id: u64,
    /// The content id.
    pub content_id: String,
    /// The target directory.
    pub target: String,
    /// Running, done or failed.
    pub status: TransferStatus,
    /// Files in the manifest (0 until it arrived).
    pub files: u64,
    /// Bytes in all (0 until the manifest arrived).
    pub size: u64,
    /// Bytes verified on disk.
    pub bytes_done: u64,
    /// Chunk groups in all.
    pub groups_total: u64,
    /// Groups found verified on disk from an earlier run.
    pub groups_resumed: u64,
    /// Groups fetched and verified by this run.
    pub groups_fetched: u64,
    /// The providers asked.
    pub providers: Vec<ProviderInfo>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Offer files or directories to a peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendRequest {
    /// The receiving peer.
    pub peer_id: String,
    /// The paths (absolute).
    pub paths: Vec<String>,
}

/// An offer the peer took into its inbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SendInfo {
    /// The receiving peer.
    pub peer_id: String,
    /// The content id offered.
    pub content_id: String,
    /// Files offered.
    pub files: u64,
    /// Bytes offered.
    pub size: u64,
}

/// An offer waiting in the inbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OfferInfo {
    /// Its id on this node.
    pub id: u64,
    /// The offering peer.
    pub peer_id: String,
    /// The content id offered.
    pub content_id: String,
    /// The first file's path, as the sender named it (checked safe).
    pub name: String,
    /// Files offered.
    pub files: u64,
    /// Bytes offered.
    pub size: u64,
    /// When it arrived (unix ms).
    pub received_at: u64,
}

/// Accept an offer into a directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AcceptRequest {
    /// The offer id.
    pub offer: u64,
    /// The target directory (absolute).
    pub to: String,
}

/// Names an offer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OfferRequest {
    /// The offer id.
    pub offer: u64,
}

/// An event of the files service, on `GET /v1/files/events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FilesEvent {
    /// A peer offered files; answer with accept or reject.
    Offer(OfferInfo),
    /// A transfer started, made progress (after each written batch) or ended.
    Transfer(TransferInfo),
    /// The subscriber fell behind and missed this many events.
    Lagged {
        /// Events missed.
        missed: u64,
    },
}

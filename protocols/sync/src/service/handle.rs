//! [`SyncHandle`]: what callers (the control routes, tests, embedders) use.

use p2pnode_crdt::{Keep, Strategy};
use serde_json::Value;

use super::*;
use crate::api::{CandidateInfo, ConflictInfo, Export, HistoryItem};

/// Counters of what moved on the wire, for tests and benches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Frames received from peers.
    pub frames_in: u64,
    /// automerge message bytes received.
    pub bytes_in: u64,
    /// Changes received frames added.
    pub changes_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// automerge message bytes sent.
    pub bytes_out: u64,
    /// Bytes sent on the stream for them: frames, chunk prefixes and the secure layer's
    /// header and tag per chunk (padding, off by default, not counted).
    pub wire_bytes_out: u64,
    /// Frames dropped by the access check or a bound.
    pub refused_frames: u64,
    /// Streams refused: the peer shares no network with us.
    pub refused_streams: u64,
    /// Streams closed because a membership change left the peer no network in common.
    pub closed_by_membership: u64,
}

/// A handle on the sync service. Cheap to clone.
#[derive(Clone)]
pub struct SyncHandle {
    pub(super) commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncHandle")
    }
}

/// The history limit when none is given.
const DEFAULT_HISTORY: usize = 10_000;

impl SyncHandle {
    async fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, SyncError>>) -> Command,
    ) -> Result<T, SyncError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| SyncError::Stopped)?;
        rx.await.map_err(|_| SyncError::Stopped)?
    }

    async fn write(
        &self,
        doc: &str,
        create: Option<String>,
        must_be_new: bool,
        op: WriteOp,
    ) -> Result<Written, SyncError> {
        let doc = doc.to_string();
        self.send(|reply| Command::Write {
            doc,
            create,
            must_be_new,
            op,
            reply,
        })
        .await
    }

    /// Runs `f` on the owner's state.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Service) -> Result<T, SyncError> + Send + 'static,
    ) -> Result<T, SyncError> {
        self.send(|reply| {
            Command::Read(Box::new(move |s: &Service| {
                let _ = reply.send(f(s));
            }))
        })
        .await
    }

    /// Runs `f` on one document.
    async fn read_doc<T: Send + 'static>(
        &self,
        doc: &str,
        f: impl FnOnce(&str, &Doc) -> Result<T, SyncError> + Send + 'static,
    ) -> Result<T, SyncError> {
        let doc = doc.to_string();
        self.read(move |s| {
            let d = s
                .docs
                .get(&doc)
                .ok_or_else(|| SyncError::UnknownDocument(doc.clone()))?;
            f(&doc, d)
        })
        .await
    }

    /// Creates an empty document in `network`; it is on disk when this returns.
    pub async fn create(&self, doc: &str, network: &str) -> Result<DocInfo, SyncError> {
        check_network(network)?;
        self.write(doc, Some(network.to_string()), true, Box::new(|_| Ok(None)))
            .await?;
        self.info(doc).await
    }

    /// Writes `value` at `path`; acknowledged once on disk.
    pub async fn put(&self, doc: &str, path: &str, value: Value) -> Result<Written, SyncError> {
        let path = path.to_string();
        self.write(doc, None, false, Box::new(move |d| d.put(&path, &value)))
            .await
    }

    /// Deletes the key or element at `path`; acknowledged once on disk.
    pub async fn delete(&self, doc: &str, path: &str) -> Result<Written, SyncError> {
        let path = path.to_string();
        self.write(doc, None, false, Box::new(move |d| d.delete(&path)))
            .await
    }

    /// Replaces the concurrent values at `path` by one.
    pub async fn resolve(&self, doc: &str, path: &str, keep: Keep) -> Result<Written, SyncError> {
        let path = path.to_string();
        self.write(doc, None, false, Box::new(move |d| d.resolve(&path, keep)))
            .await
    }

    /// Replaces the document's content by `value` (an object) in one change; creates the
    /// document in `network` when it does not exist and a network is given.
    pub async fn import(
        &self,
        doc: &str,
        network: Option<&str>,
        value: Value,
    ) -> Result<Written, SyncError> {
        if !value.is_object() {
            return Err(SyncError::Invalid(
                "an import is a JSON object (or an export of one)".into(),
            ));
        }
        let network = network.map(str::to_string);
        self.write(doc, network, false, Box::new(move |d| d.put("", &value)))
            .await
    }

    /// The value at `path` (the whole document for the empty path).
    pub async fn get(&self, doc: &str, path: &str) -> Result<Value, SyncError> {
        let path = path.to_string();
        self.read_doc(doc, move |_, d| Ok(d.session.document().get(&path)?))
            .await
    }

    /// One document's name, network, change count and heads.
    pub async fn info(&self, doc: &str) -> Result<DocInfo, SyncError> {
        self.read(|s| Ok(s.docs.iter().map(|(n, d)| s.info(n, d)).collect::<Vec<_>>()))
            .await?
            .into_iter()
            .find(|i| i.doc == doc)
            .ok_or_else(|| SyncError::UnknownDocument(doc.to_string()))
    }

    /// Every document.
    pub async fn list(&self) -> Result<Vec<DocInfo>, SyncError> {
        self.read(|s| Ok(s.docs.iter().map(|(n, d)| s.info(n, d)).collect()))
            .await
    }

    /// The last `limit` changes, oldest first.
    pub async fn history(
        &self,
        doc: &str,
        limit: Option<usize>,
    ) -> Result<Vec<HistoryItem>, SyncError> {
        let limit = limit.unwrap_or(DEFAULT_HISTORY);
        self.read_doc(doc, move |_, d| {
            Ok(d.session
                .document()
                .history(limit)
                .into_iter()
                .map(|h| HistoryItem {
                    hash: h.hash.to_string(),
                    author: peer_label(&h.author),
                    time_ms: h.time_ms,
                    message: h.message,
                    deps: hex_heads(&h.deps),
                })
                .collect())
        })
        .await
    }

    /// Every path holding concurrent values.
    pub async fn conflicts(&self, doc: &str) -> Result<Vec<ConflictInfo>, SyncError> {
        self.read_doc(doc, |_, d| {
            let conflicts = d.session.document().conflicts()?;
            Ok(conflicts
                .into_iter()
                .map(|c| ConflictInfo {
                    path: c.path,
                    pick: c.pick,
                    candidates: c
                        .candidates
                        .into_iter()
                        .map(|k| CandidateInfo {
                            value: k.value,
                            author: peer_label(&k.author),
                            local: k.local,
                            time_ms: k.time_ms,
                            change: k.change.to_string(),
                        })
                        .collect(),
                })
                .collect())
        })
        .await
    }

    /// The document as JSON, with its network and heads.
    pub async fn export(&self, doc: &str) -> Result<Export, SyncError> {
        self.read_doc(doc, |name, d| {
            let document = d.session.document();
            // Read with automerge's own pick, so an export under Manual does not fail.
            let value = document.get_with("", Strategy::LatestTimestamp)?;
            Ok(Export {
                doc: name.to_string(),
                network: d.network.clone(),
                heads: hex_heads(&document.heads()),
                value,
            })
        })
        .await
    }

    /// The document's changes as they are saved, local and remote.
    pub async fn watch(&self, doc: &str) -> Result<broadcast::Receiver<WatchEvent>, SyncError> {
        let doc = doc.to_string();
        self.send(|reply| Command::Watch { doc, reply }).await
    }

    /// What moved on the wire so far.
    pub async fn stats(&self) -> Result<SyncStats, SyncError> {
        self.read(|s| Ok(s.stats)).await
    }

    /// The peers with a live sync stream.
    pub async fn linked_peers(&self) -> Result<Vec<PeerId>, SyncError> {
        self.read(|s| Ok(s.links.keys().copied().collect())).await
    }
}

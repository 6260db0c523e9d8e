//! Shares: hashing paths into a manifest and outboards, the `files_shares` table, and
//! announcing content ids in the DHT while shared.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use libp2p::PeerId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::partial::{Partial, find_partial};
use super::wire::Blob;
use super::{FilesError, Inner, MAX_SHARES, db_err};
use crate::api::ShareInfo;
use crate::{ContentId, Entry, Manifest, hash_file, scan};

/// Shares: content id (32 bytes) -> [`Record`] (CBOR).
const SHARES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files_shares");

/// A share as stored.
#[derive(Serialize, Deserialize)]
struct Record {
    manifest: Blob,
    /// Where each entry's bytes are, in manifest order (raw OS bytes).
    sources: Vec<Blob>,
    /// The only peers it is served to (offers), or everyone.
    only: Option<Vec<Blob>>,
}

/// A share in memory: what serving needs.
#[derive(Debug)]
pub(super) struct Share {
    /// The encoded manifest, served as is.
    pub(super) manifest: Vec<u8>,
    /// Each file's size and root, in manifest order.
    pub(super) entries: Vec<(u64, ContentId)>,
    pub(super) sources: Vec<PathBuf>,
    /// The peers it was offered to, or `None` for everyone (a public share).
    pub(super) only: Option<Vec<PeerId>>,
    pub(super) info: ShareInfo,
}

/// Peers one offered-only share is served to, at most (the oldest offer loses access).
const MAX_AUDIENCE: usize = 64;

impl Share {
    fn new(
        manifest: &Manifest,
        bytes: Vec<u8>,
        sources: Vec<PathBuf>,
        only: Option<Vec<PeerId>>,
    ) -> Self {
        let entries: Vec<(u64, ContentId)> = manifest
            .entries()
            .iter()
            .map(|e| (e.size, e.root))
            .collect();
        let info = ShareInfo {
            content_id: ContentId::of(&bytes).to_string(),
            name: manifest
                .entries()
                .first()
                .map(|e| e.path.clone())
                .unwrap_or_default(),
            files: entries.len() as u64,
            size: manifest.total_size(),
            announced: only.is_none(),
        };
        Self {
            manifest: bytes,
            entries,
            sources,
            only,
            info,
        }
    }

    /// Whether `peer` may fetch it.
    pub(super) fn serves(&self, peer: &PeerId) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(peer))
    }
}

/// Reads every share from the table.
pub(super) fn load(db: &Database) -> Result<HashMap<ContentId, Arc<Share>>, FilesError> {
    let mut out = HashMap::new();
    let tx = db.begin_read().map_err(db_err)?;
    let table = match tx.open_table(SHARES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(out),
        Err(e) => return Err(db_err(e)),
    };
    for row in table.iter().map_err(db_err)? {
        let (_, v) = row.map_err(db_err)?;
        let record: Record = match ciborium::from_reader(v.value()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("skipping a corrupt share record: {e}");
                continue;
            }
        };
        let Ok(manifest) = Manifest::decode(&record.manifest.0) else {
            tracing::warn!("skipping a share whose manifest no longer decodes");
            continue;
        };
        let sources = record
            .sources
            .into_iter()
            .map(|b| PathBuf::from(OsString::from_vec(b.0)))
            .collect();
        let only = record.only.map(|list| {
            list.iter()
                .filter_map(|b| PeerId::from_bytes(&b.0).ok())
                .collect()
        });
        let share = Share::new(&manifest, record.manifest.0, sources, only);
        out.insert(manifest.id(), Arc::new(share));
        if out.len() >= MAX_SHARES {
            break;
        }
    }
    Ok(out)
}

pub(super) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> FilesError {
    FilesError::Io(format!("{}: {e}", path.display()))
}

/// Hashes `paths`, keeps the outboards and records the share (announced unless `only`).
pub(super) async fn share(
    inner: &Arc<Inner>,
    paths: Vec<PathBuf>,
    only: Option<PeerId>,
) -> Result<ShareInfo, FilesError> {
    if paths.is_empty() {
        return Err(FilesError::Invalid("nothing to share".into()));
    }
    if let Some(p) = paths.iter().find(|p| !p.is_absolute()) {
        return Err(FilesError::Invalid(format!(
            "{} is not an absolute path",
            p.display()
        )));
    }
    let outboards = inner.outboards.clone();
    let (manifest, sources) = tokio::task::spawn_blocking(move || hash_all(&paths, &outboards))
        .await
        .map_err(|e| FilesError::Io(e.to_string()))??;
    let bytes = manifest.encode();
    let id = manifest.id();
    // Sharing what is already shared widens who may fetch it, never narrows it: public
    // stays public, and an offer to one more peer adds that peer.
    let existing = inner
        .shares
        .lock()
        .ok()
        .and_then(|s| s.get(&id).map(|s| s.only.clone()));
    let only: Option<Vec<PeerId>> = match (existing, only) {
        (Some(None), _) | (_, None) => None,
        (Some(Some(mut list)), Some(peer)) => {
            list.retain(|p| *p != peer);
            if list.len() >= MAX_AUDIENCE {
                list.remove(0);
            }
            list.push(peer);
            Some(list)
        }
        (None, Some(peer)) => Some(vec![peer]),
    };
    let record = Record {
        manifest: Blob(bytes.clone()),
        sources: sources
            .iter()
            .map(|p| Blob(p.as_os_str().as_bytes().to_vec()))
            .collect(),
        only: only
            .as_ref()
            .map(|list| list.iter().map(|p| Blob(p.to_bytes())).collect()),
    };
    let public = only.is_none();
    let share = Arc::new(Share::new(&manifest, bytes, sources, only));
    {
        let shares = inner
            .shares
            .lock()
            .map_err(|_| FilesError::Busy("shares lock poisoned".into()))?;
        if shares.len() >= MAX_SHARES && !shares.contains_key(&id) {
            return Err(FilesError::Busy(format!(
                "{MAX_SHARES} shares already; unshare some first"
            )));
        }
    }
    let db = inner.db.clone();
    tokio::task::spawn_blocking(move || -> Result<(), FilesError> {
        let mut buf = Vec::new();
        ciborium::into_writer(&record, &mut buf).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(SHARES).map_err(db_err)?;
            t.insert(id.as_bytes().as_slice(), buf.as_slice())
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    })
    .await
    .map_err(|e| FilesError::Db(e.to_string()))??;
    let info = share.info.clone();
    if let Ok(mut shares) = inner.shares.lock() {
        shares.insert(id, share);
    }
    if public && let Err(e) = inner.client.provide(id.as_bytes().to_vec()).await {
        // Still shared (fetchable by id from this node); the next round announces again.
        tracing::warn!(content = %id, "cannot announce the share yet: {e}");
    }
    tracing::info!(content = %id, files = info.files, size = info.size, "sharing");
    Ok(info)
}

/// Scans and hashes `paths`, writing each file's outboard under `outboards`.
fn hash_all(
    paths: &[PathBuf],
    outboards: &std::path::Path,
) -> Result<(Manifest, Vec<PathBuf>), FilesError> {
    let scanned = scan(paths).map_err(|e| FilesError::Invalid(e.to_string()))?;
    if scanned.files.is_empty() {
        return Err(FilesError::Invalid("no regular files to share".into()));
    }
    let mut entries = Vec::with_capacity(scanned.files.len());
    let mut sources = Vec::with_capacity(scanned.files.len());
    for file in &scanned.files {
        let root = if crate::group_count(file.size) == 1 {
            // A file of one group has an empty outboard, never read (its group is proven
            // by its root): a tree of small files makes no file per file here.
            hash_file(&file.source, file.size, std::io::sink())
                .map_err(|e| FilesError::Io(e.to_string()))?
        } else {
            write_outboard(outboards, file)?
        };
        entries.push(Entry {
            path: file.path.clone(),
            size: file.size,
            root,
            executable: file.executable,
        });
        sources.push(file.source.clone());
    }
    let manifest = Manifest::new(entries).map_err(|e| FilesError::Invalid(e.to_string()))?;
    // The manifest sorts its entries by path, as the scan did; keep sources in its order.
    let by_path: HashMap<&str, &PathBuf> = scanned
        .files
        .iter()
        .map(|f| (f.path.as_str(), &f.source))
        .collect();
    let sources = manifest
        .entries()
        .iter()
        .filter_map(|e| by_path.get(e.path.as_str()).map(|p| (*p).clone()))
        .collect();
    Ok((manifest, sources))
}

/// Stops sharing `id`: forgotten, withdrawn from the DHT.
pub(super) async fn unshare(inner: &Arc<Inner>, id: ContentId) -> Result<ShareInfo, FilesError> {
    let removed = inner.shares.lock().ok().and_then(|mut s| s.remove(&id));
    let share = removed.ok_or_else(|| FilesError::NotFound(format!("{id} is not shared")))?;
    let db = inner.db.clone();
    tokio::task::spawn_blocking(move || -> Result<(), FilesError> {
        let tx = db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(SHARES).map_err(db_err)?;
            t.remove(id.as_bytes().as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    })
    .await
    .map_err(|e| FilesError::Db(e.to_string()))??;
    // A partial of the same content (a `get` of it) still serves what it fetched.
    if share.only.is_none() && find_partial(inner, &id).is_none() {
        inner.client.stop_providing(id.as_bytes().to_vec()).await?;
    }
    // Outboards are kept per file root, shared by every share holding that file: remove
    // only those no other share uses.
    let in_use: std::collections::HashSet<ContentId> = inner
        .shares
        .lock()
        .map(|s| {
            s.values()
                .flat_map(|s| s.entries.iter().map(|e| e.1))
                .collect()
        })
        .unwrap_or_default();
    let unused: Vec<PathBuf> = share
        .entries
        .iter()
        .filter(|(_, root)| !in_use.contains(root))
        .map(|(_, root)| inner.outboards.join(root.to_string()))
        .collect();
    // One file per file of the share: a large tree's removal is no job for the runtime.
    // Awaited, so that sharing the same content again cannot lose its new outboard to it.
    let _ = tokio::task::spawn_blocking(move || {
        for path in unused {
            let _ = std::fs::remove_file(path);
        }
    })
    .await;
    Ok(share.info.clone())
}

/// Every share.
pub(super) fn list(inner: &Inner) -> Vec<ShareInfo> {
    let mut list: Vec<ShareInfo> = inner
        .shares
        .lock()
        .map(|s| s.values().map(|s| s.info.clone()).collect())
        .unwrap_or_default();
    list.sort_by(|a, b| a.content_id.cmp(&b.content_id));
    list
}

/// Announces every public share now and then again every `reannounce_every`, so the
/// records outlive restarts and the DHT's churn.
pub(super) async fn announce_loop(inner: Weak<Inner>) {
    let every = match inner.upgrade() {
        Some(i) => i.config.reannounce_every,
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let ids: Vec<ContentId> = inner
            .shares
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(_, s)| s.only.is_none())
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default();
        for id in ids {
            if let Err(e) = inner.client.provide(id.as_bytes().to_vec()).await {
                tracing::debug!(content = %id, "cannot announce: {e}");
            }
        }
    }
}

#[cfg(test)]
impl Inner {
    /// Inserts a share of raw manifest bytes (tests of hostile manifests).
    pub(super) fn insert_raw_share(
        &self,
        manifest: Vec<u8>,
        entries: Vec<(u64, ContentId)>,
        sources: Vec<PathBuf>,
    ) -> ContentId {
        let id = ContentId::of(&manifest);
        let info = ShareInfo {
            content_id: id.to_string(),
            name: String::new(),
            files: entries.len() as u64,
            size: entries.iter().map(|e| e.0).sum(),
            announced: false,
        };
        let share = Share {
            manifest,
            entries,
            sources,
            only: None,
            info,
        };
        if let Ok(mut s) = self.shares.lock() {
            s.insert(id, Arc::new(share));
        }
        id
    }
}

/// A `get`'s swarm task, while its transfer runs (until `found` closes): announces this
/// node as a provider once it has a group, and looks for providers again every
/// `rediscover_every` (others fetching the same content become providers as they go),
/// handing each to the transfer through `found`.
pub(super) async fn swarm<T>(
    inner: Weak<Inner>,
    content: ContentId,
    partial: Option<Arc<Partial>>,
    found: tokio::sync::mpsc::Sender<T>,
    wrap: fn(PeerId) -> T,
) {
    let Some(every) = inner.upgrade().map(|i| i.config.rediscover_every) else {
        return;
    };
    let mut announced = partial.is_none();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the transfer just looked
    loop {
        let first = async {
            match &partial {
                Some(p) if !announced => p.first_verified().await,
                _ => std::future::pending().await,
            }
        };
        let lookup = tokio::select! {
            _ = found.closed() => return,
            _ = first => false,
            _ = tick.tick() => true,
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if !announced && partial.as_ref().is_some_and(|p| p.has_any()) {
            announced = true;
            match inner.client.provide(content.as_bytes().to_vec()).await {
                Ok(()) => tracing::debug!(%content, "announced as a provider while fetching"),
                Err(e) => tracing::debug!(%content, "cannot announce yet: {e}"),
            }
        }
        if lookup {
            match inner
                .client
                .find_providers(content.as_bytes().to_vec())
                .await
            {
                Ok(peers) => {
                    for peer in peers {
                        if found.send(wrap(peer)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => tracing::debug!(%content, "provider lookup failed: {e}"),
            }
        }
    }
}

/// Hashes `file`, writing its outboard under a temporary name renamed to its root once
/// complete, so an outboard under a root's name is always whole; returns the root.
fn write_outboard(
    outboards: &std::path::Path,
    file: &scan::ScannedFile,
) -> Result<ContentId, FilesError> {
    let tmp = outboards.join(format!(".tmp-{}", rand::random::<u64>()));
    let out = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    let mut w = std::io::BufWriter::new(out);
    let root = hash_file(&file.source, file.size, &mut w).and_then(|r| {
        w.flush()
            .map_err(|e| crate::ScanError::Io {
                path: tmp.clone(),
                source: e,
            })
            .map(|()| r)
    });
    let root = match root {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(FilesError::Io(e.to_string()));
        }
    };
    let dest = outboards.join(root.to_string());
    std::fs::rename(&tmp, &dest).map_err(|e| io(&dest, e))?;
    Ok(root)
}

//! Content being fetched, served while it is fetched (serve-while-fetching): the
//! [`Partial`] of each running `get`, kept in the service's bounded list and found by
//! content id when a peer asks for it.

use std::path::PathBuf;
use std::sync::Arc;

use super::share::io;
use super::{FilesError, Inner};
use crate::{ContentId, Manifest};

/// Content being fetched, served while it is (serve-while-fetching): the groups a `get`
/// has verified, from its `.part` files (or the files once whole) with proofs from a
/// partial outboard built from what each group's proof established. Groups not verified
/// yet are refused as "not yet". Only `get`s are served so (their content id is public);
/// an accepted offer's content is not passed on.
#[derive(Debug)]
pub(super) struct Partial {
    /// The encoded manifest, served as is.
    pub(super) manifest: Vec<u8>,
    /// Each file's size and root, in manifest order.
    pub(super) entries: Vec<(u64, ContentId)>,
    /// Where each file is while fetched, and where it goes once whole.
    pub(super) parts: Vec<PathBuf>,
    pub(super) finals: Vec<PathBuf>,
    /// `<data>/files/partial/<transfer>`: each file's partial outboard, by index.
    dir: PathBuf,
    /// The groups written and verified (in this run: resumed ones have no proof here).
    have: std::sync::Mutex<crate::TransferState>,
    /// Wakes the transfer's swarm task at the first group, to announce.
    first: tokio::sync::Notify,
    any: std::sync::atomic::AtomicBool,
}

/// Partials kept at most: those of running transfers and of the last finished ones,
/// which go on serving what they fetched (oldest forgotten first).
pub(super) const MAX_PARTIALS: usize = 32;

impl Partial {
    /// File `file`'s partial outboard (only files of more than one group have one).
    pub(super) fn outboard(&self, file: u32) -> PathBuf {
        self.dir.join(file.to_string())
    }

    /// Whether group `g` was verified and written.
    pub(super) fn has(&self, g: crate::GroupRef) -> bool {
        self.have.lock().is_ok_and(|h| h.is_verified(g))
    }

    /// Marks groups written (their bytes and outboard entries are on disk).
    pub(super) fn mark(&self, groups: impl IntoIterator<Item = crate::GroupRef>) {
        let mut any = false;
        if let Ok(mut h) = self.have.lock() {
            for g in groups {
                any |= h.mark_verified(g);
            }
        }
        if any && !self.any.swap(true, std::sync::atomic::Ordering::Relaxed) {
            self.first.notify_one();
        }
    }

    /// Returns when the first group is verified (or at once, if that was told before and
    /// nobody waited).
    pub(super) async fn first_verified(&self) {
        self.first.notified().await;
    }

    pub(super) fn has_any(&self) -> bool {
        self.any.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        // A partial of a large tree holds an outboard per file: its last owner may be a
        // task on the runtime, so the removal goes to the blocking pool when there is one.
        // Renamed first (one quick call), so that a new partial of the same transfer (a
        // resume) never sees its directory go; what a crash leaves is emptied at start.
        static GONE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = GONE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let gone = self.dir.with_extension(format!("gone{n}"));
        let dir = match std::fs::rename(&self.dir, &gone) {
            Ok(()) => gone,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || std::fs::remove_dir_all(dir))),
            Err(_) => drop(std::fs::remove_dir_all(dir)),
        }
    }
}

/// The partials' directory under the data directory; emptied at start (what a previous
/// run left has no groups known to be verified in this one).
pub(super) fn partial_root(outboards: &std::path::Path) -> PathBuf {
    outboards.with_file_name("partial")
}

/// Registers transfer `transfer` of `content` (a `get`) to be served while it runs.
pub(super) fn start_partial(
    inner: &Inner,
    transfer: u64,
    manifest: &Manifest,
    parts: Vec<PathBuf>,
    finals: Vec<PathBuf>,
) -> Result<Arc<Partial>, FilesError> {
    let dir = partial_root(&inner.outboards).join(transfer.to_string());
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let partial = Arc::new(Partial {
        manifest: manifest.encode(),
        entries: manifest
            .entries()
            .iter()
            .map(|e| (e.size, e.root))
            .collect(),
        parts,
        finals,
        dir,
        have: std::sync::Mutex::new(crate::TransferState::for_manifest(manifest)),
        first: tokio::sync::Notify::new(),
        any: std::sync::atomic::AtomicBool::new(false),
    });
    let evicted = match inner.partials.lock() {
        Ok(mut all) => {
            all.retain(|(id, _)| *id != manifest.id());
            let evicted = (all.len() >= MAX_PARTIALS)
                .then(|| all.pop_front())
                .flatten();
            all.push_back((manifest.id(), partial.clone()));
            evicted
        }
        Err(_) => None,
    };
    // A forgotten partial serves nothing: its announcement goes too (unless the content
    // is also shared publicly), or every `get` would leave one behind for good, and the
    // DHT's store of our announcements would fill until shares could not announce.
    if let Some((id, _)) = evicted
        && !publicly_shared(inner, &id)
    {
        let client = inner.client.clone();
        inner.spawn(async move {
            if let Err(e) = client.stop_providing(id.as_bytes().to_vec()).await {
                tracing::debug!(content = %id, "cannot withdraw a forgotten partial: {e}");
            }
        });
    }
    Ok(partial)
}

/// Whether `id` is shared with everyone (announced for the share's own sake).
fn publicly_shared(inner: &Inner, id: &ContentId) -> bool {
    inner
        .shares
        .lock()
        .is_ok_and(|s| s.get(id).is_some_and(|s| s.only.is_none()))
}

/// The partial serving `content`, if any.
pub(super) fn find_partial(inner: &Inner, content: &ContentId) -> Option<Arc<Partial>> {
    let all = inner.partials.lock().ok()?;
    all.iter()
        .rev()
        .find(|(id, _)| id == content)
        .map(|(_, p)| p.clone())
}

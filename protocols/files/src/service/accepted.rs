//! Accepted offers survive restarts and disconnections: each is a row in
//! `files_accepted` until its transfer is done, and the service starts the transfer again
//! (resuming from the verified groups on disk) when it starts and every
//! [`RETRY_EVERY`] while the offering peer is away.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use libp2p::PeerId;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{FilesError, Inner, db_err};
use crate::ContentId;
use crate::api::TransferStatus;

/// Accepted offers: "<content id>\n<target>" -> the offering peer (bytes).
const ACCEPTED: TableDefinition<&str, &[u8]> = TableDefinition::new("files_accepted");
/// Accepted offers kept at most.
const MAX_ACCEPTED: usize = 256;
/// How often unfinished accepted offers are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(30);

fn key(content: &ContentId, target: &Path) -> String {
    format!("{content}\n{}", target.display())
}

/// Records an accepted offer until its transfer is done.
pub(super) async fn remember(
    inner: &Inner,
    content: ContentId,
    target: &Path,
    peer: PeerId,
) -> Result<(), FilesError> {
    let db = inner.db.clone();
    let k = key(&content, target);
    tokio::task::spawn_blocking(move || -> Result<(), FilesError> {
        let tx = db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(ACCEPTED).map_err(db_err)?;
            if t.len().map_err(db_err)? >= MAX_ACCEPTED as u64 {
                return Err(FilesError::Busy(format!(
                    "{MAX_ACCEPTED} accepted offers are unfinished"
                )));
            }
            t.insert(k.as_str(), peer.to_bytes().as_slice())
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    })
    .await
    .map_err(|e| FilesError::Db(e.to_string()))?
}

/// Forgets an accepted offer whose transfer is done.
pub(super) async fn forget(inner: &Inner, content: ContentId, target: &Path) {
    let db = inner.db.clone();
    let k = key(&content, target);
    let r = tokio::task::spawn_blocking(move || -> Result<(), FilesError> {
        let tx = db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(ACCEPTED).map_err(db_err)?;
            t.remove(k.as_str()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    })
    .await;
    if !matches!(r, Ok(Ok(()))) {
        tracing::warn!(content = %content, "cannot forget a finished accepted offer");
    }
}

fn unfinished(inner: &Inner) -> Result<Vec<(ContentId, PathBuf, PeerId)>, FilesError> {
    let tx = inner.db.begin_read().map_err(db_err)?;
    let t = match tx.open_table(ACCEPTED) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(db_err(e)),
    };
    let mut out = Vec::new();
    for row in t.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        let Some((content, target)) = k.value().split_once('\n') else {
            continue;
        };
        let (Ok(content), Ok(peer)) = (content.parse(), PeerId::from_bytes(v.value())) else {
            continue;
        };
        out.push((content, PathBuf::from(target), peer));
    }
    Ok(out)
}

/// Starts the transfers of unfinished accepted offers now and again every
/// [`RETRY_EVERY`], each from its offering peer only.
pub(super) async fn resume_loop(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(RETRY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let db_inner = inner.clone();
        let rows = match tokio::task::spawn_blocking(move || unfinished(&db_inner)).await {
            Ok(Ok(rows)) => rows,
            _ => continue,
        };
        for (content, target, peer) in rows {
            if running(&inner, &content, &target) {
                continue;
            }
            tracing::info!(content = %content, %peer, "resuming an accepted offer");
            if let Err(e) = super::fetch::start(
                &inner,
                content,
                target,
                vec![peer],
                super::fetch::Origin::Offer,
            ) {
                tracing::debug!("cannot resume an accepted offer yet: {e}");
            }
        }
    }
}

fn running(inner: &Arc<Inner>, content: &ContentId, target: &Path) -> bool {
    let id = content.to_string();
    inner.transfers.lock().is_ok_and(|t| {
        t.values().any(|t| {
            t.status == TransferStatus::Running
                && t.content_id == id
                && Path::new(&t.target) == target
        })
    })
}

/// The number of unfinished accepted offers (tests).
#[cfg(test)]
pub(super) fn unfinished_for_test(inner: &Inner) -> usize {
    unfinished(inner).map_or(usize::MAX, |r| r.len())
}

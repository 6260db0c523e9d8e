//! Transfers: find providers, fetch and verify the manifest, then stripe the missing
//! groups over every provider at once with the [`Planner`]. One worker task per provider
//! holds its stream and keeps the groups the driver hands it requested (pipelined),
//! verifying each group against the content's root before handing it back; the driver hands
//! verified groups in batches to the transfer's [`Writer`] (write, sync, save state, on its
//! own thread) and drops a provider whose group failed.

mod driver;
mod manifest;
mod providers;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::mpsc;

use super::disk::{Checked, Disk, Writer, checkpoint_groups};
use super::wire::Secure;
use super::{FilesError, Inner};
use crate::api::{TransferInfo, TransferStatus};
use crate::{ContentId, GROUP_SIZE, GroupRef, PlanConfig, Planner, group_count};
use driver::{Driver, LoopState};
use manifest::fetch_manifest;
use providers::Providers;

/// Events from the workers, waiting for the driver (8 MiB of whole groups at most).
const EVENT_QUEUE: usize = 128;
/// Batches queued for one worker at most.
const WORKER_QUEUE: usize = 4;
/// Groups outstanding per provider at most, however small they are.
const MAX_WINDOW: usize = 1024;
/// Times one provider's stream is opened again in a transfer, at most. A relay circuit
/// ends at its limits (time, bytes); a new stream opens a new circuit, so a large file
/// crosses many of them. A stream is opened again only after the last one served a group.
const MAX_REOPENS: u32 = 64;
/// Failed streams after which a provider the DHT names again is no longer tried.
const MAX_STRIKES: u32 = 2;
/// Providers asked for the manifest before giving up.
const MANIFEST_TRIES: usize = 8;
/// Tries at opening a stream to a provider whose handshake gate turns us away (it has as
/// many strangers' handshakes pending as it takes) before that counts as a failure. A
/// popular share has many fetchers knocking at once; each comes back after a pause rather
/// than failing its `get`.
const BUSY_TRIES: u32 = 8;
/// Pause before opening a stream again when the last try failed; it doubles per failure.
const REOPEN_PAUSE: Duration = Duration::from_millis(500);
/// Failed tries in a row at a new stream to a provider that served, before it leaves: a
/// new stream over a relay fails while the circuit that just ended is torn down, which
/// took longer than one pause on a loaded CI machine. Pauses of 0.5, 1 and 2 s between.
const REOPEN_TRIES: u32 = 4;
/// The first pause after a busy refusal; it doubles up to [`BUSY_PAUSE_MAX`].
const BUSY_PAUSE: Duration = Duration::from_millis(250);
const BUSY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// What a worker reports.
enum Event {
    /// A group that verified.
    Verified {
        peer: PeerId,
        group: GroupRef,
        data: Checked,
    },
    /// A group that failed verification: the provider is to be dropped.
    Bad { peer: PeerId, group: GroupRef },
    /// The provider could not serve a group.
    Failed { peer: PeerId, group: GroupRef },
    /// The provider is still fetching the content and has not got the group yet.
    NotYet { peer: PeerId, group: GroupRef },
    /// A provider found while the transfer runs (serve-while-fetching).
    Found { peer: PeerId },
    /// The provider's stream failed, or did not open (`busy`: its handshake gate turned us
    /// away); the worker ended.
    Gone {
        peer: PeerId,
        reason: String,
        busy: bool,
    },
    /// A new stream to a provider whose stream had ended, or why there is none.
    Back {
        peer: PeerId,
        stream: Result<Box<Secure>, String>,
    },
}

/// Why a transfer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// A `get`: from the peers named and the DHT's providers.
    Get,
    /// An accepted offer: from the offering peer only, remembered until done.
    Offer,
}

/// Starts a transfer of `content` into `to` from `from` (and the DHT's providers for a
/// `get`), returning it as it starts.
pub(super) fn start(
    inner: &Arc<Inner>,
    content: ContentId,
    to: PathBuf,
    from: Vec<PeerId>,
    origin: Origin,
) -> Result<TransferInfo, FilesError> {
    if !to.is_absolute() {
        return Err(FilesError::Invalid(format!(
            "{} is not an absolute path",
            to.display()
        )));
    }
    let busy = inner.transfers.lock().ok().and_then(|t| {
        t.values()
            .find(|t| {
                t.status == TransferStatus::Running
                    && t.content_id == content.to_string()
                    && Path::new(&t.target) == to
            })
            .map(|t| t.id)
    });
    if let Some(other) = busy {
        return Err(FilesError::Busy(format!(
            "transfer {other} is already fetching {content} into {}",
            to.display()
        )));
    }
    let permit = inner
        .running
        .clone()
        .try_acquire_owned()
        .map_err(|_| FilesError::Busy("too many transfers running".into()))?;
    let id = inner.next_id();
    let info = TransferInfo {
        id,
        content_id: content.to_string(),
        target: to.display().to_string(),
        status: TransferStatus::Running,
        files: 0,
        size: 0,
        bytes_done: 0,
        groups_total: 0,
        groups_resumed: 0,
        groups_fetched: 0,
        providers: Vec::new(),
        error: None,
    };
    inner.add_transfer(info.clone())?;
    let task_inner = inner.clone();
    inner.spawn(async move {
        let _permit = permit;
        let dht = origin == Origin::Get;
        let result = run(&task_inner, id, content, to.clone(), from, dht).await;
        // Done, or refused for good (an unsafe manifest, a path already taken): retrying
        // would not help.
        let settled = matches!(result, Ok(()) | Err(FilesError::Invalid(_)));
        if settled && origin == Origin::Offer {
            super::accepted::forget(&task_inner, content, &to).await;
        }
        task_inner.update_transfer(id, |t| match result {
            Ok(()) => t.status = TransferStatus::Done,
            Err(e) => {
                tracing::warn!(transfer = id, content = %content, "transfer failed: {e}");
                t.status = TransferStatus::Failed;
                t.error = Some(e.to_string());
            }
        });
    });
    Ok(info)
}

async fn run(
    inner: &Arc<Inner>,
    id: u64,
    content: ContentId,
    to: PathBuf,
    from: Vec<PeerId>,
    dht: bool,
) -> Result<(), FilesError> {
    let started = Instant::now();
    let (manifest, found) = fetch_manifest(inner, content, &from, dht).await?;
    let target = to.clone();
    let m = manifest.clone();
    let mut disk = tokio::task::spawn_blocking(move || Disk::prepare(&target, &m, content))
        .await
        .map_err(|e| FilesError::Io(e.to_string()))??;
    tracing::debug!(
        transfer = id,
        ms = started.elapsed().as_millis(),
        "manifest fetched, files prepared"
    );
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let swarm = dht && inner.config.serve_while_fetching;
    if swarm {
        let (parts, finals) = disk.paths();
        let partial = super::partial::start_partial(inner, id, &manifest, parts, finals)?;
        disk.serve(partial.clone());
        let found = |peer| Event::Found { peer };
        inner.spawn(super::share::swarm(
            Arc::downgrade(inner),
            content,
            Some(partial),
            ev_tx.clone(),
            found,
        ));
    }
    let groups_total: u64 = manifest.entries().iter().map(|e| group_count(e.size)).sum();
    let checkpoint_every = checkpoint_groups(groups_total);
    let window = window_for(inner.config.window, manifest.total_size(), groups_total);
    let config = PlanConfig::default()
        .with_window(window)
        .with_endgame_after(inner.config.endgame_after)
        .with_start(if swarm { rand::random() } else { 0 });
    // The planner keeps the missing groups as runs, so a resumed transfer costs little
    // memory; they are never listed one by one.
    let mut plan = Planner::new(config, disk.state.missing());
    let resumed = groups_total - plan.remaining();
    // Bytes of the groups on disk or handed to the writer.
    let bytes_done = disk.bytes_done();
    inner.update_transfer(id, |t| {
        t.files = manifest.entries().len() as u64;
        t.size = manifest.total_size();
        t.groups_total = groups_total;
        t.groups_resumed = resumed;
        t.bytes_done = bytes_done;
    });
    if plan.is_done() {
        return Ok(());
    }
    let writer = Writer::start(disk, checkpoint_every, inner.writers.clone()).await?;
    let entries = manifest
        .entries()
        .iter()
        .map(|e| (e.size, e.root))
        .collect();
    let mut providers = Providers::new(inner, content, Arc::new(entries), ev_tx);
    for p in found {
        providers.start(&mut plan, p, None);
    }
    let fetched = Driver {
        inner,
        id,
        plan,
        providers,
        writer,
        events: ev_rx,
        swarm,
        bytes_done,
        state: LoopState::default(),
    }
    .run()
    .await?;
    tracing::info!(transfer = id, content = %content, fetched, resumed, ms = started.elapsed().as_millis(), "transfer complete");
    Ok(())
}

/// The planner's window for a transfer: `window` whole groups' worth of bytes in flight
/// per provider. A tree of small files has a group per file, so it gets more groups (up
/// to [`MAX_WINDOW`]) for the same bytes; otherwise each provider would idle a round trip
/// every few kilobytes.
fn window_for(window: usize, size: u64, groups: u64) -> usize {
    let average = (size / groups.max(1)).clamp(1, GROUP_SIZE);
    let groups = (window as u64).saturating_mul(GROUP_SIZE) / average;
    usize::try_from(groups)
        .unwrap_or(MAX_WINDOW)
        .clamp(window, MAX_WINDOW.max(window))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_same_bytes_in_flight_for_small_files() {
        let mib = 1 << 20;
        // Whole groups: the window as configured.
        assert_eq!(window_for(32, 1024 * mib, 16_384), 32);
        // 10,000 files of 4 KiB, a group each: 16 times the groups, same bytes.
        assert_eq!(window_for(32, 10_000 * 4096, 10_000), 512);
        // Tiny files are capped, and an empty transfer still has a window.
        assert_eq!(window_for(32, 10_000, 10_000), MAX_WINDOW);
        assert_eq!(window_for(32, 0, 0), MAX_WINDOW);
        // A window configured above the cap stays as configured.
        assert_eq!(window_for(2000, 1024 * mib, 16_384), 2000);
    }
}

//! Transfers: find providers, fetch and verify the manifest, then stripe the missing
//! groups over every provider at once with the [`Planner`]. One worker task per provider
//! holds its stream and keeps the groups the driver hands it requested (pipelined),
//! verifying each group against the content's root before handing it back; the driver hands
//! verified groups in batches to the transfer's [`Writer`] (write, sync, save state, on its
//! own thread) and drops a provider whose group failed.

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
use crate::{Answer, ContentId, GROUP_SIZE, GroupRef, PlanConfig, Planner, group_count};
use manifest::fetch_manifest;
use providers::Providers;

/// Events from the workers, waiting for the driver (8 MiB of whole groups at most).
const EVENT_QUEUE: usize = 128;
/// Events handled (and groups written) in one batch at most.
const MAX_BATCH: usize = 128;
/// How often a transfer asks the node which providers are reached over a relay.
const PATHS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Least time between two progress reports while groups come in: each is a copy of the
/// transfer's info for every watcher, and a batch can be a single small file. Short
/// enough that a watcher polling every 50 ms sees a transfer of a third of a second move.
const PROGRESS_EVERY: Duration = Duration::from_millis(25);
/// Verified groups gathered before they go to the writer, at most, or bytes (a batch of
/// whole groups goes at once); fewer once the oldest has waited [`WRITE_AFTER`]. Each
/// hand-off wakes the writer's thread: a tree of small files would otherwise pay a
/// wake-up for every few files.
const WRITE_BATCH: usize = 64;
const WRITE_BATCH_BYTES: u64 = 1 << 20;
const WRITE_AFTER: Duration = Duration::from_millis(2);
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
    let (ev_tx, mut ev_rx) = mpsc::channel(EVENT_QUEUE);
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
    let mut bytes_done = disk.bytes_done();
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
    let mut writer = Writer::start(disk, checkpoint_every, inner.writers.clone()).await?;
    let entries = manifest
        .entries()
        .iter()
        .map(|e| (e.size, e.root))
        .collect();
    let mut providers = Providers::new(inner, content, Arc::new(entries), ev_tx);
    for p in found {
        providers.start(&mut plan, p, None);
    }
    let mut fetched = 0u64;
    let mut paths_seen: Option<Instant> = None;
    let mut reported: Option<Instant> = None;
    let mut gathered = Gathered::default();
    // The writer stopped: its error is the transfer's.
    let mut stopped = false;
    let mut alone_until: Option<Instant> = None;
    let outcome: Result<(), FilesError> = loop {
        if plan.is_done() {
            break Ok(());
        }
        let now = Instant::now();
        providers.hand_out(&mut plan, now);
        // Serving while fetching, the swarm task may find providers again (one that
        // left, others that got groups since): wait a few of its rounds before giving up.
        if !providers.is_empty() {
            alone_until = None;
        } else if alone_until.is_none() {
            let wait = if swarm {
                3 * inner.config.rediscover_every
            } else {
                Duration::ZERO
            };
            alone_until = Some(now + wait);
        }
        if alone_until.is_some_and(|t| t <= now) {
            break Err(FilesError::NoProvider(format!(
                "no provider left with {} groups missing (last failure: {}); run the same command again to resume",
                plan.remaining(),
                providers.last_failure
            )));
        }
        let wake = plan
            .poll_timeout()
            .into_iter()
            .chain(alone_until)
            .chain(gathered.write_at());
        let first = match wake.min() {
            Some(at) => match tokio::time::timeout_at(at.into(), ev_rx.recv()).await {
                Ok(e) => e,
                Err(_) => {
                    // An endgame duplicate came due, the wait ended, or gathered groups
                    // waited long enough.
                    if gathered.waited() && writer.write(gathered.take()).await.is_err() {
                        stopped = true;
                        break Err(FilesError::Io("the writer stopped".into()));
                    }
                    continue;
                }
            },
            None => ev_rx.recv().await,
        };
        let Some(first) = first else {
            break Err(FilesError::Io("transfer workers ended".into()));
        };
        let mut events = vec![first];
        while events.len() < MAX_BATCH {
            match ev_rx.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        let mut writes: Vec<(PeerId, GroupRef, Checked)> = Vec::new();
        for ev in events {
            match ev {
                Event::Verified { peer, group, data } => writes.push((peer, group, data)),
                Event::Bad { peer, group } => providers.on_bad(&mut plan, peer, group),
                Event::Failed { peer, group } => plan.on_failed(&peer, group),
                Event::NotYet { peer, group } => plan.on_missing(&peer, group, Instant::now()),
                Event::Found { peer } => providers.on_found(&mut plan, peer),
                Event::Gone { peer, reason, busy } => {
                    providers.on_gone(&mut plan, peer, &reason, busy)
                }
                Event::Back { peer, stream } => providers.on_back(&mut plan, peer, stream),
            }
        }
        // The planner hears of every group first: an endgame duplicate, or an answer it no
        // longer waited for, is not written.
        for (peer, group, data) in writes {
            if let Answer::Done { .. } = plan.on_verified(&peer, group) {
                // Endgame copies still asked elsewhere are not cancelled on the wire: they
                // are at most a window per provider, and their answers are discarded here.
                bytes_done += data.bytes.len() as u64;
                fetched += 1;
                gathered.push(group, data);
            }
        }
        if gathered.due(plan.is_done()) {
            // Written on the writer's thread while the next groups come in.
            if writer.write(gathered.take()).await.is_err() {
                stopped = true;
                break Err(FilesError::Io("the writer stopped".into()));
            }
        }
        // Which providers are reached over a relay, asked of the node once a second.
        if paths_seen.is_none_or(|t| t.elapsed() >= PATHS_EVERY) {
            paths_seen = Some(Instant::now());
            providers.see_paths().await;
        }
        if reported.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) || plan.is_done() {
            reported = Some(Instant::now());
            let infos = providers.infos(&plan);
            inner.update_transfer(id, |t| {
                t.bytes_done = bytes_done;
                t.groups_fetched = fetched;
                t.providers = infos;
            });
        }
        #[cfg(test)]
        if inner.config.stop_after_groups.is_some_and(|n| fetched >= n) && !plan.is_done() {
            break Err(FilesError::Io("stopped by the test hook".into()));
        }
    };
    let infos = providers.infos(&plan);
    inner.update_transfer(id, |t| {
        t.bytes_done = bytes_done;
        t.groups_fetched = fetched;
        t.providers = infos;
    });
    // Whatever ended the loop, what was written and verified is kept for a resume.
    if !gathered.is_empty() && writer.write(gathered.take()).await.is_err() {
        stopped = true;
    }
    let written = writer.finish().await;
    // A writer that stopped ended the loop: its error says why.
    if stopped || outcome.is_ok() {
        written?;
    }
    outcome?;
    tracing::info!(transfer = id, content = %content, fetched, resumed, ms = started.elapsed().as_millis(), "transfer complete");
    Ok(())
}

/// Verified groups not yet handed to the writer: written in batches (see
/// [`WRITE_BATCH`]), or once the first has waited [`WRITE_AFTER`].
#[derive(Default)]
struct Gathered {
    groups: Vec<(GroupRef, Checked)>,
    bytes: u64,
    since: Option<Instant>,
}

impl Gathered {
    fn push(&mut self, group: GroupRef, data: Checked) {
        self.bytes += data.bytes.len() as u64;
        self.groups.push((group, data));
        self.since.get_or_insert_with(Instant::now);
    }

    fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// When the first waiting group has waited long enough.
    fn write_at(&self) -> Option<Instant> {
        self.since.map(|t| t + WRITE_AFTER)
    }

    fn waited(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= WRITE_AFTER)
    }

    /// Whether to write now (`done`: the transfer has every group).
    fn due(&self, done: bool) -> bool {
        !self.is_empty()
            && (self.groups.len() >= WRITE_BATCH
                || self.bytes >= WRITE_BATCH_BYTES
                || self.waited()
                || done)
    }

    fn take(&mut self) -> Vec<(GroupRef, Checked)> {
        self.bytes = 0;
        self.since = None;
        std::mem::take(&mut self.groups)
    }
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

//! Transfers: find providers, fetch and verify the manifest, then stripe the missing
//! groups over every provider at once with the [`Planner`]. One worker task per provider
//! holds its stream and keeps the groups the driver hands it requested (pipelined),
//! verifying each group against the content's root before handing it back; the driver hands
//! verified groups in batches to the transfer's [`Writer`] (write, sync, save state, on its
//! own thread) and drops a provider whose group failed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use p2pnode_node::NodeError;
use p2pnode_secure::HandshakeError;
use tokio::sync::mpsc;

use super::disk::{Checked, Disk, Writer, checkpoint_groups};
use super::serve::open;
use super::wire::{self, Request, Response, Secure, WireError};
use super::{ANSWER_TIMEOUT, FilesError, Inner, MAX_GROUPS_PER_REQUEST};
use crate::api::{ProviderInfo, TransferInfo, TransferStatus};
use crate::manifest::MAX_MANIFEST_BYTES;
use crate::{
    Answer, ContentId, GROUP_SIZE, GroupRef, Manifest, PlanConfig, Planner, Proof, group_count,
    verify_group,
};

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
    let me = inner.client.peer_id();
    let started = Instant::now();
    let (manifest, providers) = fetch_manifest(inner, content, &from, dht).await?;
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
        let partial = super::share::start_partial(inner, id, &manifest, parts, finals)?;
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
    let entries: Arc<Vec<(u64, ContentId)>> = Arc::new(
        manifest
            .entries()
            .iter()
            .map(|e| (e.size, e.root))
            .collect(),
    );
    let mut workers: HashMap<PeerId, Worker> = HashMap::new();
    let spawn = |peer: PeerId, stream: Option<Secure>| {
        // A few batches queued at most; the planner's window bounds what they hold.
        let (tx, rx) = mpsc::channel(WORKER_QUEUE);
        let (inner2, entries, ev_tx) = (inner.clone(), entries.clone(), ev_tx.clone());
        inner.spawn(worker(inner2, peer, content, entries, rx, ev_tx, stream));
        Worker {
            tx,
            pending: Vec::new(),
        }
    };
    for p in providers {
        if plan.add_provider(p) {
            workers.insert(p, spawn(p, None));
        }
    }
    let mut fetched = 0u64;
    let mut dropped: HashSet<PeerId> = HashSet::new();
    // Per provider: groups served on earlier streams, streams opened again, and whether
    // its connection was last seen relayed.
    let mut served_before: HashMap<PeerId, u64> = HashMap::new();
    let mut reopens: HashMap<PeerId, u32> = HashMap::new();
    let mut relayed: HashSet<PeerId> = HashSet::new();
    // Providers whose new stream is being opened: the transfer waits for them before it
    // says no provider is left.
    let mut reopening: HashSet<PeerId> = HashSet::new();
    // Failed tries in a row at a new stream, per provider (see REOPEN_TRIES).
    let mut failed_opens: HashMap<PeerId, u32> = HashMap::new();
    // Per provider: streams that failed to open or served nothing. The DHT keeps naming a
    // provider that died; found again, it would be tried for ever, and a transfer whose
    // providers are all gone would never end.
    let mut strikes: HashMap<PeerId, u32> = HashMap::new();
    let mut paths_seen: Option<Instant> = None;
    let mut last_failure = String::from("none");
    let mut reported: Option<Instant> = None;
    // Verified groups not yet handed to the writer, and since when the first has waited.
    let mut gathered: Vec<(GroupRef, Checked)> = Vec::new();
    let mut gathered_at: Option<Instant> = None;
    let mut gathered_bytes = 0u64;
    // The writer stopped: its error is the transfer's.
    let mut stopped = false;
    let mut alone_until: Option<Instant> = None;
    let outcome: Result<(), FilesError> = loop {
        if plan.is_done() {
            break Ok(());
        }
        let now = Instant::now();
        while let Some(r) = plan.next_request(now) {
            if let Some(w) = workers.get_mut(&r.provider) {
                w.pending.push(r.group);
            }
        }
        for w in workers.values_mut() {
            if !w.pending.is_empty() {
                let batch = std::mem::take(&mut w.pending);
                // A full queue keeps the groups here for the next round.
                if let Err(mpsc::error::TrySendError::Full(batch)) = w.tx.try_send(batch) {
                    w.pending = batch;
                }
            }
        }
        // Serving while fetching, the swarm task may find providers again (one that
        // left, others that got groups since): wait a few of its rounds before giving up.
        if !workers.is_empty() || !reopening.is_empty() {
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
                "no provider left with {} groups missing (last failure: {last_failure}); run the same command again to resume",
                plan.remaining()
            )));
        }
        let write_at = gathered_at.map(|t| t + WRITE_AFTER);
        let wake = plan
            .poll_timeout()
            .into_iter()
            .chain(alone_until)
            .chain(write_at);
        let first = match wake.min() {
            Some(at) => match tokio::time::timeout_at(at.into(), ev_rx.recv()).await {
                Ok(e) => e,
                Err(_) => {
                    // An endgame duplicate came due, the wait ended, or gathered groups
                    // waited long enough.
                    if gathered_at.is_some_and(|t| t.elapsed() >= WRITE_AFTER)
                        && writer.write(std::mem::take(&mut gathered)).await.is_err()
                    {
                        stopped = true;
                        break Err(FilesError::Io("the writer stopped".into()));
                    }
                    if gathered.is_empty() {
                        gathered_at = None;
                        gathered_bytes = 0;
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
                Event::Bad { peer, group } => {
                    tracing::warn!(%peer, ?group, "provider sent a group that failed verification; dropped");
                    last_failure = format!("{peer} sent a group that failed verification");
                    plan.on_bad(&peer, group);
                    workers.remove(&peer);
                    dropped.insert(peer);
                }
                Event::Failed { peer, group } => plan.on_failed(&peer, group),
                Event::NotYet { peer, group } => plan.on_missing(&peer, group, Instant::now()),
                Event::Found { peer } => {
                    let struck = strikes.get(&peer).is_some_and(|&n| n >= MAX_STRIKES);
                    if peer != me
                        && !struck
                        && !reopening.contains(&peer)
                        && !workers.contains_key(&peer)
                        && plan.add_provider(peer)
                    {
                        tracing::debug!(%peer, "provider found while fetching");
                        workers.insert(peer, spawn(peer, None));
                    }
                }
                Event::Gone { peer, reason, busy } => {
                    let served = plan
                        .served()
                        .find(|(p, _)| **p == peer)
                        .map_or(0, |(_, n)| n);
                    let n = reopens.entry(peer).or_default();
                    // Its groups go back to the others now; it rejoins once a new stream
                    // is open. One that served nothing on its last stream is let go,
                    // unless its gate only turned us away for now: then it is asked again
                    // after a pause, holding no groups meanwhile.
                    let reopen = (served > 0 || busy) && *n < MAX_REOPENS;
                    if served == 0 && !busy {
                        *strikes.entry(peer).or_default() += 1;
                    }
                    let over = if relayed.contains(&peer) {
                        " (over a relay, whose circuits end at its limits)"
                    } else {
                        ""
                    };
                    if reopen {
                        *n += 1;
                        if busy {
                            tracing::debug!(%peer, "provider busy{over}: {reason}; asking again after a pause");
                        } else {
                            tracing::info!(%peer, "provider's stream ended{over}: {reason}; opening another");
                        }
                        reopening.insert(peer);
                        // A busy provider is left alone for a while: the others, or those
                        // the swarm finds meanwhile, take its groups.
                        let pause = if busy {
                            inner.config.rediscover_every.max(busy_pause(1))
                        } else {
                            Duration::ZERO
                        };
                        reopen_later(inner, &ev_tx, peer, pause);
                    } else {
                        tracing::info!(%peer, "provider left the transfer{over}: {reason}");
                    }
                    last_failure = format!("{peer}{over}: {reason}");
                    *served_before.entry(peer).or_default() += served;
                    plan.remove_provider(&peer);
                    workers.remove(&peer);
                }
                Event::Back { peer, stream } => {
                    reopening.remove(&peer);
                    match stream {
                        Ok(stream) => {
                            failed_opens.remove(&peer);
                            if !dropped.contains(&peer)
                                && !workers.contains_key(&peer)
                                && plan.add_provider(peer)
                            {
                                workers.insert(peer, spawn(peer, Some(*stream)));
                            }
                        }
                        Err(reason) => {
                            last_failure = format!("{peer}: no new stream: {reason}");
                            // One that served before is tried again, after a pause
                            // that doubles: a new stream over a relay can fail while the
                            // circuit that just ended is torn down ("oneshot canceled");
                            // a later try dials a new circuit.
                            *strikes.entry(peer).or_default() += 1;
                            let failed = failed_opens.entry(peer).or_default();
                            *failed += 1;
                            let served = served_before.get(&peer).copied().unwrap_or(0);
                            if served > 0 && *failed < REOPEN_TRIES && !dropped.contains(&peer) {
                                tracing::info!(%peer, "no new stream: {reason}; trying again");
                                reopening.insert(peer);
                                let pause = REOPEN_PAUSE * (1 << (*failed - 1));
                                reopen_later(inner, &ev_tx, peer, pause);
                            } else {
                                tracing::info!(%peer, "provider left the transfer: no new stream: {reason}");
                            }
                        }
                    }
                }
            }
        }
        // The planner hears of every group first: an endgame duplicate, or an answer it no
        // longer waited for, is not written.
        for (peer, group, data) in writes {
            if let Answer::Done { .. } = plan.on_verified(&peer, group) {
                // Endgame copies still asked elsewhere are not cancelled on the wire: they
                // are at most a window per provider, and their answers are discarded here.
                bytes_done += data.bytes.len() as u64;
                gathered_bytes += data.bytes.len() as u64;
                fetched += 1;
                gathered.push((group, data));
                gathered_at.get_or_insert_with(Instant::now);
            }
        }
        let due = gathered.len() >= WRITE_BATCH
            || gathered_bytes >= WRITE_BATCH_BYTES
            || gathered_at.is_some_and(|t| t.elapsed() >= WRITE_AFTER)
            || plan.is_done();
        if due && !gathered.is_empty() {
            gathered_at = None;
            gathered_bytes = 0;
            // Written on the writer's thread while the next groups come in.
            if writer.write(std::mem::take(&mut gathered)).await.is_err() {
                stopped = true;
                break Err(FilesError::Io("the writer stopped".into()));
            }
        }
        // Which providers are reached over a relay, asked of the node once a second.
        if paths_seen.is_none_or(|t| t.elapsed() >= PATHS_EVERY) {
            paths_seen = Some(Instant::now());
            if let Ok(peers) = inner.client.peers().await {
                relayed = peers
                    .iter()
                    .filter(|p| p.path == p2pnode_node::api::Path::Relayed)
                    .filter_map(|p| p.peer_id.parse().ok())
                    .collect();
            }
        }
        if reported.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) || plan.is_done() {
            reported = Some(Instant::now());
            let providers = provider_infos(&plan, &dropped, &served_before, &relayed, &reopens);
            inner.update_transfer(id, |t| {
                t.bytes_done = bytes_done;
                t.groups_fetched = fetched;
                t.providers = providers;
            });
        }
        #[cfg(test)]
        if inner.config.stop_after_groups.is_some_and(|n| fetched >= n) && !plan.is_done() {
            break Err(FilesError::Io("stopped by the test hook".into()));
        }
    };
    let providers = provider_infos(&plan, &dropped, &served_before, &relayed, &reopens);
    inner.update_transfer(id, |t| {
        t.bytes_done = bytes_done;
        t.groups_fetched = fetched;
        t.providers = providers;
    });
    // Whatever ended the loop, what was written and verified is kept for a resume.
    if !gathered.is_empty() && writer.write(gathered).await.is_err() {
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

/// What each provider did for the transfer, for its progress.
fn provider_infos(
    plan: &Planner<PeerId>,
    dropped: &HashSet<PeerId>,
    served_before: &HashMap<PeerId, u64>,
    relayed: &HashSet<PeerId>,
    reopens: &HashMap<PeerId, u32>,
) -> Vec<ProviderInfo> {
    let info = |p: &PeerId, groups: u64, dropped: bool| ProviderInfo {
        peer_id: p.to_string(),
        groups: groups + served_before.get(p).copied().unwrap_or(0),
        dropped,
        relayed: relayed.contains(p),
        reopened: reopens.get(p).copied().unwrap_or(0),
    };
    plan.served()
        .map(|(p, n)| info(p, n, false))
        .chain(dropped.iter().map(|p| info(p, 0, true)))
        .collect()
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

struct Worker {
    tx: mpsc::Sender<Vec<GroupRef>>,
    pending: Vec<GroupRef>,
}

/// Opens a new stream to `peer` after `pause` (patiently, see [`open_patiently`]) and
/// reports it to the transfer as [`Event::Back`].
fn reopen_later(inner: &Arc<Inner>, events: &mpsc::Sender<Event>, peer: PeerId, pause: Duration) {
    let (inner2, events) = (inner.clone(), events.clone());
    inner.spawn(async move {
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let stream = open_patiently(&inner2, peer)
            .await
            .map(Box::new)
            .map_err(|e| e.to_string());
        let _ = events.send(Event::Back { peer, stream }).await;
    });
}

/// Whether `e` is a provider's handshake gate turning us away: it closed the stream where
/// its answer was due. That is how it says it is busy (or that we come too often, or that
/// it does not take us: those fail again, and after [`BUSY_TRIES`] the failure stands).
fn turned_away(e: &FilesError) -> bool {
    matches!(
        e,
        FilesError::Node(NodeError::Handshake { source, .. })
            if matches!(**source, HandshakeError::Closed)
    )
}

/// The pause before try `n + 1` at a provider that turned us away `n` times: doubling from
/// [`BUSY_PAUSE`], drawn between half and one and a half times that, so fetchers turned
/// away together do not all come back together.
fn busy_pause(n: u32) -> Duration {
    let base = BUSY_PAUSE
        .saturating_mul(1 << n.saturating_sub(1).min(8))
        .min(BUSY_PAUSE_MAX);
    base.mul_f64(0.5 + rand::random::<f64>())
}

/// Opens a stream to `peer`, coming back after a pause while its gate turns us away.
async fn open_patiently(inner: &Inner, peer: PeerId) -> Result<Secure, FilesError> {
    let mut n = 0;
    loop {
        match open(inner, peer).await {
            Err(e) if turned_away(&e) && n + 1 < BUSY_TRIES => {
                n += 1;
                let pause = busy_pause(n);
                tracing::debug!(%peer, tries = n, ?pause, "provider busy: {e}");
                tokio::time::sleep(pause).await;
            }
            r => return r,
        }
    }
}

/// The providers to fetch `content` from: those named, then (for a `get`) the DHT's.
async fn providers_of(
    inner: &Inner,
    content: ContentId,
    from: &[PeerId],
    dht: bool,
) -> Result<Vec<PeerId>, FilesError> {
    let me = inner.client.peer_id();
    let found = if dht {
        match inner
            .client
            .find_providers(content.as_bytes().to_vec())
            .await
        {
            Ok(found) => found,
            Err(e) if from.iter().all(|p| *p == me) => return Err(e.into()),
            Err(e) => {
                tracing::debug!("provider lookup failed: {e}");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let mut providers: Vec<PeerId> = Vec::new();
    for p in from.iter().copied().chain(found) {
        if p != me && !providers.contains(&p) {
            providers.push(p);
        }
    }
    if providers.is_empty() {
        return Err(FilesError::NoProvider(format!(
            "no provider of {content} found"
        )));
    }
    Ok(providers)
}

/// Fetches the manifest from the first provider that has it and checks it against the
/// content id; a manifest that verifies but is refused (an unsafe path) ends the transfer,
/// since every provider would send the same bytes. Returns it with the providers found.
///
/// When every provider asked turned us away as busy (a popular share with many fetchers
/// at once), it looks for providers again after a pause and asks again, up to
/// [`BUSY_TRIES`] rounds: others fetching the same content become providers meanwhile.
async fn fetch_manifest(
    inner: &Arc<Inner>,
    content: ContentId,
    from: &[PeerId],
    dht: bool,
) -> Result<(Manifest, Vec<PeerId>), FilesError> {
    let mut round = 0;
    loop {
        let providers = providers_of(inner, content, from, dht).await?;
        let mut last = None;
        let mut all_busy = true;
        for &peer in providers.iter().take(MANIFEST_TRIES) {
            match manifest_from(inner, peer, content).await {
                Ok(bytes) => return Ok((decode_manifest(&bytes)?, providers)),
                Err(e) => {
                    tracing::debug!(%peer, "no manifest: {e}");
                    all_busy &= turned_away(&e);
                    last = Some(e);
                }
            }
        }
        let e = last.unwrap_or_else(|| FilesError::NoProvider("no provider answered".into()));
        round += 1;
        if !all_busy || round >= BUSY_TRIES {
            return Err(e);
        }
        let pause = busy_pause(round);
        tracing::debug!(%content, round, ?pause, "every provider busy; asking again");
        tokio::time::sleep(pause).await;
    }
}

fn decode_manifest(bytes: &[u8]) -> Result<Manifest, FilesError> {
    Manifest::decode(bytes).map_err(|e| FilesError::Invalid(format!("refused the manifest: {e}")))
}

async fn manifest_from(
    inner: &Arc<Inner>,
    peer: PeerId,
    content: ContentId,
) -> Result<Vec<u8>, FilesError> {
    let mut s = open(inner, peer).await?;
    let req = inner.next_id();
    let err = |e: WireError| FilesError::NoProvider(format!("{peer}: {e}"));
    wire::send(&mut s, &Request::Manifest { req, content })
        .await
        .map_err(err)?;
    let len = match wire::recv::<Response>(&mut s, ANSWER_TIMEOUT)
        .await
        .map_err(err)?
    {
        Response::Manifest { req: r, len } if r == req => len,
        Response::Refused { message, .. } => {
            return Err(FilesError::NotFound(format!("{peer}: {message}")));
        }
        _ => return Err(FilesError::NoProvider(format!("{peer}: unexpected answer"))),
    };
    if len > MAX_MANIFEST_BYTES as u64 {
        return Err(FilesError::NoProvider(format!(
            "{peer}: manifest of {len} bytes is too large"
        )));
    }
    let mut bytes = Vec::new();
    wire::recv_data(&mut s, len as usize, &mut bytes, ANSWER_TIMEOUT)
        .await
        .map_err(err)?;
    let _ = s.close().await;
    if ContentId::of(&bytes) != content {
        return Err(FilesError::NoProvider(format!(
            "{peer}: the manifest does not match {content}"
        )));
    }
    Ok(bytes)
}

/// One provider's worker: opens its stream at the first batch (unless given one), then keeps its requests
/// pipelined: between reading two groups it sends the requests of any batch that arrived
/// meanwhile, so the provider always has the next groups queued (the planner's window
/// bounds how many) and the link does not idle a round trip per batch.
async fn worker(
    inner: Arc<Inner>,
    peer: PeerId,
    content: ContentId,
    entries: Arc<Vec<(u64, ContentId)>>,
    mut batches: mpsc::Receiver<Vec<GroupRef>>,
    events: mpsc::Sender<Event>,
    stream: Option<Secure>,
) {
    let Some(first) = batches.recv().await else {
        return;
    };
    let opened = match stream {
        Some(s) => Ok(s),
        None => open(&inner, peer).await,
    };
    let mut s = match opened {
        Ok(s) => s,
        Err(e) => {
            let (reason, busy) = (e.to_string(), turned_away(&e));
            let _ = events.send(Event::Gone { peer, reason, busy }).await;
            return;
        }
    };
    let mut pending = Pending::default();
    let result: Result<(), WireError> = async {
        pending.request(&inner, &mut s, content, first).await?;
        loop {
            if pending.is_empty() {
                match batches.recv().await {
                    Some(batch) => pending.request(&inner, &mut s, content, batch).await?,
                    None => return Ok(()),
                }
            }
            while let Ok(batch) = batches.try_recv() {
                pending.request(&inner, &mut s, content, batch).await?;
            }
            if !pending.read_one(&mut s, peer, &entries, &events).await? {
                return Ok(());
            }
        }
    }
    .await;
    if let Err(e) = result {
        let reason = e.to_string();
        let busy = false;
        let _ = events.send(Event::Gone { peer, reason, busy }).await;
    }
}

/// A worker's requests sent and not yet answered in full, in the order sent.
#[derive(Default)]
struct Pending {
    requests: VecDeque<(u64, VecDeque<GroupRef>)>,
    data: Vec<u8>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Sends the batch's requests (up to [`MAX_GROUPS_PER_REQUEST`] groups each, of any
    /// files) and flushes once.
    async fn request(
        &mut self,
        inner: &Inner,
        s: &mut Secure,
        content: ContentId,
        batch: Vec<GroupRef>,
    ) -> Result<(), WireError> {
        for groups in batch.chunks(MAX_GROUPS_PER_REQUEST) {
            #[cfg(test)]
            inner
                .requested_groups
                .fetch_add(groups.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let req = inner.next_id();
            let msg = Request::Groups {
                req,
                content,
                groups: groups.iter().map(|g| (g.file, g.group)).collect(),
            };
            wire::feed(s, &msg).await?;
            self.requests
                .push_back((req, groups.iter().copied().collect()));
        }
        s.flush().await?;
        Ok(())
    }

    /// Reads and verifies the next group answered. False when it failed verification
    /// (the worker ends; the driver drops the provider).
    async fn read_one(
        &mut self,
        s: &mut Secure,
        peer: PeerId,
        entries: &[(u64, ContentId)],
        events: &mpsc::Sender<Event>,
    ) -> Result<bool, WireError> {
        let Some((req, groups)) = self.requests.front_mut() else {
            return Ok(true);
        };
        let req = *req;
        let Some(&g) = groups.front() else {
            self.requests.pop_front();
            return Ok(true);
        };
        let GroupRef { file, group } = g;
        let Some(&(size, root)) = entries.get(file as usize) else {
            return Err(WireError::Violation("no such file".into()));
        };
        match wire::recv::<Response>(s, ANSWER_TIMEOUT).await? {
            Response::Group {
                req: r,
                file: got_file,
                group: got,
                len,
                proof,
            } if r == req && got_file == file && got == group => {
                if u64::from(len) > GROUP_SIZE {
                    return Err(WireError::Violation("group larger than a group".into()));
                }
                wire::recv_data(s, len as usize, &mut self.data, ANSWER_TIMEOUT).await?;
                let proven = Proof::from_bytes(&proof.0)
                    .and_then(|p| verify_group(&root, size, group, &self.data, &p));
                let ok = proven.is_ok();
                let event = if let Ok(proven) = proven {
                    let bytes =
                        std::mem::replace(&mut self.data, Vec::with_capacity(GROUP_SIZE as usize));
                    Event::Verified {
                        peer,
                        group: g,
                        data: Checked { bytes, proven },
                    }
                } else {
                    Event::Bad { peer, group: g }
                };
                if events.send(event).await.is_err() || !ok {
                    return Ok(false);
                }
                groups.pop_front();
                if groups.is_empty() {
                    self.requests.pop_front();
                }
                Ok(true)
            }
            Response::NotYet {
                req: r,
                file: got_file,
                group: got,
            } if r == req && got_file == file && got == group => {
                // A provider still fetching: this group is asked elsewhere, it stays.
                if events.send(Event::NotYet { peer, group: g }).await.is_err() {
                    return Ok(false);
                }
                groups.pop_front();
                if groups.is_empty() {
                    self.requests.pop_front();
                }
                Ok(true)
            }
            Response::Refused {
                req: r, message, ..
            } if r == req => {
                tracing::debug!(%peer, "groups refused: {message}");
                for (_, groups) in self.requests.drain(..) {
                    for group in groups {
                        let failed = Event::Failed { peer, group };
                        if events.send(failed).await.is_err() {
                            return Ok(false);
                        }
                    }
                }
                // A provider that refuses once (its copy changed, a bound) would be asked
                // again and again: it leaves the transfer instead.
                Err(WireError::Violation(format!("refused: {message}")))
            }
            _ => Err(WireError::Violation("unexpected answer".into())),
        }
    }
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

    #[test]
    fn only_a_gate_closing_the_handshake_counts_as_busy() {
        let handshake = |source| {
            FilesError::Node(NodeError::Handshake {
                peer: "p".into(),
                source: Arc::new(source),
            })
        };
        assert!(turned_away(&handshake(HandshakeError::Closed)));
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert!(!turned_away(&handshake(HandshakeError::Io(eof))));
        assert!(!turned_away(&FilesError::NoProvider("gone".into())));
    }

    #[test]
    fn busy_pauses_double_to_a_cap_and_are_spread() {
        for n in 1..=BUSY_TRIES {
            let base = BUSY_PAUSE
                .saturating_mul(1 << (n - 1).min(8))
                .min(BUSY_PAUSE_MAX);
            for _ in 0..50 {
                let p = busy_pause(n);
                assert!(p >= base / 2 && p <= base * 3 / 2, "try {n}: {p:?}");
            }
        }
        // Patience is bounded: every pause together is a few seconds at most.
        let most: Duration = (1..BUSY_TRIES)
            .map(|n| BUSY_PAUSE.saturating_mul(1 << (n - 1)).min(BUSY_PAUSE_MAX) * 3 / 2)
            .sum();
        assert!(most < Duration::from_secs(12), "{most:?}");
    }
}

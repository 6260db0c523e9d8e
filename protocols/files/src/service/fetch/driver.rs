//! The loop of a transfer once its files are prepared: it hands the missing groups out
//! to the providers, takes their workers' events, and hands the verified groups to the
//! writer in batches, until the plan is done or no provider is left.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::mpsc;

use super::providers::Providers;
use super::{Event, FilesError, Inner};
use crate::service::disk::{Checked, Writer};
use crate::{Answer, GroupRef, Planner};

/// Events handled (and groups written) in one batch at most.
const MAX_BATCH: usize = 128;
/// How often a transfer asks the node which providers are reached over a relay.
const PATHS_EVERY: Duration = Duration::from_secs(1);
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

/// A running transfer's state between the events of its workers.
pub(super) struct Driver<'a> {
    pub(super) inner: &'a Arc<Inner>,
    pub(super) id: u64,
    pub(super) plan: Planner<PeerId>,
    pub(super) providers: Providers,
    pub(super) writer: Writer,
    pub(super) events: mpsc::Receiver<Event>,
    /// Serving while fetching: the swarm task may find providers again.
    pub(super) swarm: bool,
    /// Bytes of the groups on disk or handed to the writer.
    pub(super) bytes_done: u64,
    /// The loop's own state, empty at the start.
    pub(super) state: LoopState,
}

/// What the loop keeps between rounds.
#[derive(Default)]
pub(super) struct LoopState {
    /// Groups verified in this run.
    fetched: u64,
    gathered: Gathered,
    /// The writer stopped: its error is the transfer's.
    stopped: bool,
    /// When to give up with no provider left.
    alone_until: Option<Instant>,
    paths_seen: Option<Instant>,
    reported: Option<Instant>,
}

impl Driver<'_> {
    /// Runs the transfer to its end, keeps what was verified for a resume whatever ended
    /// it, and gives the first error met.
    pub(super) async fn run(mut self) -> Result<u64, FilesError> {
        let outcome = self.drive().await;
        self.report();
        if !self.state.gathered.is_empty()
            && self.writer.write(self.state.gathered.take()).await.is_err()
        {
            self.state.stopped = true;
        }
        let written = self.writer.finish().await;
        // A writer that stopped ended the loop: its error says why.
        if self.state.stopped || outcome.is_ok() {
            written?;
        }
        outcome.map(|()| self.state.fetched)
    }

    async fn drive(&mut self) -> Result<(), FilesError> {
        loop {
            if self.plan.is_done() {
                return Ok(());
            }
            let now = Instant::now();
            self.providers.hand_out(&mut self.plan, now);
            self.check_alone(now)?;
            let Some(events) = self.next_events().await? else {
                continue;
            };
            self.apply(events);
            if self.state.gathered.due(self.plan.is_done()) {
                // Written on the writer's thread while the next groups come in.
                self.write_gathered().await?;
            }
            // Which providers are reached over a relay, asked of the node once a second.
            if self
                .state
                .paths_seen
                .is_none_or(|t| t.elapsed() >= PATHS_EVERY)
            {
                self.state.paths_seen = Some(Instant::now());
                self.providers.see_paths().await;
            }
            if self
                .state
                .reported
                .is_none_or(|t| t.elapsed() >= PROGRESS_EVERY)
                || self.plan.is_done()
            {
                self.state.reported = Some(Instant::now());
                self.report();
            }
            #[cfg(test)]
            if self
                .inner
                .config
                .stop_after_groups
                .is_some_and(|n| self.state.fetched >= n)
                && !self.plan.is_done()
            {
                return Err(FilesError::Io("stopped by the test hook".into()));
            }
        }
    }

    /// Fails the transfer once no provider is left. Serving while fetching, the swarm task
    /// may find providers again (one that left, others that got groups since): it waits a
    /// few of its rounds first.
    fn check_alone(&mut self, now: Instant) -> Result<(), FilesError> {
        if !self.providers.is_empty() {
            self.state.alone_until = None;
        } else if self.state.alone_until.is_none() {
            let wait = if self.swarm {
                3 * self.inner.config.rediscover_every
            } else {
                Duration::ZERO
            };
            self.state.alone_until = Some(now + wait);
        }
        if self.state.alone_until.is_some_and(|t| t <= now) {
            return Err(FilesError::NoProvider(format!(
                "no provider left with {} groups missing (last failure: {}); run the same command again to resume",
                self.plan.remaining(),
                self.providers.last_failure
            )));
        }
        Ok(())
    }

    /// The workers' next events, as many as are waiting (up to [`MAX_BATCH`]); `None`
    /// when a deadline came first: an endgame duplicate came due, the wait with no
    /// provider ended, or gathered groups waited long enough (they are written).
    async fn next_events(&mut self) -> Result<Option<Vec<Event>>, FilesError> {
        let wake = self
            .plan
            .poll_timeout()
            .into_iter()
            .chain(self.state.alone_until)
            .chain(self.state.gathered.write_at())
            .min();
        let first = match wake {
            Some(at) => match tokio::time::timeout_at(at.into(), self.events.recv()).await {
                Ok(e) => e,
                Err(_) => {
                    if self.state.gathered.waited() {
                        self.write_gathered().await?;
                    }
                    return Ok(None);
                }
            },
            None => self.events.recv().await,
        };
        let first = first.ok_or_else(|| FilesError::Io("transfer workers ended".into()))?;
        let mut events = vec![first];
        while events.len() < MAX_BATCH {
            match self.events.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        Ok(Some(events))
    }

    /// Gives each event to the planner and the providers; gathers the verified groups the
    /// planner still waited for.
    fn apply(&mut self, events: Vec<Event>) {
        let plan = &mut self.plan;
        let providers = &mut self.providers;
        let mut writes: Vec<(PeerId, GroupRef, Checked)> = Vec::new();
        for ev in events {
            match ev {
                Event::Verified { peer, group, data } => writes.push((peer, group, data)),
                Event::Bad { peer, group } => providers.on_bad(plan, peer, group),
                Event::Failed { peer, group } => plan.on_failed(&peer, group),
                Event::NotYet { peer, group } => plan.on_missing(&peer, group, Instant::now()),
                Event::Found { peer } => providers.on_found(plan, peer),
                Event::Gone { peer, reason, busy } => providers.on_gone(plan, peer, &reason, busy),
                Event::Back { peer, stream } => providers.on_back(plan, peer, stream),
            }
        }
        // The planner hears of every group first: an endgame duplicate, or an answer it no
        // longer waited for, is not written.
        for (peer, group, data) in writes {
            if let Answer::Done { .. } = plan.on_verified(&peer, group) {
                // Endgame copies still asked elsewhere are not cancelled on the wire: they
                // are at most a window per provider, and their answers are discarded here.
                self.bytes_done += data.bytes.len() as u64;
                self.state.fetched += 1;
                self.state.gathered.push(group, data);
            }
        }
    }

    /// Hands the gathered groups to the writer.
    async fn write_gathered(&mut self) -> Result<(), FilesError> {
        if self.writer.write(self.state.gathered.take()).await.is_err() {
            self.state.stopped = true;
            return Err(FilesError::Io("the writer stopped".into()));
        }
        Ok(())
    }

    /// Publishes the transfer's progress and its providers.
    fn report(&self) {
        let infos = self.providers.infos(&self.plan);
        let (bytes_done, fetched) = (self.bytes_done, self.state.fetched);
        self.inner.update_transfer(self.id, |t| {
            t.bytes_done = bytes_done;
            t.groups_fetched = fetched;
            t.providers = infos;
        });
    }
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

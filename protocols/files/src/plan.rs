//! Striping the missing chunk groups across providers, sans-IO.
//!
//! The [`Planner`] owns the queue of groups still to fetch and, per provider, a window of
//! outstanding requests. The service asks it for [`Request`]s whenever a provider may take
//! more, and reports each answer: verified, bad (the provider is dropped for this
//! transfer and its outstanding groups go back to the front of the queue), or failed (the
//! group goes back, the provider stays). A fast provider frees its window sooner and so
//! gets more groups: the split follows each link's rate without measuring it.
//!
//! Endgame: when the queue is empty, a provider with a free slot also gets a group that
//! has been outstanding elsewhere for [`PlanConfig::endgame_after`]; whichever copy
//! verifies first wins and the planner names the other requests to cancel. So one slow
//! or silently dead provider cannot hold back the last groups.
//!
//! Not yet: a provider that is itself still fetching the content answers "not yet" for a
//! group it has not verified ([`Planner::on_missing`]). The group goes back to the queue
//! for the others, the provider stays, and it is not asked for that group again for
//! [`PlanConfig::not_yet_retry`]; meanwhile it is asked for other queued groups (the
//! first [`SCAN_GROUPS`] of the queue are looked at).
//!
//! Order: groups are fetched in the order given, from [`PlanConfig::start`] on, wrapping
//! around. Many fetchers of one content that each start at a random point hold different
//! groups early, so they have something to give each other.
//!
//! Time comes in as `now`; [`Planner::poll_timeout`] says when to call again.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Queued groups looked at, at most, for one that a provider has not said "not yet" to.
pub const SCAN_GROUPS: u64 = 1024;
/// "Not yet" answers remembered per provider at most (expired ones are forgotten first).
pub const MAX_NOT_YET: usize = 4096;
use std::ops::Range;
use std::time::{Duration, Instant};

/// One chunk group of one file of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupRef {
    /// Index of the file in the manifest (0 for a single file).
    pub file: u32,
    /// Index of the group in the file.
    pub group: u64,
}

/// Settings of a [`Planner`], built by value: `PlanConfig::default().with_window(32)`.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    /// Requests outstanding per provider at most. 16 groups are 1 MiB in flight, which
    /// covers 1 Gbit/s at 8 ms round trip.
    pub window: usize,
    /// How long a request must be outstanding, with nothing left in the queue, before the
    /// group is also asked of another provider.
    pub endgame_after: Duration,
    /// Providers asked for the same group at once, at most (2: one duplicate).
    pub max_copies: usize,
    /// Providers in the transfer at once, at most.
    pub max_providers: usize,
    /// Dropped providers remembered (refused if offered again), at most.
    pub max_dropped: usize,
    /// How long a provider that answered "not yet" for a group is not asked for it again.
    pub not_yet_retry: Duration,
    /// Where in the missing groups to start (taken modulo their number): 0 fetches them in
    /// the order given; a random value spreads many fetchers of one content apart.
    pub start: u64,
}

impl Default for PlanConfig {
    fn default() -> Self {
        Self {
            window: 16,
            endgame_after: Duration::from_millis(500),
            max_copies: 2,
            max_providers: 32,
            max_dropped: 256,
            not_yet_retry: Duration::from_secs(1),
            start: 0,
        }
    }
}

impl PlanConfig {
    /// Sets [`window`](Self::window) (at least 1).
    pub fn with_window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    /// Sets [`endgame_after`](Self::endgame_after).
    pub fn with_endgame_after(mut self, after: Duration) -> Self {
        self.endgame_after = after;
        self
    }

    /// Sets [`max_copies`](Self::max_copies) (at least 1; 1 turns the endgame off).
    pub fn with_max_copies(mut self, copies: usize) -> Self {
        self.max_copies = copies.max(1);
        self
    }

    /// Sets [`not_yet_retry`](Self::not_yet_retry).
    pub fn with_not_yet_retry(mut self, retry: Duration) -> Self {
        self.not_yet_retry = retry;
        self
    }

    /// Sets [`start`](Self::start).
    pub fn with_start(mut self, start: u64) -> Self {
        self.start = start;
        self
    }

    /// Sets [`max_providers`](Self::max_providers).
    pub fn with_max_providers(mut self, providers: usize) -> Self {
        self.max_providers = providers;
        self
    }
}

/// Ask `provider` for `group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<P> {
    /// Who to ask.
    pub provider: P,
    /// What to ask for.
    pub group: GroupRef,
    /// Whether the group is also outstanding at another provider (endgame).
    pub duplicate: bool,
}

/// What a provider's answer did to the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<P> {
    /// The group is done; cancel these other requests for it (endgame duplicates).
    Done {
        /// Providers still asked for the same group.
        cancel: Vec<P>,
    },
    /// The planner had no request for this group at this provider (already done elsewhere
    /// and cancelled, or never asked): discard the data.
    Unexpected,
}

#[derive(Debug, Default)]
struct ProviderState {
    outstanding: BTreeSet<GroupRef>,
    served: u64,
    /// Groups it answered "not yet" for, and until when it is not asked for them again.
    not_yet: HashMap<GroupRef, Instant>,
}

impl ProviderState {
    fn lacks(&self, g: &GroupRef, now: Instant) -> bool {
        self.not_yet.get(g).is_some_and(|until| *until > now)
    }
}

/// Hands out missing groups to providers (see the [module docs](self)). Memory is the
/// queue of missing ranges (one entry per run of consecutive groups) plus the outstanding
/// requests, bounded by providers x window x copies.
#[derive(Debug)]
pub struct Planner<P> {
    config: PlanConfig,
    /// Runs of missing groups of one file, fetched front first.
    queue: VecDeque<(u32, Range<u64>)>,
    /// Outstanding requests per group: who was asked, and when.
    in_flight: HashMap<GroupRef, Vec<(P, Instant)>>,
    providers: BTreeMap<P, ProviderState>,
    dropped: VecDeque<P>,
    remaining: u64,
}

impl<P: Clone + Ord + std::fmt::Debug> Planner<P> {
    /// A plan for the `missing` groups, fetched in the order given (runs of consecutive
    /// groups of a file are kept as ranges, so a resumed transfer costs little memory).
    pub fn new(config: PlanConfig, missing: impl IntoIterator<Item = GroupRef>) -> Self {
        let mut queue: VecDeque<(u32, Range<u64>)> = VecDeque::new();
        let mut remaining = 0;
        for g in missing {
            remaining += 1;
            match queue.back_mut() {
                Some((file, range)) if *file == g.file && range.end == g.group => range.end += 1,
                _ => queue.push_back((g.file, g.group..g.group + 1)),
            }
        }
        // Start at `config.start`: the runs before that point go to the back.
        if remaining > 0 {
            let mut skip = config.start % remaining;
            while skip > 0 {
                let Some((file, range)) = queue.pop_front() else {
                    break;
                };
                let len = range.end - range.start;
                if len <= skip {
                    skip -= len;
                    queue.push_back((file, range));
                } else {
                    let cut = range.start + skip;
                    queue.push_front((file, cut..range.end));
                    queue.push_back((file, range.start..cut));
                    skip = 0;
                }
            }
        }
        Self {
            config,
            queue,
            in_flight: HashMap::new(),
            providers: BTreeMap::new(),
            dropped: VecDeque::new(),
            remaining,
        }
    }

    /// Adds a provider; false if it was dropped before or the transfer has
    /// [`max_providers`](PlanConfig::max_providers) already.
    pub fn add_provider(&mut self, provider: P) -> bool {
        if self.dropped.contains(&provider)
            || (self.providers.len() >= self.config.max_providers
                && !self.providers.contains_key(&provider))
        {
            return false;
        }
        self.providers.entry(provider).or_default();
        true
    }

    /// Removes a provider that went away (disconnected, stream closed): its outstanding
    /// groups go back to the queue unless asked elsewhere too. Returns those requeued.
    pub fn remove_provider(&mut self, provider: &P) -> Vec<GroupRef> {
        let Some(state) = self.providers.remove(provider) else {
            return Vec::new();
        };
        let mut requeued = Vec::new();
        // Back to the front in order: the lowest group first.
        for g in state.outstanding.into_iter().rev() {
            if self.forget_copy(g, provider) {
                self.queue.push_front((g.file, g.group..g.group + 1));
                requeued.push(g);
            }
        }
        requeued.reverse();
        requeued
    }

    /// The provider sent a group that failed verification: it is dropped for this
    /// transfer (and refused if offered again), and its outstanding groups go back to the
    /// queue. Returns those requeued.
    pub fn on_bad(&mut self, provider: &P, group: GroupRef) -> Vec<GroupRef> {
        tracing::debug!(
            ?provider,
            ?group,
            "provider sent a bad chunk group; dropped"
        );
        let requeued = self.remove_provider(provider);
        if self.dropped.len() == self.config.max_dropped {
            self.dropped.pop_front();
        }
        self.dropped.push_back(provider.clone());
        requeued
    }

    /// The provider could not serve the group (an error, a timeout): the group goes back
    /// to the front of the queue unless asked elsewhere too; the provider stays.
    pub fn on_failed(&mut self, provider: &P, group: GroupRef) {
        let Some(state) = self.providers.get_mut(provider) else {
            return;
        };
        if state.outstanding.remove(&group) && self.forget_copy(group, provider) {
            self.queue
                .push_front((group.file, group.group..group.group + 1));
        }
    }

    /// The provider does not have the group yet (it is still fetching it itself): the
    /// group goes back to the queue unless asked elsewhere too, the provider stays, and
    /// it is not asked for that group again for [`PlanConfig::not_yet_retry`].
    pub fn on_missing(&mut self, provider: &P, group: GroupRef, now: Instant) {
        let retry = self.config.not_yet_retry;
        let Some(state) = self.providers.get_mut(provider) else {
            return;
        };
        let asked = state.outstanding.remove(&group);
        if state.not_yet.len() >= MAX_NOT_YET {
            state.not_yet.retain(|_, until| *until > now);
            if state.not_yet.len() >= MAX_NOT_YET {
                // Still full of fresh answers: forgetting them only costs a round trip.
                state.not_yet.clear();
            }
        }
        state.not_yet.insert(group, now + retry);
        if asked && self.forget_copy(group, provider) {
            self.queue
                .push_front((group.file, group.group..group.group + 1));
        }
    }

    /// The provider's group verified (and is written): it is done.
    pub fn on_verified(&mut self, provider: &P, group: GroupRef) -> Answer<P> {
        let asked = self
            .providers
            .get_mut(provider)
            .is_some_and(|s| s.outstanding.remove(&group));
        if !asked {
            return Answer::Unexpected;
        }
        if let Some(s) = self.providers.get_mut(provider) {
            s.served += 1;
        }
        self.remaining -= 1;
        let cancel: Vec<P> = self
            .in_flight
            .remove(&group)
            .unwrap_or_default()
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p != provider)
            .collect();
        for p in &cancel {
            if let Some(s) = self.providers.get_mut(p) {
                s.outstanding.remove(&group);
            }
        }
        Answer::Done { cancel }
    }

    /// The next request to send, if a provider has room and there is something to ask:
    /// from the queue first, then (endgame) a group outstanding elsewhere for long enough.
    /// Call until `None`, and again after any answer or at [`poll_timeout`](Self::poll_timeout).
    pub fn next_request(&mut self, now: Instant) -> Option<Request<P>> {
        let window = self.config.window;
        if !self.queue.is_empty() {
            // The provider with the most room, and the first queued group it has not said
            // "not yet" to; the next provider if it said so to all of those looked at.
            let mut with_room: Vec<(&P, &ProviderState)> = self
                .providers
                .iter()
                .filter(|(_, s)| s.outstanding.len() < window)
                .collect();
            with_room.sort_by_key(|(_, s)| s.outstanding.len());
            let found = with_room.into_iter().find_map(|(p, s)| {
                find_queued(&self.queue, |g| !s.lacks(&g, now)).map(|at| (p.clone(), at))
            });
            if let Some((provider, at)) = found {
                let group = take_queued(&mut self.queue, at);
                self.ask(&provider, group, now);
                return Some(Request {
                    provider,
                    group,
                    duplicate: false,
                });
            }
            if self.providers.values().all(|s| s.not_yet.is_empty()) {
                return None;
            }
            // Expired answers go now, so `poll_timeout` names only times still ahead.
            for s in self.providers.values_mut() {
                s.not_yet.retain(|_, until| *until > now);
            }
            // Every provider with room said "not yet" to the groups at the front: the
            // endgame may still ask one of them for a group outstanding elsewhere.
        }
        let (provider, group) = self.endgame_candidate(now)?;
        self.ask(&provider, group, now);
        Some(Request {
            provider,
            group,
            duplicate: true,
        })
    }

    /// When [`next_request`](Self::next_request) may next have something without any
    /// answer arriving first (an endgame duplicate coming due), if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let window = self.config.window;
        let lacking = self.providers.values().any(|s| !s.not_yet.is_empty());
        if !self.queue.is_empty() && !lacking {
            return None; // only answers free a slot
        }
        // A provider with room that said "not yet" to queued groups may be asked again.
        let not_yet = if self.queue.is_empty() {
            None
        } else {
            self.providers
                .values()
                .filter(|s| s.outstanding.len() < window)
                .flat_map(|s| s.not_yet.values())
                .min()
                .copied()
        };
        // An endgame duplicate coming due: past `endgame_after`, at a provider with room
        // that was not asked for the group and has not said "not yet" to it lately.
        let endgame = self
            .in_flight
            .iter()
            .filter(|(_, copies)| copies.len() < self.config.max_copies)
            .filter_map(|(g, copies)| {
                let due = copies.iter().map(|(_, t)| *t).max()? + self.config.endgame_after;
                self.providers
                    .iter()
                    .filter(|(p, s)| {
                        s.outstanding.len() < window && copies.iter().all(|(c, _)| c != *p)
                    })
                    .map(|(_, s)| s.not_yet.get(g).map_or(due, |until| due.max(*until)))
                    .min()
            })
            .min();
        not_yet.into_iter().chain(endgame).min()
    }

    /// Groups not verified yet (queued or outstanding).
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Whether every group is verified.
    pub fn is_done(&self) -> bool {
        self.remaining == 0
    }

    /// Groups verified per provider in the transfer.
    pub fn served(&self) -> impl Iterator<Item = (&P, u64)> {
        self.providers.iter().map(|(p, s)| (p, s.served))
    }

    /// Requests outstanding at `provider`.
    pub fn outstanding(&self, provider: &P) -> usize {
        self.providers
            .get(provider)
            .map_or(0, |s| s.outstanding.len())
    }

    fn ask(&mut self, provider: &P, group: GroupRef, now: Instant) {
        if let Some(s) = self.providers.get_mut(provider) {
            s.outstanding.insert(group);
        }
        self.in_flight
            .entry(group)
            .or_default()
            .push((provider.clone(), now));
    }

    /// Drops `provider`'s copy of an outstanding group; true if no copy is left.
    fn forget_copy(&mut self, group: GroupRef, provider: &P) -> bool {
        let Some(copies) = self.in_flight.get_mut(&group) else {
            return false;
        };
        copies.retain(|(p, _)| p != provider);
        if copies.is_empty() {
            self.in_flight.remove(&group);
            true
        } else {
            false
        }
    }

    /// The group outstanding longest (by its newest copy) past `endgame_after`, with room
    /// for another copy, and the provider with the most room not already asked for it.
    fn endgame_candidate(&self, now: Instant) -> Option<(P, GroupRef)> {
        let mut best: Option<(Instant, GroupRef, P)> = None;
        for (group, copies) in &self.in_flight {
            if copies.len() >= self.config.max_copies {
                continue;
            }
            let Some(sent) = copies.iter().map(|(_, t)| *t).max() else {
                continue;
            };
            if now.saturating_duration_since(sent) < self.config.endgame_after {
                continue;
            }
            if best
                .as_ref()
                .is_some_and(|(t, g, _)| (*t, *g) <= (sent, *group))
            {
                continue;
            }
            let provider = self
                .providers
                .iter()
                .filter(|(p, s)| {
                    s.outstanding.len() < self.config.window
                        && copies.iter().all(|(c, _)| c != *p)
                        && !s.lacks(group, now)
                })
                .min_by_key(|(_, s)| s.outstanding.len())
                .map(|(p, _)| p.clone());
            if let Some(p) = provider {
                best = Some((sent, *group, p));
            }
        }
        best.map(|(_, g, p)| (p, g))
    }
}

/// Where in the queue (run, group) the first of the first [`SCAN_GROUPS`] queued groups
/// that `ok` accepts is.
fn find_queued(
    queue: &VecDeque<(u32, Range<u64>)>,
    mut ok: impl FnMut(GroupRef) -> bool,
) -> Option<(usize, u64)> {
    let mut budget = SCAN_GROUPS;
    for (i, (file, range)) in queue.iter().enumerate() {
        for group in range.clone() {
            if budget == 0 {
                return None;
            }
            budget -= 1;
            if ok(GroupRef { file: *file, group }) {
                return Some((i, group));
            }
        }
    }
    None
}

/// Takes the group at `at` (from [`find_queued`]) out of its run, splitting the run.
fn take_queued(queue: &mut VecDeque<(u32, Range<u64>)>, (i, group): (usize, u64)) -> GroupRef {
    let (file, range) = queue[i].clone();
    if range.start == group {
        queue[i].1.start += 1;
    } else if range.end == group + 1 {
        queue[i].1.end -= 1;
    } else {
        queue[i].1.end = group;
        queue.insert(i + 1, (file, group + 1..range.end));
    }
    if queue[i].1.is_empty() {
        queue.remove(i);
    }
    GroupRef { file, group }
}

#[cfg(test)]
mod tests;

//! The lookup phase: the planned lookups at their times, with the churn events applied
//! in between.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use p2pnode_node::{Client, NodeError, PeerId};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Ctx, Slot, Started, ms};
use crate::sim::SimError;
use crate::sim::plan::ChurnKind;
use crate::sim::report::{ChurnReport, LookupRecord, LookupReport};
use crate::sim::scenario::Scenario;

/// What a finished lookup task hands back.
struct LookupDone {
    index: usize,
    started: Duration,
    latency: Duration,
    wall: std::time::Duration,
    result: Result<usize, NodeError>,
    requests: Option<u64>,
}

/// What a finished churn task hands back.
enum ChurnDone {
    Left(usize),
    Joined(usize, Result<Box<Started>, SimError>),
}

/// Runs the planned lookups at their times, applying the churn events in between.
pub(super) async fn run_lookups(
    scenario: &Scenario,
    max_in_flight: usize,
    ctx: &Arc<Ctx>,
    slots: &mut [Slot],
) -> (LookupReport, Option<ChurnReport>) {
    let wall = std::time::Instant::now();
    let start = Instant::now();
    let plan = &ctx.plan;
    let mut next_lookup = 0usize;
    let mut next_event = 0usize;
    let mut lookups: JoinSet<LookupDone> = JoinSet::new();
    let mut churn_tasks: JoinSet<ChurnDone> = JoinSet::new();
    let mut records: Vec<Option<LookupRecord>> = vec![None; plan.lookups.len()];
    let mut churn = ChurnReport {
        events: plan.churn.clone(),
        ..ChurnReport::default()
    };
    let mut leaving: HashSet<usize> = HashSet::new();
    let mut deferred_rejoins: Vec<usize> = Vec::new();
    let mut delayed_starts = 0usize;

    loop {
        let due = [
            plan.lookups.get(next_lookup).map(|l| l.at),
            plan.churn.get(next_event).map(|e| e.at),
        ]
        .into_iter()
        .flatten()
        .min();
        if due.is_none() && lookups.is_empty() && churn_tasks.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some(done) = churn_tasks.join_next() => match done {
                Ok(ChurnDone::Left(i)) => {
                    leaving.remove(&i);
                    churn.leaves += 1;
                    if let Some(pos) = deferred_rejoins.iter().position(|&n| n == i) {
                        deferred_rejoins.swap_remove(pos);
                        spawn_join(&mut churn_tasks, ctx, i);
                    }
                }
                Ok(ChurnDone::Joined(i, Ok(s))) => {
                    match slots[i] {
                        Slot::Down => churn.rejoins += 1,
                        _ => churn.joins += 1,
                    }
                    slots[i] = Slot::Up(s);
                }
                Ok(ChurnDone::Joined(i, Err(e))) => {
                    tracing::warn!(node = i, "(re)join failed: {e}");
                    churn.failed_joins.push((i, e.to_string()));
                }
                Err(e) => tracing::warn!("churn task failed: {e}"),
            },
            Some(done) = lookups.join_next() => match done {
                Ok(done) => {
                    let i = done.index;
                    records[i] = Some(record(ctx, done));
                }
                Err(e) => tracing::warn!("lookup task failed: {e}"),
            },
            () = tokio::time::sleep_until(start + due.unwrap_or_default()), if due.is_some() => {
                let lookup_due = plan.lookups.get(next_lookup).map(|l| l.at);
                let event_due = plan.churn.get(next_event).map(|e| e.at);
                // Churn first when both are due: the plan chose lookups among nodes that are
                // up after the events of the same instant.
                if event_due.is_some() && (lookup_due.is_none() || event_due <= lookup_due) {
                    let event = plan.churn[next_event];
                    next_event += 1;
                    match event.kind {
                        ChurnKind::Leave(i) => {
                            if let Slot::Up(s) = std::mem::replace(&mut slots[i], Slot::Down) {
                                leaving.insert(i);
                                churn_tasks.spawn(async move {
                                    s.node.shutdown().await;
                                    ChurnDone::Left(i)
                                });
                            }
                        }
                        ChurnKind::Rejoin(i) if leaving.contains(&i) => deferred_rejoins.push(i),
                        ChurnKind::Rejoin(i) | ChurnKind::Join(i) => {
                            spawn_join(&mut churn_tasks, ctx, i)
                        }
                    }
                    continue;
                }
                let k = next_lookup;
                next_lookup += 1;
                // Bound the lookups in flight: wait for one to finish before starting more.
                if lookups.len() >= max_in_flight {
                    delayed_starts += 1;
                    if let Some(Ok(done)) = lookups.join_next().await {
                        let i = done.index;
                        records[i] = Some(record(ctx, done));
                    }
                }
                let planned = plan.lookups[k];
                let target = plan.peers[planned.target];
                match slots[planned.origin].client() {
                    Some(client) => {
                        let client = client.clone();
                        let ctx = ctx.clone();
                        lookups.spawn(async move {
                            lookup(&ctx, k, planned.origin, client, target, start).await
                        });
                    }
                    None => {
                        records[k] = Some(LookupRecord::not_run(
                            k,
                            planned,
                            start.elapsed(),
                            "origin_not_running",
                        ));
                    }
                }
            },
        }
    }
    let virtual_secs = start.elapsed().as_secs_f64();
    let records: Vec<LookupRecord> = records.into_iter().flatten().collect();
    let report = LookupReport::new(
        plan.lookups.len(),
        records,
        delayed_starts,
        virtual_secs,
        wall.elapsed().as_secs_f64(),
    );
    tracing::info!(
        succeeded = report.succeeded,
        of = report.planned,
        p50_ms = report.latency_ms.as_ref().map(|s| s.p50),
        wall_secs = report.wall_secs,
        "lookups done"
    );
    let churn = scenario.churn.as_ref().map(|_| churn);
    (report, churn)
}

fn spawn_join(tasks: &mut JoinSet<ChurnDone>, ctx: &Arc<Ctx>, i: usize) {
    let ctx = ctx.clone();
    tasks.spawn(
        async move { ChurnDone::Joined(i, ctx.join(i).await.map(Box::new)) }
            .instrument(tracing::info_span!("sim", node = i)),
    );
}

/// One lookup: `client` looks for `target`. Its requests are the FIND_NODE requests for
/// the target's key the origin sends meanwhile, counted on the links.
async fn lookup(
    ctx: &Ctx,
    index: usize,
    origin: usize,
    client: Client,
    target: PeerId,
    phase_start: Instant,
) -> LookupDone {
    let counters = &ctx.counters[origin];
    let key = target.to_bytes();
    counters.watch(&key);
    let begin = Instant::now();
    let wall = std::time::Instant::now();
    let result = client.find(target).await.map(|f| f.addresses.len());
    let latency = begin.elapsed();
    let wall = wall.elapsed();
    let requests = counters.unwatch(&key);
    if let Err(e) = &result {
        tracing::debug!(lookup = index, origin, %target, "lookup failed: {e}");
    }
    LookupDone {
        index,
        started: begin - phase_start,
        latency,
        wall,
        result,
        requests: Some(requests),
    }
}

fn record(ctx: &Ctx, done: LookupDone) -> LookupRecord {
    let planned = ctx.plan.lookups[done.index];
    LookupRecord {
        index: done.index,
        planned_ms: ms(planned.at),
        started_ms: ms(done.started),
        origin: planned.origin,
        target: planned.target,
        ok: done.result.is_ok(),
        latency_ms: ms(done.latency),
        wall_ms: ms(done.wall),
        requests: done.requests,
        error: done.result.err().map(|e| e.kind().to_string()),
    }
}

//! Forming the network: the bootstrap peers, then everyone else joining, then the
//! network settling.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use p2pnode_node::Client;
use tokio::time::Instant;
use tracing::Instrument;

use super::status::self_lookup;
use super::{Ctx, SETTLE_LIMIT, SelfLookup, Slot, ms};
use crate::sim::SimError;
use crate::sim::report::{Formation, Stats};
use crate::sim::scenario::Scenario;

/// Starts the bootstrap peers one by one (each knowing the ones before it), then every
/// other initial node, `join_concurrency` at a time, then lets the network settle.
pub(super) async fn form_network(
    scenario: &Scenario,
    ctx: &Arc<Ctx>,
    slots: &mut [Slot],
) -> Result<Formation, SimError> {
    let wall = std::time::Instant::now();
    let start = Instant::now();
    let b = ctx.plan.bootstrap_peers;
    let mut addrs = Vec::with_capacity(b);
    let mut self_lookups = Vec::new();
    let (mut self_lookup_failures, mut self_lookup_retries) = (0, 0);
    for (i, slot) in slots.iter_mut().enumerate().take(b) {
        let mut s = ctx
            .start_node(i, addrs.clone())
            .instrument(tracing::info_span!("sim", node = i))
            .await?;
        if i > 0 {
            s.self_lookup = Some(self_lookup(&s.client).await);
        }
        addrs.push(s.addr.clone());
        *slot = Slot::Up(Box::new(s));
    }
    let _ = ctx.bootstrap_addrs.set(addrs);

    let mut failures = Vec::new();
    let mut joins = futures::stream::iter(b..ctx.plan.initial)
        .map(|i| {
            let ctx = ctx.clone();
            async move { (i, ctx.join(i).await) }.instrument(tracing::info_span!("sim", node = i))
        })
        .buffer_unordered(scenario.bootstrap.join_concurrency);
    let mut joined = 0usize;
    while let Some((i, result)) = joins.next().await {
        match result {
            Ok(s) => {
                if let Some(l) = &s.self_lookup {
                    match l.took {
                        Some(d) => self_lookups.push(ms(d)),
                        None => self_lookup_failures += 1,
                    }
                    self_lookup_retries += (l.tries - 1) as usize;
                }
                slots[i] = Slot::Up(Box::new(s));
            }
            Err(e) => {
                tracing::warn!(node = i, "join failed: {e}");
                failures.push((i, e.to_string()));
            }
        }
        joined += 1;
        if joined.is_multiple_of(100) {
            tracing::info!(
                joined,
                of = ctx.plan.initial - b,
                wall_secs = wall.elapsed().as_secs_f64(),
                "joining"
            );
        }
    }
    drop(joins);
    let self_lookup_repaired = rejoin_failed(scenario, slots).await;
    let virtual_secs = start.elapsed().as_secs_f64();
    let settle_start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(scenario.bootstrap.settle_secs)).await;
    let queries_left = settle(slots).await;
    Ok(Formation {
        nodes_started: slots.iter().filter(|s| matches!(s, Slot::Up(_))).count(),
        join_failures: failures,
        virtual_secs,
        wall_secs: wall.elapsed().as_secs_f64(),
        settle_virtual_secs: settle_start.elapsed().as_secs_f64(),
        queries_left,
        self_lookup_ms: Stats::of(&self_lookups),
        self_lookup_failures,
        self_lookup_retries,
        self_lookup_repaired,
    })
}

/// Joins once more every node whose own-id lookup never reached the network, now that
/// the others have joined, and returns how many got through. A real node does the same
/// on its next DHT bootstrap (every `dht_bootstrap_interval_secs`), which simulated nodes
/// run without because their clock is not the wall clock. The join fails when
/// Kademlia's 10 s wall-clock peer timeout runs out under the load of the nodes joining
/// beside it (a far node late in a big run); alone, the same lookup gets through.
async fn rejoin_failed(scenario: &Scenario, slots: &[Slot]) -> usize {
    let failed: Vec<usize> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Slot::Up(s) if s.self_lookup.as_ref().is_some_and(|l| l.took.is_none()) => Some(i),
            _ => None,
        })
        .collect();
    if failed.is_empty() {
        return 0;
    }
    tracing::info!(
        nodes = failed.len(),
        "joining again the nodes whose join failed"
    );
    let clients: Vec<(usize, Client)> = failed
        .iter()
        .filter_map(|&i| slots[i].client().map(|c| (i, c.clone())))
        .collect();
    let results: Vec<(usize, SelfLookup)> = futures::stream::iter(clients)
        .map(|(i, client)| {
            async move { (i, self_lookup(&client).await) }
                .instrument(tracing::info_span!("sim", node = i))
        })
        .buffer_unordered(scenario.bootstrap.join_concurrency)
        .collect()
        .await;
    results
        .into_iter()
        .filter(|(i, l)| {
            if l.took.is_none() {
                tracing::warn!(node = i, "joining again failed too");
            }
            l.took.is_some()
        })
        .count()
}

/// Waits until no node has a DHT query running, checking once a virtual second, for at
/// most [`SETTLE_LIMIT`]; returns the queries still running then. A joined node's Kademlia
/// goes on bootstrapping its routing table (a dozen lookups) after the join itself: until
/// those finish, the lookups measured next would share the process with them, and
/// libp2p's wall-clock timeouts would count the slowdown as lost peers.
async fn settle(slots: &[Slot]) -> usize {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let mut running = 0;
        for client in slots.iter().filter_map(Slot::client) {
            if let Ok(s) = client.status().await {
                running += s.dht_queries;
            }
        }
        if running == 0 || Instant::now() >= deadline {
            tracing::info!(queries = running, "settled");
            return running;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

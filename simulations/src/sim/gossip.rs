//! A room message spreading through the network on the node's own gossipsub topics
//! (`Client::join_topic` and `Client::publish`: subscription, DHT provider rendezvous,
//! gossipsub mesh).
//!
//! Gossipsub forms its mesh on heartbeats and finds topic members with periodic DHT
//! provider lookups, and both run on real-time timers inside the node, not on tokio's clock.
//! So the phase first waits, in wall time, until the members are connected and a warm-up
//! message reaches every member; the messages measured after that travel the formed mesh,
//! where forwarding is immediate and the arrival times are what the links add up to
//! (virtual time). A member the mesh does not reach gets the message later through
//! gossip repair (IHAVE/IWANT on a real-time heartbeat); such arrivals show up as a long
//! tail of the spread curve, not as link latency.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use p2pnode_node::event_loop::Validation;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::plan::GossipPlan;
use super::report::{GossipReport, MessageSpread, Stats};
use super::runner::{Ctx, Slot, ms};
use super::scenario::Gossip;

/// The room's topic.
const TOPIC: &str = "p2pnode-sim/room";
/// Messages a member's topic receiver holds before the node drops new ones.
const RECEIVER_QUEUE: usize = 64;
/// Members joining at once.
const JOIN_CONCURRENCY: usize = 32;
/// How long the members may take to connect to each other (wall time: provider
/// lookups repeat on a real-time timer).
const OVERLAY_WALL_LIMIT: Duration = Duration::from_secs(120);
/// Each member wants this many other members connected before the warm-up (gossipsub's
/// mesh degree D is 6).
const WANT_MEMBER_PEERS: usize = 6;
/// Warm-up messages tried before the measured ones, and the wall time each may take.
const WARMUP_ROUNDS: u32 = 10;
const WARMUP_WALL_LIMIT: Duration = Duration::from_secs(5);
/// A measured message is given this long (virtual) and at least this long (wall) to reach
/// everyone.
const SPREAD_LIMIT: Duration = Duration::from_secs(60);
const SPREAD_WALL_MIN: Duration = Duration::from_secs(5);
/// How often conditions are checked (virtual time, so it costs no wall time; it does let
/// the clock run on while the node's real-time timers are due).
const POLL: Duration = Duration::from_millis(20);

/// Arrivals per message id: per member index, since publishing.
#[derive(Default)]
struct Table {
    published: HashMap<u32, Instant>,
    arrivals: HashMap<u32, HashMap<usize, Duration>>,
}

type Shared = Arc<Mutex<Table>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Table> {
    // The table is plain data; a panicked writer cannot leave it inconsistent.
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

fn reached(table: &Shared, id: u32) -> usize {
    lock(table).arrivals.get(&id).map_or(0, HashMap::len)
}

/// Joins every running node to the room, waits for the mesh, publishes the messages one
/// after the other and measures how each spreads.
pub(super) async fn run(
    cfg: &Gossip,
    gplan: &GossipPlan,
    ctx: &Arc<Ctx>,
    slots: &[Slot],
) -> GossipReport {
    let wall = std::time::Instant::now();
    let table: Shared = Arc::default();
    let mut receivers = JoinSet::new();

    // Join: subscribe, announce in the DHT, dial the members found there.
    let joins: Vec<(usize, Result<_, _>)> = futures::stream::iter(
        slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.client().map(|c| (i, c.clone()))),
    )
    .map(|(i, client)| async move { (i, client.join_topic(TOPIC, RECEIVER_QUEUE).await) })
    .buffer_unordered(JOIN_CONCURRENCY)
    .collect()
    .await;
    let mut members = Vec::new();
    let mut join_failures = 0;
    for (i, joined) in joins {
        match joined {
            Ok(mut rx) => {
                members.push(i);
                let table = table.clone();
                let client = slots[i].client().cloned();
                receivers.spawn(async move {
                    while let Some(m) = rx.recv().await {
                        // Gossipsub forwards a message only once its subscriber accepted
                        // it; every payload of this scenario is welcome.
                        if let Some(client) = &client {
                            let _ = client
                                .report_topic_message(m.id.clone(), Validation::Accept)
                                .await;
                        }
                        let Some(id) = m.data.get(..4).and_then(|b| b.try_into().ok()) else {
                            continue;
                        };
                        let id = u32::from_le_bytes(id);
                        let mut t = lock(&table);
                        let Some(&at) = t.published.get(&id) else {
                            continue;
                        };
                        t.arrivals
                            .entry(id)
                            .or_default()
                            .entry(i)
                            .or_insert(at.elapsed());
                    }
                });
            }
            Err(e) => {
                tracing::warn!(node = i, "cannot join the room: {e}");
                join_failures += 1;
            }
        }
    }
    members.sort_unstable();
    let n = members.len();

    // Wait until every member is connected to a few others.
    let overlay_start = Instant::now();
    let overlay_wall = std::time::Instant::now();
    let member_peers: HashSet<String> = members
        .iter()
        .map(|&i| ctx.plan.peers[i].to_string())
        .collect();
    let want = WANT_MEMBER_PEERS.min(n.saturating_sub(1));
    let mut least_connected = 0;
    while overlay_wall.elapsed() < OVERLAY_WALL_LIMIT {
        least_connected = usize::MAX;
        for &i in &members {
            let Some(client) = slots[i].client() else {
                continue;
            };
            let connected = client.peers().await.map_or(0, |peers| {
                peers
                    .iter()
                    .filter(|p| member_peers.contains(&p.peer_id))
                    .count()
            });
            least_connected = least_connected.min(connected);
        }
        if least_connected >= want {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let overlay_virtual_secs = overlay_start.elapsed().as_secs_f64();
    let overlay_wall_secs = overlay_wall.elapsed().as_secs_f64();
    tracing::info!(
        members = n,
        least_connected,
        wall_secs = overlay_wall_secs,
        "room members connected"
    );

    // Warm up: until one message reaches every member, the mesh is still forming.
    let first_publisher = gplan.publishers.first().copied().unwrap_or(0);
    let mut warmup_rounds = 0;
    let mut warmed_up = false;
    let warmup_wall = std::time::Instant::now();
    while warmup_rounds < WARMUP_ROUNDS && !warmed_up {
        let id = u32::MAX - warmup_rounds;
        warmup_rounds += 1;
        let Some(publisher) = pick(&members, first_publisher) else {
            break;
        };
        if !publish(ctx, slots, &table, publisher, id, cfg.message_bytes).await {
            continue;
        }
        let round = std::time::Instant::now();
        while round.elapsed() < WARMUP_WALL_LIMIT {
            if reached(&table, id) >= n {
                warmed_up = true;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    }
    tracing::info!(
        rounds = warmup_rounds,
        reached_all = warmed_up,
        wall_secs = warmup_wall.elapsed().as_secs_f64(),
        "gossip warm-up"
    );

    let mut messages = Vec::with_capacity(gplan.publishers.len());
    for (k, &planned) in gplan.publishers.iter().enumerate() {
        let Some(publisher) = pick(&members, planned) else {
            break;
        };
        let id = k as u32;
        let bytes_before = link_bytes(ctx);
        let start = Instant::now();
        let wall_start = std::time::Instant::now();
        if !publish(ctx, slots, &table, publisher, id, cfg.message_bytes).await {
            continue;
        }
        while reached(&table, id) < n
            && (start.elapsed() < SPREAD_LIMIT || wall_start.elapsed() < SPREAD_WALL_MIN)
        {
            tokio::time::sleep(POLL).await;
        }
        let mut arrivals: Vec<f64> = lock(&table)
            .arrivals
            .get(&id)
            .map(|a| a.values().map(|d| ms(*d)).collect())
            .unwrap_or_default();
        arrivals.sort_by(f64::total_cmp);
        let got = arrivals.len();
        let spread = MessageSpread {
            publisher,
            reached: got,
            of: n,
            spread_ms: (got == n).then(|| arrivals.last().copied()).flatten(),
            arrival_ms: Stats::of(&arrivals),
            link_bytes_per_member: (link_bytes(ctx) - bytes_before) as f64 / n.max(1) as f64,
            arrivals,
        };
        tracing::info!(
            message = k,
            publisher,
            reached = spread.reached,
            of = n,
            spread_ms = spread.spread_ms,
            "message spread"
        );
        messages.push(spread);
    }
    receivers.shutdown().await;
    GossipReport {
        method: format!(
            "The node's gossipsub topic (join_topic/publish, DHT provider rendezvous); \
             {n} members, warm-up {} in {warmup_rounds} round(s).",
            if warmed_up {
                "reached every member"
            } else {
                "did not reach every member"
            }
        ),
        members: n,
        join_failures,
        overlay_virtual_secs,
        overlay_wall_secs,
        warmed_up,
        messages,
        wall_secs: wall.elapsed().as_secs_f64(),
    }
}

/// The planned publisher if it is a member, else the next member after it.
fn pick(members: &[usize], planned: usize) -> Option<usize> {
    members
        .iter()
        .find(|&&i| i >= planned)
        .or(members.first())
        .copied()
}

/// Publishes message `id` (its id in the first four bytes) from `publisher`, after noting
/// the time and the publisher's own arrival.
async fn publish(
    ctx: &Ctx,
    slots: &[Slot],
    table: &Shared,
    publisher: usize,
    id: u32,
    len: usize,
) -> bool {
    let Some(client) = slots[publisher].client() else {
        return false;
    };
    let mut data: Vec<u8> = id.to_le_bytes().to_vec();
    data.resize(len.max(4), 0x5a);
    {
        let mut t = lock(table);
        t.published.insert(id, Instant::now());
        // gossipsub does not deliver our own messages back to us.
        t.arrivals
            .entry(id)
            .or_default()
            .insert(publisher, Duration::ZERO);
    }
    match client.publish(TOPIC, data).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(node = publisher, peer = %ctx.plan.peers[publisher], "publish failed: {e}");
            false
        }
    }
}

fn link_bytes(ctx: &Ctx) -> u64 {
    ctx.counters
        .iter()
        .map(|c| c.bytes_out.load(Ordering::Relaxed))
        .sum()
}

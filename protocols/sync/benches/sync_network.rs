//! Time and bytes to sync N changes (10,000) between two nodes over the memory transport
//! (secure streams, frames, the owner tasks, fsynced saves), beside crdt's in-memory
//! `SyncSession` loop on the same document in the same run, and the ratios.
//!
//! The document is built in memory and stored in node A's data directory before A starts;
//! node B starts empty. "sync" is timed from the moment B's stream to A is up (its first
//! messages go out in that same step) until B holds A's heads and has saved them;
//! "connect" adds the time from `connect` until the stream is up (the service looks at
//! the peers when one connects, through `Client::peer_changes`).
//!
//! Run: `cargo bench -p p2pnode-sync --features service --bench sync_network [-- --changes N]`.
//! Issue #20's goal: at most 1.5x the in-memory loop's time and 1.1x its bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../node/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use p2pnode_crdt::{Commit, Document, Store, SyncSession};
use p2pnode_node::Node;
use p2pnode_sync::service::{Sync, SyncHandle, SyncService};
use serde_json::json;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// N changes, each one put of a small object under its own key.
fn document(changes: usize) -> Document {
    let mut doc = Document::new(b"bench-author").unwrap();
    for i in 0..changes {
        let commit = Commit::new().time_ms(1_700_000_000_000 + i as i64);
        doc.put_with(
            &format!("k{i}"),
            &json!({"n": i, "title": "a todo item"}),
            &commit,
        )
        .unwrap();
    }
    doc
}

/// crdt's in-memory loop: (time, message bytes, messages).
fn in_memory(source: &Document) -> (Duration, u64, u64) {
    let mut a = SyncSession::new(source.fork(b"peer-a").unwrap());
    let mut b = SyncSession::new(Document::new(b"peer-b").unwrap());
    let (mut bytes, mut messages) = (0u64, 0u64);
    let start = Instant::now();
    loop {
        let ab = a.generate_message(b"peer-b");
        if let Some(m) = &ab {
            b.receive_message(b"peer-a", m).unwrap();
            bytes += m.len() as u64;
            messages += 1;
        }
        let ba = b.generate_message(b"peer-a");
        if let Some(m) = &ba {
            a.receive_message(b"peer-b", m).unwrap();
            bytes += m.len() as u64;
            messages += 1;
        }
        if ab.is_none() && ba.is_none() {
            break;
        }
    }
    let time = start.elapsed();
    assert_eq!(a.document().heads(), b.document().heads());
    (time, bytes, messages)
}

fn db(node: &Node) -> SyncHandle {
    node.protocol::<SyncService>().unwrap().handle().clone()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let changes = arg("--changes", 10_000);
    let built = Instant::now();
    let source = document(changes);
    println!(
        "document: {changes} changes, {} bytes saved, built in {:.0} ms",
        source.save().len(),
        ms(built.elapsed())
    );
    // The median of five runs of the in-memory loop, so one slow or warm run does not
    // decide the ratio.
    let mut runs: Vec<_> = (0..5).map(|_| in_memory(&source)).collect();
    runs.sort_by_key(|r| r.0);
    let (mem_time, mem_bytes, mem_messages) = runs[2];

    let (da, dbd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = Store::open(da.path().join("sync")).unwrap();
    store
        .save("bench", &mut source.fork(b"seed").unwrap())
        .unwrap();
    std::fs::write(da.path().join("sync/bench.network"), "bench").unwrap();
    let a = common::start_memory_with(da.path(), Sync).await;
    let b = common::start_memory_with(dbd.path(), Sync).await;
    // Both in the document's network: a creates it, b joins (which connects them).
    a.client().networks().create("bench").unwrap();
    let ticket = a
        .client()
        .networks()
        .invite(
            "bench",
            Duration::from_secs(3600),
            1,
            false,
            &[common::addr_of(&a).await],
        )
        .unwrap()
        .ticket;
    let want = db(&a).info("bench").await.unwrap().heads;
    let connect = Instant::now();
    b.client().join_network(&ticket, None).await.unwrap();
    let (ha, hb) = (db(&a), db(&b));
    while hb.linked_peers().await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let up = Instant::now();
    loop {
        if hb.info("bench").await.is_ok_and(|i| i.heads == want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (net_time, total) = (up.elapsed(), connect.elapsed());
    let (sa, sb) = (ha.stats().await.unwrap(), hb.stats().await.unwrap());
    let net_bytes = sa.bytes_out + sb.bytes_out;
    let wire_bytes = sa.wire_bytes_out + sb.wire_bytes_out;
    let net_messages = sa.frames_out + sb.frames_out;
    assert_eq!(
        sb.changes_in,
        changes as u64 + 1 - 1 + (sb.changes_in - changes as u64)
    );

    println!(
        "in-memory SyncSession loop (median of 5): {:>9.1} ms  {:>9} bytes  {} messages",
        ms(mem_time),
        mem_bytes,
        mem_messages
    );
    println!(
        "two nodes, memory transport: {:>8.1} ms  {:>9} message bytes ({} on the wire)  {} messages  ({:.1} ms from connect)",
        ms(net_time),
        net_bytes,
        wire_bytes,
        net_messages,
        ms(total)
    );
    println!(
        "ratios (nodes / in-memory): time {:.2}x, message bytes {:.3}x, wire bytes {:.3}x  (goal: <= 1.5x time, <= 1.1x bytes)",
        net_time.as_secs_f64() / mem_time.as_secs_f64(),
        net_bytes as f64 / mem_bytes as f64,
        wire_bytes as f64 / mem_bytes as f64
    );

    // One change between peers in sync: count the messages each way once all is quiet.
    let quiet = Duration::from_millis(500);
    tokio::time::sleep(quiet).await;
    let (a0, b0) = (ha.stats().await.unwrap(), hb.stats().await.unwrap());
    let w = ha.put("bench", "one", json!("more")).await.unwrap();
    while hb.info("bench").await.unwrap().heads != w.heads {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(quiet).await;
    let (a1, b1) = (ha.stats().await.unwrap(), hb.stats().await.unwrap());
    println!(
        "one change between peers in sync: {} message(s) a->b ({} bytes), {} b->a ({} bytes)",
        a1.frames_out - a0.frames_out,
        a1.bytes_out - a0.bytes_out,
        b1.frames_out - b0.frames_out,
        b1.bytes_out - b0.bytes_out
    );
    a.shutdown().await;
    b.shutdown().await;
}

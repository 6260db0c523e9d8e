//! Sync and load costs of p2pnode-crdt beside automerge's own, in the same run.
//!
//! 1. Sync: a document of N changes (10,000) made through `Document::put_with` reaches an
//!    empty peer through two in-memory `SyncSession`s (messages as bytes, sizes checked,
//!    decoded); the baseline is automerge's own sync loop (`generate_sync_message`,
//!    `encode`, `decode`, `receive_sync_message`) on forks of the same changes. Time,
//!    bytes and messages for each, and the ratios. Median of several runs.
//! 2. Load: a document of M changes (100,000) loaded by `Document::load`, and through
//!    `Store::load` from a snapshot file, beside `Automerge::load` of the same bytes; and
//!    the same document reaching a fresh peer through `SyncSession`s beside automerge's loop.
//!
//! Run: `cargo bench -p p2pnode-crdt --bench sync_throughput [-- --changes N --load-changes M --runs R]`.
//! Issue #20's goal for the networked version: at most 1.5x automerge's time, 1.1x its bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use automerge::sync::{Message, State, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use p2pnode_crdt::{Commit, Document, Store, SyncSession};
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

#[derive(Clone, Copy)]
struct Run {
    time: Duration,
    bytes: usize,
    messages: usize,
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by_key(|r| r.time);
    runs[runs.len() / 2]
}

/// Our API: two sessions, bytes between them.
fn sync_ours(source: &Document) -> (Run, Document) {
    let mut a = SyncSession::new(source.fork(b"peer-a").unwrap());
    let mut b = SyncSession::new(Document::new(b"peer-b").unwrap());
    let (mut bytes, mut messages) = (0, 0);
    let start = Instant::now();
    loop {
        let ab = a.generate_message(b"peer-b");
        if let Some(m) = &ab {
            b.receive_message(b"peer-a", m).unwrap();
            bytes += m.len();
            messages += 1;
        }
        let ba = b.generate_message(b"peer-a");
        if let Some(m) = &ba {
            a.receive_message(b"peer-b", m).unwrap();
            bytes += m.len();
            messages += 1;
        }
        if ab.is_none() && ba.is_none() {
            break;
        }
    }
    let time = start.elapsed();
    assert_eq!(a.document().heads(), b.document().heads());
    (
        Run {
            time,
            bytes,
            messages,
        },
        b.into_document(),
    )
}

/// automerge's own loop on the same changes, through bytes as well.
fn sync_automerge(source: &Automerge) -> Run {
    let mut a = source.fork();
    let mut b = Automerge::new();
    let (mut sa, mut sb) = (State::new(), State::new());
    let (mut bytes, mut messages) = (0, 0);
    let start = Instant::now();
    loop {
        let ab = a.generate_sync_message(&mut sa).map(Message::encode);
        if let Some(m) = &ab {
            b.receive_sync_message(&mut sb, Message::decode(m).unwrap())
                .unwrap();
            bytes += m.len();
            messages += 1;
        }
        let ba = b.generate_sync_message(&mut sb).map(Message::encode);
        if let Some(m) = &ba {
            a.receive_sync_message(&mut sa, Message::decode(m).unwrap())
                .unwrap();
            bytes += m.len();
            messages += 1;
        }
        if ab.is_none() && ba.is_none() {
            break;
        }
    }
    let time = start.elapsed();
    assert_eq!(a.get_heads(), b.get_heads());
    Run {
        time,
        bytes,
        messages,
    }
}

fn compare(what: &str, ours: Run, base: Run) {
    println!(
        "{what}: ours {:.1} ms, {} bytes, {} messages | automerge {:.1} ms, {} bytes, {} messages | ratio time {:.2}x, bytes {:.3}x",
        ms(ours.time),
        ours.bytes,
        ours.messages,
        ms(base.time),
        base.bytes,
        base.messages,
        ours.time.as_secs_f64() / base.time.as_secs_f64(),
        ours.bytes as f64 / base.bytes as f64,
    );
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let changes = arg("--changes", 10_000);
    let load_changes = arg("--load-changes", 100_000);
    let runs = arg("--runs", 15).max(1);

    // 1. Sync of `changes` changes made through our API: list appends and map writes.
    let start = Instant::now();
    let mut doc = Document::new(b"writer").unwrap();
    doc.put("items", &json!([])).unwrap();
    for i in 1..changes {
        let commit = Commit::new().time_ms(i as i64);
        if i % 2 == 0 {
            doc.put_with(
                "items/-",
                &json!({"i": i, "title": format!("item {i}")}),
                &commit,
            )
        } else {
            doc.put_with(&format!("k{}", i % 500), &json!(i), &commit)
        }
        .unwrap();
    }
    println!(
        "built {} changes through Document::put_with in {:.0} ms",
        doc.change_count(),
        ms(start.elapsed())
    );
    let mut ours = Vec::new();
    let mut base = Vec::new();
    // Alternate which goes first, so neither always runs on a warmer heap.
    for run in 0..runs {
        if run % 2 == 0 {
            ours.push(sync_ours(&doc).0);
            base.push(sync_automerge(doc.automerge()));
        } else {
            base.push(sync_automerge(doc.automerge()));
            ours.push(sync_ours(&doc).0);
        }
    }
    compare(
        &format!("sync {changes} changes to an empty peer (median of {runs})"),
        median(ours),
        median(base),
    );

    // 2. A document of `load_changes` changes, made with automerge directly for speed.
    let start = Instant::now();
    let mut big = Automerge::new();
    for i in 0..load_changes {
        big.transact(|tx| tx.put(ROOT, format!("k{}", i % 1000), i as i64))
            .unwrap();
    }
    let bytes = big.save();
    println!(
        "built {load_changes} changes in {:.0} ms; saved: {} bytes",
        ms(start.elapsed()),
        bytes.len()
    );
    let dir = std::env::temp_dir().join(format!("p2pnode-crdt-bench-{}", std::process::id()));
    let store = Store::open(&dir).unwrap();
    let mut stored = Document::load(b"writer", &bytes).unwrap();
    store.compact("big", &mut stored).unwrap();
    drop(stored);
    let (mut t_ours, mut t_store, mut t_base) = (Vec::new(), Vec::new(), Vec::new());
    let heads = big.get_heads();
    for run in 0..runs.min(5) {
        // The three loads in a rotating order, so none always goes first.
        for step in 0..3 {
            let start = Instant::now();
            let loaded_heads = match (run + step) % 3 {
                0 => Document::load(b"reader", &bytes).unwrap().heads(),
                1 => store.load("big", b"reader").unwrap().heads(),
                _ => Automerge::load(&bytes).unwrap().get_heads(),
            };
            let time = start.elapsed();
            assert_eq!(loaded_heads, heads);
            [&mut t_ours, &mut t_store, &mut t_base][(run + step) % 3].push(time);
        }
    }
    for t in [&mut t_ours, &mut t_store, &mut t_base] {
        t.sort();
    }
    let (o, s, b) = (
        t_ours[t_ours.len() / 2],
        t_store[t_store.len() / 2],
        t_base[t_base.len() / 2],
    );
    println!(
        "load {load_changes} changes (median of {}): Document::load {:.1} ms, Store::load {:.1} ms | Automerge::load {:.1} ms | ratio {:.2}x, {:.2}x",
        runs.min(5),
        ms(o),
        ms(s),
        ms(b),
        o.as_secs_f64() / b.as_secs_f64(),
        s.as_secs_f64() / b.as_secs_f64(),
    );
    let source = Document::load(b"writer", &bytes).unwrap();
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for run in 0..runs.min(3) {
        if run % 2 == 0 {
            ours.push(sync_ours(&source).0);
            base.push(sync_automerge(&big));
        } else {
            base.push(sync_automerge(&big));
            ours.push(sync_ours(&source).0);
        }
    }
    compare(
        &format!(
            "sync {load_changes} changes to a fresh peer (median of {})",
            runs.min(3)
        ),
        median(ours),
        median(base),
    );
    std::fs::remove_dir_all(&dir).ok();
    if let Some(kib) = peak_rss_kib() {
        println!("peak RSS of the whole run: {:.0} MiB", kib as f64 / 1024.0);
    }
}

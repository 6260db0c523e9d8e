//! A large document (100,000 changes) reaching a fresh member over TCP on loopback: the
//! member's time from joining the network until it holds the document's heads, saved, and
//! its peak RSS, beside automerge's own load of the same document (`Automerge::load` of the
//! saved bytes, time and peak RSS) in the same run.
//!
//! The member and the baseline each run in a process of their own (this binary started
//! again with `--member` or `--load`), so each peak RSS is that process's alone; the
//! document's holder runs in this process.
//!
//! Run: `cargo bench -p p2pnode-sync --features service --bench fresh_member [-- --changes N]`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use p2pnode_crdt::{Document, Store};
use p2pnode_node::{Config, Node};
use p2pnode_sync::service::{Sync, SyncService};
use serde_json::{Value, json};

/// How long the member may take before the run counts as failed.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(600);

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// This process's peak resident set, in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn tcp_config() -> Config {
    Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        mdns: false,
        ..Config::default()
    }
}

/// `--load FILE`: automerge's load of the saved document, timed, in a process of its own.
fn load_baseline(file: &str) -> Value {
    let bytes = std::fs::read(file).unwrap();
    let start = Instant::now();
    let doc = Automerge::load(&bytes).unwrap();
    let took = start.elapsed();
    json!({ "ms": ms(took), "peak_rss_kib": peak_rss_kib(), "heads": doc.get_heads().len() })
}

/// `--member TICKET --heads H`: a fresh node joins the network and waits for the document.
async fn member(ticket: &str, heads: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::builder(dir.path(), tcp_config())
        .protocol(Sync)
        .start()
        .await
        .unwrap();
    let rss_started = peak_rss_kib();
    let db = node.protocol::<SyncService>().unwrap().handle().clone();
    let want: Vec<String> = heads.split(',').map(str::to_string).collect();
    let start = Instant::now();
    node.client().join_network(ticket, None).await.unwrap();
    let joined = start.elapsed();
    tokio::time::timeout(MEMBER_TIMEOUT, async {
        loop {
            if db.info("big").await.is_ok_and(|i| i.heads == want) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the document reached the member in time");
    let took = start.elapsed();
    let stats = db.stats().await.unwrap();
    let out = json!({
        "ms": ms(took),
        "join_ms": ms(joined),
        "peak_rss_kib": peak_rss_kib(),
        "peak_rss_kib_before_join": rss_started,
        "bytes_in": stats.bytes_in,
        "frames_in": stats.frames_in,
    });
    node.shutdown().await;
    out
}

/// Runs this binary again with `args` and parses the JSON line it prints last.
fn child(args: &[&str]) -> Value {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Some(file) = arg("--load") {
        println!("{}", load_baseline(&file));
        return;
    }
    if let (Some(ticket), Some(heads)) = (arg("--member"), arg("--heads")) {
        println!("{}", member(&ticket, &heads).await);
        return;
    }
    let changes: usize = arg("--changes").map_or(100_000, |v| v.parse().expect("a number"));

    // The document: `changes` changes to 1,000 keys, made with automerge directly for speed.
    let built = Instant::now();
    let mut big = Automerge::new();
    for i in 0..changes {
        big.transact::<_, _, automerge::AutomergeError>(|tx| {
            tx.put(ROOT, format!("k{}", i % 1000), i as i64)
        })
        .unwrap();
    }
    let bytes = big.save();
    println!(
        "document: {changes} changes, {} bytes saved, built in {:.0} ms",
        bytes.len(),
        ms(built.elapsed())
    );
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("big.automerge");
    std::fs::write(&file, &bytes).unwrap();

    // The holder: the document in its store before it starts, in network "bench".
    let holder_dir = work.path().join("holder");
    let store = Store::open(holder_dir.join("sync")).unwrap();
    let mut doc = Document::load(b"holder", &bytes).unwrap();
    let heads: Vec<String> = doc.heads().iter().map(ToString::to_string).collect();
    store.compact("big", &mut doc).unwrap();
    std::fs::write(holder_dir.join("sync/big.network"), "bench").unwrap();
    drop(doc);
    let holder = Node::builder(&holder_dir, tcp_config())
        .protocol(Sync)
        .start()
        .await
        .unwrap();
    holder.client().networks().create("bench").unwrap();
    let addr = loop {
        let status = holder.client().status().await.unwrap();
        if let Some(a) = status.listen_addrs.first() {
            break format!("{a}/p2p/{}", holder.client().peer_id());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let ticket = holder
        .client()
        .networks()
        .invite(
            "bench",
            Duration::from_secs(3600),
            1,
            false,
            &[addr.parse().unwrap()],
        )
        .unwrap()
        .ticket;

    let base = child(&["--load", file.to_str().unwrap()]);
    let got = child(&["--member", &ticket, "--heads", &heads.join(",")]);
    holder.shutdown().await;

    let (base_ms, got_ms) = (base["ms"].as_f64().unwrap(), got["ms"].as_f64().unwrap());
    let base_rss = base["peak_rss_kib"].as_f64().unwrap();
    let got_rss = got["peak_rss_kib"].as_f64().unwrap();
    println!(
        "automerge load, own process: {base_ms:>9.1} ms   peak RSS {:>7.1} MiB",
        base_rss / 1024.0
    );
    println!(
        "fresh member over TCP:       {got_ms:>9.1} ms   peak RSS {:>7.1} MiB (node alone before join: {:.1} MiB)  {} bytes in {} frames",
        got_rss / 1024.0,
        got["peak_rss_kib_before_join"].as_f64().unwrap() / 1024.0,
        got["bytes_in"],
        got["frames_in"]
    );
    println!(
        "ratios (member / automerge load): time {:.2}x, peak RSS {:.2}x",
        got_ms / base_ms,
        got_rss / base_rss
    );
}

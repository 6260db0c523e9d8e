//! Chat latency between two nodes, beside the ping round trip of the same run.
//!
//! Two nodes in this process talk over loopback TCP (TLS, yamux, the hybrid secure
//! stream, the chat service and its database, as in the daemon). Latency is the time from
//! A's `ChatHandle::send` call to B's chat service publishing the message; both ends are
//! timed with one clock. The baseline is `Client::ping` between the same two nodes (an
//! echo over its own stream). Also: messages per second for a burst, and the time until
//! A's message is durably stored (what `send` waits for), which is not on the latency path.
//!
//! Run: `cargo bench -p p2pnode-chat --features service --bench chat_latency [-- --messages N --burst N]`.
//! Goal (issue #5): p99 latency <= 2 x RTT + 1 ms.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use p2pnode_chat::api::ChatEvent;
use p2pnode_chat::service::{Chat, ChatHandle, ChatService};
use p2pnode_node::{Config, Multiaddr, Node, TransportKind};

const WAIT: Duration = Duration::from_secs(30);

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn start(dir: &std::path::Path) -> Node {
    let config = Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        mdns: false,
        ..Config::default()
    };
    Node::builder(dir, config)
        .transport(TransportKind::Real)
        .protocol(Chat)
        .start()
        .await
        .unwrap()
}

fn chat(node: &Node) -> &ChatHandle {
    node.protocol::<ChatService>().expect("chat runs").handle()
}

async fn addr_of(node: &Node) -> Multiaddr {
    tokio::time::timeout(WAIT, async {
        loop {
            let status = node.client().status().await.unwrap();
            if let Some(a) = status.listen_addrs.first() {
                return format!("{a}/p2p/{}", node.client().peer_id())
                    .parse()
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("no listen address")
}

/// Collects the arrival time of each incoming message body at `node`.
fn arrivals(node: &Node) -> tokio::sync::mpsc::UnboundedReceiver<(String, Instant)> {
    let mut events = chat(node).subscribe();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let ChatEvent::Message(m) = event
                && tx.send((m.body, Instant::now())).is_err()
            {
                break;
            }
        }
    });
    rx
}

fn main() {
    let messages = arg("--messages", 1000);
    let burst = arg("--burst", 2000);
    let pings = arg("--pings", 200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (start(da.path()).await, start(db.path()).await);
        let (pa, pb) = (a.client().peer_id(), b.client().peer_id());
        a.client().connect_addr(addr_of(&b).await).await.unwrap();
        // B takes A's messages as a known contact's, not as a message request.
        chat(&b).accept(pa).await.unwrap();
        let mut rx = arrivals(&b);

        // Warm up: the secure stream, the first reservation commit.
        chat(&a).send(pb, "warm-up".into()).await.unwrap();
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        let rtts = a.client().ping(pb, pings as u32).await.unwrap().rtt_ms;

        let mut latency = Vec::with_capacity(messages);
        let mut stored = Vec::with_capacity(messages);
        for k in 0..messages {
            let body = format!("paced {k}");
            let start = Instant::now();
            chat(&a).send(pb, body.clone()).await.unwrap();
            stored.push(ms(start.elapsed()));
            let (got, at) = tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("message not delivered")
                .unwrap();
            assert_eq!(got, body, "delivered in order");
            latency.push(ms(at.duration_since(start)));
            // Pace: one message at a time, so no queueing is measured.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }

        let start = Instant::now();
        let sends: Vec<_> = (0..burst)
            .map(|k| {
                let chat = chat(&a).clone();
                tokio::spawn(async move { chat.send(pb, format!("burst {k}")).await })
            })
            .collect();
        let mut seen: HashMap<String, Instant> = HashMap::new();
        while seen.len() < burst {
            let (body, at) = tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("burst not delivered")
                .unwrap();
            seen.insert(body, at);
        }
        let burst_secs = start.elapsed().as_secs_f64();
        for s in sends {
            s.await.unwrap().unwrap();
        }

        let mut rtts = rtts;
        rtts.sort_by(f64::total_cmp);
        latency.sort_by(f64::total_cmp);
        stored.sort_by(f64::total_cmp);
        let rtt = pct(&rtts, 50.0);
        let (p50, p99) = (pct(&latency, 50.0), pct(&latency, 99.0));
        let goal = 2.0 * rtt + 1.0;
        println!("chat latency between two nodes on loopback TCP ({messages} paced messages)");
        println!(
            "  ping RTT p50 (baseline)   {rtt:8.3} ms  (p99 {:.3} ms, {pings} echoes)",
            pct(&rtts, 99.0)
        );
        println!(
            "  latency p50               {p50:8.3} ms  ({:.1} x RTT)",
            p50 / rtt
        );
        println!(
            "  latency p99               {p99:8.3} ms  (max {:.3} ms)",
            latency[latency.len() - 1]
        );
        println!(
            "  stored at A (send) p50    {:8.3} ms  (durable, not on the latency path)",
            pct(&stored, 50.0)
        );
        println!(
            "  burst                     {:8.0} msg/s ({burst} messages in {burst_secs:.2} s)",
            burst as f64 / burst_secs
        );
        println!(
            "  goal p99 <= 2 x RTT + 1 ms = {goal:.3} ms: p99/goal {:.2} -> {}",
            p99 / goal,
            if p99 <= goal { "met" } else { "NOT met" }
        );
        a.shutdown().await;
        b.shutdown().await;
    });
}

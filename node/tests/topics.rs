//! Gossipsub topics with DHT rendezvous: members that only know a bootstrap node find each
//! other through provider records and every member receives every message.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use p2pnode_node::event_loop::Validation;
use p2pnode_node::{Config, Multiaddr, Node, TransportKind};

const WAIT: Duration = Duration::from_secs(30);

async fn start(bootstrap: Vec<Multiaddr>, relay: bool, dir: &std::path::Path) -> Node {
    let config = Config {
        listen: vec!["/memory/0".parse().unwrap()],
        bootstrap,
        relay,
        mdns: false,
        ..Config::default()
    };
    Node::start_with(dir, config, TransportKind::Memory)
        .await
        .unwrap()
}

#[tokio::test]
async fn five_members_who_know_only_the_bootstrap_node_all_get_every_message() {
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let boot = start(vec![], true, dirs[0].path()).await;
    let boot_addr: Multiaddr = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(a) = boot.client().status().await.unwrap().listen_addrs.first() {
                return format!("{a}/p2p/{}", boot.client().peer_id())
                    .parse()
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let mut members = Vec::new();
    for dir in &dirs[1..] {
        members.push(start(vec![boot_addr.clone()], false, dir.path()).await);
    }
    let mut inboxes = Vec::new();
    for m in &members {
        inboxes.push(m.client().join_topic("room-test", 64).await.unwrap());
    }
    // Each member publishes until the others have all heard it (the mesh forms within a
    // few heartbeats; a publish before that reaches nobody).
    for (i, sender) in members.iter().enumerate() {
        let text = format!("hello from {i}");
        let mut heard = vec![false; members.len()];
        heard[i] = true;
        tokio::time::timeout(WAIT, async {
            while heard.iter().any(|h| !h) {
                sender
                    .client()
                    .publish("room-test", text.clone().into_bytes())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
                for (j, inbox) in inboxes.iter_mut().enumerate() {
                    while let Ok(m) = inbox.try_recv() {
                        // Gossipsub forwards only what the subscriber accepted.
                        members[j]
                            .client()
                            .report_topic_message(m.id.clone(), Validation::Accept)
                            .await
                            .unwrap();
                        if m.data == text.as_bytes() {
                            assert_eq!(m.source, Some(sender.client().peer_id()));
                            heard[j] = true;
                        }
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("message {i} did not reach every member"));
    }
    for m in members {
        m.shutdown().await;
    }
    boot.shutdown().await;
}

/// A message its first receiver rejects goes no further; one it accepts does. C hears A
/// only through B (C refuses A's connections).
#[tokio::test]
async fn a_rejected_message_is_not_forwarded_and_an_accepted_one_is() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(vec![], false, dirs[0].path()).await;
    let b = start(vec![], false, dirs[1].path()).await;
    let c = start(vec![], false, dirs[2].path()).await;
    c.client().revoke(a.client().peer_id()).await.unwrap();
    let b_addr: Multiaddr = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(addr) = b.client().status().await.unwrap().listen_addrs.first() {
                return format!("{addr}/p2p/{}", b.client().peer_id())
                    .parse()
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    a.client().connect_addr(b_addr.clone()).await.unwrap();
    c.client().connect_addr(b_addr).await.unwrap();
    let _a_inbox = a.client().join_topic("validated", 64).await.unwrap();
    let mut b_inbox = b.client().join_topic("validated", 64).await.unwrap();
    let mut c_inbox = c.client().join_topic("validated", 64).await.unwrap();

    // B accepts A's greetings until one reaches C: the mesh A-B-C is up.
    tokio::time::timeout(WAIT, async {
        loop {
            a.client()
                .publish("validated", b"hello".to_vec())
                .await
                .unwrap();
            let got = tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    tokio::select! {
                        Some(m) = b_inbox.recv() => {
                            b.client().report_topic_message(m.id, Validation::Accept).await.unwrap();
                        }
                        Some(m) = c_inbox.recv() => {
                            c.client().report_topic_message(m.id, Validation::Accept).await.unwrap();
                            return;
                        }
                    }
                }
            })
            .await;
            if got.is_ok() {
                return;
            }
        }
    })
    .await
    .expect("the mesh never formed");

    a.client()
        .publish("validated", b"bad".to_vec())
        .await
        .unwrap();
    a.client()
        .publish("validated", b"good".to_vec())
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            let m = b_inbox.recv().await.unwrap();
            let verdict = if m.data == b"bad" {
                Validation::Reject
            } else {
                Validation::Accept
            };
            assert_eq!(m.source, Some(a.client().peer_id()));
            assert_eq!(m.propagation_source, a.client().peer_id());
            let good = m.data == b"good";
            assert!(
                b.client()
                    .report_topic_message(m.id, verdict)
                    .await
                    .unwrap()
            );
            if good {
                return;
            }
        }
    })
    .await
    .expect("B never got the good message");
    let at_c = tokio::time::timeout(WAIT, async {
        let mut seen = Vec::new();
        loop {
            let m = c_inbox.recv().await.unwrap();
            assert_eq!(m.propagation_source, b.client().peer_id());
            c.client()
                .report_topic_message(m.id, Validation::Accept)
                .await
                .unwrap();
            seen.push(String::from_utf8_lossy(&m.data).into_owned());
            if m.data == b"good" {
                return seen;
            }
        }
    })
    .await
    .expect("C never got the good message");
    assert!(!at_c.iter().any(|d| d == "bad"), "{at_c:?}");
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

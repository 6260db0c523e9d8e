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

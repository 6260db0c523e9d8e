//! The chat service as a protocol on a node: registered through the contract, it stops
//! with the node by draining, so every message it acknowledged is in the history after a
//! restart.

#![cfg(feature = "service")]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use p2pnode_chat::api::ChatEvent;
use p2pnode_chat::service::{Chat, ChatHandle, ChatService};
use p2pnode_node::{Config, Node, TransportKind};

async fn start(dir: &std::path::Path) -> Node {
    let config = Config {
        listen: vec!["/memory/0".parse().unwrap()],
        mdns: false,
        ..Config::default()
    };
    Node::builder(dir, config)
        .transport(TransportKind::Memory)
        .protocol(Chat)
        .start()
        .await
        .unwrap()
}

fn chat(node: &Node) -> ChatHandle {
    node.protocol::<ChatService>().unwrap().handle().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_and_keeps_every_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    assert_eq!(node.protocols().names(), vec!["chat"]);
    let chat_a = chat(&node);
    // An offline peer: every message waits in the queue, stored.
    let peer = p2pnode_node::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let first = chat_a.send(peer, "first".into()).await.unwrap();
    let mut events = chat_a.subscribe();
    // Four writers send one message after another until the service refuses.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let chat = chat_a.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0.. {
                    match chat.send(peer, format!("w{w} m{i}")).await {
                        Ok(m) => acked.push(m.id),
                        Err(e) => {
                            assert_eq!(e.kind(), "stopped", "{e}");
                            return acked;
                        }
                    }
                }
                acked
            })
        })
        .collect();
    // Stop while they write: the service takes no more, commits the batch in flight, and
    // answers or refuses each caller.
    let mut sent = 0;
    while sent < 200 {
        let event = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("sends stalled")
            .unwrap();
        if matches!(event, ChatEvent::Sent(_)) {
            sent += 1;
        }
    }
    node.shutdown().await;
    let mut acked = vec![first.id];
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    drop(chat_a);

    let node = start(dir.path()).await;
    let stored: Vec<String> = chat(&node)
        .history(peer, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    for id in &acked {
        assert!(stored.contains(id), "acknowledged message {id} was lost");
    }
    assert_eq!(
        stored.len(),
        acked.len(),
        "a refused message was stored, or one was stored twice"
    );
    node.shutdown().await;
}

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

/// Issue #18, finding 7: a peer that writes without being accepted is listed as a request
/// marked unverified, whatever it says, so a contact who comes back with a new peer id is
/// not taken for the verified one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_from_a_new_peer_id_is_marked_unverified() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (start(dir_a.path()).await, start(dir_b.path()).await);
    let a_id = a.client().peer_id();
    let b_id = b.client().peer_id();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(addr) = a.client().status().await.unwrap().listen_addrs.first() {
                break addr.clone();
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a listens");
    b.client()
        .connect_addr(format!("{addr}/p2p/{a_id}").parse().unwrap())
        .await
        .unwrap();
    let mut events = chat(&a).subscribe();
    chat(&b)
        .send(
            a_id,
            "it's me, your verified friend, on a new laptop".into(),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let ChatEvent::Request { peer_id } = events.recv().await.unwrap()
                && peer_id == b_id.to_string()
            {
                break;
            }
        }
    })
    .await
    .expect("b's message arrives as a request");
    let requests = chat(&a).requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].peer_id, b_id.to_string());
    assert!(!requests[0].verified, "a stranger's request is unverified");
    b.shutdown().await;
    a.shutdown().await;
}

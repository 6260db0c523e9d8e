//! Generic provider records: a key announced by two nodes is found by a third that knows
//! only a bootstrap node, and the answer leaves the asking node itself out.

#![allow(clippy::unwrap_used)]

use crate::common::{WAIT, addr_of, wait_for};
use p2pnode_node::{Config, Multiaddr, Node, TransportKind};

async fn start(bootstrap: Vec<Multiaddr>, dir: &std::path::Path) -> Node {
    let config = Config {
        bootstrap,
        ..crate::common::memory_config()
    };
    Node::start_with(dir, config, TransportKind::Memory)
        .await
        .unwrap()
}

#[tokio::test]
async fn providers_announced_by_two_nodes_are_found_by_a_third() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(vec![], dirs[0].path()).await;
    let boot = addr_of(&a).await;
    let b = start(vec![boot.clone()], dirs[1].path()).await;
    let c = start(vec![boot], dirs[2].path()).await;
    let key = b"files/test-key".to_vec();

    assert!(
        c.client().find_providers(vec![]).await.is_err(),
        "empty key"
    );
    b.client().provide(key.clone()).await.unwrap();
    c.client().provide(key.clone()).await.unwrap();
    let (bid, cid) = (b.client().peer_id(), c.client().peer_id());
    // The records reach the bootstrap node once the announcements' queries ran.
    let found = wait_for(|| async {
        let found = a.client().find_providers(key.clone()).await.ok()?;
        (found.contains(&bid) && found.contains(&cid)).then_some(found)
    })
    .await;
    assert_eq!(found.len(), 2);
    let from_c = wait_for(|| async {
        let found = c.client().find_providers(key.clone()).await.ok()?;
        found.contains(&bid).then_some(found)
    })
    .await;
    assert_eq!(from_c, vec![bid], "the asking node leaves itself out");
    // An unknown key has no providers, answered well within the wait.
    let none = tokio::time::timeout(WAIT, c.client().find_providers(b"nobody".to_vec()))
        .await
        .unwrap()
        .unwrap();
    assert!(none.is_empty());
    c.client().stop_providing(key.clone()).await.unwrap();
}

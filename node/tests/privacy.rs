//! `--relay-only`: the node talks to everyone through its relay and nobody learns a
//! direct address of it. And `--pad`: padded frames still carry messages.

#![allow(clippy::unwrap_used)]

use crate::common::{WAIT, addr_of, wait_for};

use p2pnode_node::api::Path;
use p2pnode_node::{Config, Multiaddr, Node, StreamProtocol, TransportKind};

async fn start(dir: &std::path::Path, config: Config) -> Node {
    let config = Config {
        mdns: false,
        ..config
    };
    Node::start_with(dir, config, TransportKind::Memory)
        .await
        .unwrap()
}

fn memory_listen() -> Vec<Multiaddr> {
    vec!["/memory/0".parse().unwrap()]
}

#[tokio::test]
async fn relay_only_node_is_reached_and_reaches_others_only_through_the_relay() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let relay = start(
        dirs[0].path(),
        Config {
            listen: memory_listen(),
            relay: true,
            ..Config::default()
        },
    )
    .await;
    let r = addr_of(&relay).await;
    let hidden = start(
        dirs[1].path(),
        Config {
            bootstrap: vec![r.clone()],
            relay_only: true,
            ..Config::default()
        },
    )
    .await;
    let open = start(
        dirs[2].path(),
        Config {
            listen: memory_listen(),
            bootstrap: vec![r],
            ..Config::default()
        },
    )
    .await;
    let (hidden_id, open_id) = (hidden.client().peer_id(), open.client().peer_id());

    // The hidden node listens only through its relay.
    let status = wait_for(|| async {
        let s = hidden.client().status().await.ok()?;
        (!s.listen_addrs.is_empty()).then_some(s)
    })
    .await;
    assert!(
        status
            .listen_addrs
            .iter()
            .all(|a| a.contains("p2p-circuit")),
        "{status:?}"
    );

    // Others find only circuit addresses for it, and reach it relayed.
    let found = wait_for(|| async { open.client().find(hidden_id).await.ok() }).await;
    assert!(
        found.addresses.iter().all(|a| a.contains("p2p-circuit")),
        "{found:?}"
    );
    let c = open.client().connect_peer(hidden_id).await.unwrap();
    assert_eq!(c.path, Path::Relayed);

    // It refuses to dial a direct address, even one it is handed.
    let direct = addr_of(&open).await;
    let err = hidden.client().connect_addr(direct).await;
    assert!(err.is_err() || err.unwrap().path == Path::Relayed);

    // Application traffic flows, and every connection the hidden node has to a non-relay
    // peer is relayed.
    let pinged = open.client().ping(hidden_id, 2).await.unwrap();
    assert_eq!(pinged.path, Path::Relayed);
    for p in hidden.client().peers().await.unwrap() {
        if p.peer_id == open_id.to_string() {
            assert!(
                p.connections.iter().all(|c| c.path == Path::Relayed),
                "{p:?}"
            );
        }
    }
    for n in [hidden, open, relay] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn relay_only_without_a_relay_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        relay_only: true,
        mdns: false,
        ..Config::default()
    };
    let err = Node::start_with(dir.path(), config, TransportKind::Memory)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--relay-only"), "{err}");
}

#[tokio::test]
async fn padded_frames_carry_messages() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let padded = Config {
        listen: memory_listen(),
        pad: true,
        ..Config::default()
    };
    let a = start(da.path(), padded.clone()).await;
    let b = start(db.path(), padded).await;
    let proto = StreamProtocol::new("/p2pnode/test-pad/1.0.0");
    let mut listener = b.client().listen_secure(proto.clone(), "chat").unwrap();
    a.client().connect_addr(addr_of(&b).await).await.unwrap();
    let mut s = a
        .client()
        .open_secure(b.client().peer_id(), proto, "chat")
        .await
        .unwrap();
    for len in [0usize, 1, 100, 5000] {
        s.send(&vec![7u8; len]).await.unwrap();
    }
    let mut accepted = tokio::time::timeout(WAIT, listener.next())
        .await
        .unwrap()
        .unwrap();
    for len in [0usize, 1, 100, 5000] {
        assert_eq!(accepted.stream.recv().await.unwrap(), vec![7u8; len]);
    }
    a.shutdown().await;
    b.shutdown().await;
}

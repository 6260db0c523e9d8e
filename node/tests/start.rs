//! What `NodeBuilder::start` refuses before it runs anything, and that a refused start
//! leaves the data directory free for the next one.

#![allow(clippy::unwrap_used)]

use crate::common::memory_config;
use p2pnode_node::{Node, StartError, TransportKind};

async fn start(dir: &std::path::Path, config: p2pnode_node::Config) -> Result<Node, StartError> {
    Node::start_with(dir, config, TransportKind::Memory).await
}

/// A node starts on `dir` and stops: nothing of a refused start holds its database.
async fn starts_again(dir: &std::path::Path) {
    start(dir, memory_config()).await.unwrap().shutdown().await;
}

#[tokio::test]
async fn a_bootstrap_address_without_its_peer_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = p2pnode_node::Config {
        bootstrap: vec!["/memory/4242".parse().unwrap()],
        ..memory_config()
    };
    let err = start(dir.path(), config).await.unwrap_err();
    assert!(
        matches!(&err, StartError::Bootstrap(a) if a == "/memory/4242"),
        "{err}"
    );
    assert!(err.to_string().contains("/p2p/<peer-id>"), "{err}");
    starts_again(dir.path()).await;
}

#[tokio::test]
async fn relay_only_without_a_relay_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = p2pnode_node::Config {
        relay_only: true,
        ..memory_config()
    };
    let err = start(dir.path(), config).await.unwrap_err();
    assert!(matches!(err, StartError::RelayOnlyWithoutRelay), "{err}");
    starts_again(dir.path()).await;
}

#[tokio::test]
async fn a_taken_metrics_port_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = p2pnode_node::Config {
        metrics: Some(addr),
        ..memory_config()
    };
    let err = start(dir.path(), config).await.unwrap_err();
    assert!(
        matches!(&err, StartError::Metrics(a, _) if *a == addr),
        "{err}"
    );
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    starts_again(dir.path()).await;
}

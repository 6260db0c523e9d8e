//! The metrics endpoint: after two nodes connect and one opens a secure stream, a scrape
//! shows the connection by path and transport, the stream through the gate, and
//! libp2p's own metrics.

#![allow(clippy::unwrap_used)]

use crate::common::{Named, addr_of, memory_config};
use p2pnode_node::{Node, StreamProtocol, TransportKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const APP: &str = "test-app";
const TEST_PROTOCOL: StreamProtocol = StreamProtocol::new("/p2pnode/test/1.0.0");

/// One scrape, as `curl` would make it.
async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut all = String::new();
    tokio::time::timeout(crate::common::WAIT, tcp.read_to_string(&mut all))
        .await
        .unwrap()
        .unwrap();
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    all
}

#[tokio::test]
async fn a_scrape_shows_connections_streams_and_libp2p_metrics() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let with_metrics = p2pnode_node::Config {
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..memory_config()
    };
    let a = Node::builder(dirs[0].path(), with_metrics)
        .transport(TransportKind::Memory)
        .protocol(Named(APP))
        .start()
        .await
        .unwrap();
    let b = crate::common::start_memory_with(dirs[1].path(), Named(APP)).await;
    let endpoint = a.metrics_addr().unwrap();
    assert_ne!(endpoint.port(), 0);

    let mut listener = a.client().listen_secure(TEST_PROTOCOL, APP).unwrap();
    b.client().connect_addr(addr_of(&a).await).await.unwrap();
    let mut out = b
        .client()
        .open_secure(a.client().peer_id(), TEST_PROTOCOL, APP)
        .await
        .unwrap();
    out.send(b"counted").await.unwrap();
    let mut accepted = tokio::time::timeout(crate::common::WAIT, listener.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(accepted.stream.recv().await.unwrap(), b"counted");

    let text = crate::common::wait_for(|| async {
        let text = scrape(endpoint).await;
        text.contains(r#"p2pnode_streams_total{protocol="test-app",outcome="accepted"} 1"#)
            .then_some(text)
    })
    .await;
    assert!(
        text.contains(r#"p2pnode_connections{path="direct",transport="memory"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("libp2p_swarm_connections_established_total"),
        "{text}"
    );
    // The frame's bytes: "counted" (7 bytes) with its header and tag.
    let received: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"p2pnode_stream_bytes_total{protocol="test-app",direction="received"} "#,
            )
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no received bytes for test-app: {text}"));
    assert_eq!(
        received,
        (p2pnode_secure::session::HEADER_LEN + 7 + p2pnode_secure::session::TAG_LEN) as u64
    );
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    a.shutdown().await;
    b.shutdown().await;
}

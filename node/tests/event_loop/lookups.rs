//! Finding peers by id: DHT lookups, `find` and `connect <peer-id>`, and their errors.

use super::*;

#[tokio::test]
async fn peer_id_alone_is_found_through_the_dht_and_connected() {
    let relay = start(vec![], true).await;
    let r = relay.addr().await;
    let a = start(vec![r.clone()], false).await;
    let b = start(vec![r], false).await;
    let b_id = b.client().peer_id();
    // B is findable once the relay has learned its addresses through identify.
    let found = wait_for(|| async { a.client().find(b_id).await.ok() }).await;
    assert_eq!(found.peer_id, b_id.to_string());
    assert!(!found.addresses.is_empty());
    // A's routing table holds the relay at least, and its queries (the lookups and
    // Kademlia's own bootstrap) all finish.
    wait_for(|| async {
        let s = a.client().status().await.ok()?;
        (s.dht_peers >= 1 && s.dht_queries == 0).then_some(())
    })
    .await;
    let c = a.client().connect_peer(b_id).await.unwrap();
    assert_eq!(c.peer_id, b_id.to_string());
    assert!(connected(&a, b_id).await);
    // Echo traffic flows over the new connection.
    let pinged = a.client().ping(b_id, 3).await.unwrap();
    assert_eq!(pinged.rtt_ms.len(), 3);
    for n in [a, b, relay] {
        n.node.shutdown().await;
    }
}

#[tokio::test]
async fn find_without_peers_says_to_bootstrap() {
    let a = start(vec![], false).await;
    let err = a.client().find(PeerId::random()).await.unwrap_err();
    assert!(matches!(err, NodeError::NoPeers), "{err}");
    assert!(err.to_string().contains("--bootstrap"));
    a.node.shutdown().await;
}

#[tokio::test]
async fn unknown_peer_is_not_found() {
    let (relay, a) = relay_and_node().await;
    let missing = PeerId::random();
    let err = a.client().connect_peer(missing).await.unwrap_err();
    assert!(matches!(err, NodeError::NotFound { .. }), "{err}");
    assert_eq!(err.kind(), "not_found");
    a.node.shutdown().await;
    relay.node.shutdown().await;
}

/// A lookup asks only the peers our table held when it began, so a peer the table
/// learned another way (mDNS, a connection) may be missing from its answer. Such a peer
/// is dialled at the table's addresses instead of reported "not found in the DHT". Here
/// the peer has gone, so the answer is that it is unreachable at the address we knew.
#[tokio::test]
async fn peer_only_our_table_knows_is_dialled_at_its_address() {
    let (relay, a) = relay_and_node().await;
    // b, unknown to the relay, connects to a: identify puts b's address in a's table.
    let b = start(vec![], false).await;
    let b_id = b.client().peer_id();
    let b_addr = b.addr().await;
    b.client().connect_addr(a.addr().await).await.unwrap();
    wait_for(|| async {
        let s = a.client().status().await.ok()?;
        (s.dht_peers == 2).then_some(())
    })
    .await;
    b.node.shutdown().await;
    wait_for(|| async { (!connected(&a, b_id).await).then_some(()) }).await;
    // `find` does not offer the table's address as where b is: only a dial can tell.
    let err = a.client().find(b_id).await.unwrap_err();
    assert!(matches!(err, NodeError::NotFound { .. }), "{err}");
    let err = a.client().connect_peer(b_id).await.unwrap_err();
    assert!(matches!(err, NodeError::Unreachable { .. }), "{err}");
    let memory_port = b_addr.iter().next().unwrap().to_string();
    assert!(err.to_string().contains(&memory_port), "{err}");
    a.node.shutdown().await;
    relay.node.shutdown().await;
}

/// A lookup answers as soon as it has reached its target, without waiting for the rest of
/// the query: here for a peer that accepts TCP connections and never says a word, which
/// Kademlia would otherwise wait 10 s for.
#[tokio::test]
async fn find_answers_once_the_target_is_reached() {
    let tcp = |bootstrap, relay| {
        start_on(
            "/ip4/127.0.0.1/tcp/0",
            TransportKind::Real,
            bootstrap,
            relay,
        )
    };
    // The kernel completes the handshake into the backlog; nobody ever reads.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent: Multiaddr = format!(
        "/ip4/127.0.0.1/tcp/{}/p2p/{}",
        silent.local_addr().unwrap().port(),
        PeerId::random()
    )
    .parse()
    .unwrap();
    let relay = tcp(vec![], true).await;
    let r = relay.addr().await;
    let b = tcp(vec![r.clone()], false).await;
    let b_id = b.client().peer_id();
    // The relay knows B once a third node can find B through it.
    let c = tcp(vec![r.clone()], false).await;
    wait_for(|| async { c.client().find(b_id).await.ok() }).await;

    // A knows the relay and the silent peer, and asks both.
    let a = tcp(vec![r, silent], false).await;
    let started = std::time::Instant::now();
    let found = wait_for(|| async { a.client().find(b_id).await.ok() }).await;
    let took = started.elapsed();
    assert_eq!(found.peer_id, b_id.to_string());
    assert_eq!(found.addresses.len(), 1, "{:?}", found.addresses);
    assert!(found.addresses[0].starts_with("/ip4/127.0.0.1/tcp/"));
    assert!(
        took < std::time::Duration::from_secs(5),
        "the lookup waited {took:?}, as if for the silent peer"
    );
    for n in [a, b, c, relay] {
        n.node.shutdown().await;
    }
}

/// A TCP forwarder to `target` whose replies (target to client) can be held back until a
/// given moment: a link that stalls, the way a congested one does.
struct StallingProxy {
    port: u16,
    hold_until: std::sync::Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

impl StallingProxy {
    async fn start(target: std::net::SocketAddr) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold_until = std::sync::Arc::new(std::sync::Mutex::new(None));
        let hold = hold_until.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
                });
                let hold = hold.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match server_rx.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let until = *hold.lock().unwrap();
                        if let Some(until) = until {
                            tokio::time::sleep_until(until).await;
                        }
                        if client_tx.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { port, hold_until }
    }

    fn hold_replies_for(&self, d: std::time::Duration) {
        *self.hold_until.lock().unwrap() = Some(tokio::time::Instant::now() + d);
    }
}

/// Waits until `node` has had no DHT query running for a second. Kademlia starts a
/// bootstrap by itself half a second after a peer enters its table, with nothing to wait
/// for in between; a test that must know the table is final waits it out this way.
async fn dht_quiet(node: &TestNode) {
    tokio::time::timeout(crate::common::WAIT, async {
        let mut quiet_since = std::time::Instant::now();
        loop {
            let busy = node.client().status().await.unwrap().dht_queries > 0;
            let now = std::time::Instant::now();
            if busy {
                quiet_since = now;
            } else if now - quiet_since >= std::time::Duration::from_secs(1) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the DHT did not go quiet");
}

/// A lookup whose only peer answers after Kademlia's 10 s per-peer timeout ends without
/// that answer; the node asks once more and finds the target when the answer comes.
#[tokio::test]
async fn a_lookup_whose_peers_answered_late_asks_again() {
    let tcp = |bootstrap| {
        start_on(
            "/ip4/127.0.0.1/tcp/0",
            TransportKind::Real,
            bootstrap,
            false,
        )
    };
    // R must not dial A back for AutoNAT: Kademlia could then send A's requests over that
    // connection instead of the stalling one.
    let r = start_config(
        Config {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            mdns: false,
            autonat_private_ips: false,
            ..Config::default()
        },
        TransportKind::Real,
    )
    .await;
    let r_addr = r.addr().await;
    let r_id = r.client().peer_id();
    // "/ip4/127.0.0.1/tcp/<port>/p2p/<id>"
    let r_port: u16 = r_addr
        .to_string()
        .split('/')
        .nth(4)
        .unwrap()
        .parse()
        .unwrap();
    let proxy = StallingProxy::start(([127, 0, 0, 1], r_port).into()).await;

    // A meets R through the proxy and its DHT goes quiet before B joins, so A's own Kademlia
    // bootstrap cannot learn B from R; B's would learn A and connect, so B refuses A until
    // A must find it. A reaches B only through R's answer.
    let a = tcp(vec![]).await;
    let a_id = a.client().peer_id();
    let b = tcp(vec![]).await;
    let b_id = b.client().peer_id();
    b.client().revoke(a_id).await.unwrap();
    let via_proxy: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}/p2p/{r_id}", proxy.port)
        .parse()
        .unwrap();
    a.client().connect_addr(via_proxy).await.unwrap();
    dht_quiet(&a).await;
    b.client().connect_addr(r_addr).await.unwrap();
    dht_quiet(&b).await;
    assert!(
        a.client().peers().await.unwrap().len() == 1,
        "A is connected to R alone"
    );
    b.client().allow(a_id, &[]).await.unwrap();

    // R's answers to A now come after 11 s, past Kademlia's 10 s for a peer.
    proxy.hold_replies_for(std::time::Duration::from_secs(11));
    let started = std::time::Instant::now();
    let found = tokio::time::timeout(std::time::Duration::from_secs(30), a.client().find(b_id))
        .await
        .expect("the lookup did not end within 30 s");
    let took = started.elapsed();
    let found = found.unwrap_or_else(|e| panic!("after {took:?}: {e}"));
    assert_eq!(found.peer_id, b_id.to_string());
    assert!(
        took >= std::time::Duration::from_secs(10),
        "answered in {took:?}: the first query did not wait for R, so the retry was not tested"
    );
    for n in [a, b, r] {
        n.node.shutdown().await;
    }
}

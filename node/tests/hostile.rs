//! Hostile peers against the node, in-process on the memory transport: what a stranger can
//! make the node spend is bounded, and it cannot starve other peers.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use crate::common::{Named, WAIT, addr_of, start_memory_with};
use futures::{AsyncReadExt, AsyncWriteExt};
use p2pnode_node::holepunch::{HOLEPUNCH_PROTOCOL, MAX_ANSWERS};
use p2pnode_node::{Node, StreamProtocol, streams::ECHO_PROTOCOL};

const TEST_PROTOCOL: StreamProtocol = StreamProtocol::new("/p2pnode/test/1.0.0");
const APP: &str = "test-app";

async fn start_in(dir: &std::path::Path) -> Node {
    start_memory_with(dir, Named(APP)).await
}

/// An echo round trip on the same connection: the streams opened before it have reached
/// the other side.
async fn round_trip(from: &Node, to: &Node) {
    let mut echo = from
        .client()
        .streams()
        .open_stream(to.client().peer_id(), ECHO_PROTOCOL)
        .await
        .unwrap();
    echo.write_all(&[7; 32]).await.unwrap();
    let mut back = [0; 32];
    tokio::time::timeout(WAIT, echo.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn silent_streams_from_one_peer_do_not_hold_up_another_peers_stream() {
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let attacker = start_in(da.path()).await;
    let b = start_in(db.path()).await;
    let c = start_in(dc.path()).await;
    let b_id = b.client().peer_id();
    let mut listener = b.client().listen_secure(TEST_PROTOCOL, APP).unwrap();
    attacker
        .client()
        .connect_addr(addr_of(&b).await)
        .await
        .unwrap();
    c.client().connect_addr(addr_of(&b).await).await.unwrap();

    // Sixteen streams that never say a word: before the gate, one for every handshake
    // slot the listener had.
    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..16 {
        silent.push(
            attacker
                .client()
                .streams()
                .open_stream(b_id, TEST_PROTOCOL)
                .await
                .unwrap(),
        );
    }
    round_trip(&attacker, &b).await;

    let mut out = tokio::time::timeout(WAIT, c.client().open_secure(b_id, TEST_PROTOCOL, APP))
        .await
        .unwrap()
        .unwrap();
    out.send(b"still served").await.unwrap();
    let mut accepted = tokio::time::timeout(WAIT, listener.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(accepted.peer, c.client().peer_id());
    assert_eq!(accepted.stream.recv().await.unwrap(), b"still served");
    // Held up, it would have waited for the silent streams to time out, which they do
    // only this long after they were opened (a bound that, unlike a fixed second, a debug
    // build's handshake on a busy 2-core machine cannot overrun by itself).
    let took = opened.elapsed();
    assert!(
        took < p2pnode_node::gate::FIRST_MESSAGE_TIMEOUT,
        "another peer's stream waited {took:?}"
    );
    drop(silent);
    for node in [attacker, b, c] {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn a_peer_repeating_the_address_exchange_gets_three_answers() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let attacker = start_in(da.path()).await;
    let b = start_in(db.path()).await;
    let b_id = b.client().peer_id();
    attacker
        .client()
        .connect_addr(addr_of(&b).await)
        .await
        .unwrap();
    // B writes its addresses the moment it accepts an exchange it answers; an exchange
    // it refuses is closed unanswered.
    let mut answered = 0;
    for _ in 0..100 {
        let Ok(mut stream) = attacker
            .client()
            .streams()
            .open_stream(b_id, HOLEPUNCH_PROTOCOL)
            .await
        else {
            continue;
        };
        let answer = tokio::time::timeout(
            WAIT,
            p2pnode_secure::stream::read_length_prefixed(&mut stream, 4096),
        )
        .await
        .expect("B neither answered nor closed the stream");
        if answer.is_ok() {
            answered += 1;
        }
    }
    assert!(
        answered <= MAX_ANSWERS as usize,
        "{answered} of 100 exchanges answered"
    );
    assert!(answered > 0, "the first exchanges are answered");
    attacker.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_later_verification_exchange_does_not_replace_a_code_already_shown() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_in(da.path()).await;
    let b = start_in(db.path()).await;
    let (a_id, b_id) = (a.client().peer_id(), b.client().peer_id());
    a.client().connect_addr(addr_of(&b).await).await.unwrap();

    let on_a = a.client().verify(b_id).await.unwrap();
    let on_b = b.client().verify(a_id).await.unwrap();
    assert_eq!(on_a.sas_words, on_b.sas_words);

    // Another exchange in A's name (a man in the middle retrying for a code that suits
    // him). B closes the stream once it has dealt with it.
    let mut again = a
        .client()
        .open_secure(b_id, p2pnode_node::secure::VERIFY_PROTOCOL, "verify")
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(WAIT, again.recv())
            .await
            .unwrap()
            .is_err()
    );
    let still = b.client().verify(a_id).await.unwrap();
    assert_eq!(
        still.sas_words, on_b.sas_words,
        "the shown code was replaced"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_data_directory_others_may_write_is_refused_with_how_to_fix_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = Node::start_with(
        dir.path(),
        crate::common::memory_config(),
        p2pnode_node::TransportKind::Memory,
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("writable by other users") && msg.contains("chmod go-w"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_database_others_may_read_is_refused_and_a_new_one_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let node = start_in(dir.path()).await;
    node.shutdown().await;
    let db = dir.path().join(p2pnode_node::store::DB_FILE);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&db), 0o600);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Node::start_with(
        dir.path(),
        crate::common::memory_config(),
        p2pnode_node::TransportKind::Memory,
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("open to other users") && msg.contains("chmod 600"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_control_socket_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let _listener = p2pnode_node::control::bind(dir.path()).await.unwrap();
    let path = dir.path().join(p2pnode_node::control::SOCKET_FILE);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn a_control_socket_left_by_another_user_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(p2pnode_node::control::SOCKET_FILE);
    std::fs::write(&path, b"").unwrap();
    // The tests run as root (the NAT lab needs it), so another owner can be set.
    std::os::unix::fs::chown(&path, Some(12345), Some(12345)).unwrap();
    let err = p2pnode_node::control::bind(dir.path()).await.unwrap_err();
    assert_eq!(err.kind(), "foreign_socket", "{err}");
    assert!(err.to_string().contains("another user"), "{err}");
    assert!(path.exists(), "another user's file was removed");
}

/// Starts a node and its control server, writes `request` on a raw connection and returns
/// what the server wrote before it closed that connection (failing the test if it keeps it
/// open); another client is served meanwhile.
async fn control_closes_after(request: &[u8], what: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let node = start_in(dir.path()).await;
    let listener = p2pnode_node::control::bind(dir.path()).await.unwrap();
    let stop = std::sync::Arc::new(tokio::sync::Notify::new());
    let server = tokio::spawn(p2pnode_node::control::serve(
        listener,
        node.client().clone(),
        node.protocols().clone(),
        std::sync::Arc::new(tokio::sync::Notify::new()),
        stop.clone(),
    ));
    let socket = dir.path().join(p2pnode_node::control::SOCKET_FILE);
    let mut raw = tokio::net::UnixStream::connect(&socket).await.unwrap();
    raw.write_all(request).await.unwrap();
    let mut written = Vec::new();
    tokio::time::timeout(WAIT, raw.read_to_end(&mut written))
        .await
        .unwrap_or_else(|_| panic!("{what} was kept open"))
        .unwrap();
    let status: p2pnode_node::api::Status = p2pnode_node::control::ControlClient::new(dir.path())
        .get("status")
        .await
        .unwrap();
    assert_eq!(status.peer_id, node.client().peer_id().to_string());
    stop.notify_one();
    server.await.unwrap();
    node.shutdown().await;
    written
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    // The server closes the connection (with or without a 408) instead of waiting.
    control_closes_after(
        b"GET /v1/status HTTP/1.1\r\nHost: p2pnode\r\n",
        "a slow-header connection",
    )
    .await;
}

#[tokio::test]
async fn an_idle_control_connection_is_closed() {
    // One whole request on a keep-alive connection, then silence: the server answers, then
    // closes the connection instead of holding a slot for ever.
    let written = control_closes_after(
        b"GET /v1/status HTTP/1.1\r\nHost: p2pnode\r\nConnection: keep-alive\r\n\r\n",
        "an idle keep-alive connection",
    )
    .await;
    assert!(
        written.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&written)
    );
}

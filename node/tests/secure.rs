//! Secure application streams between nodes on the memory transport: handshake and SAS,
//! verification, revocation.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::common::{Named, WAIT, addr_of, connected, start_memory_with};

use p2pnode_node::{Node, NodeError, StreamProtocol};
use p2pnode_secure::TrustDecision;

const TEST_PROTOCOL: StreamProtocol = StreamProtocol::new("/p2pnode/test/1.0.0");
/// The trust name the test streams use; the nodes register it.
const APP: &str = "test-app";

async fn start_in(dir: &std::path::Path) -> Node {
    start_memory_with(dir, Named(APP)).await
}

#[tokio::test]
async fn secure_stream_carries_messages_and_both_sides_share_the_sas() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_in(da.path()).await;
    let b = start_in(db.path()).await;
    let mut listener = b.client().listen_secure(TEST_PROTOCOL, APP).unwrap();
    a.client().connect_addr(addr_of(&b).await).await.unwrap();

    let mut out = a
        .client()
        .open_secure(b.client().peer_id(), TEST_PROTOCOL, APP)
        .await
        .unwrap();
    out.send(b"hello over ML-KEM").await.unwrap();
    let mut accepted = tokio::time::timeout(WAIT, listener.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(accepted.peer, a.client().peer_id());
    // Nobody told B about A: the protocol decides what an unknown peer may do.
    assert_eq!(accepted.decision, TrustDecision::UnknownPeer);
    assert_eq!(accepted.stream.recv().await.unwrap(), b"hello over ML-KEM");
    assert_eq!(accepted.stream.sas(), out.sas());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn verify_shows_one_code_on_both_sides_and_confirm_pins_the_key() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_in(da.path()).await;
    let b = start_in(db.path()).await;
    let (a_id, b_id) = (a.client().peer_id(), b.client().peer_id());
    a.client().connect_addr(addr_of(&b).await).await.unwrap();

    let from_a = a.client().verify(b_id).await.unwrap();
    // B's side of the same exchange: the code B's user reads.
    let from_b = b.client().verify(a_id).await.unwrap();
    assert_eq!(from_a.sas_words, from_b.sas_words);
    assert_eq!(from_a.sas_digits, from_b.sas_digits);
    assert!(!from_a.verified);

    let t = a.client().confirm_verified(b_id).await.unwrap();
    assert!(t.verified);
    let list = a.client().trust_list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].verified);
    // A confirmed peer is granted the protocols the node runs.
    assert_eq!(list[0].allowed_protocols, vec![APP.to_string()]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn confirm_without_a_code_is_refused() {
    let da = tempfile::tempdir().unwrap();
    let a = start_in(da.path()).await;
    let stranger = p2pnode_node::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let err = a.client().confirm_verified(stranger).await.unwrap_err();
    assert!(err.to_string().contains("p2pnode verify"), "{err}");
    a.shutdown().await;
}

#[tokio::test]
async fn revoked_peer_is_disconnected_opens_no_streams_and_stays_revoked_after_restart() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_in(da.path()).await;
    let b = start_in(db.path()).await;
    let (a_id, b_id) = (a.client().peer_id(), b.client().peer_id());
    let mut listener = a.client().listen_secure(TEST_PROTOCOL, APP).unwrap();
    b.client().connect_addr(addr_of(&a).await).await.unwrap();

    let t = a.client().revoke(b_id).await.unwrap();
    assert!(t.revoked);
    // Live connections close well within 5 s.
    tokio::time::timeout(Duration::from_secs(5), async {
        while connected(&a, b_id).await || connected(&b, a_id).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("revoked peer still connected after 5 s");

    // B cannot get a stream to A: A refuses its connections (B's side may see one open
    // for an instant before A closes it, so what counts is that no stream gets through).
    let a_addr = addr_of(&a).await;
    let _ = b.client().connect_addr(a_addr.clone()).await;
    assert!(
        b.client()
            .open_secure(a_id, TEST_PROTOCOL, APP)
            .await
            .is_err()
    );
    // A's listener saw zero streams, and A holds no connection to B.
    assert!(listener.accepted_now().is_none());
    assert!(!connected(&a, b_id).await);

    // A refuses to open streams to B too, with a clear error.
    let err = a
        .client()
        .open_secure(b_id, TEST_PROTOCOL, APP)
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::Revoked { .. }), "{err}");

    // After a restart the revocation holds.
    drop(listener);
    a.shutdown().await;
    let a = start_in(da.path()).await;
    let mut listener = a.client().listen_secure(TEST_PROTOCOL, APP).unwrap();
    let _ = b.client().connect_addr(addr_of(&a).await).await;
    assert!(
        b.client()
            .open_secure(a_id, TEST_PROTOCOL, APP)
            .await
            .is_err()
    );
    assert!(listener.accepted_now().is_none());
    assert!(!connected(&a, b_id).await);
    let list = a.client().trust_list().await.unwrap();
    assert!(
        list.iter()
            .any(|t| t.peer_id == b_id.to_string() && t.revoked)
    );

    // Allowing lifts it: B's stream gets through and A's user sees an allowed peer.
    a.client().allow(b_id, &[]).await.unwrap();
    b.client().connect_addr(addr_of(&a).await).await.unwrap();
    let mut s = b
        .client()
        .open_secure(a_id, TEST_PROTOCOL, APP)
        .await
        .unwrap();
    s.send(b"back").await.unwrap();
    let accepted = tokio::time::timeout(WAIT, listener.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(accepted.decision, TrustDecision::Allow);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn allow_rejects_unknown_protocols() {
    let da = tempfile::tempdir().unwrap();
    let a = start_in(da.path()).await;
    let peer = p2pnode_node::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let err = a
        .client()
        .allow(peer, &[APP.into(), "email".into()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown protocol"), "{err}");
    let t = a.client().allow(peer, &[APP.into()]).await.unwrap();
    assert_eq!(t.allowed_protocols, vec![APP.to_string()]);
    a.shutdown().await;
}

#[tokio::test]
async fn a_handshake_refused_by_the_rate_gate_says_so() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_in(da.path()).await;
    let b = start_in(db.path()).await;
    let mut listener = b.client().listen_secure(TEST_PROTOCOL, APP).unwrap();
    a.client().connect_addr(addr_of(&b).await).await.unwrap();
    // Handshakes one after another, faster than b's gate lets one peer start them (a
    // burst, then a few a second): one is refused before many more.
    let mut refused = None;
    for _ in 0..60 {
        match a
            .client()
            .open_secure(b.client().peer_id(), TEST_PROTOCOL, APP)
            .await
        {
            Ok(_) => {
                let _ = listener.accepted_now();
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the gate refused a handshake");
    let NodeError::Handshake { source, .. } = &e else {
        panic!("not a handshake error: {e}");
    };
    assert!(
        matches!(**source, p2pnode_secure::HandshakeError::Closed),
        "{e}"
    );
    let line = e.to_string();
    assert!(
        line.contains("closed the stream instead of answering"),
        "{line}"
    );
    assert!(line.contains("asked too often"), "{line}");
    a.shutdown().await;
    b.shutdown().await;
}

//! Issue #18, finding 5: room messages cannot be replayed. A captured message republished
//! after the receiver restarted is not shown, and a message published by someone other
//! than its signer is rejected and not forwarded by the member who sees through it.

#![cfg(feature = "service")]
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use p2pnode_chat::api::ChatEvent;
use p2pnode_chat::service::{Chat, ChatHandle, ChatService};
use p2pnode_chat::{Invite, RoomBody, RoomKey, RoomMessage, open_room_message, seal_room_message};
use p2pnode_node::event_loop::{TopicMessage, Validation};
use p2pnode_node::{Config, Multiaddr, Node, TransportKind};
use p2pnode_secure::SigningKey;
use rand::rngs::OsRng;
use tokio::sync::{broadcast, mpsc};

const WAIT: Duration = Duration::from_secs(30);

fn config() -> Config {
    Config {
        listen: vec!["/memory/0".parse().unwrap()],
        mdns: false,
        ..Config::default()
    }
}

async fn start_chat(dir: &std::path::Path) -> Node {
    Node::builder(dir, config())
        .transport(TransportKind::Memory)
        .protocol(Chat)
        .start()
        .await
        .unwrap()
}

async fn start_plain(dir: &std::path::Path) -> Node {
    Node::start_with(dir, config(), TransportKind::Memory)
        .await
        .unwrap()
}

fn chat(node: &Node) -> ChatHandle {
    node.protocol::<ChatService>().unwrap().handle().clone()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn addr_of(node: &Node) -> Multiaddr {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(a) = node.client().status().await.unwrap().listen_addrs.first() {
                return format!("{a}/p2p/{}", node.client().peer_id())
                    .parse()
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap()
}

/// A plain subscriber's judgement: everything is welcome (it only watches).
async fn accept(node: &Node, m: &TopicMessage) {
    node.client()
        .report_topic_message(m.id.clone(), Validation::Accept)
        .await
        .unwrap();
}

/// Waits for the room text `want` among `node`'s chat events; returns every text shown
/// until then.
async fn wait_text(events: &mut broadcast::Receiver<ChatEvent>, want: &str) -> Vec<String> {
    let mut shown = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            if let ChatEvent::RoomMessage(m) = events.recv().await.unwrap() {
                shown.push(m.body.clone());
                if m.body == want {
                    return;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{want:?} not shown; shown: {shown:?}"));
    shown
}

/// Waits until `member` is reported joined in `events`.
async fn wait_member(events: &mut broadcast::Receiver<ChatEvent>, member: &str) {
    tokio::time::timeout(WAIT, async {
        loop {
            if let ChatEvent::MemberJoined { member: m, .. } = events.recv().await.unwrap()
                && m == member
            {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{member} never joined"));
}

/// Reads a raw subscriber's inbox (accepting everything) until the text `want`; returns
/// the sealed bytes of every text received until then, with their bodies.
async fn wait_raw_text(
    node: &Node,
    inbox: &mut mpsc::Receiver<TopicMessage>,
    key: &RoomKey,
    want: &str,
) -> Vec<(String, Vec<u8>)> {
    let mut texts = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(m) = inbox.recv().await {
            accept(node, &m).await;
            if let Ok((msg, _)) = open_room_message(key, &m.data, now_ms())
                && let RoomBody::Text(t) = msg.body
            {
                texts.push((t.clone(), m.data.clone()));
                if t == want {
                    return;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{want:?} never reached the raw subscriber"));
    texts
}

fn seal(key: &RoomKey, signer: &SigningKey, text: &str) -> Vec<u8> {
    let msg = RoomMessage::new(
        &signer.verifying_key(),
        RoomBody::Text(text.into()),
        now_ms(),
        &mut OsRng,
    );
    seal_room_message(key, signer, &msg, &mut OsRng).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_room_message_republished_after_the_receiver_restarted_is_not_shown() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start_chat(dirs[0].path()).await;
    let mut b = start_chat(dirs[1].path()).await;
    let c = start_plain(dirs[2].path()).await;
    let a_addr = addr_of(&a).await;
    let invite = Invite::new("replay", None, now_ms(), None, &mut OsRng).unwrap();
    let key = invite.room_key();
    let code = invite.encode();
    b.client().connect_addr(a_addr.clone()).await.unwrap();
    c.client().connect_addr(a_addr.clone()).await.unwrap();
    let mut b_events = chat(&b).subscribe();
    chat(&a).room_join(&code).await.unwrap();
    chat(&b).room_join(&code).await.unwrap();
    // C captures the room's traffic, as anyone subscribed to the topic can.
    let mut inbox = c.client().join_topic(key.topic(), 256).await.unwrap();
    let a_id = a.client().peer_id().to_string();
    wait_member(&mut b_events, &a_id).await;

    chat(&a)
        .room_send(&code, "pay bob 10".into())
        .await
        .unwrap();
    wait_text(&mut b_events, "pay bob 10").await;
    let captured = wait_raw_text(&c, &mut inbox, &key, "pay bob 10")
        .await
        .pop()
        .unwrap()
        .1;

    // B restarts on the same data directory and rejoins the room by itself.
    b.shutdown().await;
    b = start_chat(dirs[1].path()).await;
    let mut b_events = chat(&b).subscribe();
    b.client().connect_addr(a_addr.clone()).await.unwrap();
    wait_member(&mut b_events, &a_id).await;

    // The captured message again, under A's own gossipsub signature (what an exact
    // replay of A's gossip message looks like), then a fresh one.
    a.client().publish(key.topic(), captured).await.unwrap();
    chat(&a).room_send(&code, "later".into()).await.unwrap();
    let shown = wait_text(&mut b_events, "later").await;
    assert!(
        !shown.iter().any(|t| t == "pay bob 10"),
        "the replay was shown after the restart: {shown:?}"
    );
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_published_by_another_than_its_signer_is_rejected_and_not_forwarded() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // Mallory (a plain node that has the invite), B (a chat member), C (a subscriber that
    // hears Mallory only through B).
    let mallory = start_plain(dirs[0].path()).await;
    let b = start_chat(dirs[1].path()).await;
    let c = start_plain(dirs[2].path()).await;
    c.client().revoke(mallory.client().peer_id()).await.unwrap();
    let b_addr = addr_of(&b).await;
    mallory.client().connect_addr(b_addr.clone()).await.unwrap();
    c.client().connect_addr(b_addr).await.unwrap();
    let invite = Invite::new("forged", None, now_ms(), None, &mut OsRng).unwrap();
    let key = invite.room_key();
    let code = invite.encode();
    let mut b_events = chat(&b).subscribe();
    chat(&b).room_join(&code).await.unwrap();
    let mut m_inbox = mallory.client().join_topic(key.topic(), 256).await.unwrap();
    let mut c_inbox = c.client().join_topic(key.topic(), 256).await.unwrap();
    let m_key = p2pnode_node::peer::signing_key_of(
        &p2pnode_node::identity::load_or_create(dirs[0].path()).unwrap(),
    )
    .unwrap();
    let alice = SigningKey::generate(&mut OsRng);

    // Mallory speaks as herself until B and C hear her (the mesh is up).
    let m_id = mallory.client().peer_id().to_string();
    let mut hello = 0;
    tokio::time::timeout(WAIT, async {
        loop {
            hello += 1;
            let text = format!("hello {hello}");
            mallory
                .client()
                .publish(key.topic(), seal(&key, &m_key, &text))
                .await
                .unwrap();
            let heard = tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    let m = c_inbox.recv().await.unwrap();
                    accept(&c, &m).await;
                    if open_room_message(&key, &m.data, now_ms())
                        .is_ok_and(|(msg, _)| msg.body == RoomBody::Text(text.clone()))
                    {
                        return;
                    }
                }
            })
            .await;
            if heard.is_ok() {
                return;
            }
        }
    })
    .await
    .expect("the mesh never formed");
    wait_member(&mut b_events, &m_id).await;
    while let Ok(m) = m_inbox.try_recv() {
        accept(&mallory, &m).await;
    }

    // A message signed by Alice, published by Mallory; then one of Mallory's own.
    mallory
        .client()
        .publish(key.topic(), seal(&key, &alice, "forged"))
        .await
        .unwrap();
    mallory
        .client()
        .publish(key.topic(), seal(&key, &m_key, "valid"))
        .await
        .unwrap();
    let at_c: Vec<String> = wait_raw_text(&c, &mut c_inbox, &key, "valid")
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert!(
        !at_c.iter().any(|t| t == "forged"),
        "B forwarded the forged message: {at_c:?}"
    );
    let at_b = wait_text(&mut b_events, "valid").await;
    assert!(
        !at_b.iter().any(|t| t == "forged"),
        "B showed the forged message: {at_b:?}"
    );
    for n in [mallory, b, c] {
        n.shutdown().await;
    }
}

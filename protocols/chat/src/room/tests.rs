use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::Signer;

use super::seal::{NONCE_LEN, SignedWire};
use super::*;
use crate::id::MessageId;
use crate::wire::{MAX_BODY_LEN, to_cbor};
use rand::rngs::OsRng;
use std::time::Duration;

const NOW: u64 = 1_700_000_000_000;

fn invite(ttl: Option<u64>) -> Invite {
    Invite::new("room", ttl.map(Duration::from_secs), NOW, None, &mut OsRng).unwrap()
}

#[test]
fn seal_open_round_trip_and_sender() {
    let inv = invite(None);
    let key = inv.room_key();
    let alice = SigningKey::generate(&mut OsRng);
    let msg = RoomMessage::new(
        &alice.verifying_key(),
        RoomBody::Text("hi all".into()),
        NOW,
        &mut OsRng,
    );
    let sealed = seal_room_message(&key, &alice, &msg, &mut OsRng).unwrap();
    let (opened, sender) = open_room_message(&key, &sealed, NOW).unwrap();
    assert_eq!(opened, msg);
    assert_eq!(sender, alice.verifying_key());
}

#[test]
fn other_room_tamper_and_forgery_are_refused() {
    let key = invite(None).room_key();
    let other = invite(None).room_key();
    let alice = SigningKey::generate(&mut OsRng);
    let mallory = SigningKey::generate(&mut OsRng);
    let msg = RoomMessage::new(
        &alice.verifying_key(),
        RoomBody::Text("x".into()),
        NOW,
        &mut OsRng,
    );
    let sealed = seal_room_message(&key, &alice, &msg, &mut OsRng).unwrap();
    assert_eq!(
        open_room_message(&other, &sealed, NOW),
        Err(RoomError::Decrypt)
    );
    for i in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 1;
        assert!(open_room_message(&key, &bad, NOW).is_err());
    }
    // Mallory cannot seal in Alice's name...
    assert_eq!(
        seal_room_message(&key, &mallory, &msg, &mut OsRng),
        Err(RoomError::SenderMismatch)
    );
    // ...and a hand-made envelope with her signature on Alice's message fails.
    let encoded = to_cbor(&msg);
    let sig = mallory.sign(&key.signing_input(&encoded));
    let plaintext = to_cbor(&SignedWire(encoded, sig.to_bytes()));
    let nonce = [9u8; NONCE_LEN];
    let ct = ChaCha20Poly1305::new(Key::from_slice(key.key.as_ref()))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plaintext,
                aad: &key.aad(),
            },
        )
        .unwrap();
    let forged = [&[ROOM_WIRE_VERSION][..], &nonce, &ct].concat();
    assert_eq!(
        open_room_message(&key, &forged, NOW),
        Err(RoomError::BadSignature)
    );
}

#[test]
fn expired_rooms_refuse_everything() {
    let inv = invite(Some(60));
    let key = inv.room_key();
    let alice = SigningKey::generate(&mut OsRng);
    let (mut room, _) =
        Room::join(&inv, alice.clone(), RoomConfig::default(), NOW, &mut OsRng).unwrap();
    let (_, sealed) = room.send_text("before", NOW, &mut OsRng).unwrap();
    let later = NOW + 60_000;
    assert!(matches!(
        open_room_message(&key, &sealed, later),
        Err(RoomError::Expired { .. })
    ));
    assert!(matches!(
        room.send_text("after", later, &mut OsRng),
        Err(RoomError::Expired { .. })
    ));
    assert_eq!(room.poll_timeout(), Some(later.min(NOW + 30_000)));
    assert_eq!(
        room.handle_timeout(later, &mut OsRng),
        [RoomOutput::Event(RoomEvent::Expired)]
    );
    assert!(room.handle_timeout(later + 1, &mut OsRng).is_empty());
    assert_eq!(room.poll_timeout(), None);
    assert!(matches!(
        Room::join(&inv, alice, RoomConfig::default(), later, &mut OsRng),
        Err(RoomError::Expired { .. })
    ));
}

#[test]
fn oversize_body_is_refused_with_the_limit() {
    let key = invite(None).room_key();
    let alice = SigningKey::generate(&mut OsRng);
    let msg = RoomMessage::new(
        &alice.verifying_key(),
        RoomBody::Text("x".repeat(MAX_BODY_LEN + 1)),
        NOW,
        &mut OsRng,
    );
    let err = seal_room_message(&key, &alice, &msg, &mut OsRng).unwrap_err();
    assert!(err.to_string().contains("16384"), "{err}");
    let max = RoomMessage {
        body: RoomBody::Text("x".repeat(MAX_BODY_LEN)),
        ..msg
    };
    let sealed = seal_room_message(&key, &alice, &max, &mut OsRng).unwrap();
    assert!(open_room_message(&key, &sealed, NOW).is_ok());
    assert!(matches!(
        open_room_message(&key, &vec![1u8; MAX_ROOM_MESSAGE_LEN + 1], NOW),
        Err(RoomError::TooLarge { .. })
    ));
}

#[test]
fn seen_set_is_bounded_and_forgets_only_by_time() {
    let mut seen = SeenSet::new(3);
    let ids: Vec<_> = (0..5u8).map(|i| MessageId([i; 16])).collect();
    assert_eq!(seen.insert(ids[0], 10), Admit::Fresh);
    assert_eq!(seen.insert(ids[0], 10), Admit::Duplicate);
    assert_eq!(seen.insert(ids[1], 20), Admit::Fresh);
    assert_eq!(seen.insert(ids[2], 30), Admit::Fresh);
    // Full of ids still needed: the new one is refused, none is forgotten.
    assert_eq!(seen.insert(ids[3], 40), Admit::Full);
    assert_eq!(seen.len(), 3);
    assert!(seen.contains(&ids[0]));
    assert_eq!(seen.forget_before(20), 1);
    assert!(!seen.contains(&ids[0]) && seen.contains(&ids[1]));
    assert_eq!(seen.insert(ids[3], 40), Admit::Fresh);
}

/// Finding 5 (a): the seen set used to forget the oldest ids once 16 384 newer ones
/// arrived, while a message stays acceptable for an hour.
#[test]
fn a_captured_message_replayed_after_a_flood_of_other_ids_is_refused() {
    let inv = invite(None);
    let config = RoomConfig::default();
    let (mut a, _) = Room::join(
        &inv,
        SigningKey::generate(&mut OsRng),
        config,
        NOW,
        &mut OsRng,
    )
    .unwrap();
    let (mut b, _) = Room::join(
        &inv,
        SigningKey::generate(&mut OsRng),
        config,
        NOW,
        &mut OsRng,
    )
    .unwrap();
    let (sent, captured) = b.send_text("pay bob 10", NOW + 1, &mut OsRng).unwrap();
    let first = a.handle_message(&captured, NOW + 1).unwrap();
    assert!(first.contains(&RoomEvent::Message(sent)));
    // 20 000 presence messages of another member, then 20 000 other texts (a chatty
    // or hostile member), all inside the hour: the replay is refused after each.
    let key = inv.room_key();
    let f_key = SigningKey::generate(&mut OsRng);
    let mut now = NOW + 2;
    for _ in 0..20_000 {
        now += 1;
        let msg = RoomMessage::new(&f_key.verifying_key(), RoomBody::Presence, now, &mut OsRng);
        let sealed = seal_room_message(&key, &f_key, &msg, &mut OsRng).unwrap();
        let _ = a.handle_message(&sealed, now);
    }
    let delivered =
        |events: &Vec<RoomEvent>| events.iter().any(|e| matches!(e, RoomEvent::Message(_)));
    let replayed = a.handle_message(&captured, now);
    assert!(
        !matches!(&replayed, Ok(events) if delivered(events)),
        "the replay was delivered again after the presence flood: {replayed:?}"
    );
    for i in 0..20_000 {
        now += 1;
        let (_, text) = b.send_text(format!("{i}"), now, &mut OsRng).unwrap();
        let _ = a.handle_message(&text, now);
    }
    let later = NOW + 30 * 60 * 1000;
    let replayed = a.handle_message(&captured, later);
    let delivered =
        |events: &Vec<RoomEvent>| events.iter().any(|e| matches!(e, RoomEvent::Message(_)));
    assert!(
        !matches!(&replayed, Ok(events) if delivered(events)),
        "the replay was delivered again: {replayed:?}"
    );
    // An hour later it is refused as too old; the ids that kept it out are forgotten.
    assert!(matches!(
        a.handle_message(&captured, NOW + 61 * 60 * 1000),
        Err(RoomError::Stale { .. })
    ));
}

/// Finding 5 (d): a member's old Leave, replayed after they came back, used to remove
/// them once its id had left the seen set (flooded out, or a restart).
#[test]
fn an_old_leave_replayed_after_the_member_rejoined_does_not_remove_them() {
    let inv = invite(None);
    let config = RoomConfig::default();
    let a_key = SigningKey::generate(&mut OsRng);
    let m_key = SigningKey::generate(&mut OsRng);
    let f_key = SigningKey::generate(&mut OsRng);
    let km = m_key.verifying_key().to_bytes();
    let (mut a, _) = Room::join(&inv, a_key.clone(), config, NOW, &mut OsRng).unwrap();
    let (mut m, hello) = Room::join(&inv, m_key.clone(), config, NOW, &mut OsRng).unwrap();
    assert_eq!(
        a.handle_message(&hello, NOW).unwrap(),
        [RoomEvent::Joined(km)]
    );
    let bye = m.leave(NOW + 10, &mut OsRng).unwrap();
    assert_eq!(
        a.handle_message(&bye, NOW + 10).unwrap(),
        [RoomEvent::Left(km)]
    );
    let (_, back) = Room::join(&inv, m_key.clone(), config, NOW + 20, &mut OsRng).unwrap();
    assert_eq!(
        a.handle_message(&back, NOW + 20).unwrap(),
        [RoomEvent::Joined(km)]
    );
    // 20 000 presence messages of another member.
    let key = inv.room_key();
    let mut now = NOW + 30;
    for _ in 0..20_000 {
        now += 1;
        let msg = RoomMessage::new(&f_key.verifying_key(), RoomBody::Presence, now, &mut OsRng);
        let sealed = seal_room_message(&key, &f_key, &msg, &mut OsRng).unwrap();
        let _ = a.handle_message(&sealed, now);
    }
    let replayed = a.handle_message(&bye, now + 1);
    assert!(
        !matches!(&replayed, Ok(events) if events.contains(&RoomEvent::Left(km))),
        "{replayed:?}"
    );
    assert!(a.members().get(&km).is_some(), "the member was removed");

    // After a restart: the member's presence, then the old Leave.
    let restart = NOW + 60_000;
    let (mut a2, _) = Room::join(&inv, a_key, config, restart, &mut OsRng).unwrap();
    let msg = RoomMessage::new(
        &m_key.verifying_key(),
        RoomBody::Presence,
        restart,
        &mut OsRng,
    );
    let presence = seal_room_message(&key, &m_key, &msg, &mut OsRng).unwrap();
    assert_eq!(
        a2.handle_message(&presence, restart).unwrap(),
        [RoomEvent::Joined(km)]
    );
    let replayed = a2.handle_message(&bye, restart + 1);
    assert!(
        !matches!(&replayed, Ok(events) if events.contains(&RoomEvent::Left(km))),
        "{replayed:?}"
    );
    assert!(
        a2.members().get(&km).is_some(),
        "the member was removed after a restart"
    );
}

#[test]
fn presence_is_idempotent_and_messages_from_before_the_join_are_refused() {
    let inv = invite(None);
    let config = RoomConfig::default().with_join_grace_ms(0);
    let key = inv.room_key();
    let m_key = SigningKey::generate(&mut OsRng);
    let km = m_key.verifying_key().to_bytes();
    let seal = |body: RoomBody, at: u64| {
        let msg = RoomMessage::new(&m_key.verifying_key(), body, at, &mut OsRng);
        seal_room_message(&key, &m_key, &msg, &mut OsRng).unwrap()
    };
    let before = seal(RoomBody::Text("before".into()), NOW - 1);
    let p1 = seal(RoomBody::Presence, NOW + 1);
    let p2 = seal(RoomBody::Presence, NOW + 2);
    let (mut a, _) = Room::join(
        &inv,
        SigningKey::generate(&mut OsRng),
        config,
        NOW,
        &mut OsRng,
    )
    .unwrap();
    assert!(matches!(
        a.handle_message(&before, NOW + 5),
        Err(RoomError::Stale { .. })
    ));
    assert_eq!(
        a.handle_message(&p2, NOW + 5).unwrap(),
        [RoomEvent::Joined(km)]
    );
    // Older or equal presence changes nothing and never enters the seen set.
    assert!(a.handle_message(&p1, NOW + 5).unwrap().is_empty());
    assert!(a.handle_message(&p2, NOW + 5).unwrap().is_empty());
    assert!(a.guard().seen().is_empty());
    // Resumed after a restart with the stored join time: still refused.
    let (mut b, _) = Room::resume(
        &inv,
        SigningKey::generate(&mut OsRng),
        config,
        NOW,
        NOW + 100,
        &mut OsRng,
    )
    .unwrap();
    assert_eq!(b.guard().joined_at(), NOW);
    assert!(matches!(
        b.handle_message(&before, NOW + 100),
        Err(RoomError::Stale { .. })
    ));
}

#[test]
fn a_message_published_by_another_than_its_signer_is_refused() {
    let inv = invite(None);
    let alice = SigningKey::generate(&mut OsRng);
    let mallory = SigningKey::generate(&mut OsRng).verifying_key().to_bytes();
    let ka = alice.verifying_key().to_bytes();
    let (mut a, _) = Room::join(&inv, alice, RoomConfig::default(), NOW, &mut OsRng).unwrap();
    let (_, sealed) = a.send_text("hi", NOW, &mut OsRng).unwrap();
    let (mut b, _) = Room::join(
        &inv,
        SigningKey::generate(&mut OsRng),
        RoomConfig::default(),
        NOW,
        &mut OsRng,
    )
    .unwrap();
    assert_eq!(
        b.handle_message_from(&sealed, Some(&mallory), NOW),
        Err(RoomError::SenderMismatch)
    );
    assert!(
        b.handle_message_from(&sealed, Some(&ka), NOW)
            .unwrap()
            .len()
            == 2
    );
}

#[test]
fn a_full_seen_set_refuses_new_texts_until_old_ones_age_out() {
    let inv = invite(None);
    let config = RoomConfig::default().with_seen_capacity(2);
    let (mut a, _) = Room::join(
        &inv,
        SigningKey::generate(&mut OsRng),
        config,
        NOW,
        &mut OsRng,
    )
    .unwrap();
    let (mut b, _) = Room::join(
        &inv,
        SigningKey::generate(&mut OsRng),
        config,
        NOW,
        &mut OsRng,
    )
    .unwrap();
    let texts: Vec<_> = (0..4)
        .map(|i| b.send_text(format!("{i}"), NOW + i, &mut OsRng).unwrap().1)
        .collect();
    let delivered = |r: Vec<RoomEvent>| r.iter().any(|e| matches!(e, RoomEvent::Message(_)));
    assert!(delivered(a.handle_message(&texts[0], NOW + 5).unwrap()));
    assert!(delivered(a.handle_message(&texts[1], NOW + 5).unwrap()));
    assert!(
        !delivered(a.handle_message(&texts[2], NOW + 5).unwrap()),
        "full"
    );
    // Once the first two are older than the window, there is room again.
    let later = NOW + 3_600_000 + 2;
    let (_, fresh) = b.send_text("fresh", later, &mut OsRng).unwrap();
    assert!(delivered(a.handle_message(&fresh, later).unwrap()));
}

#[test]
fn members_join_leave_time_out_and_are_bounded() {
    let inv = invite(None);
    let config = RoomConfig::default()
        .with_presence_interval_ms(1_000)
        .with_member_timeout_ms(3_500);
    let keys: Vec<_> = (0..3).map(|_| SigningKey::generate(&mut OsRng)).collect();
    let (mut a, _) = Room::join(&inv, keys[0].clone(), config, NOW, &mut OsRng).unwrap();
    let (mut b, hello_b) = Room::join(&inv, keys[1].clone(), config, NOW, &mut OsRng).unwrap();
    let (mut c, hello_c) = Room::join(&inv, keys[2].clone(), config, NOW, &mut OsRng).unwrap();
    let kb = keys[1].verifying_key().to_bytes();
    let kc = keys[2].verifying_key().to_bytes();
    assert_eq!(
        a.handle_message(&hello_b, NOW).unwrap(),
        [RoomEvent::Joined(kb)]
    );
    assert_eq!(
        a.handle_message(&hello_c, NOW).unwrap(),
        [RoomEvent::Joined(kc)]
    );
    assert!(
        a.handle_message(&hello_c, NOW).unwrap().is_empty(),
        "duplicate"
    );
    assert_eq!(a.members().len(), 3);

    let (sent, text) = b.send_text("hello", NOW + 10, &mut OsRng).unwrap();
    assert_eq!(
        a.handle_message(&text, NOW + 10).unwrap(),
        [RoomEvent::Message(sent)]
    );
    let bye = c.leave(NOW + 20, &mut OsRng).unwrap();
    assert_eq!(
        a.handle_message(&bye, NOW + 20).unwrap(),
        [RoomEvent::Left(kc)]
    );

    // b keeps publishing presence; then goes silent and times out.
    let mut now = NOW;
    let mut left = Vec::new();
    while now < NOW + 10_000 {
        now = a.poll_timeout().unwrap();
        if now <= NOW + 3_000 {
            for out in b.handle_timeout(now, &mut OsRng) {
                if let RoomOutput::Publish(p) = out {
                    a.handle_message(&p, now).unwrap();
                }
            }
        }
        for out in a.handle_timeout(now, &mut OsRng) {
            if let RoomOutput::Event(RoomEvent::Left(k)) = out {
                left.push((k, now));
            }
        }
    }
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, kb);
    assert!(left[0].1 >= NOW + 3_000 + 3_500, "{:?}", left[0].1 - NOW);
    assert_eq!(a.members().len(), 1, "only a itself");

    // A full list takes no newcomer: nobody who is listed is pushed out.
    let mut members = Members::new(2);
    assert!(members.observe([1; 32], 1));
    assert!(members.observe([2; 32], 2));
    assert!(!members.observe([3; 32], 3));
    assert!(members.get(&[1; 32]).is_some() && members.get(&[3; 32]).is_none());
    assert_eq!(members.len(), 2);
    assert_eq!(members.expire(10, 5, &[2; 32]), [[1; 32]]);
    assert!(members.observe([3; 32], 10));
}

#[test]
fn stale_and_future_messages_are_refused() {
    let inv = invite(None);
    let alice = SigningKey::generate(&mut OsRng);
    let (mut a, _) = Room::join(
        &inv,
        SigningKey::generate(&mut OsRng),
        RoomConfig::default(),
        NOW,
        &mut OsRng,
    )
    .unwrap();
    let (mut b, _) = Room::join(&inv, alice, RoomConfig::default(), NOW, &mut OsRng).unwrap();
    let (_, old) = b.send_text("old", NOW, &mut OsRng).unwrap();
    assert!(matches!(
        a.handle_message(&old, NOW + 2 * 3_600_000),
        Err(RoomError::Stale { .. })
    ));
    let (_, future) = b.send_text("future", NOW + 3_600_000, &mut OsRng).unwrap();
    assert!(matches!(
        a.handle_message(&future, NOW),
        Err(RoomError::Stale { .. })
    ));
}

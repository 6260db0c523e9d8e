//! Five members in one room over a simulated gossip layer that delivers every publication
//! to everyone, some twice and in shuffled order.
#![allow(clippy::unwrap_used)]

use p2pnode_chat::{Invite, Room, RoomConfig, RoomEvent, RoomOutput};
use p2pnode_secure::SigningKey;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const NOW: u64 = 1_700_000_000_000;

#[test]
fn five_members_get_every_message_once_and_see_each_other() {
    let mut rng = StdRng::seed_from_u64(5);
    let creator = Invite::new(
        "team",
        Some(std::time::Duration::from_secs(600)),
        NOW,
        Some(b"peer-id".to_vec()),
        &mut rng,
    )
    .unwrap();
    let code = creator.encode();
    let config = RoomConfig::default().with_presence_interval_ms(1_000);

    let mut rooms = Vec::new();
    // (publisher, bytes) not yet delivered
    let mut gossip: Vec<(usize, Vec<u8>)> = Vec::new();
    for i in 0..5 {
        let invite = Invite::decode(&code, NOW).unwrap();
        let (room, presence) = Room::join(
            &invite,
            SigningKey::generate(&mut rng),
            config,
            NOW,
            &mut rng,
        )
        .unwrap();
        assert_eq!(room.topic(), creator.topic());
        rooms.push(room);
        gossip.push((i, presence));
    }
    let mut texts = vec![Vec::new(); 5];
    let mut sent = 0;
    let mut now = NOW;
    for round in 0..50 {
        now += 100;
        for (i, room) in rooms.iter_mut().enumerate() {
            if rng.gen_bool(0.5) {
                let (_, bytes) = room
                    .send_text(format!("{i} says {round}"), now, &mut rng)
                    .unwrap();
                gossip.push((i, bytes));
                sent += 1;
            }
            for out in room.handle_timeout(now, &mut rng) {
                if let RoomOutput::Publish(bytes) = out {
                    gossip.push((i, bytes));
                }
            }
        }
        // Deliver to everyone but the publisher, duplicating some, in random order.
        let mut deliveries = Vec::new();
        for (from, bytes) in gossip.drain(..) {
            for to in (0..5).filter(|&to| to != from) {
                deliveries.push((to, bytes.clone()));
                if rng.gen_bool(0.2) {
                    deliveries.push((to, bytes.clone()));
                }
            }
        }
        deliveries.shuffle(&mut rng);
        for (to, bytes) in deliveries {
            for event in rooms[to].handle_message(&bytes, now).unwrap() {
                if let RoomEvent::Message(m) = event {
                    texts[to].push(m.id);
                }
            }
        }
    }
    assert!(sent > 50);
    for (i, room) in rooms.iter().enumerate() {
        assert_eq!(room.members().len(), 5, "member {i} sees everyone");
        let mut ids = texts[i].clone();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), texts[i].len(), "no duplicates at {i}");
    }
    let total: usize = texts.iter().map(Vec::len).sum();
    assert_eq!(total, sent * 4, "every text reached the four other members");
}

#[test]
fn expired_invite_cannot_be_joined() {
    let mut rng = StdRng::seed_from_u64(6);
    let invite = Invite::new(
        "brief",
        Some(std::time::Duration::from_secs(60)),
        NOW,
        None,
        &mut rng,
    )
    .unwrap();
    let code = invite.encode();
    let err = Invite::decode(&code, NOW + 61_000).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

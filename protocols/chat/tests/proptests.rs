//! Property tests: every wire type and invite round-trips, and no input (random bytes,
//! mutated valid encodings, arbitrary frame sequences) panics a decoder or state machine.
#![allow(clippy::unwrap_used)]

use p2pnode_chat::{
    Config, Conversation, Cursor, Frame, Hello, Invite, MAX_BODY_LEN, Message, MessageId, Output,
    Receipt, Room, RoomBody, RoomConfig, RoomMessage, RoomSecret, Snapshot, open_room_message,
    seal_room_message,
};
use p2pnode_secure::SigningKey;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

const NOW: u64 = 1_700_000_000_000;

fn message_id() -> impl Strategy<Value = MessageId> {
    any::<[u8; 16]>().prop_map(MessageId)
}

fn body() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => any::<String>(),
        1 => Just("é".repeat(MAX_BODY_LEN / 2)),
        1 => (0..MAX_BODY_LEN).prop_map(|n| "x".repeat(n)),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (
        message_id(),
        1..=u64::MAX,
        any::<u64>(),
        body(),
        any::<Option<u64>>(),
    )
        .prop_map(|(id, seq, sent_at, body, skip_to)| Message {
            id,
            seq,
            sent_at,
            body,
            skip_to,
        })
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<u64>(),
        any::<Option<u64>>(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(epoch, your_epoch, received_up_to, acked_up_to, want_reply)| Hello {
                epoch,
                your_epoch,
                received_up_to,
                acked_up_to,
                want_reply,
            },
        )
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        hello().prop_map(Frame::Hello),
        message().prop_map(Frame::Message),
        (any::<u64>(), any::<u64>())
            .prop_map(|(epoch, up_to)| Frame::Receipt(Receipt { epoch, up_to })),
    ]
}

fn invite() -> impl Strategy<Value = Invite> {
    (
        "[^\\p{Cc}]{1,16}".prop_filter("valid name", |n| !n.trim().is_empty() && n.len() <= 64),
        any::<[u8; 32]>(),
        any::<Option<u64>>(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..=64)),
    )
        .prop_map(|(name, secret, expires_at, creator)| {
            Invite::from_parts(name, RoomSecret(secret), expires_at, creator).unwrap()
        })
}

fn room_body() -> impl Strategy<Value = RoomBody> {
    prop_oneof![
        body().prop_map(RoomBody::Text),
        Just(RoomBody::Presence),
        Just(RoomBody::Leave),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn frames_round_trip(frame in frame()) {
        prop_assert_eq!(Frame::decode(&frame.encode()).unwrap(), frame);
    }

    #[test]
    fn snapshots_round_trip(
        epoch in any::<u64>(),
        acked in 0..u64::MAX / 2,
        delivered in any::<u64>(),
        peer_epoch in any::<Option<u64>>(),
        bodies in proptest::collection::vec(any::<String>(), 0..20),
        ids in proptest::collection::vec(message_id(), 20),
    ) {
        let outbox: Vec<Message> = bodies
            .into_iter()
            .zip(ids)
            .enumerate()
            .map(|(i, (body, id))| Message { id, seq: acked + 1 + i as u64, sent_at: 5, body, skip_to: None })
            .collect();
        let snapshot = Snapshot {
            cursor: Cursor {
                epoch,
                next_seq: acked + 1 + outbox.len() as u64,
                reserved_up_to: acked + outbox.len() as u64,
                acked_up_to: acked,
                delivered_up_to: delivered,
                peer_epoch,
            },
            outbox,
        };
        let decoded = Snapshot::decode(&snapshot.encode()).unwrap();
        prop_assert_eq!(&decoded, &snapshot);
        let conv = Conversation::restore(Config::default(), decoded).unwrap();
        prop_assert_eq!(conv.snapshot(), snapshot);
    }

    #[test]
    fn invites_round_trip(invite in invite()) {
        let code = invite.encode();
        prop_assert!(code.len() <= 512);
        prop_assert_eq!(Invite::parse(&code).unwrap(), invite.clone());
        prop_assert_eq!(Invite::parse(&code.to_uppercase()).unwrap(), invite);
    }

    #[test]
    fn room_messages_round_trip(body in room_body(), seed in any::<u64>(), inv in invite()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let key = inv.room_key();
        let signer = SigningKey::generate(&mut rng);
        let msg = RoomMessage::new(&signer.verifying_key(), body, 0, &mut rng);
        let sealed = seal_room_message(&key, &signer, &msg, &mut rng).unwrap();
        let (opened, sender) = open_room_message(&key, &sealed, 0).unwrap();
        prop_assert_eq!(opened, msg);
        prop_assert_eq!(sender, signer.verifying_key());
    }

    #[test]
    fn random_bytes_never_panic_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Frame::decode(&bytes);
        let _ = Snapshot::decode(&bytes);
        let _ = Invite::parse(&String::from_utf8_lossy(&bytes));
        let key = Invite::from_parts("r", RoomSecret([1; 32]), None, None).unwrap().room_key();
        let _ = open_room_message(&key, &bytes, NOW);
    }

    #[test]
    fn random_text_never_panics_invite_parsing(s in any::<String>(), tail in "[0-9a-zA-Z -]{0,300}") {
        let _ = Invite::parse(&s);
        let _ = Invite::decode(&format!("p2pr1-{tail}"), NOW);
        let _ = Invite::parse(&format!("p2pr1-{s}"));
    }

    #[test]
    fn mutated_encodings_never_panic(
        frame in frame(),
        inv in invite(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut bytes = frame.encode();
        for (i, x) in &flips {
            let n = bytes.len();
            bytes[i % n] ^= x;
        }
        let _ = Frame::decode(&bytes);
        let _ = Frame::decode(&bytes[..cut % (bytes.len() + 1)]);

        let mut code = inv.encode().into_bytes();
        for (i, x) in &flips {
            let n = code.len();
            code[i % n] = b"0123456789abcdefghjkmnpqrstvwxyz-!"[usize::from(*x) % 34];
        }
        let code = String::from_utf8(code).unwrap();
        let _ = Invite::parse(&code);
        let _ = Invite::parse(&code[..cut % (code.len() + 1)]);
    }

    #[test]
    fn arbitrary_frame_sequences_never_panic_and_deliver_in_order(
        frames in proptest::collection::vec(frame(), 0..64),
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut conv = Conversation::new(Config::default().with_max_reorder(16), &mut rng);
        conv.send("queued", NOW, &mut rng).unwrap();
        conv.connected(NOW);
        let mut now = NOW;
        for frame in frames {
            now += 1;
            let before = conv.cursor();
            for output in conv.handle_frame(frame, now) {
                if let Output::Deliver(m) = output {
                    prop_assert!(m.seq > before.delivered_up_to || conv.cursor().peer_epoch != before.peer_epoch);
                }
            }
            let after = conv.cursor();
            prop_assert!(after.acked_up_to >= before.acked_up_to);
            prop_assert!(after.acked_up_to < after.next_seq);
            prop_assert_eq!(conv.outbox().len() as u64, after.next_seq - 1 - after.acked_up_to);
            let _ = conv.handle_timeout(now + 20_000);
        }
    }

    #[test]
    fn random_bytes_never_panic_a_room(bytes in proptest::collection::vec(any::<u8>(), 0..512), seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let inv = Invite::from_parts("r", RoomSecret([2; 32]), None, None).unwrap();
        let (mut room, presence) =
            Room::join(&inv, SigningKey::generate(&mut rng), RoomConfig::default(), NOW, &mut rng).unwrap();
        prop_assert!(room.handle_message(&bytes, NOW).is_err());
        // A member's own presence comes back as a duplicate, not an event.
        prop_assert!(room.handle_message(&presence, NOW).unwrap().is_empty());
    }
}

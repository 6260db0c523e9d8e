//! Handshake: agreement, tampering, key substitution, missing ML-KEM shares, replay, MITM.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use crate::common::{LABEL, Peers, handshake, key, rng};
use p2pnode_secure::wire::{MLKEM_CT_LEN, MLKEM_EK_LEN, MSG1_LEN, MSG2_LEN, MSG3_LEN};
use p2pnode_secure::{
    Cipher, DecodeError, HandshakeConfig, HandshakeError, Initiator, Responder, Session,
    SessionConfig,
};

#[test]
fn both_sides_derive_same_keys_and_sas() {
    let peers = Peers::default();
    let (mut a, mut b, t) = handshake(&peers, SessionConfig::default(), 1, 2);
    assert_eq!(
        (t.msg1.len(), t.msg2.len(), t.msg3.len()),
        (MSG1_LEN, MSG2_LEN, MSG3_LEN)
    );
    assert_eq!(a.transcript_hash(), b.transcript_hash());
    assert_eq!(a.sas(), b.sas());
    assert_eq!(a.sas().digits(), b.sas().digits());
    assert_eq!(a.sas().words(), b.sas().words());
    assert_eq!(a.remote_key(), &peers.bob.verifying_key());
    assert_eq!(b.remote_key(), &peers.alice.verifying_key());

    // Same keys in both directions: frames open on the other side.
    frames_pass_both_ways(&mut a, &mut b);
}

fn frames_pass_both_ways(a: &mut Session, b: &mut Session) {
    let now = Instant::now();
    let mut frame = Vec::new();
    a.seal(b"ping", now, &mut frame).unwrap();
    assert_eq!(b.open(&mut frame).unwrap(), b"ping");
    frame.clear();
    b.seal(b"pong", now, &mut frame).unwrap();
    assert_eq!(a.open(&mut frame).unwrap(), b"pong");
}

#[test]
fn runs_differ() {
    let peers = Peers::default();
    let (a1, _, t1) = handshake(&peers, SessionConfig::default(), 1, 2);
    let (a2, _, t2) = handshake(&peers, SessionConfig::default(), 3, 4);
    assert_ne!(t1.msg1, t2.msg1);
    assert_ne!(a1.transcript_hash(), a2.transcript_hash());
    assert_ne!(a1.sas(), a2.sas());
}

/// AES-256-GCM when both ends take it, ChaCha20-Poly1305 when either does not; frames pass
/// both ways in each case.
#[test]
fn the_cipher_is_aes_only_when_both_ends_take_it() {
    let peers = Peers::default();
    let cases = [
        (true, true, Cipher::Aes256Gcm),
        (true, false, Cipher::ChaCha20Poly1305),
        (false, true, Cipher::ChaCha20Poly1305),
        (false, false, Cipher::ChaCha20Poly1305),
    ];
    for (alice_aes, bob_aes, expected) in cases {
        let alice = peers
            .alice_config(SessionConfig::default())
            .with_aes(alice_aes);
        let bob = peers.bob_config(SessionConfig::default()).with_aes(bob_aes);
        let (initiator, msg1) = Initiator::start(alice, &mut rng(1));
        let (responder, msg2) = Responder::accept(bob, &msg1, &mut rng(2)).unwrap();
        let (mut a, msg3) = initiator.finish(&msg2).unwrap();
        let mut b = responder.finish(&msg3).unwrap();
        assert_eq!((a.cipher(), b.cipher()), (expected, expected));
        frames_pass_both_ways(&mut a, &mut b);
    }
}

/// A responder naming a cipher the initiator did not offer is refused before anything
/// else is checked; a msg1 offering no cipher we know is refused by the responder.
#[test]
fn a_cipher_not_offered_is_refused() {
    let peers = Peers::default();
    let aes = peers.alice_config(SessionConfig::default()).with_aes(true);
    let (_, msg1) = Initiator::start(aes, &mut rng(1));
    let bob = peers.bob_config(SessionConfig::default()).with_aes(true);
    let (_, msg2) = Responder::accept(bob, &msg1, &mut rng(2)).unwrap();
    let chacha_only = peers.alice_config(SessionConfig::default()).with_aes(false);
    let (initiator, _) = Initiator::start(chacha_only, &mut rng(1));
    let err = initiator.finish(&msg2).err().unwrap();
    assert!(matches!(err, HandshakeError::Cipher(0b10)), "{err:?}");

    let mut none = msg1.clone();
    none[2] = 0b1000_0100; // unknown bits only
    let bob = peers.bob_config(SessionConfig::default());
    let err = Responder::accept(bob, &none, &mut rng(2)).err().unwrap();
    assert!(
        matches!(err, HandshakeError::Cipher(0b1000_0100)),
        "{err:?}"
    );
}

fn flip(msg: &[u8], bit: usize) -> Vec<u8> {
    let mut m = msg.to_vec();
    m[bit / 8] ^= 1 << (bit % 8);
    m
}

/// Flipping any single bit of msg1 makes the handshake fail: either the responder refuses
/// msg1, or its msg2 signs a transcript the initiator does not have.
#[test]
fn every_bit_flip_of_msg1_fails() {
    let peers = Peers::default();
    let (_, _, t) = handshake(&peers, SessionConfig::default(), 1, 2);
    for bit in 0..t.msg1.len() * 8 {
        let tampered = flip(&t.msg1, bit);
        let Ok((_, msg2)) = Responder::accept(
            peers.bob_config(SessionConfig::default()),
            &tampered,
            &mut rng(2),
        ) else {
            continue;
        };
        // Recreate the initiator state that produced the original msg1 (same seed).
        let (initiator, msg1) =
            Initiator::start(peers.alice_config(SessionConfig::default()), &mut rng(1));
        assert_eq!(msg1, t.msg1);
        assert!(
            initiator.finish(&msg2).is_err(),
            "msg1 bit {bit} flip went unnoticed"
        );
    }
}

#[test]
fn every_bit_flip_of_msg2_fails() {
    let peers = Peers::default();
    let (_, _, t) = handshake(&peers, SessionConfig::default(), 1, 2);
    for bit in 0..t.msg2.len() * 8 {
        let (initiator, _) =
            Initiator::start(peers.alice_config(SessionConfig::default()), &mut rng(1));
        assert!(
            initiator.finish(&flip(&t.msg2, bit)).is_err(),
            "msg2 bit {bit} flip went unnoticed"
        );
    }
}

#[test]
fn every_bit_flip_of_msg3_fails() {
    let peers = Peers::default();
    let (_, _, t) = handshake(&peers, SessionConfig::default(), 1, 2);
    for bit in 0..t.msg3.len() * 8 {
        let (responder, _) = Responder::accept(
            peers.bob_config(SessionConfig::default()),
            &t.msg1,
            &mut rng(2),
        )
        .unwrap();
        assert!(
            responder.finish(&flip(&t.msg3, bit)).is_err(),
            "msg3 bit {bit} flip went unnoticed"
        );
    }
}

#[test]
fn truncated_or_missing_mlkem_share_fails() {
    let peers = Peers::default();
    let (_, _, t) = handshake(&peers, SessionConfig::default(), 1, 2);
    let bob = || peers.bob_config(SessionConfig::default());

    // msg1 without the encapsulation key (a classical-only offer) or with part of it.
    for cut in [MLKEM_EK_LEN, MLKEM_EK_LEN / 2, 1] {
        let short = &t.msg1[..t.msg1.len() - cut];
        let err = Responder::accept(bob(), short, &mut rng(2)).err().unwrap();
        assert!(
            matches!(err, HandshakeError::Decode(DecodeError::Length { .. })),
            "{err:?}"
        );
    }
    // msg2 without the ciphertext or with part of it.
    let without_ct = [
        &t.msg2[..t.msg2.len() - 64 - MLKEM_CT_LEN],
        &t.msg2[t.msg2.len() - 64..],
    ]
    .concat();
    for short in [without_ct.as_slice(), &t.msg2[..t.msg2.len() - 1]] {
        let (initiator, _) =
            Initiator::start(peers.alice_config(SessionConfig::default()), &mut rng(1));
        let err = initiator.finish(short).err().unwrap();
        assert!(
            matches!(err, HandshakeError::Decode(DecodeError::Length { .. })),
            "{err:?}"
        );
    }
    // An encapsulation key with unreduced coefficients fails the FIPS 203 check.
    let mut bad = t.msg1.clone();
    let ek_start = MSG1_LEN - MLKEM_EK_LEN;
    bad[ek_start..ek_start + 3].copy_from_slice(&[0xff, 0xff, 0xff]);
    let err = Responder::accept(bob(), &bad, &mut rng(2)).err().unwrap();
    assert!(matches!(err, HandshakeError::InvalidKemKey), "{err:?}");
}

/// A node of the previous handshake version (one byte shorter messages, no cipher field)
/// is told apart by its version, not by a length.
#[test]
fn a_message_of_the_previous_version_names_its_version() {
    let peers = Peers::default();
    let (_, msg1) = Initiator::start(peers.alice_config(SessionConfig::default()), &mut rng(1));
    let mut old = msg1[..MSG1_LEN - 1].to_vec();
    old[0] = 1;
    let err = Responder::accept(
        peers.bob_config(SessionConfig::default()),
        &old,
        &mut rng(2),
    )
    .err()
    .unwrap();
    assert!(
        matches!(err, HandshakeError::Decode(DecodeError::Version(1))),
        "{err:?}"
    );
}

#[test]
fn wrong_message_type_or_version_fails() {
    let peers = Peers::default();
    let (_, _, t) = handshake(&peers, SessionConfig::default(), 1, 2);
    let mut wrong_version = t.msg3.clone();
    wrong_version[0] = 9;
    let (responder, _) = Responder::accept(
        peers.bob_config(SessionConfig::default()),
        &t.msg1,
        &mut rng(2),
    )
    .unwrap();
    let err = responder.finish(&wrong_version).err().unwrap();
    assert!(
        matches!(err, HandshakeError::Decode(DecodeError::Version(9))),
        "{err:?}"
    );

    let mut wrong_type = t.msg3.clone();
    wrong_type[1] = 1;
    let (responder, _) = Responder::accept(
        peers.bob_config(SessionConfig::default()),
        &t.msg1,
        &mut rng(2),
    )
    .unwrap();
    let err = responder.finish(&wrong_type).err().unwrap();
    assert!(matches!(
        err,
        HandshakeError::Decode(DecodeError::MessageType {
            expected: 3,
            actual: 1
        })
    ));
}

#[test]
fn substituted_identity_key_fails() {
    let peers = Peers::default();
    let mallory = key(99);

    // Alice expects Bob, but Mallory answers with her own key.
    let (initiator, msg1) =
        Initiator::start(peers.alice_config(SessionConfig::default()), &mut rng(1));
    let mallory_cfg = HandshakeConfig::new(mallory.clone(), peers.alice.verifying_key(), LABEL);
    let (_, msg2) = Responder::accept(mallory_cfg, &msg1, &mut rng(2)).unwrap();
    assert!(matches!(
        initiator.finish(&msg2),
        Err(HandshakeError::RemoteKeyMismatch)
    ));

    // Bob expects Alice, but Mallory opens the stream.
    let mallory_cfg = HandshakeConfig::new(mallory, peers.bob.verifying_key(), LABEL);
    let (_, msg1) = Initiator::start(mallory_cfg, &mut rng(1));
    let err = Responder::accept(
        peers.bob_config(SessionConfig::default()),
        &msg1,
        &mut rng(2),
    )
    .err()
    .unwrap();
    assert!(matches!(err, HandshakeError::RemoteKeyMismatch));

    // Mallory copies Bob's public key into msg2 but cannot sign for it.
    let (initiator, msg1) =
        Initiator::start(peers.alice_config(SessionConfig::default()), &mut rng(1));
    let mallory_cfg = HandshakeConfig::new(key(99), peers.alice.verifying_key(), LABEL);
    let (_, mut msg2) = Responder::accept(mallory_cfg, &msg1, &mut rng(2)).unwrap();
    // After the version, type and cipher bytes and the nonce.
    msg2[3 + 32..3 + 64].copy_from_slice(peers.bob.verifying_key().as_bytes());
    assert!(matches!(
        initiator.finish(&msg2),
        Err(HandshakeError::BadSignature)
    ));
}

#[test]
fn different_context_label_fails() {
    let peers = Peers::default();
    let (initiator, msg1) =
        Initiator::start(peers.alice_config(SessionConfig::default()), &mut rng(1));
    let bob_files = HandshakeConfig::new(
        peers.bob.clone(),
        peers.alice.verifying_key(),
        b"/p2pnode/files/1".to_vec(),
    );
    let (_, msg2) = Responder::accept(bob_files, &msg1, &mut rng(2)).unwrap();
    assert!(matches!(
        initiator.finish(&msg2),
        Err(HandshakeError::BadSignature)
    ));
}

/// Messages recorded from one run are refused in a later run: each side's fresh nonce and
/// ephemeral keys change the transcript the other side's signature must cover.
#[test]
fn replayed_handshake_messages_fail() {
    let peers = Peers::default();
    let (_, _, old) = handshake(&peers, SessionConfig::default(), 1, 2);

    // Old msg2 to a new initiator.
    let (initiator, _) =
        Initiator::start(peers.alice_config(SessionConfig::default()), &mut rng(3));
    assert!(matches!(
        initiator.finish(&old.msg2),
        Err(HandshakeError::BadSignature)
    ));

    // Old msg3 to a responder answering a new msg1.
    let (_, new_msg1) = Initiator::start(peers.alice_config(SessionConfig::default()), &mut rng(3));
    let (responder, _) = Responder::accept(
        peers.bob_config(SessionConfig::default()),
        &new_msg1,
        &mut rng(4),
    )
    .unwrap();
    assert!(matches!(
        responder.finish(&old.msg3),
        Err(HandshakeError::BadSignature)
    ));

    // Old msg1 replayed to the responder: it answers with fresh values, so the old msg3
    // no longer verifies and the replayer never gets a session.
    let (responder, msg2) = Responder::accept(
        peers.bob_config(SessionConfig::default()),
        &old.msg1,
        &mut rng(5),
    )
    .unwrap();
    assert_ne!(msg2, old.msg2);
    assert!(matches!(
        responder.finish(&old.msg3),
        Err(HandshakeError::BadSignature)
    ));
}

#[test]
fn msg3_with_wrong_commitment_opening_fails() {
    let peers = Peers::default();
    let (_, _, t) = handshake(&peers, SessionConfig::default(), 1, 2);
    // The opening is not under the signature, so only the commitment check catches this.
    let mut tampered = t.msg3.clone();
    tampered[2] ^= 1;
    let (responder, _) = Responder::accept(
        peers.bob_config(SessionConfig::default()),
        &t.msg1,
        &mut rng(2),
    )
    .unwrap();
    assert!(matches!(
        responder.finish(&tampered),
        Err(HandshakeError::CommitmentMismatch)
    ));
}

/// Mallory substituted her key for each victim's view of the other (the peer ids were
/// swapped), and runs one handshake with each. Both handshakes succeed, but the SAS codes
/// Alice and Bob read to each other differ, in every one of 1000 runs.
#[test]
fn mitm_yields_mismatching_sas_1000_of_1000() {
    let alice = key(1);
    let bob = key(2);
    let mallory = key(3);
    for run in 0..1000u64 {
        let seed = run * 4;
        // Alice -> Mallory (Alice thinks Mallory's key is Bob's).
        let (ai, m1) = Initiator::start(
            HandshakeConfig::new(alice.clone(), mallory.verifying_key(), LABEL),
            &mut rng(seed),
        );
        let (mr, m2) = Responder::accept(
            HandshakeConfig::new(mallory.clone(), alice.verifying_key(), LABEL),
            &m1,
            &mut rng(seed + 1),
        )
        .unwrap();
        let (alice_session, m3) = ai.finish(&m2).unwrap();
        let mallory_with_alice = mr.finish(&m3).unwrap();

        // Mallory -> Bob (Bob thinks Mallory's key is Alice's).
        let (mi, m1) = Initiator::start(
            HandshakeConfig::new(mallory.clone(), bob.verifying_key(), LABEL),
            &mut rng(seed + 2),
        );
        let (br, m2) = Responder::accept(
            HandshakeConfig::new(bob.clone(), mallory.verifying_key(), LABEL),
            &m1,
            &mut rng(seed + 3),
        )
        .unwrap();
        let (mallory_with_bob, m3) = mi.finish(&m2).unwrap();
        let bob_session = br.finish(&m3).unwrap();

        // Each leg agrees with Mallory, but Alice's and Bob's codes differ.
        assert_eq!(alice_session.sas(), mallory_with_alice.sas());
        assert_eq!(bob_session.sas(), mallory_with_bob.sas());
        assert_ne!(
            alice_session.sas().digits(),
            bob_session.sas().digits(),
            "run {run}"
        );
        assert_ne!(
            alice_session.sas().words(),
            bob_session.sas().words(),
            "run {run}"
        );
    }
}

//! Property tests: every wire message and every frame decodes to what was encoded, and
//! decoders never panic on arbitrary input.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use p2pnode_secure::wire::{MLKEM_CT_LEN, MLKEM_EK_LEN, Msg1, Msg2, Msg3};
use p2pnode_secure::{ReceiveMode, SessionConfig};
use proptest::prelude::*;

fn bytes32() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn msg1() -> impl Strategy<Value = Msg1> {
    (
        any::<u8>(),
        bytes32(),
        bytes32(),
        bytes32(),
        bytes32(),
        proptest::collection::vec(any::<u8>(), MLKEM_EK_LEN),
    )
        .prop_map(
            |(ciphers, nonce, sas_commitment, identity, x25519, ek)| Msg1 {
                ciphers,
                nonce,
                sas_commitment,
                identity,
                x25519,
                mlkem_ek: Box::new(ek.try_into().unwrap()),
            },
        )
}

fn msg2() -> impl Strategy<Value = Msg2> {
    (
        any::<u8>(),
        bytes32(),
        bytes32(),
        bytes32(),
        proptest::collection::vec(any::<u8>(), MLKEM_CT_LEN),
        proptest::collection::vec(any::<u8>(), 64),
    )
        .prop_map(|(cipher, nonce, identity, x25519, ct, sig)| Msg2 {
            cipher,
            nonce,
            identity,
            x25519,
            mlkem_ct: Box::new(ct.try_into().unwrap()),
            signature: sig.try_into().unwrap(),
        })
}

fn msg3() -> impl Strategy<Value = Msg3> {
    (bytes32(), proptest::collection::vec(any::<u8>(), 64)).prop_map(|(sas_opening, sig)| Msg3 {
        sas_opening,
        signature: sig.try_into().unwrap(),
    })
}

proptest! {
    #[test]
    fn msg1_roundtrip(m in msg1()) {
        prop_assert_eq!(Msg1::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn msg2_roundtrip(m in msg2()) {
        prop_assert_eq!(Msg2::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn msg3_roundtrip(m in msg3()) {
        prop_assert_eq!(Msg3::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let _ = Msg1::decode(&bytes);
        let _ = Msg2::decode(&bytes);
        let _ = Msg3::decode(&bytes);
    }
}

proptest! {
    // Each case runs a handshake, so fewer cases; each case seals many frames.
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn frames_roundtrip(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..20),
        padding in any::<bool>(),
        window in any::<bool>(),
        rekey_every in 1u64..5,
    ) {
        let mode = if window { ReceiveMode::Window } else { ReceiveMode::Ordered };
        let config = SessionConfig::default()
            .with_padding(padding)
            .with_receive_mode(mode)
            .with_rekey_after_frames(rekey_every);
        let (mut a, mut b) = crate::common::pair(config);
        let now = Instant::now();
        for payload in &payloads {
            let mut frame = Vec::new();
            a.seal(payload, now, &mut frame).unwrap();
            prop_assert_eq!(b.open(&mut frame).unwrap(), payload.as_slice());
        }
    }

    #[test]
    fn open_never_panics(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..50)) {
        let (_, mut b) = crate::common::pair(SessionConfig::default().with_receive_mode(ReceiveMode::Window));
        for mut frame in frames {
            prop_assert!(b.open(&mut frame).is_err());
        }
    }
}

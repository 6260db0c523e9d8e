use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Tag};
use zeroize::Zeroizing;

use super::*;

/// The frames' cipher is RFC 8439's ChaCha20-Poly1305: what aws-lc and ring seal, another
/// implementation (RustCrypto's, the one the layer used before) opens, and back.
#[test]
fn the_cipher_is_plain_chacha20_poly1305() {
    let raw = Zeroizing::new([7u8; 32]);
    let other = ChaCha20Poly1305::new(Key::from_slice(&raw[..]));
    let nonce = [3u8; HEADER_LEN];
    let plain = b"a frame's payload, any length at all".to_vec();
    for library in [Library::AwsLc, Library::Ring] {
        let key = EpochKey::new(raw.clone(), Cipher::ChaCha20Poly1305, library);
        assert_eq!(key.library(), library);
        let mut ours = plain.clone();
        let tag = key.seal(nonce, &mut ours).unwrap();
        let mut theirs = ours.clone();
        other
            .decrypt_in_place_detached(
                chacha20poly1305::Nonce::from_slice(&nonce),
                &[],
                &mut theirs,
                Tag::from_slice(&tag),
            )
            .unwrap();
        assert_eq!(theirs, plain);

        let mut back = plain.clone();
        let tag = other
            .encrypt_in_place_detached(chacha20poly1305::Nonce::from_slice(&nonce), &[], &mut back)
            .unwrap();
        assert_eq!(back, ours, "the same ciphertext");
        assert!(key.open(nonce, &mut back, &tag.into()));
        assert_eq!(back, plain);
    }
}

/// Packets always go to ring; streams go to aws-lc, except AES-256-GCM on a CPU where
/// ring's AES-GCM is the faster; the choice does not depend on anything else.
#[test]
fn each_kind_of_frame_gets_the_faster_library() {
    for cipher in [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm] {
        assert_eq!(Library::for_frames(cipher, true), Library::Ring);
    }
    assert_eq!(
        Library::for_frames(Cipher::ChaCha20Poly1305, false),
        Library::AwsLc
    );
    let streams = if Cipher::aes_gcm_faster_in_ring() {
        Library::Ring
    } else {
        Library::AwsLc
    };
    assert_eq!(Library::for_frames(Cipher::Aes256Gcm, false), streams);
    // Only a CPU with VAES can have ring's fast path.
    #[cfg(target_arch = "x86_64")]
    if Cipher::aes_gcm_faster_in_ring() {
        assert!(std::arch::is_x86_feature_detected!("vaes"));
    }
}

/// aws-lc's and ring's code run the same ciphers: a frame one seals, the other opens, and
/// a changed byte fails both; a key's successor keeps its code.
#[test]
fn both_libraries_seal_the_same_frames() {
    let raw = Zeroizing::new([9u8; 32]);
    let nonce = [5u8; HEADER_LEN];
    for cipher in [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm] {
        let aws = EpochKey::new(raw.clone(), cipher, Library::AwsLc);
        let ring = EpochKey::new(raw.clone(), cipher, Library::Ring);
        for len in [0usize, 1, 84, 1280, 65_536] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (mut a, mut r) = (plain.clone(), plain.clone());
            let (ta, tr) = (
                aws.seal(nonce, &mut a).unwrap(),
                ring.seal(nonce, &mut r).unwrap(),
            );
            assert_eq!((&a, ta), (&r, tr), "{cipher:?}, {len} bytes");
            assert!(ring.open(nonce, &mut a, &ta) && aws.open(nonce, &mut r, &tr));
            assert_eq!((&a, &r), (&plain, &plain));
            let mut bad = plain.clone();
            let tag = aws.seal(nonce, &mut bad).unwrap();
            bad.push(0);
            assert!(!ring.open(nonce, &mut bad, &tag) && !aws.open(nonce, &mut bad, &tag));
        }
        assert_eq!(ring.next().library(), Library::Ring);
        assert_eq!(aws.next().library(), Library::AwsLc);
        let (mut a, mut r) = (b"next".to_vec(), b"next".to_vec());
        let (next_aws, next_ring) = (aws.next(), ring.next());
        assert_eq!(next_aws.seal(nonce, &mut a), next_ring.seal(nonce, &mut r));
        assert_eq!(a, r);
    }
}

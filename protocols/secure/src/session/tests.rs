use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Tag};
use zeroize::Zeroizing;

use super::*;

/// The frames' cipher is RFC 8439's ChaCha20-Poly1305: what aws-lc seals, another
/// implementation (RustCrypto's, the one the layer used before) opens, and back.
#[test]
fn the_cipher_is_plain_chacha20_poly1305() {
    let raw = Zeroizing::new([7u8; 32]);
    let key = EpochKey::new(raw.clone(), Cipher::ChaCha20Poly1305);
    let other = ChaCha20Poly1305::new(Key::from_slice(&raw[..]));
    let nonce = [3u8; HEADER_LEN];
    let plain = b"a frame's payload, any length at all".to_vec();

    let mut ours = plain.clone();
    let tag = key
        .aead
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut ours)
        .unwrap();
    let mut theirs = ours.clone();
    other
        .decrypt_in_place_detached(
            chacha20poly1305::Nonce::from_slice(&nonce),
            &[],
            &mut theirs,
            Tag::from_slice(tag.as_ref()),
        )
        .unwrap();
    assert_eq!(theirs, plain);

    let mut back = plain.clone();
    let tag = other
        .encrypt_in_place_detached(chacha20poly1305::Nonce::from_slice(&nonce), &[], &mut back)
        .unwrap();
    assert_eq!(back, ours, "the same ciphertext");
    let opened = key
        .aead
        .open_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            tag.as_slice(),
            &mut back,
        )
        .unwrap();
    assert_eq!(opened, &plain[..]);
}

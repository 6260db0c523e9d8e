//! The session's keys: the agreed AEAD, each epoch's key and its successor, and the frame
//! header that is also the nonce.

use aws_lc_rs::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{HEADER_LEN, KNOWN_FLAGS, REKEY_INFO, TAG_LEN};
use crate::error::OpenError;

/// A session's AEAD, agreed in the handshake. Both take 32-byte keys and 12-byte nonces
/// and give 16-byte tags, so the frame layout is the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cipher {
    /// RFC 8439's ChaCha20-Poly1305: every node has it, and it is the fast one where the
    /// CPU has no AES instructions.
    #[default]
    ChaCha20Poly1305,
    /// AES-256-GCM, chosen when both ends have AES and carry-less multiply instructions:
    /// measured here at 64 KiB frames, 11.6 GiB/s against ChaCha20-Poly1305's 1.7 (aws-lc,
    /// one core), 6.5 against 1.2 at 1,280 bytes.
    Aes256Gcm,
}

impl Cipher {
    /// Whether this CPU runs AES-256-GCM in hardware (AES-NI and PCLMULQDQ on x86-64,
    /// the crypto extensions on aarch64). Without them aws-lc's constant-time software
    /// AES is slower than ChaCha20-Poly1305, so a node then does not offer it.
    pub fn aes_in_hardware() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("aes")
                && std::arch::is_x86_feature_detected!("pclmulqdq")
        }
        #[cfg(target_arch = "aarch64")]
        {
            std::arch::is_aarch64_feature_detected!("aes")
                && std::arch::is_aarch64_feature_detected!("pmull")
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            false
        }
    }

    /// Whether ring runs AES-256-GCM faster than aws-lc on this CPU, for frames of any
    /// size. aws-lc's fast path needs AVX-512 with VAES and VPCLMULQDQ; ring's fast path
    /// (which aws-lc lacks) needs only AVX2 with them. So on a CPU with VAES but no
    /// AVX-512, such as AMD's Zen 3, ring's is about 1.8x aws-lc's (measured on one: 7.0
    /// against 3.9 GB/s at 64 KiB, 4.1 against 2.5 at 1,400 bytes). Without VAES both run
    /// the same AES-NI code, and this says no.
    pub fn aes_gcm_faster_in_ring() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let aws_lc_fast = has!("avx512f")
                && has!("avx512dq")
                && has!("avx512bw")
                && has!("avx512vl")
                && has!("vaes")
                && has!("vpclmulqdq");
            let ring_fast = has!("avx2") && has!("vaes") && has!("vpclmulqdq");
            ring_fast && !aws_lc_fast
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// The cipher's bit in the handshake's cipher fields.
    pub(crate) fn wire_bit(self) -> u8 {
        match self {
            Self::ChaCha20Poly1305 => crate::wire::CIPHER_CHACHA20_POLY1305,
            Self::Aes256Gcm => crate::wire::CIPHER_AES_256_GCM,
        }
    }

    /// The cipher a handshake field names with exactly one known bit.
    pub(crate) fn from_wire_bit(bit: u8) -> Option<Self> {
        [Self::ChaCha20Poly1305, Self::Aes256Gcm]
            .into_iter()
            .find(|c| c.wire_bit() == bit)
    }

    fn algorithm(self) -> &'static aws_lc_rs::aead::Algorithm {
        match self {
            Self::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            Self::Aes256Gcm => &AES_256_GCM,
        }
    }

    fn ring_algorithm(self) -> &'static ring::aead::Algorithm {
        match self {
            Self::ChaCha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
            Self::Aes256Gcm => &ring::aead::AES_256_GCM,
        }
    }
}

/// The two direction keys the handshake derives, and the cipher they are for.
#[derive(Default)]
pub(crate) struct SessionKeys {
    pub(crate) initiator_to_responder: Zeroizing<[u8; 32]>,
    pub(crate) responder_to_initiator: Zeroizing<[u8; 32]>,
    pub(crate) cipher: Cipher,
}

/// Which library's code runs an epoch key: the cipher and the bytes on the wire are the
/// same either way, only the speed differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Library {
    /// aws-lc's (in the build already, through libp2p's QUIC): its ChaCha20-Poly1305 is
    /// 3-6x RustCrypto's on small frames, and on a CPU with AVX-512 and VAES its AES-256-GCM
    /// is the fastest there is here (11.6 GB/s at 64 KiB frames against ring's 7.6).
    AwsLc,
    /// ring's (in the build through rustls): see [`Library::for_frames`].
    Ring,
}

impl Library {
    /// The faster library for frames of this kind on this CPU.
    ///
    /// - Frames of one packet ([`super::SessionConfig::with_packet_frames`]): ring. It is
    ///   as fast at 1,280 bytes (5.0 GB/s against 4.7) and takes about half the time for a
    ///   lone frame after an idle moment, when neither library's code nor key is in the
    ///   caches any more (one 84-byte seal 2.8 µs against 4.8, an open 3.3 against 6.4;
    ///   medians of 200 each, after 20 ms asleep).
    /// - Streams' large frames: aws-lc, unless AES-256-GCM runs faster in ring on this CPU
    ///   ([`Cipher::aes_gcm_faster_in_ring`]).
    pub(super) fn for_frames(cipher: Cipher, packets: bool) -> Self {
        if packets || (cipher == Cipher::Aes256Gcm && Cipher::aes_gcm_faster_in_ring()) {
            Self::Ring
        } else {
            Self::AwsLc
        }
    }
}

/// An epoch key as the chosen [`Library`] holds it.
enum Aead {
    AwsLc(LessSafeKey),
    /// Boxed: the key schedule has one place in memory, overwritten when the key is dropped.
    Ring(Box<RingKey>),
}

/// ring's key, whose schedule (unlike aws-lc's) lives in our memory: dropping it writes a
/// schedule of the all-zero key over it, so no copy of the epoch key's is left behind.
struct RingKey {
    key: ring::aead::LessSafeKey,
    algorithm: &'static ring::aead::Algorithm,
}

impl Drop for RingKey {
    fn drop(&mut self) {
        if let Ok(zero) = ring::aead::UnboundKey::new(self.algorithm, &[0u8; 32]) {
            self.key = ring::aead::LessSafeKey::new(zero);
            // Keeps the store: memory about to be freed is otherwise a dead write.
            std::hint::black_box(&self.key);
        }
    }
}

/// A key of one epoch, kept both raw (to derive the next) and as a ready cipher.
///
/// With aws-lc the key schedule lives in memory aws-lc allocates and wipes when it frees
/// it (`OPENSSL_free` cleanses); ring's is overwritten on drop ([`RingKey`]). So dropping
/// an epoch key leaves no copy, as with `raw`.
pub(super) struct EpochKey {
    raw: Zeroizing<[u8; 32]>,
    pub(super) cipher: Cipher,
    aead: Aead,
}

impl EpochKey {
    /// The epoch key `raw` for `cipher`, run by `library`'s code.
    pub(super) fn new(raw: Zeroizing<[u8; 32]>, cipher: Cipher, library: Library) -> Self {
        // A 32-byte key is the one length both ciphers take, in both libraries.
        const KEY_LEN: &str = "ChaCha20-Poly1305 and AES-256-GCM take 32-byte keys";
        let aead = if library == Library::Ring {
            let algorithm = cipher.ring_algorithm();
            match ring::aead::UnboundKey::new(algorithm, &raw[..]) {
                Ok(key) => Aead::Ring(Box::new(RingKey {
                    key: ring::aead::LessSafeKey::new(key),
                    algorithm,
                })),
                Err(_) => unreachable!("{KEY_LEN}"),
            }
        } else {
            match UnboundKey::new(cipher.algorithm(), &raw[..]) {
                Ok(key) => Aead::AwsLc(LessSafeKey::new(key)),
                Err(_) => unreachable!("{KEY_LEN}"),
            }
        };
        Self { raw, cipher, aead }
    }

    /// Encrypts `in_out` in place under `nonce` (the frame's header); returns the tag.
    pub(super) fn seal(&self, nonce: [u8; HEADER_LEN], in_out: &mut [u8]) -> Option<[u8; TAG_LEN]> {
        let mut out = [0u8; TAG_LEN];
        match &self.aead {
            Aead::AwsLc(key) => {
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::empty(),
                        in_out,
                    )
                    .ok()?;
                out.copy_from_slice(tag.as_ref());
            }
            Aead::Ring(k) => {
                let nonce = ring::aead::Nonce::assume_unique_for_key(nonce);
                let tag = k
                    .key
                    .seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), in_out)
                    .ok()?;
                out.copy_from_slice(tag.as_ref());
            }
        }
        Some(out)
    }

    /// Authenticates and decrypts `in_out` in place; `false` if it does not authenticate.
    pub(super) fn open(
        &self,
        nonce: [u8; HEADER_LEN],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        match &self.aead {
            Aead::AwsLc(key) => key
                .open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    &tag[..],
                    in_out,
                )
                .is_ok(),
            Aead::Ring(k) => {
                let nonce = ring::aead::Nonce::assume_unique_for_key(nonce);
                let tag = ring::aead::Tag::from(*tag);
                k.key
                    .open_in_place_separate_tag(nonce, ring::aead::Aad::empty(), tag, in_out, 0..)
                    .is_ok()
            }
        }
    }

    /// The library whose code runs this key.
    pub(super) fn library(&self) -> Library {
        match self.aead {
            Aead::AwsLc(_) => Library::AwsLc,
            Aead::Ring(_) => Library::Ring,
        }
    }

    pub(super) fn next(&self) -> Self {
        let mut raw = Zeroizing::new([0u8; 32]);
        // The current key is uniformly random, so it can serve as the HKDF PRK directly;
        // 32 bytes always fit, so neither step can fail.
        if let Ok(hk) = Hkdf::<Sha256>::from_prk(&self.raw[..]) {
            let expanded = hk.expand(REKEY_INFO, &mut raw[..]);
            debug_assert!(expanded.is_ok());
        }
        Self::new(raw, self.cipher, self.library())
    }
}

pub(super) struct Header {
    pub(super) flags: u8,
    pub(super) epoch: u32,
    pub(super) seq: u64,
}

impl Header {
    /// The header bytes, which double as the AEAD nonce. `seq` must be below 2^56.
    pub(super) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = self.flags;
        out[1..5].copy_from_slice(&self.epoch.to_be_bytes());
        out[5..].copy_from_slice(&self.seq.to_be_bytes()[1..]);
        out
    }

    pub(super) fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, OpenError> {
        let [flags, e0, e1, e2, e3, s @ ..] = *bytes;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(OpenError::UnknownFlags(flags));
        }
        Ok(Self {
            flags,
            epoch: u32::from_be_bytes([e0, e1, e2, e3]),
            seq: u64::from_be_bytes([0, s[0], s[1], s[2], s[3], s[4], s[5], s[6]]),
        })
    }
}

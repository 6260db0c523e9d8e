//! The session's keys: the agreed AEAD, each epoch's key and its successor, and the frame
//! header that is also the nonce.

use aws_lc_rs::aead::{AES_256_GCM, CHACHA20_POLY1305, LessSafeKey, UnboundKey};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{HEADER_LEN, KNOWN_FLAGS, REKEY_INFO};
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
}

/// The two direction keys the handshake derives, and the cipher they are for.
#[derive(Default)]
pub(crate) struct SessionKeys {
    pub(crate) initiator_to_responder: Zeroizing<[u8; 32]>,
    pub(crate) responder_to_initiator: Zeroizing<[u8; 32]>,
    pub(crate) cipher: Cipher,
}

/// A key of one epoch, kept both raw (to derive the next) and as a ready cipher.
///
/// The cipher is aws-lc's (aws-lc is in the build already, through libp2p's QUIC): its
/// ChaCha20-Poly1305 is 3-6x RustCrypto's on small frames here, the same bytes on the
/// wire. Its key schedule lives in memory aws-lc allocates and wipes when it frees it
/// (`OPENSSL_free` cleanses), so dropping an epoch key leaves no copy, as with `raw`.
pub(super) struct EpochKey {
    raw: Zeroizing<[u8; 32]>,
    pub(super) cipher: Cipher,
    pub(super) aead: LessSafeKey,
}

impl EpochKey {
    pub(super) fn new(raw: Zeroizing<[u8; 32]>, cipher: Cipher) -> Self {
        let aead = match UnboundKey::new(cipher.algorithm(), &raw[..]) {
            Ok(key) => LessSafeKey::new(key),
            // A 32-byte key is the one length both ciphers take.
            Err(_) => unreachable!("ChaCha20-Poly1305 and AES-256-GCM take 32-byte keys"),
        };
        Self { raw, cipher, aead }
    }

    pub(super) fn next(&self) -> Self {
        let mut raw = Zeroizing::new([0u8; 32]);
        // The current key is uniformly random, so it can serve as the HKDF PRK directly;
        // 32 bytes always fit, so neither step can fail.
        if let Ok(hk) = Hkdf::<Sha256>::from_prk(&self.raw[..]) {
            let expanded = hk.expand(REKEY_INFO, &mut raw[..]);
            debug_assert!(expanded.is_ok());
        }
        Self::new(raw, self.cipher)
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

//! Byte layout of the three handshake messages.
//!
//! Every field has a fixed size, so decoding is a length check followed by copies: there
//! is nothing variable-length an attacker could use to make us allocate or loop. Each
//! message starts with a version byte and a message-type byte so that a message sent to
//! the wrong step, or by a peer speaking another version, fails with a clear error.

use crate::error::DecodeError;

/// Protocol version carried in the first byte of every handshake message. Version 2
/// added the cipher fields ([`Msg1::ciphers`], [`Msg2::cipher`]).
pub const VERSION: u8 = 2;

/// [`Msg1::ciphers`] and [`Msg2::cipher`]: ChaCha20-Poly1305 (every node offers it).
pub const CIPHER_CHACHA20_POLY1305: u8 = 0b01;
/// [`Msg1::ciphers`] and [`Msg2::cipher`]: AES-256-GCM.
pub const CIPHER_AES_256_GCM: u8 = 0b10;

/// Length of an X25519 public key.
pub const X25519_LEN: usize = 32;
/// Length of an Ed25519 public key.
pub const ED25519_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of the cipher fields.
pub const CIPHER_LEN: usize = 1;
/// Length of the random nonces and of the SAS commitment and its opening.
pub const NONCE_LEN: usize = 32;
/// Length of an ML-KEM-768 encapsulation (public) key (FIPS 203, table 3).
pub const MLKEM_EK_LEN: usize = 1184;
/// Length of an ML-KEM-768 ciphertext (FIPS 203, table 3).
pub const MLKEM_CT_LEN: usize = 1088;

const MSG1_TYPE: u8 = 1;
const MSG2_TYPE: u8 = 2;
const MSG3_TYPE: u8 = 3;
const PREFIX_LEN: usize = 2;

/// Encoded length of [`Msg1`].
pub const MSG1_LEN: usize =
    PREFIX_LEN + CIPHER_LEN + NONCE_LEN + NONCE_LEN + ED25519_KEY_LEN + X25519_LEN + MLKEM_EK_LEN;
/// Encoded length of [`Msg2`].
pub const MSG2_LEN: usize = PREFIX_LEN
    + CIPHER_LEN
    + NONCE_LEN
    + ED25519_KEY_LEN
    + X25519_LEN
    + MLKEM_CT_LEN
    + SIGNATURE_LEN;
/// Encoded length of [`Msg3`].
pub const MSG3_LEN: usize = PREFIX_LEN + NONCE_LEN + SIGNATURE_LEN;

/// First message, initiator to responder: the initiator's key shares.
#[derive(Clone, PartialEq, Eq)]
pub struct Msg1 {
    /// The ciphers the initiator takes, a set of `CIPHER_*` bits (unknown bits ignored).
    pub ciphers: u8,
    /// Fresh random bytes; makes every transcript unique even if keys were reused.
    pub nonce: [u8; NONCE_LEN],
    /// SHA-256 commitment to the secret the initiator opens in [`Msg3`]; it stops a
    /// man in the middle from grinding its own values until two SAS codes collide.
    pub sas_commitment: [u8; NONCE_LEN],
    /// The initiator's Ed25519 identity key, so the responder can refuse early.
    pub identity: [u8; ED25519_KEY_LEN],
    /// Ephemeral X25519 public key.
    pub x25519: [u8; X25519_LEN],
    /// Ephemeral ML-KEM-768 encapsulation key.
    pub mlkem_ek: Box<[u8; MLKEM_EK_LEN]>,
}

/// Second message, responder to initiator: the responder's shares and its signature.
#[derive(Clone, PartialEq, Eq)]
pub struct Msg2 {
    /// The cipher the responder chose from [`Msg1::ciphers`]: one `CIPHER_*` bit.
    pub cipher: u8,
    /// Fresh random bytes from the responder.
    pub nonce: [u8; NONCE_LEN],
    /// The responder's Ed25519 identity key.
    pub identity: [u8; ED25519_KEY_LEN],
    /// Ephemeral X25519 public key.
    pub x25519: [u8; X25519_LEN],
    /// ML-KEM-768 ciphertext encapsulated to the initiator's key.
    pub mlkem_ct: Box<[u8; MLKEM_CT_LEN]>,
    /// Ed25519 signature over the transcript hash up to and including the fields above.
    pub signature: [u8; SIGNATURE_LEN],
}

/// Third message, initiator to responder: opening of the SAS commitment and signature.
#[derive(Clone, PartialEq, Eq)]
pub struct Msg3 {
    /// The secret whose hash was sent as [`Msg1::sas_commitment`].
    pub sas_opening: [u8; NONCE_LEN],
    /// Ed25519 signature over the transcript hash of messages 1 and 2.
    pub signature: [u8; SIGNATURE_LEN],
}

impl std::fmt::Debug for Msg1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msg1").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Msg2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msg2").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Msg3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msg3").finish_non_exhaustive()
    }
}

/// Reads fixed-size fields off the front of a slice whose total length was checked.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    /// Starts reading after checking the total length, version and message type.
    fn open(bytes: &'a [u8], expected_len: usize, msg_type: u8) -> Result<Self, DecodeError> {
        // The version first: another version's messages have other lengths, and "version
        // 1" says what is wrong where "expected 1,250 bytes" would not.
        if let [v, ..] = bytes
            && *v != VERSION
        {
            return Err(DecodeError::Version(*v));
        }
        if bytes.len() != expected_len {
            return Err(DecodeError::Length {
                expected: expected_len,
                actual: bytes.len(),
            });
        }
        match bytes {
            [VERSION, t, rest @ ..] if *t == msg_type => Ok(Self(rest)),
            [VERSION, t, ..] => Err(DecodeError::MessageType {
                expected: msg_type,
                actual: *t,
            }),
            [v, ..] => Err(DecodeError::Version(*v)),
            [] => Err(DecodeError::Length {
                expected: expected_len,
                actual: 0,
            }),
        }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(DecodeError::Length {
            expected: N,
            actual: self.0.len(),
        })?;
        self.0 = rest;
        Ok(*head)
    }

    fn take_boxed<const N: usize>(&mut self) -> Result<Box<[u8; N]>, DecodeError> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(DecodeError::Length {
            expected: N,
            actual: self.0.len(),
        })?;
        self.0 = rest;
        Ok(Box::new(*head))
    }
}

fn header(msg_type: u8, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(&[VERSION, msg_type]);
    out
}

impl Msg1 {
    /// Serialises the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = header(MSG1_TYPE, MSG1_LEN);
        out.push(self.ciphers);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.sas_commitment);
        out.extend_from_slice(&self.identity);
        out.extend_from_slice(&self.x25519);
        out.extend_from_slice(&self.mlkem_ek[..]);
        out
    }

    /// Parses a message; any length other than [`MSG1_LEN`] is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut f = Fields::open(bytes, MSG1_LEN, MSG1_TYPE)?;
        Ok(Self {
            ciphers: u8::from_be_bytes(f.take()?),
            nonce: f.take()?,
            sas_commitment: f.take()?,
            identity: f.take()?,
            x25519: f.take()?,
            mlkem_ek: f.take_boxed()?,
        })
    }
}

impl Msg2 {
    /// The encoded message without its trailing signature: the part the signature covers.
    pub(crate) fn encode_unsigned(&self) -> Vec<u8> {
        let mut out = header(MSG2_TYPE, MSG2_LEN);
        out.push(self.cipher);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.identity);
        out.extend_from_slice(&self.x25519);
        out.extend_from_slice(&self.mlkem_ct[..]);
        out
    }

    /// Serialises the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.encode_unsigned();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses a message; any length other than [`MSG2_LEN`] is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut f = Fields::open(bytes, MSG2_LEN, MSG2_TYPE)?;
        Ok(Self {
            cipher: u8::from_be_bytes(f.take()?),
            nonce: f.take()?,
            identity: f.take()?,
            x25519: f.take()?,
            mlkem_ct: f.take_boxed()?,
            signature: f.take()?,
        })
    }
}

impl Msg3 {
    /// Serialises the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = header(MSG3_TYPE, MSG3_LEN);
        out.extend_from_slice(&self.sas_opening);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses a message; any length other than [`MSG3_LEN`] is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut f = Fields::open(bytes, MSG3_LEN, MSG3_TYPE)?;
        Ok(Self {
            sas_opening: f.take()?,
            signature: f.take()?,
        })
    }
}

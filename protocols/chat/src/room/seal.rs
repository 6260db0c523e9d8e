//! Sealing and opening room messages: the room key from the invite, ChaCha20-Poly1305
//! under it, and the sender's Ed25519 signature inside.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use p2pnode_secure::PeerKey;
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::RoomError;
use crate::id::{MessageId, byte_array, byte_vec};
use crate::invite::Invite;
use crate::wire::{MAX_BODY_LEN, to_cbor};

/// Version byte of sealed room messages.
pub const ROOM_WIRE_VERSION: u8 = 1;
/// Largest sealed room message accepted (checked before decrypting).
pub const MAX_ROOM_MESSAGE_LEN: usize = MAX_BODY_LEN + 1024;

pub(super) const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const SIGN_CONTEXT: &[u8] = b"p2pnode room message v1\0";

/// The symmetric key and identity of a room, derived from its [`Invite`].
#[derive(Clone)]
pub struct RoomKey {
    pub(super) key: Zeroizing<[u8; 32]>,
    room_id: [u8; 32],
    expires_at: Option<u64>,
    topic: String,
}

impl fmt::Debug for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomKey")
            .field("topic", &self.topic)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl RoomKey {
    /// Derives the key with HKDF-SHA256 (salt: the room id, input: the secret).
    pub fn from_invite(invite: &Invite) -> Self {
        let room_id = invite.room_id();
        let hkdf = Hkdf::<Sha256>::new(Some(&room_id), &invite.room_secret().0);
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's output limit of 8160 bytes.
        #[allow(clippy::expect_used)]
        hkdf.expand(b"p2pnode room message key v1", key.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self {
            key,
            room_id,
            expires_at: invite.expires_at(),
            topic: invite.topic(),
        }
    }

    /// The room id bound into every signature.
    pub fn room_id(&self) -> &[u8; 32] {
        &self.room_id
    }

    /// The gossipsub topic to subscribe and publish to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// When the room closes, unix seconds.
    pub fn expires_at(&self) -> Option<u64> {
        self.expires_at
    }

    /// `Err(Expired)` if the room is closed at `now_ms` (unix milliseconds).
    pub fn check_expiry(&self, now_ms: u64) -> Result<(), RoomError> {
        match self.expires_at {
            Some(expired_at) if now_ms / 1000 >= expired_at => {
                Err(RoomError::Expired { expired_at })
            }
            _ => Ok(()),
        }
    }

    pub(super) fn aad(&self) -> [u8; 33] {
        let mut aad = [0u8; 33];
        aad[0] = ROOM_WIRE_VERSION;
        aad[1..].copy_from_slice(&self.room_id);
        aad
    }

    pub(super) fn signing_input(&self, message: &[u8]) -> Vec<u8> {
        [SIGN_CONTEXT, &self.room_id, message].concat()
    }
}

impl Invite {
    /// The room key for this invite.
    pub fn room_key(&self) -> RoomKey {
        RoomKey::from_invite(self)
    }
}

/// What a room message carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomBody {
    /// A text message, at most [`MAX_BODY_LEN`] bytes.
    Text(String),
    /// "I am here": sent on joining and then periodically.
    Presence,
    /// "I am leaving."
    Leave,
}

/// A message in a room, as signed by its sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMessage {
    /// Unique id (de-duplication).
    pub id: MessageId,
    /// The sender's Ed25519 public key; the node maps it to a libp2p peer id.
    #[serde(with = "byte_array")]
    pub sender: PeerKey,
    /// When it was sent, unix milliseconds (sender's clock).
    pub sent_at: u64,
    /// The content.
    pub body: RoomBody,
}

impl RoomMessage {
    /// A new message from `sender` with a fresh id.
    pub fn new(
        sender: &VerifyingKey,
        body: RoomBody,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        Self {
            id: MessageId::new(now_ms, rng),
            sender: sender.to_bytes(),
            sent_at: now_ms,
            body,
        }
    }

    fn check_body(&self) -> Result<(), RoomError> {
        match &self.body {
            RoomBody::Text(text) if text.len() > MAX_BODY_LEN => Err(RoomError::BodyTooLong {
                len: text.len(),
                max: MAX_BODY_LEN,
            }),
            _ => Ok(()),
        }
    }
}

/// Inside the encryption: the message bytes exactly as signed, and the signature.
#[derive(Serialize, Deserialize)]
pub(super) struct SignedWire(
    #[serde(with = "byte_vec")] pub(super) Vec<u8>,
    #[serde(with = "byte_array")] pub(super) [u8; 64],
);

/// Signs `message` with `signer` (binding the room id), then encrypts it with the room
/// key under a random nonce. The result is what to publish on the room's topic.
pub fn seal_room_message(
    key: &RoomKey,
    signer: &SigningKey,
    message: &RoomMessage,
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>, RoomError> {
    if message.sender != signer.verifying_key().to_bytes() {
        return Err(RoomError::SenderMismatch);
    }
    message.check_body()?;
    let encoded = to_cbor(message);
    let signature = signer.sign(&key.signing_input(&encoded));
    let plaintext = Zeroizing::new(to_cbor(&SignedWire(encoded, signature.to_bytes())));

    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key.key.as_ref()));
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plaintext,
                aad: &key.aad(),
            },
        )
        .map_err(|_| RoomError::TooLarge {
            len: plaintext.len(),
            max: MAX_ROOM_MESSAGE_LEN,
        })?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    out.push(ROOM_WIRE_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    if out.len() > MAX_ROOM_MESSAGE_LEN {
        return Err(RoomError::TooLarge {
            len: out.len(),
            max: MAX_ROOM_MESSAGE_LEN,
        });
    }
    Ok(out)
}

/// Decrypts and verifies a message received on the room's topic. Refuses oversized
/// input before decrypting, and everything once the room expired at `now_ms`.
pub fn open_room_message(
    key: &RoomKey,
    data: &[u8],
    now_ms: u64,
) -> Result<(RoomMessage, VerifyingKey), RoomError> {
    if data.len() > MAX_ROOM_MESSAGE_LEN {
        return Err(RoomError::TooLarge {
            len: data.len(),
            max: MAX_ROOM_MESSAGE_LEN,
        });
    }
    key.check_expiry(now_ms)?;
    let Some((&version, rest)) = data.split_first() else {
        return Err(RoomError::Malformed("empty message".into()));
    };
    if version != ROOM_WIRE_VERSION {
        return Err(RoomError::UnsupportedVersion {
            found: version,
            supported: ROOM_WIRE_VERSION,
        });
    }
    if rest.len() < NONCE_LEN + TAG_LEN {
        return Err(RoomError::Malformed("shorter than nonce and tag".into()));
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key.key.as_ref()));
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &key.aad(),
                },
            )
            .map_err(|_| RoomError::Decrypt)?,
    );
    let SignedWire(encoded, signature) = ciborium::from_reader(plaintext.as_slice())
        .map_err(|e| RoomError::Malformed(e.to_string()))?;
    let message: RoomMessage = ciborium::from_reader(encoded.as_slice())
        .map_err(|e| RoomError::Malformed(e.to_string()))?;
    let sender = VerifyingKey::from_bytes(&message.sender).map_err(|_| RoomError::BadSenderKey)?;
    sender
        .verify_strict(
            &key.signing_input(&encoded),
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| RoomError::BadSignature)?;
    message.check_body()?;
    Ok((message, sender))
}

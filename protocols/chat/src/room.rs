//! Rooms: group chat over a gossipsub topic, end-to-end encrypted with a key derived from
//! the invite and signed by each sender.
//!
//! A sealed room message is `version (1) || nonce (12) || ChaCha20-Poly1305 ciphertext`,
//! with the version and room id as associated data. Inside is the CBOR of the
//! [`RoomMessage`] together with the sender's Ed25519 signature over the room id and
//! those exact bytes, so only members can read who said what, and no member can speak
//! for another or replay a message into a different room.
//!
//! [`seal_room_message`] and [`open_room_message`] are the pure primitives; [`Room`] is
//! the sans-IO state the node keeps per joined room: de-duplication ([`SeenSet`]), the
//! member list ([`Members`]) kept fresh by periodic presence messages, and expiry.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use p2pnode_secure::PeerKey;
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tracing::debug;
use zeroize::Zeroizing;

use crate::error::RoomError;
use crate::id::{MessageId, byte_array, byte_vec};
use crate::invite::Invite;
use crate::wire::{MAX_BODY_LEN, to_cbor};

/// Version byte of sealed room messages.
pub const ROOM_WIRE_VERSION: u8 = 1;
/// Largest sealed room message accepted (checked before decrypting).
pub const MAX_ROOM_MESSAGE_LEN: usize = MAX_BODY_LEN + 1024;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const SIGN_CONTEXT: &[u8] = b"p2pnode room message v1\0";

/// The symmetric key and identity of a room, derived from its [`Invite`].
#[derive(Clone)]
pub struct RoomKey {
    key: Zeroizing<[u8; 32]>,
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

    fn aad(&self) -> [u8; 33] {
        let mut aad = [0u8; 33];
        aad[0] = ROOM_WIRE_VERSION;
        aad[1..].copy_from_slice(&self.room_id);
        aad
    }

    fn signing_input(&self, message: &[u8]) -> Vec<u8> {
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
struct SignedWire(
    #[serde(with = "byte_vec")] Vec<u8>,
    #[serde(with = "byte_array")] [u8; 64],
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

/// A bounded set of recently seen message ids; the oldest are forgotten first.
#[derive(Debug, Clone)]
pub struct SeenSet {
    capacity: usize,
    set: HashSet<MessageId>,
    order: VecDeque<MessageId>,
}

impl SeenSet {
    /// An empty set remembering at most `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `id`; true if it was not seen before (deliver it), false for a duplicate.
    pub fn insert(&mut self, id: MessageId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    /// Whether `id` is remembered.
    pub fn contains(&self, id: &MessageId) -> bool {
        self.set.contains(id)
    }

    /// Number of remembered ids.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// A room member as last heard of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// The member's Ed25519 public key.
    pub key: PeerKey,
    /// First message seen from it, unix ms.
    pub first_seen: u64,
    /// Latest message seen from it, unix ms.
    pub last_seen: u64,
}

/// The member list of a room, kept from received messages. Bounded: when full, the
/// member heard of least recently makes room.
#[derive(Debug, Clone)]
pub struct Members {
    max: usize,
    members: BTreeMap<PeerKey, Member>,
}

impl Members {
    /// An empty list holding at most `max` members (at least 1).
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            members: BTreeMap::new(),
        }
    }

    /// Records a message from `key` at `now_ms`; true if it is a new member.
    pub fn observe(&mut self, key: PeerKey, now_ms: u64) -> bool {
        if let Some(member) = self.members.get_mut(&key) {
            member.last_seen = member.last_seen.max(now_ms);
            return false;
        }
        if self.members.len() >= self.max
            && let Some(oldest) = self
                .members
                .values()
                .min_by_key(|m| m.last_seen)
                .map(|m| m.key)
        {
            self.members.remove(&oldest);
        }
        self.members.insert(
            key,
            Member {
                key,
                first_seen: now_ms,
                last_seen: now_ms,
            },
        );
        true
    }

    /// Removes `key`; true if it was a member.
    pub fn remove(&mut self, key: &PeerKey) -> bool {
        self.members.remove(key).is_some()
    }

    /// Removes members not heard of for `timeout_ms`, except `keep`; returns them.
    pub fn expire(&mut self, now_ms: u64, timeout_ms: u64, keep: &PeerKey) -> Vec<PeerKey> {
        let gone: Vec<PeerKey> = self
            .members
            .values()
            .filter(|m| m.key != *keep && m.last_seen.saturating_add(timeout_ms) <= now_ms)
            .map(|m| m.key)
            .collect();
        for key in &gone {
            self.members.remove(key);
        }
        gone
    }

    /// When the next member (other than `keep`) times out.
    fn next_expiry(&self, timeout_ms: u64, keep: &PeerKey) -> Option<u64> {
        self.members
            .values()
            .filter(|m| m.key != *keep)
            .map(|m| m.last_seen.saturating_add(timeout_ms))
            .min()
    }

    /// The member `key`, if present.
    pub fn get(&self, key: &PeerKey) -> Option<&Member> {
        self.members.get(key)
    }

    /// All members, ordered by key.
    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// Tuning of a [`Room`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomConfig {
    presence_interval_ms: u64,
    member_timeout_ms: u64,
    seen_capacity: usize,
    max_members: usize,
    max_age_ms: u64,
    max_skew_ms: u64,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            presence_interval_ms: 30_000,
            member_timeout_ms: 100_000,
            seen_capacity: 16_384,
            max_members: 1_000,
            max_age_ms: 60 * 60 * 1000,
            max_skew_ms: 5 * 60 * 1000,
        }
    }
}

impl RoomConfig {
    /// Publish a presence message this often (default 30 s, at least 1 ms).
    pub fn with_presence_interval_ms(mut self, ms: u64) -> Self {
        self.presence_interval_ms = ms.max(1);
        self
    }

    /// A member not heard of for this long has left (default 100 s; keep it above
    /// three presence intervals).
    pub fn with_member_timeout_ms(mut self, ms: u64) -> Self {
        self.member_timeout_ms = ms.max(1);
        self
    }

    /// How many message ids to remember for de-duplication (default 16 384).
    pub fn with_seen_capacity(mut self, n: usize) -> Self {
        self.seen_capacity = n.max(1);
        self
    }

    /// Most members listed (default 1000).
    pub fn with_max_members(mut self, n: usize) -> Self {
        self.max_members = n.max(1);
        self
    }

    /// Refuse messages older than this (replays; default 1 h) or dated further than
    /// `skew_ms` in the future (default 5 min).
    pub fn with_accepted_window_ms(mut self, age_ms: u64, skew_ms: u64) -> Self {
        self.max_age_ms = age_ms;
        self.max_skew_ms = skew_ms;
        self
    }
}

/// Something the UI shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// A text message (first delivery of its id).
    Message(RoomMessage),
    /// A new member was heard of.
    Joined(PeerKey),
    /// A member said goodbye or timed out.
    Left(PeerKey),
    /// The room's time-to-live ran out: unsubscribe and close it.
    Expired,
}

/// What [`Room::handle_timeout`] asks of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomOutput {
    /// Publish these bytes on the room's topic.
    Publish(Vec<u8>),
    /// Show this.
    Event(RoomEvent),
}

/// One joined room: key, identity, de-duplication, members and presence timing.
#[derive(Debug)]
pub struct Room {
    name: String,
    key: RoomKey,
    signer: SigningKey,
    me: PeerKey,
    config: RoomConfig,
    seen: SeenSet,
    members: Members,
    next_presence_at: u64,
    expired_reported: bool,
}

impl Room {
    /// Joins the room of `invite` as `signer` (the node's identity key). Returns the room
    /// and a presence message to publish once subscribed to [`Room::topic`].
    pub fn join(
        invite: &Invite,
        signer: SigningKey,
        config: RoomConfig,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Self, Vec<u8>), RoomError> {
        let key = invite.room_key();
        key.check_expiry(now_ms)?;
        let me = signer.verifying_key().to_bytes();
        let mut room = Self {
            name: invite.room_name().to_owned(),
            key,
            signer,
            me,
            config,
            seen: SeenSet::new(config.seen_capacity),
            members: Members::new(config.max_members),
            next_presence_at: now_ms,
            expired_reported: false,
        };
        room.members.observe(me, now_ms);
        let presence = room.publish(RoomBody::Presence, now_ms, rng)?;
        room.next_presence_at = now_ms.saturating_add(config.presence_interval_ms);
        Ok((room, presence))
    }

    /// The room's display name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The gossipsub topic.
    pub fn topic(&self) -> &str {
        self.key.topic()
    }

    /// The room key.
    pub fn key(&self) -> &RoomKey {
        &self.key
    }

    /// Members heard of recently, ourselves included.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// Our own key.
    pub fn me(&self) -> &PeerKey {
        &self.me
    }

    /// Seals a text message: show the returned message, publish the bytes.
    pub fn send_text(
        &mut self,
        body: impl Into<String>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(RoomMessage, Vec<u8>), RoomError> {
        self.key.check_expiry(now_ms)?;
        let message = RoomMessage::new(
            &self.signer.verifying_key(),
            RoomBody::Text(body.into()),
            now_ms,
            rng,
        );
        let sealed = seal_room_message(&self.key, &self.signer, &message, rng)?;
        self.seen.insert(message.id);
        self.members.observe(self.me, now_ms);
        Ok((message, sealed))
    }

    /// A goodbye to publish before unsubscribing.
    pub fn leave(
        &mut self,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, RoomError> {
        self.publish(RoomBody::Leave, now_ms, rng)
    }

    /// Handles bytes received on the topic. Duplicates give no events; errors mean the
    /// message was dropped (log at debug level: anyone on the topic can send garbage).
    pub fn handle_message(
        &mut self,
        data: &[u8],
        now_ms: u64,
    ) -> Result<Vec<RoomEvent>, RoomError> {
        let (message, _sender) = open_room_message(&self.key, data, now_ms)?;
        let too_old = message.sent_at.saturating_add(self.config.max_age_ms) < now_ms;
        let too_new = message.sent_at > now_ms.saturating_add(self.config.max_skew_ms);
        if too_old || too_new {
            return Err(RoomError::Stale {
                sent_at: message.sent_at,
                now: now_ms,
            });
        }
        if !self.seen.insert(message.id) {
            debug!(id = %message.id, "duplicate room message");
            return Ok(Vec::new());
        }
        let mut events = Vec::new();
        let sender = message.sender;
        if message.body == RoomBody::Leave {
            if sender != self.me && self.members.remove(&sender) {
                events.push(RoomEvent::Left(sender));
            }
            return Ok(events);
        }
        if self.members.observe(sender, now_ms) && sender != self.me {
            events.push(RoomEvent::Joined(sender));
        }
        if matches!(message.body, RoomBody::Text(_)) {
            events.push(RoomEvent::Message(message));
        }
        Ok(events)
    }

    /// Presence, member time-outs and expiry. Call at [`Room::poll_timeout`].
    pub fn handle_timeout(&mut self, now_ms: u64, rng: &mut impl CryptoRngCore) -> Vec<RoomOutput> {
        let mut out = Vec::new();
        if self.key.check_expiry(now_ms).is_err() {
            if !self.expired_reported {
                self.expired_reported = true;
                out.push(RoomOutput::Event(RoomEvent::Expired));
            }
            return out;
        }
        if now_ms >= self.next_presence_at {
            match self.publish(RoomBody::Presence, now_ms, rng) {
                Ok(bytes) => out.push(RoomOutput::Publish(bytes)),
                Err(err) => debug!(%err, "presence not sealed"),
            }
            self.next_presence_at = now_ms.saturating_add(self.config.presence_interval_ms);
        }
        for key in self
            .members
            .expire(now_ms, self.config.member_timeout_ms, &self.me)
        {
            out.push(RoomOutput::Event(RoomEvent::Left(key)));
        }
        out
    }

    /// When to call [`Room::handle_timeout`] next (unix ms); `None` once expiry was
    /// reported.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.expired_reported {
            return None;
        }
        let expiry = self.key.expires_at().map(|s| s.saturating_mul(1000));
        let members = self
            .members
            .next_expiry(self.config.member_timeout_ms, &self.me);
        [Some(self.next_presence_at), expiry, members]
            .into_iter()
            .flatten()
            .min()
    }

    fn publish(
        &mut self,
        body: RoomBody,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, RoomError> {
        let message = RoomMessage::new(&self.signer.verifying_key(), body, now_ms, rng);
        self.seen.insert(message.id);
        self.members.observe(self.me, now_ms);
        seal_room_message(&self.key, &self.signer, &message, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;
    use std::time::Duration;

    const NOW: u64 = 1_700_000_000_000;

    fn invite(ttl: Option<u64>) -> Invite {
        Invite::new("room", ttl.map(Duration::from_secs), NOW, None, &mut OsRng).unwrap()
    }

    #[test]
    fn seal_open_round_trip_and_sender() {
        let inv = invite(None);
        let key = inv.room_key();
        let alice = SigningKey::generate(&mut OsRng);
        let msg = RoomMessage::new(
            &alice.verifying_key(),
            RoomBody::Text("hi all".into()),
            NOW,
            &mut OsRng,
        );
        let sealed = seal_room_message(&key, &alice, &msg, &mut OsRng).unwrap();
        let (opened, sender) = open_room_message(&key, &sealed, NOW).unwrap();
        assert_eq!(opened, msg);
        assert_eq!(sender, alice.verifying_key());
    }

    #[test]
    fn other_room_tamper_and_forgery_are_refused() {
        let key = invite(None).room_key();
        let other = invite(None).room_key();
        let alice = SigningKey::generate(&mut OsRng);
        let mallory = SigningKey::generate(&mut OsRng);
        let msg = RoomMessage::new(
            &alice.verifying_key(),
            RoomBody::Text("x".into()),
            NOW,
            &mut OsRng,
        );
        let sealed = seal_room_message(&key, &alice, &msg, &mut OsRng).unwrap();
        assert_eq!(
            open_room_message(&other, &sealed, NOW),
            Err(RoomError::Decrypt)
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open_room_message(&key, &bad, NOW).is_err());
        }
        // Mallory cannot seal in Alice's name...
        assert_eq!(
            seal_room_message(&key, &mallory, &msg, &mut OsRng),
            Err(RoomError::SenderMismatch)
        );
        // ...and a hand-made envelope with her signature on Alice's message fails.
        let encoded = to_cbor(&msg);
        let sig = mallory.sign(&key.signing_input(&encoded));
        let plaintext = to_cbor(&SignedWire(encoded, sig.to_bytes()));
        let nonce = [9u8; NONCE_LEN];
        let ct = ChaCha20Poly1305::new(Key::from_slice(key.key.as_ref()))
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plaintext,
                    aad: &key.aad(),
                },
            )
            .unwrap();
        let forged = [&[ROOM_WIRE_VERSION][..], &nonce, &ct].concat();
        assert_eq!(
            open_room_message(&key, &forged, NOW),
            Err(RoomError::BadSignature)
        );
    }

    #[test]
    fn expired_rooms_refuse_everything() {
        let inv = invite(Some(60));
        let key = inv.room_key();
        let alice = SigningKey::generate(&mut OsRng);
        let (mut room, _) =
            Room::join(&inv, alice.clone(), RoomConfig::default(), NOW, &mut OsRng).unwrap();
        let (_, sealed) = room.send_text("before", NOW, &mut OsRng).unwrap();
        let later = NOW + 60_000;
        assert!(matches!(
            open_room_message(&key, &sealed, later),
            Err(RoomError::Expired { .. })
        ));
        assert!(matches!(
            room.send_text("after", later, &mut OsRng),
            Err(RoomError::Expired { .. })
        ));
        assert_eq!(room.poll_timeout(), Some(later.min(NOW + 30_000)));
        assert_eq!(
            room.handle_timeout(later, &mut OsRng),
            [RoomOutput::Event(RoomEvent::Expired)]
        );
        assert!(room.handle_timeout(later + 1, &mut OsRng).is_empty());
        assert_eq!(room.poll_timeout(), None);
        assert!(matches!(
            Room::join(&inv, alice, RoomConfig::default(), later, &mut OsRng),
            Err(RoomError::Expired { .. })
        ));
    }

    #[test]
    fn oversize_body_is_refused_with_the_limit() {
        let key = invite(None).room_key();
        let alice = SigningKey::generate(&mut OsRng);
        let msg = RoomMessage::new(
            &alice.verifying_key(),
            RoomBody::Text("x".repeat(MAX_BODY_LEN + 1)),
            NOW,
            &mut OsRng,
        );
        let err = seal_room_message(&key, &alice, &msg, &mut OsRng).unwrap_err();
        assert!(err.to_string().contains("16384"), "{err}");
        let max = RoomMessage {
            body: RoomBody::Text("x".repeat(MAX_BODY_LEN)),
            ..msg
        };
        let sealed = seal_room_message(&key, &alice, &max, &mut OsRng).unwrap();
        assert!(open_room_message(&key, &sealed, NOW).is_ok());
        assert!(matches!(
            open_room_message(&key, &vec![1u8; MAX_ROOM_MESSAGE_LEN + 1], NOW),
            Err(RoomError::TooLarge { .. })
        ));
    }

    #[test]
    fn seen_set_is_bounded() {
        let mut seen = SeenSet::new(3);
        let ids: Vec<_> = (0..5u8).map(|i| MessageId([i; 16])).collect();
        assert!(seen.insert(ids[0]));
        assert!(!seen.insert(ids[0]));
        for id in &ids[1..] {
            assert!(seen.insert(*id));
        }
        assert_eq!(seen.len(), 3);
        assert!(!seen.contains(&ids[0]) && !seen.contains(&ids[1]));
        assert!(seen.contains(&ids[4]));
    }

    #[test]
    fn members_join_leave_time_out_and_are_bounded() {
        let inv = invite(None);
        let config = RoomConfig::default()
            .with_presence_interval_ms(1_000)
            .with_member_timeout_ms(3_500);
        let keys: Vec<_> = (0..3).map(|_| SigningKey::generate(&mut OsRng)).collect();
        let (mut a, _) = Room::join(&inv, keys[0].clone(), config, NOW, &mut OsRng).unwrap();
        let (mut b, hello_b) = Room::join(&inv, keys[1].clone(), config, NOW, &mut OsRng).unwrap();
        let (mut c, hello_c) = Room::join(&inv, keys[2].clone(), config, NOW, &mut OsRng).unwrap();
        let kb = keys[1].verifying_key().to_bytes();
        let kc = keys[2].verifying_key().to_bytes();
        assert_eq!(
            a.handle_message(&hello_b, NOW).unwrap(),
            [RoomEvent::Joined(kb)]
        );
        assert_eq!(
            a.handle_message(&hello_c, NOW).unwrap(),
            [RoomEvent::Joined(kc)]
        );
        assert!(
            a.handle_message(&hello_c, NOW).unwrap().is_empty(),
            "duplicate"
        );
        assert_eq!(a.members().len(), 3);

        let (sent, text) = b.send_text("hello", NOW + 10, &mut OsRng).unwrap();
        assert_eq!(
            a.handle_message(&text, NOW + 10).unwrap(),
            [RoomEvent::Message(sent)]
        );
        let bye = c.leave(NOW + 20, &mut OsRng).unwrap();
        assert_eq!(
            a.handle_message(&bye, NOW + 20).unwrap(),
            [RoomEvent::Left(kc)]
        );

        // b keeps publishing presence; then goes silent and times out.
        let mut now = NOW;
        let mut left = Vec::new();
        while now < NOW + 10_000 {
            now = a.poll_timeout().unwrap();
            if now <= NOW + 3_000 {
                for out in b.handle_timeout(now, &mut OsRng) {
                    if let RoomOutput::Publish(p) = out {
                        a.handle_message(&p, now).unwrap();
                    }
                }
            }
            for out in a.handle_timeout(now, &mut OsRng) {
                if let RoomOutput::Event(RoomEvent::Left(k)) = out {
                    left.push((k, now));
                }
            }
        }
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, kb);
        assert!(left[0].1 >= NOW + 3_000 + 3_500, "{:?}", left[0].1 - NOW);
        assert_eq!(a.members().len(), 1, "only a itself");

        let mut members = Members::new(2);
        members.observe([1; 32], 1);
        members.observe([2; 32], 2);
        members.observe([3; 32], 3);
        assert!(
            members.get(&[1; 32]).is_none(),
            "least recently seen evicted"
        );
        assert_eq!(members.len(), 2);
    }

    #[test]
    fn stale_and_future_messages_are_refused() {
        let inv = invite(None);
        let alice = SigningKey::generate(&mut OsRng);
        let (mut a, _) = Room::join(
            &inv,
            SigningKey::generate(&mut OsRng),
            RoomConfig::default(),
            NOW,
            &mut OsRng,
        )
        .unwrap();
        let (mut b, _) = Room::join(&inv, alice, RoomConfig::default(), NOW, &mut OsRng).unwrap();
        let (_, old) = b.send_text("old", NOW, &mut OsRng).unwrap();
        assert!(matches!(
            a.handle_message(&old, NOW + 2 * 3_600_000),
            Err(RoomError::Stale { .. })
        ));
        let (_, future) = b.send_text("future", NOW + 3_600_000, &mut OsRng).unwrap();
        assert!(matches!(
            a.handle_message(&future, NOW),
            Err(RoomError::Stale { .. })
        ));
    }
}

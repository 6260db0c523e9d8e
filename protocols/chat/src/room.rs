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
//! the sans-IO state the node keeps per joined room: the replay defence
//! ([`ReplayGuard`]), the member list ([`Members`]) kept fresh by periodic presence
//! messages, and expiry.
//!
//! Replays: a message is accepted only inside a time window (not older than `max_age`,
//! not sent before we joined); a text's id is remembered ([`SeenSet`]) until it leaves
//! that window, so a replay is always either too old or found, and a full [`SeenSet`]
//! refuses new texts rather than forget; the service stores the ids so this holds across
//! restarts. Presence and Leave are not in the [`SeenSet`]: each member's latest
//! timestamp is kept instead, and only a newer Presence or Leave counts, so a replayed
//! Leave cannot remove a member who came back. The gossipsub publisher must be the
//! signer ([`ReplayGuard::check`]): others cannot republish a member's messages.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// What the replay checks decided about an authentic message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// First sight inside the accepted window: deliver it.
    Fresh,
    /// Seen before (a text id), or a Presence or Leave not newer than the latest from its
    /// sender: drop it quietly.
    Duplicate,
    /// The [`SeenSet`] is full of ids still inside the window: refused, since forgetting
    /// one would let its message be replayed.
    Full,
}

/// Ids of recently accepted messages, each kept until its message would be refused as too
/// old anyway (the caller forgets them with [`SeenSet::forget_before`]). Bounded, and never
/// forgets early: when full it refuses new ids, so a flood cannot flush it.
#[derive(Debug, Clone)]
pub struct SeenSet {
    capacity: usize,
    ids: HashMap<MessageId, u64>,
    by_time: BTreeSet<(u64, MessageId)>,
}

impl SeenSet {
    /// An empty set holding at most `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            ids: HashMap::new(),
            by_time: BTreeSet::new(),
        }
    }

    /// Records `id` of a message sent at `sent_at` (unix ms).
    pub fn insert(&mut self, id: MessageId, sent_at: u64) -> Admit {
        if self.ids.contains_key(&id) {
            return Admit::Duplicate;
        }
        if self.ids.len() >= self.capacity {
            return Admit::Full;
        }
        self.ids.insert(id, sent_at);
        self.by_time.insert((sent_at, id));
        Admit::Fresh
    }

    /// Forgets the ids of messages sent before `cutoff` (unix ms); returns how many.
    pub fn forget_before(&mut self, cutoff: u64) -> usize {
        let mut n = 0;
        while let Some(&(sent_at, id)) = self.by_time.first() {
            if sent_at >= cutoff {
                break;
            }
            self.by_time.pop_first();
            self.ids.remove(&id);
            n += 1;
        }
        n
    }

    /// Whether `id` is remembered.
    pub fn contains(&self, id: &MessageId) -> bool {
        self.ids.contains_key(id)
    }

    /// Remembered ids with their messages' `sent_at`, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (MessageId, u64)> + '_ {
        self.by_time.iter().map(|&(t, id)| (id, t))
    }

    /// Number of remembered ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The latest timestamp heard from each sender, for Presence and Leave, which are
/// idempotent per member: only a newer one counts. Bounded: when full, the oldest entry
/// goes and the floor rises to its time, so nothing it could have refused is accepted.
#[derive(Debug, Clone)]
struct Latest {
    max: usize,
    at: HashMap<PeerKey, u64>,
    by_time: BTreeSet<(u64, PeerKey)>,
    /// Senders not in the table: refused at or before this time.
    floor: u64,
}

impl Latest {
    fn new(max: usize, floor: u64) -> Self {
        Self {
            max: max.max(1),
            at: HashMap::new(),
            by_time: BTreeSet::new(),
            floor,
        }
    }

    /// Raises `key`'s latest to `sent_at`; false (and no change) unless it is newer than
    /// everything known of `key`.
    fn advance(&mut self, key: PeerKey, sent_at: u64) -> bool {
        let known = self.at.get(&key).copied();
        if sent_at <= known.unwrap_or(0).max(self.floor) {
            return false;
        }
        match known {
            Some(old) => {
                self.by_time.remove(&(old, key));
            }
            None if self.at.len() >= self.max => {
                // Evict the oldest, unless this one is older still (it would go first).
                let Some(&(oldest, evicted)) = self.by_time.first() else {
                    return false;
                };
                if sent_at <= oldest {
                    return false;
                }
                self.by_time.pop_first();
                self.at.remove(&evicted);
                self.floor = self.floor.max(oldest);
            }
            None => {}
        }
        self.at.insert(key, sent_at);
        self.by_time.insert((sent_at, key));
        true
    }
}

/// A room's replay defence: the accepted window, the [`SeenSet`] of text ids and the
/// latest Presence/Leave per member. Kept apart from [`Room`] so a node can run it where
/// messages arrive, before deciding whether gossipsub forwards them.
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    max_age_ms: u64,
    max_skew_ms: u64,
    joined_at: u64,
    /// Nothing sent before this is accepted: our join, less a grace for clock skew. The
    /// seen set holds every text accepted since, so no earlier id is ever needed.
    floor: u64,
    seen: SeenSet,
    latest: Latest,
}

impl ReplayGuard {
    /// The guard of a room joined at `joined_at`, started at `now` (the join or a restart).
    /// The latest-per-member table starts empty, so Presence and Leave sent before `now`
    /// (less the grace) are refused: presence repeats every interval, nothing is lost.
    pub fn new(config: &RoomConfig, joined_at: u64, now: u64) -> Self {
        let floor = joined_at.saturating_sub(config.join_grace_ms);
        let control_floor = now.max(joined_at).saturating_sub(config.join_grace_ms);
        Self {
            max_age_ms: config.max_age_ms,
            max_skew_ms: config.max_skew_ms,
            joined_at,
            floor,
            seen: SeenSet::new(config.seen_capacity),
            latest: Latest::new(config.max_tracked_senders(), control_floor),
        }
    }

    /// When we joined the room (unix ms).
    pub fn joined_at(&self) -> u64 {
        self.joined_at
    }

    /// The remembered text ids.
    pub fn seen(&self) -> &SeenSet {
        &self.seen
    }

    /// Takes back a stored id (after a restart); false if it is too old to matter or the
    /// set is full.
    pub fn remember(&mut self, id: MessageId, sent_at: u64, now: u64) -> bool {
        if sent_at < self.floor || sent_at.saturating_add(self.max_age_ms) < now {
            return false;
        }
        self.seen.insert(id, sent_at) == Admit::Fresh
    }

    /// Opens bytes received on the topic and decides on them. `publisher` is the key of
    /// the peer that published them (gossipsub's signed source): a message it did not
    /// sign itself is refused ([`RoomError::SenderMismatch`]), since only the signer may
    /// publish its messages. A fresh message is recorded.
    pub fn check(
        &mut self,
        key: &RoomKey,
        data: &[u8],
        publisher: Option<&PeerKey>,
        now: u64,
    ) -> Result<(RoomMessage, Admit), RoomError> {
        let (message, _sender) = open_room_message(key, data, now)?;
        if publisher.is_some_and(|p| *p != message.sender) {
            return Err(RoomError::SenderMismatch);
        }
        let admit = self.admit(&message, now)?;
        Ok((message, admit))
    }

    /// Decides on an authentic message (opened and verified) and records it when fresh.
    pub fn admit(&mut self, message: &RoomMessage, now: u64) -> Result<Admit, RoomError> {
        let sent_at = message.sent_at;
        let too_old = sent_at.saturating_add(self.max_age_ms) < now || sent_at < self.floor;
        let too_new = sent_at > now.saturating_add(self.max_skew_ms);
        if too_old || too_new {
            return Err(RoomError::Stale { sent_at, now });
        }
        Ok(match message.body {
            RoomBody::Text(_) => {
                self.seen.forget_before(now.saturating_sub(self.max_age_ms));
                let admit = self.seen.insert(message.id, sent_at);
                if admit == Admit::Fresh {
                    // A member who spoke since an old Leave is back: that Leave is stale.
                    self.latest.advance(message.sender, sent_at);
                }
                admit
            }
            RoomBody::Presence | RoomBody::Leave => {
                if self.latest.advance(message.sender, sent_at) {
                    Admit::Fresh
                } else {
                    Admit::Duplicate
                }
            }
        })
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

/// The member list of a room, kept from received messages. Bounded: when full, a new key
/// is not listed until a member leaves or times out. Members are never pushed out, so
/// fresh keys (free to make for anyone with the invite) can take only free places, not
/// those of members who keep speaking.
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

    /// Records a message from `key` at `now_ms`; true if it is a new member (false for a
    /// known one, or a new one while the list is full).
    pub fn observe(&mut self, key: PeerKey, now_ms: u64) -> bool {
        if let Some(member) = self.members.get_mut(&key) {
            member.last_seen = member.last_seen.max(now_ms);
            return false;
        }
        if self.is_full() {
            return false;
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

    /// Whether no new member can be listed.
    pub fn is_full(&self) -> bool {
        self.members.len() >= self.max
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
    join_grace_ms: u64,
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
            join_grace_ms: 10_000,
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

    /// Most text ids remembered against replays (default 16 384): each is kept for the
    /// accepted window (`max_age`), so this is how many texts a room takes per window; past
    /// it new texts are refused until old ones age out (a flood cannot flush the set).
    pub fn with_seen_capacity(mut self, n: usize) -> Self {
        self.seen_capacity = n.max(1);
        self
    }

    /// Most members listed (default 1000); the latest Presence/Leave time is kept for four
    /// times as many senders.
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

    /// The accepted window's age limit, unix ms (default 1 h).
    pub fn max_age_ms(&self) -> u64 {
        self.max_age_ms
    }

    /// Also accept messages sent this long before our join (default 10 s): members' clocks
    /// differ by a few seconds. Any value is replay-safe, since ids are remembered from
    /// this point on.
    pub fn with_join_grace_ms(mut self, ms: u64) -> Self {
        self.join_grace_ms = ms;
        self
    }

    /// Senders whose latest Presence/Leave time is kept: a few times the member limit, so
    /// departed members stay known for a while after they leave the list.
    fn max_tracked_senders(&self) -> usize {
        self.max_members.saturating_mul(4)
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
    guard: ReplayGuard,
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
        Self::resume(invite, signer, config, now_ms, now_ms, rng)
    }

    /// [`Room::join`] for a room first joined at `joined_at` (after a restart): messages
    /// sent before `joined_at` stay refused.
    pub fn resume(
        invite: &Invite,
        signer: SigningKey,
        config: RoomConfig,
        joined_at: u64,
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
            guard: ReplayGuard::new(&config, joined_at.min(now_ms), now_ms),
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

    /// The replay defence (join time, remembered ids).
    pub fn guard(&self) -> &ReplayGuard {
        &self.guard
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
        // Our own id: a copy coming back is a duplicate (a full set only means others
        // may refuse it too).
        let _ = self.guard.admit(&message, now_ms);
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

    /// Handles bytes received on the topic. Duplicates and replays give no events; errors
    /// mean the message was dropped (log at debug level: anyone on the topic can send
    /// garbage). The publisher is not checked: see [`Room::handle_message_from`].
    pub fn handle_message(
        &mut self,
        data: &[u8],
        now_ms: u64,
    ) -> Result<Vec<RoomEvent>, RoomError> {
        self.handle_message_from(data, None, now_ms)
    }

    /// [`Room::handle_message`] for bytes that `publisher` (gossipsub's signed source, as
    /// an Ed25519 key) published: refused unless it signed them itself.
    pub fn handle_message_from(
        &mut self,
        data: &[u8],
        publisher: Option<&PeerKey>,
        now_ms: u64,
    ) -> Result<Vec<RoomEvent>, RoomError> {
        let (message, admit) = self.guard.check(&self.key, data, publisher, now_ms)?;
        if admit != Admit::Fresh {
            debug!(id = %message.id, ?admit, "room message not delivered");
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
        if self.members.is_full() && self.members.get(&sender).is_none() {
            // Make room from members already gone before refusing a newcomer.
            for key in self
                .members
                .expire(now_ms, self.config.member_timeout_ms, &self.me)
            {
                events.push(RoomEvent::Left(key));
            }
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
        let _ = self.guard.admit(&message, now_ms);
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
    fn seen_set_is_bounded_and_forgets_only_by_time() {
        let mut seen = SeenSet::new(3);
        let ids: Vec<_> = (0..5u8).map(|i| MessageId([i; 16])).collect();
        assert_eq!(seen.insert(ids[0], 10), Admit::Fresh);
        assert_eq!(seen.insert(ids[0], 10), Admit::Duplicate);
        assert_eq!(seen.insert(ids[1], 20), Admit::Fresh);
        assert_eq!(seen.insert(ids[2], 30), Admit::Fresh);
        // Full of ids still needed: the new one is refused, none is forgotten.
        assert_eq!(seen.insert(ids[3], 40), Admit::Full);
        assert_eq!(seen.len(), 3);
        assert!(seen.contains(&ids[0]));
        assert_eq!(seen.forget_before(20), 1);
        assert!(!seen.contains(&ids[0]) && seen.contains(&ids[1]));
        assert_eq!(seen.insert(ids[3], 40), Admit::Fresh);
    }

    /// Finding 5 (a): the seen set used to forget the oldest ids once 16 384 newer ones
    /// arrived, while a message stays acceptable for an hour.
    #[test]
    fn a_captured_message_replayed_after_a_flood_of_other_ids_is_refused() {
        let inv = invite(None);
        let config = RoomConfig::default();
        let (mut a, _) = Room::join(
            &inv,
            SigningKey::generate(&mut OsRng),
            config,
            NOW,
            &mut OsRng,
        )
        .unwrap();
        let (mut b, _) = Room::join(
            &inv,
            SigningKey::generate(&mut OsRng),
            config,
            NOW,
            &mut OsRng,
        )
        .unwrap();
        let (sent, captured) = b.send_text("pay bob 10", NOW + 1, &mut OsRng).unwrap();
        let first = a.handle_message(&captured, NOW + 1).unwrap();
        assert!(first.contains(&RoomEvent::Message(sent)));
        // 20 000 presence messages of another member, then 20 000 other texts (a chatty
        // or hostile member), all inside the hour: the replay is refused after each.
        let key = inv.room_key();
        let f_key = SigningKey::generate(&mut OsRng);
        let mut now = NOW + 2;
        for _ in 0..20_000 {
            now += 1;
            let msg = RoomMessage::new(&f_key.verifying_key(), RoomBody::Presence, now, &mut OsRng);
            let sealed = seal_room_message(&key, &f_key, &msg, &mut OsRng).unwrap();
            let _ = a.handle_message(&sealed, now);
        }
        let delivered =
            |events: &Vec<RoomEvent>| events.iter().any(|e| matches!(e, RoomEvent::Message(_)));
        let replayed = a.handle_message(&captured, now);
        assert!(
            !matches!(&replayed, Ok(events) if delivered(events)),
            "the replay was delivered again after the presence flood: {replayed:?}"
        );
        for i in 0..20_000 {
            now += 1;
            let (_, text) = b.send_text(format!("{i}"), now, &mut OsRng).unwrap();
            let _ = a.handle_message(&text, now);
        }
        let later = NOW + 30 * 60 * 1000;
        let replayed = a.handle_message(&captured, later);
        let delivered =
            |events: &Vec<RoomEvent>| events.iter().any(|e| matches!(e, RoomEvent::Message(_)));
        assert!(
            !matches!(&replayed, Ok(events) if delivered(events)),
            "the replay was delivered again: {replayed:?}"
        );
        // An hour later it is refused as too old; the ids that kept it out are forgotten.
        assert!(matches!(
            a.handle_message(&captured, NOW + 61 * 60 * 1000),
            Err(RoomError::Stale { .. })
        ));
    }

    /// Finding 5 (d): a member's old Leave, replayed after they came back, used to remove
    /// them once its id had left the seen set (flooded out, or a restart).
    #[test]
    fn an_old_leave_replayed_after_the_member_rejoined_does_not_remove_them() {
        let inv = invite(None);
        let config = RoomConfig::default();
        let a_key = SigningKey::generate(&mut OsRng);
        let m_key = SigningKey::generate(&mut OsRng);
        let f_key = SigningKey::generate(&mut OsRng);
        let km = m_key.verifying_key().to_bytes();
        let (mut a, _) = Room::join(&inv, a_key.clone(), config, NOW, &mut OsRng).unwrap();
        let (mut m, hello) = Room::join(&inv, m_key.clone(), config, NOW, &mut OsRng).unwrap();
        assert_eq!(
            a.handle_message(&hello, NOW).unwrap(),
            [RoomEvent::Joined(km)]
        );
        let bye = m.leave(NOW + 10, &mut OsRng).unwrap();
        assert_eq!(
            a.handle_message(&bye, NOW + 10).unwrap(),
            [RoomEvent::Left(km)]
        );
        let (_, back) = Room::join(&inv, m_key.clone(), config, NOW + 20, &mut OsRng).unwrap();
        assert_eq!(
            a.handle_message(&back, NOW + 20).unwrap(),
            [RoomEvent::Joined(km)]
        );
        // 20 000 presence messages of another member.
        let key = inv.room_key();
        let mut now = NOW + 30;
        for _ in 0..20_000 {
            now += 1;
            let msg = RoomMessage::new(&f_key.verifying_key(), RoomBody::Presence, now, &mut OsRng);
            let sealed = seal_room_message(&key, &f_key, &msg, &mut OsRng).unwrap();
            let _ = a.handle_message(&sealed, now);
        }
        let replayed = a.handle_message(&bye, now + 1);
        assert!(
            !matches!(&replayed, Ok(events) if events.contains(&RoomEvent::Left(km))),
            "{replayed:?}"
        );
        assert!(a.members().get(&km).is_some(), "the member was removed");

        // After a restart: the member's presence, then the old Leave.
        let restart = NOW + 60_000;
        let (mut a2, _) = Room::join(&inv, a_key, config, restart, &mut OsRng).unwrap();
        let msg = RoomMessage::new(
            &m_key.verifying_key(),
            RoomBody::Presence,
            restart,
            &mut OsRng,
        );
        let presence = seal_room_message(&key, &m_key, &msg, &mut OsRng).unwrap();
        assert_eq!(
            a2.handle_message(&presence, restart).unwrap(),
            [RoomEvent::Joined(km)]
        );
        let replayed = a2.handle_message(&bye, restart + 1);
        assert!(
            !matches!(&replayed, Ok(events) if events.contains(&RoomEvent::Left(km))),
            "{replayed:?}"
        );
        assert!(
            a2.members().get(&km).is_some(),
            "the member was removed after a restart"
        );
    }

    #[test]
    fn presence_is_idempotent_and_messages_from_before_the_join_are_refused() {
        let inv = invite(None);
        let config = RoomConfig::default().with_join_grace_ms(0);
        let key = inv.room_key();
        let m_key = SigningKey::generate(&mut OsRng);
        let km = m_key.verifying_key().to_bytes();
        let seal = |body: RoomBody, at: u64| {
            let msg = RoomMessage::new(&m_key.verifying_key(), body, at, &mut OsRng);
            seal_room_message(&key, &m_key, &msg, &mut OsRng).unwrap()
        };
        let before = seal(RoomBody::Text("before".into()), NOW - 1);
        let p1 = seal(RoomBody::Presence, NOW + 1);
        let p2 = seal(RoomBody::Presence, NOW + 2);
        let (mut a, _) = Room::join(
            &inv,
            SigningKey::generate(&mut OsRng),
            config,
            NOW,
            &mut OsRng,
        )
        .unwrap();
        assert!(matches!(
            a.handle_message(&before, NOW + 5),
            Err(RoomError::Stale { .. })
        ));
        assert_eq!(
            a.handle_message(&p2, NOW + 5).unwrap(),
            [RoomEvent::Joined(km)]
        );
        // Older or equal presence changes nothing and never enters the seen set.
        assert!(a.handle_message(&p1, NOW + 5).unwrap().is_empty());
        assert!(a.handle_message(&p2, NOW + 5).unwrap().is_empty());
        assert!(a.guard().seen().is_empty());
        // Resumed after a restart with the stored join time: still refused.
        let (mut b, _) = Room::resume(
            &inv,
            SigningKey::generate(&mut OsRng),
            config,
            NOW,
            NOW + 100,
            &mut OsRng,
        )
        .unwrap();
        assert_eq!(b.guard().joined_at(), NOW);
        assert!(matches!(
            b.handle_message(&before, NOW + 100),
            Err(RoomError::Stale { .. })
        ));
    }

    #[test]
    fn a_message_published_by_another_than_its_signer_is_refused() {
        let inv = invite(None);
        let alice = SigningKey::generate(&mut OsRng);
        let mallory = SigningKey::generate(&mut OsRng).verifying_key().to_bytes();
        let ka = alice.verifying_key().to_bytes();
        let (mut a, _) = Room::join(&inv, alice, RoomConfig::default(), NOW, &mut OsRng).unwrap();
        let (_, sealed) = a.send_text("hi", NOW, &mut OsRng).unwrap();
        let (mut b, _) = Room::join(
            &inv,
            SigningKey::generate(&mut OsRng),
            RoomConfig::default(),
            NOW,
            &mut OsRng,
        )
        .unwrap();
        assert_eq!(
            b.handle_message_from(&sealed, Some(&mallory), NOW),
            Err(RoomError::SenderMismatch)
        );
        assert!(
            b.handle_message_from(&sealed, Some(&ka), NOW)
                .unwrap()
                .len()
                == 2
        );
    }

    #[test]
    fn a_full_seen_set_refuses_new_texts_until_old_ones_age_out() {
        let inv = invite(None);
        let config = RoomConfig::default().with_seen_capacity(2);
        let (mut a, _) = Room::join(
            &inv,
            SigningKey::generate(&mut OsRng),
            config,
            NOW,
            &mut OsRng,
        )
        .unwrap();
        let (mut b, _) = Room::join(
            &inv,
            SigningKey::generate(&mut OsRng),
            config,
            NOW,
            &mut OsRng,
        )
        .unwrap();
        let texts: Vec<_> = (0..4)
            .map(|i| b.send_text(format!("{i}"), NOW + i, &mut OsRng).unwrap().1)
            .collect();
        let delivered = |r: Vec<RoomEvent>| r.iter().any(|e| matches!(e, RoomEvent::Message(_)));
        assert!(delivered(a.handle_message(&texts[0], NOW + 5).unwrap()));
        assert!(delivered(a.handle_message(&texts[1], NOW + 5).unwrap()));
        assert!(
            !delivered(a.handle_message(&texts[2], NOW + 5).unwrap()),
            "full"
        );
        // Once the first two are older than the window, there is room again.
        let later = NOW + 3_600_000 + 2;
        let (_, fresh) = b.send_text("fresh", later, &mut OsRng).unwrap();
        assert!(delivered(a.handle_message(&fresh, later).unwrap()));
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

        // A full list takes no newcomer: nobody who is listed is pushed out.
        let mut members = Members::new(2);
        assert!(members.observe([1; 32], 1));
        assert!(members.observe([2; 32], 2));
        assert!(!members.observe([3; 32], 3));
        assert!(members.get(&[1; 32]).is_some() && members.get(&[3; 32]).is_none());
        assert_eq!(members.len(), 2);
        assert_eq!(members.expire(10, 5, &[2; 32]), [[1; 32]]);
        assert!(members.observe([3; 32], 10));
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

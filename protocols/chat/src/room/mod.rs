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
//!
//! Files: `seal` holds the key and the sealing, `replay` the replay defence, `members` the
//! member list; this file the [`Room`] that ties them together.

mod members;
mod replay;
mod seal;

use ed25519_dalek::SigningKey;
use p2pnode_secure::PeerKey;
use rand_core::CryptoRngCore;
use tracing::debug;

use crate::error::RoomError;
use crate::invite::Invite;

pub use members::{Member, Members};
pub use replay::{Admit, ReplayGuard, SeenSet};
pub use seal::{
    MAX_ROOM_MESSAGE_LEN, ROOM_WIRE_VERSION, RoomBody, RoomKey, RoomMessage, open_room_message,
    seal_room_message,
};

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
mod tests;

//! The replay defence: a time window, the ids of texts seen in it, and each member's
//! latest Presence or Leave.

use std::collections::{BTreeSet, HashMap};

use p2pnode_secure::PeerKey;

use super::{RoomBody, RoomConfig, RoomKey, RoomMessage, open_room_message};
use crate::error::RoomError;
use crate::id::MessageId;

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
/// latest Presence/Leave per member. Kept apart from [`Room`](super::Room) so a node can
/// run it where messages arrive, before deciding whether gossipsub forwards them.
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

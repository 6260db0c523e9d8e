//! The member list, kept fresh by presence messages.

use std::collections::BTreeMap;

use p2pnode_secure::PeerKey;

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
    pub(super) fn next_expiry(&self, timeout_ms: u64, keep: &PeerKey) -> Option<u64> {
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

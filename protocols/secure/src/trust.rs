//! Trust decisions: may this peer, presenting this key, use this protocol?
//!
//! Sans-IO: [`decide`] is a pure function of a stored entry, the key the handshake
//! verified and the protocol asked for. The node implements [`TrustStore`] on its
//! database; [`MemoryTrustStore`] serves tests and simulations.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;

/// An Ed25519 public key as raw bytes.
pub type PeerKey = [u8; 32];

/// What the node knows about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustEntry {
    /// The key the entry was created for (trust on first use).
    pub peer_key: PeerKey,
    /// Set once the users compared the SAS: the key that was verified. From then on any
    /// other key raises an alarm instead of a request.
    pub pinned_key: Option<PeerKey>,
    /// Protocols (e.g. `"chat"`, `"files"`) this peer may use.
    pub allowed_protocols: BTreeSet<String>,
    /// Revoked peers are refused everything, whatever else the entry says.
    pub revoked: bool,
}

impl TrustEntry {
    /// A new, unverified, unrevoked entry allowing nothing yet.
    pub fn new(peer_key: PeerKey) -> Self {
        Self {
            peer_key,
            pinned_key: None,
            allowed_protocols: BTreeSet::new(),
            revoked: false,
        }
    }

    /// Whether the key was verified by SAS comparison.
    pub fn is_verified(&self) -> bool {
        self.pinned_key.is_some()
    }

    /// Marks `key` as verified by SAS comparison.
    pub fn verify(&mut self, key: PeerKey) {
        self.pinned_key = Some(key);
    }

    /// Allows `protocol`, returning the entry for chaining.
    pub fn allow(mut self, protocol: impl Into<String>) -> Self {
        self.allowed_protocols.insert(protocol.into());
        self
    }
}

/// Outcome of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustDecision {
    /// Go ahead.
    Allow,
    /// No entry: ask the user (a chat request, a file offer).
    UnknownPeer,
    /// Known peer, but this protocol was not granted.
    NotAllowed,
    /// The peer was revoked.
    Revoked,
    /// The peer presented a key other than the one stored or verified: raise an alarm.
    KeyChanged,
}

/// Decides access for a peer that authenticated with `presented` and asks for `protocol`.
///
/// Order matters: revocation wins over everything, and a changed key is reported before
/// any permission so that an impostor never gets a mere "not allowed".
pub fn decide(entry: Option<&TrustEntry>, presented: &PeerKey, protocol: &str) -> TrustDecision {
    let Some(entry) = entry else {
        return TrustDecision::UnknownPeer;
    };
    if entry.revoked {
        return TrustDecision::Revoked;
    }
    let pinned_differs = entry.pinned_key.is_some_and(|pinned| pinned != *presented);
    if entry.peer_key != *presented || pinned_differs {
        return TrustDecision::KeyChanged;
    }
    if !entry.allowed_protocols.contains(protocol) {
        return TrustDecision::NotAllowed;
    }
    TrustDecision::Allow
}

/// Storage of trust entries, keyed by an opaque peer id (the node uses `PeerId` bytes).
pub trait TrustStore {
    /// Error of the backing store.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The entry stored for `peer`, if any.
    fn get(&self, peer: &[u8]) -> Result<Option<TrustEntry>, Self::Error>;

    /// Inserts or replaces the entry for `peer`.
    fn put(&mut self, peer: &[u8], entry: TrustEntry) -> Result<(), Self::Error>;

    /// Removes the entry for `peer`; removing a missing entry is not an error.
    fn remove(&mut self, peer: &[u8]) -> Result<(), Self::Error>;

    /// Looks `peer` up and applies [`decide`].
    fn check(
        &self,
        peer: &[u8],
        presented: &PeerKey,
        protocol: &str,
    ) -> Result<TrustDecision, Self::Error> {
        Ok(decide(self.get(peer)?.as_ref(), presented, protocol))
    }
}

/// In-memory [`TrustStore`] for tests and simulations.
#[derive(Debug, Clone, Default)]
pub struct MemoryTrustStore {
    entries: HashMap<Vec<u8>, TrustEntry>,
}

impl TrustStore for MemoryTrustStore {
    type Error = Infallible;

    fn get(&self, peer: &[u8]) -> Result<Option<TrustEntry>, Infallible> {
        Ok(self.entries.get(peer).cloned())
    }

    fn put(&mut self, peer: &[u8], entry: TrustEntry) -> Result<(), Infallible> {
        self.entries.insert(peer.to_vec(), entry);
        Ok(())
    }

    fn remove(&mut self, peer: &[u8]) -> Result<(), Infallible> {
        self.entries.remove(peer);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: PeerKey = [1; 32];
    const MALLORY: PeerKey = [2; 32];

    #[test]
    fn decisions() {
        let entry = TrustEntry::new(ALICE).allow("chat");
        assert_eq!(decide(None, &ALICE, "chat"), TrustDecision::UnknownPeer);
        assert_eq!(decide(Some(&entry), &ALICE, "chat"), TrustDecision::Allow);
        assert_eq!(
            decide(Some(&entry), &ALICE, "tunnel"),
            TrustDecision::NotAllowed
        );
        assert_eq!(
            decide(Some(&entry), &MALLORY, "chat"),
            TrustDecision::KeyChanged
        );

        let mut verified = entry.clone();
        verified.verify(ALICE);
        assert!(verified.is_verified());
        assert_eq!(
            decide(Some(&verified), &ALICE, "chat"),
            TrustDecision::Allow
        );
        // A pin that disagrees with the presented key alarms even if the entry key matches.
        verified.peer_key = MALLORY;
        assert_eq!(
            decide(Some(&verified), &MALLORY, "chat"),
            TrustDecision::KeyChanged
        );

        let revoked = TrustEntry {
            revoked: true,
            ..entry
        };
        assert_eq!(
            decide(Some(&revoked), &MALLORY, "chat"),
            TrustDecision::Revoked
        );
    }

    #[test]
    fn memory_store() -> Result<(), Infallible> {
        let mut store = MemoryTrustStore::default();
        let peer = b"peer-a";
        assert_eq!(
            store.check(peer, &ALICE, "chat")?,
            TrustDecision::UnknownPeer
        );
        store.put(peer, TrustEntry::new(ALICE).allow("chat"))?;
        assert_eq!(store.check(peer, &ALICE, "chat")?, TrustDecision::Allow);
        store.remove(peer)?;
        assert_eq!(store.get(peer)?, None);
        Ok(())
    }
}

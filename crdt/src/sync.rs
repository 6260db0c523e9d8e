//! [`SyncSession`]: automerge's sync protocol for one document and any number of peers,
//! bytes in and bytes out, with no transport.
//!
//! One automerge `sync::State` per peer. Its persistent part (the heads both sides are known
//! to share) is what [`Store::save_session`](crate::Store::save_session) writes, so after a
//! reconnect the first messages only carry what either side is missing.

use std::collections::BTreeMap;

use automerge::ChangeHash;
use automerge::sync::{Message, State, SyncDoc};

use crate::document::{Document, MAX_PEER_ID_LEN};
use crate::error::{Error, Result};

/// Largest sync message [`SyncSession::receive_message`] decodes unless configured otherwise.
/// automerge sends a whole document as one message when a peer lacks most of it, so this is
/// also the largest document a fresh peer can receive.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Most peers one session tracks.
pub const MAX_PEERS: usize = 1024;

/// Largest encoded sync state accepted (it holds the shared heads, 32 bytes each).
pub(crate) const MAX_STATE_BYTES: usize = 1 << 20;

/// What a received message did to the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// How many changes it added.
    pub changes: u64,
    /// The document's heads afterwards.
    pub heads: Vec<ChangeHash>,
}

impl Changed {
    /// Whether the document changed.
    pub fn any(&self) -> bool {
        self.changes > 0
    }
}

#[derive(Debug)]
struct Peer {
    state: State,
    /// The encoded persistent part as last handed to storage, to write only what moved.
    persisted: Option<Vec<u8>>,
}

/// A document and its sync state with each peer; sans-IO.
///
/// Drive it as automerge's own loop does: after connecting, and after every received
/// message or local edit, call [`Self::generate_message`] for the peer and send what it
/// returns; `None` means nothing to send (in sync, or waiting for the peer's answer).
#[derive(Debug)]
pub struct SyncSession {
    doc: Document,
    peers: BTreeMap<Vec<u8>, Peer>,
    max_message: usize,
}

fn check_peer(peer: &[u8]) -> Result<()> {
    if peer.is_empty() || peer.len() > MAX_PEER_ID_LEN {
        return Err(Error::InvalidPeerId(peer.len()));
    }
    Ok(())
}

impl SyncSession {
    /// A session for `doc` with no peers yet.
    pub fn new(doc: Document) -> Self {
        Self {
            doc,
            peers: BTreeMap::new(),
            max_message: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// Sets the largest message [`Self::receive_message`] decodes.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// The document.
    pub fn document(&self) -> &Document {
        &self.doc
    }

    /// The document, to edit it; call [`Self::generate_message`] for each peer afterwards.
    pub fn document_mut(&mut self) -> &mut Document {
        &mut self.doc
    }

    /// The document, dropping the sync states.
    pub fn into_document(self) -> Document {
        self.doc
    }

    /// The peers this session has state for.
    pub fn peers(&self) -> impl Iterator<Item = &[u8]> {
        self.peers.keys().map(Vec::as_slice)
    }

    fn peer(&mut self, peer: &[u8]) -> Result<&mut Peer> {
        check_peer(peer)?;
        if !self.peers.contains_key(peer) && self.peers.len() >= MAX_PEERS {
            return Err(Error::TooManyPeers(MAX_PEERS));
        }
        Ok(self.peers.entry(peer.to_vec()).or_insert_with(|| Peer {
            state: State::new(),
            persisted: None,
        }))
    }

    /// The next message for `peer`, or `None` when there is nothing to send. An invalid
    /// peer id, or a new peer past [`MAX_PEERS`], gets `None` and a warning.
    pub fn generate_message(&mut self, peer: &[u8]) -> Option<Vec<u8>> {
        if let Err(e) = self.peer(peer) {
            tracing::warn!(error = %e, "no sync message");
            return None;
        }
        let state = &mut self.peers.get_mut(peer)?.state;
        let bytes = self.doc.automerge().generate_sync_message(state)?.encode();
        if bytes.len() > self.max_message {
            // automerge does not split messages: a peer with the same limit will refuse it.
            tracing::warn!(
                bytes = bytes.len(),
                max = self.max_message,
                "sync message over the limit"
            );
        }
        Some(bytes)
    }

    /// Applies a message from `peer`. Its size is checked before it is decoded.
    pub fn receive_message(&mut self, peer: &[u8], bytes: &[u8]) -> Result<Changed> {
        if bytes.len() > self.max_message {
            return Err(Error::BadMessage(format!(
                "{} bytes, more than the {} allowed",
                bytes.len(),
                self.max_message
            )));
        }
        let message = Message::decode(bytes).map_err(|e| Error::BadMessage(e.to_string()))?;
        let before = self.doc.change_count();
        self.peer(peer)?;
        let p = self
            .peers
            .get_mut(peer)
            .ok_or(Error::InvalidPeerId(peer.len()))?;
        let result = self
            .doc
            .automerge_mut()
            .receive_sync_message(&mut p.state, message);
        result.map_err(|e| Error::BadMessage(e.to_string()))?;
        let changes = self.doc.change_count() - before;
        if changes > 0 {
            tracing::debug!(changes, "sync message applied");
        }
        Ok(Changed {
            changes,
            heads: self.doc.heads(),
        })
    }

    /// Keeps only what outlives a connection (the shared heads) of `peer`'s state, so the
    /// next connection starts with a fresh exchange that skips what both already have.
    pub fn disconnected(&mut self, peer: &[u8]) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.state = State::decode(&p.state.encode()).unwrap_or_default();
        }
    }

    /// Drops all state for `peer`.
    pub fn forget(&mut self, peer: &[u8]) {
        self.peers.remove(peer);
    }

    /// The persistent part of `peer`'s state, encoded (what the store writes).
    pub fn peer_state(&self, peer: &[u8]) -> Option<Vec<u8>> {
        self.peers.get(peer).map(|p| p.state.encode())
    }

    /// Restores a state written from [`Self::peer_state`].
    pub fn restore_peer(&mut self, peer: &[u8], encoded: &[u8]) -> Result<()> {
        if encoded.len() > MAX_STATE_BYTES {
            return Err(Error::BadMessage(format!(
                "sync state of {} bytes",
                encoded.len()
            )));
        }
        let state = State::decode(encoded).map_err(|e| Error::BadMessage(e.to_string()))?;
        let p = self.peer(peer)?;
        p.state = state;
        p.persisted = Some(encoded.to_vec());
        Ok(())
    }

    /// The states whose persistent part moved since last taken, marked as taken.
    pub(crate) fn take_dirty_states(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for (peer, p) in &mut self.peers {
            let encoded = p.state.encode();
            if p.persisted.as_ref() != Some(&encoded) {
                p.persisted = Some(encoded.clone());
                out.push((peer.clone(), encoded));
            }
        }
        out
    }

    /// Puts states back as not yet written (after a failed save).
    pub(crate) fn mark_unsaved(&mut self, peers: &[Vec<u8>]) {
        for peer in peers {
            if let Some(p) = self.peers.get_mut(peer) {
                p.persisted = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn oversized_and_garbage_messages_are_refused_before_use() {
        let mut s = SyncSession::new(Document::new(b"a").unwrap()).with_max_message_bytes(16);
        assert!(matches!(
            s.receive_message(b"b", &[0x42; 17]),
            Err(Error::BadMessage(_))
        ));
        assert!(matches!(
            s.receive_message(b"b", &[0x42, 1, 2]),
            Err(Error::BadMessage(_))
        ));
        assert!(matches!(
            s.receive_message(b"", &[]),
            Err(Error::BadMessage(_))
        ));
        assert!(s.generate_message(&[0; 200]).is_none());
    }

    #[test]
    fn two_sessions_converge() {
        let mut a = SyncSession::new(Document::new(b"a").unwrap());
        let mut b = SyncSession::new(Document::new(b"b").unwrap());
        a.document_mut().put("x", &json!(1)).unwrap();
        b.document_mut().put("y", &json!(2)).unwrap();
        for _ in 0..10 {
            let ab = a.generate_message(b"b");
            if let Some(m) = &ab {
                b.receive_message(b"a", m).unwrap();
            }
            let ba = b.generate_message(b"a");
            if let Some(m) = &ba {
                a.receive_message(b"b", m).unwrap();
            }
            if ab.is_none() && ba.is_none() {
                break;
            }
        }
        assert_eq!(a.document().heads(), b.document().heads());
        assert_eq!(a.document().get("").unwrap(), json!({"x": 1, "y": 2}));
    }
}

//! What peers we did not accept (message requests) may cost us. Peer ids are free and a
//! message may be 16 KiB, so each requester gets a small quota of stored messages and
//! bytes, at most [`MAX_REQUESTERS`] are pending at once (a new one evicts the oldest,
//! with everything stored for it), and a requester's messages are taken only in order
//! (no reorder buffer). Accepting the peer, or writing to it, lifts the quota.
//!
//! A message over the quota is dropped before its conversation sees it, so it is never
//! acknowledged: the sender keeps it queued and sends it again once we accept it (the
//! wire has no error frame to say so).

use std::collections::HashSet;

use super::*;

/// Messages stored per requester: enough to say who one is and why one writes.
pub(super) const REQUEST_MESSAGES: u64 = 5;
/// Bytes of text stored per requester: a few short messages (one 16 KiB message is
/// refused; the sender can say more once accepted).
pub(super) const REQUEST_BYTES: u64 = 4 * 1024;
/// Requesters pending at once (connected or with stored messages). With the quota this
/// bounds what strangers keep of ours: at most 64 × 4 KiB of text on disk, and 64
/// conversations and streams in memory.
pub(super) const MAX_REQUESTERS: usize = 64;

/// What a requester's stored messages take.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Usage {
    pub(super) messages: u64,
    pub(super) bytes: u64,
}

impl Usage {
    /// Counts a stored message.
    pub(super) fn add(&mut self, body_len: usize) {
        self.messages += 1;
        self.bytes = self.bytes.saturating_add(body_len as u64);
    }

    /// Whether a message of `body_len` bytes still fits the quota.
    fn fits(&self, body_len: usize) -> bool {
        self.messages < REQUEST_MESSAGES
            && self.bytes.saturating_add(body_len as u64) <= REQUEST_BYTES
    }
}

/// Whether `frame` from a requester may reach its conversation: anything but a message
/// does; a message only when it is the next in order and fits the quota (a duplicate
/// does, it only repeats our receipt). Logs what it refuses at debug.
pub(super) fn admits(peer: PeerId, p: &Peer, frame: &Frame) -> bool {
    let Frame::Message(m) = frame else {
        return true;
    };
    let next = p.conv.cursor().delivered_up_to.saturating_add(1);
    if m.last_seq() < next {
        return true;
    }
    if m.seq > next {
        // Buffering out-of-order messages would hold up to the reorder bound (1024 × 16
        // KiB) per requester; the sender sends them again in order.
        tracing::debug!(%peer, seq = m.seq, next, "message request out of order, dropped");
        return false;
    }
    if m.skip_to.is_some() {
        return true; // a placeholder: nothing is stored
    }
    if !p.request_usage.fits(m.body.len()) {
        tracing::debug!(
            %peer,
            seq = m.seq,
            len = m.body.len(),
            stored = p.request_usage.messages,
            bytes = p.request_usage.bytes,
            "message request over its quota, dropped (not acknowledged)"
        );
        return false;
    }
    true
}

impl Service {
    /// `peer` became (or is again) a requester: it joins the pending list, and the oldest
    /// requesters past [`MAX_REQUESTERS`] are forgotten.
    pub(super) fn add_requester(&mut self, peer: PeerId, batch: &mut Batch, after: &mut After) {
        let peers = &self.peers;
        self.requesters.retain(|r| {
            peers
                .get(r)
                .is_some_and(|p| p.admission == Admission::Request)
        });
        if !self.requesters.contains(&peer) {
            self.requesters.push_back(peer);
        }
        while self.requesters.len() > MAX_REQUESTERS {
            if let Some(oldest) = self.requesters.pop_front() {
                tracing::debug!(peer = %oldest, "too many message requests: dropping the oldest");
                self.forget(oldest, batch, after);
            }
        }
    }

    /// Drops everything of requester `peer`: its conversation and stream, its stored
    /// messages and request (in this batch's transaction), and what this batch would
    /// still write or report for it.
    pub(super) fn forget(&mut self, peer: PeerId, batch: &mut Batch, after: &mut After) {
        self.peers.remove(&peer);
        let key = peer.to_string();
        batch.rows.retain(|(p, _, _)| *p != key);
        batch.requests_add.retain(|(p, _)| *p != key);
        batch.forget.push(key.clone());
        after.frames.retain(|(p, _)| *p != peer);
        let about_peer = |e: &ChatEvent| match e {
            ChatEvent::Message(m) => m.peer_id == key,
            ChatEvent::Request { peer_id } | ChatEvent::PeerState { peer_id, .. } => {
                *peer_id == key
            }
            _ => false,
        };
        after.events.retain(|e| !about_peer(e));
        after.early_events.retain(|e| !about_peer(e));
    }

    /// Whether `peer`'s conversation state is worth storing: a requester's only once it
    /// has a stored message (a stranger that merely connects writes nothing to disk).
    pub(super) fn keeps_state(p: &Peer) -> bool {
        p.admission != Admission::Request || p.request_usage.messages > 0
    }

    /// At start: the stored requesters, oldest first, with what their messages take;
    /// past [`MAX_REQUESTERS`] (a database from before the cap) the oldest are forgotten.
    pub(super) async fn restore_requesters(&mut self, requests: Vec<ChatRequest>) {
        let mut requests = requests;
        requests.sort_by_key(|r| r.first_at);
        let mut batch = Batch::default();
        let mut after = After::default();
        let mut seen = HashSet::new();
        for r in requests {
            let Ok(peer) = r.peer_id.parse::<PeerId>() else {
                continue;
            };
            let db = self.db.clone();
            let usage = tokio::task::spawn_blocking(move || db.usage(&peer))
                .await
                .map_err(|e| ChatError::Db(e.into()))
                .and_then(|r| r);
            match (usage, self.peers.get_mut(&peer)) {
                (Ok(usage), Some(p)) => p.request_usage = usage,
                (Err(e), Some(_)) => tracing::warn!(%peer, "chat: cannot read a request: {e}"),
                (_, None) => {
                    // A request without a readable conversation: nothing to show for it.
                    batch.forget.push(peer.to_string());
                    continue;
                }
            }
            if seen.insert(peer) {
                self.add_requester(peer, &mut batch, &mut after);
            }
        }
        if !batch.is_empty() {
            let db = self.db.clone();
            let done = tokio::task::spawn_blocking(move || db.commit(&batch)).await;
            if let Err(e) = done.map_err(DbError::from).and_then(|r| r) {
                tracing::warn!("chat: cannot drop old message requests: {e}");
            }
        }
    }
}

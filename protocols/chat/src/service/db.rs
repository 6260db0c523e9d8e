//! The chat service's tables in the node's database, and the batch of writes that one
//! transaction commits.

use super::*;

pub(super) fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing plain structs into a Vec cannot fail.
    let _ = ciborium::into_writer(value, &mut out);
    out
}

/// A history row as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Row {
    pub(super) id: String,
    pub(super) seq: u64,
    pub(super) outgoing: bool,
    pub(super) sent_at: u64,
    pub(super) body: String,
    pub(super) request: bool,
}

/// The chat service's tables.
#[derive(Clone)]
pub(super) struct ChatDb {
    pub(super) db: Arc<Database>,
}

/// Everything one batch writes, in one transaction.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) snapshots: Vec<(String, Vec<u8>)>,
    pub(super) rows: Vec<(String, u64, Vec<u8>)>,
    pub(super) requests_add: Vec<(String, u64)>,
    pub(super) requests_remove: Vec<String>,
    pub(super) rooms_add: Vec<(String, String)>,
    pub(super) rooms_remove: Vec<String>,
    /// Peers whose conversation, history and request are deleted (before this batch's
    /// other writes, so a peer forgotten and met again in one batch keeps the new rows).
    pub(super) forget: Vec<String>,
}

impl Batch {
    pub(super) fn is_empty(&self) -> bool {
        self.snapshots.is_empty()
            && self.rows.is_empty()
            && self.requests_add.is_empty()
            && self.requests_remove.is_empty()
            && self.rooms_add.is_empty()
            && self.rooms_remove.is_empty()
            && self.forget.is_empty()
    }
}

impl ChatDb {
    pub(super) fn open(db: Arc<Database>) -> Result<Self, ChatError> {
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(CONVERSATIONS).map_err(db_err)?;
        txn.open_table(HISTORY).map_err(db_err)?;
        txn.open_table(REQUESTS).map_err(db_err)?;
        txn.open_table(ROOMS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Self { db })
    }

    pub(super) fn commit(&self, batch: &Batch) -> Result<(), DbError> {
        let txn = self.db.begin_write().map_err(store_err)?;
        {
            let mut convs = txn.open_table(CONVERSATIONS).map_err(store_err)?;
            let mut history = txn.open_table(HISTORY).map_err(store_err)?;
            let mut requests = txn.open_table(REQUESTS).map_err(store_err)?;
            for peer in &batch.forget {
                let peer = peer.as_str();
                convs.remove(peer).map_err(store_err)?;
                requests.remove(peer).map_err(store_err)?;
                history
                    .retain_in((peer, 0)..=(peer, u64::MAX), |_, _| false)
                    .map_err(store_err)?;
            }
            for (peer, snap) in &batch.snapshots {
                convs
                    .insert(peer.as_str(), snap.as_slice())
                    .map_err(store_err)?;
            }
            for (peer, index, row) in &batch.rows {
                history
                    .insert((peer.as_str(), *index), row.as_slice())
                    .map_err(store_err)?;
            }
            for (peer, at) in &batch.requests_add {
                if requests.get(peer.as_str()).map_err(store_err)?.is_none() {
                    requests.insert(peer.as_str(), *at).map_err(store_err)?;
                }
            }
            for peer in &batch.requests_remove {
                requests.remove(peer.as_str()).map_err(store_err)?;
            }
            let mut rooms = txn.open_table(ROOMS).map_err(store_err)?;
            for (id, code) in &batch.rooms_add {
                rooms
                    .insert(id.as_str(), code.as_str())
                    .map_err(store_err)?;
            }
            for id in &batch.rooms_remove {
                rooms.remove(id.as_str()).map_err(store_err)?;
            }
        }
        txn.commit().map_err(store_err)
    }

    /// Every stored conversation with the next free history index of each.
    pub(super) fn load(&self) -> Result<Vec<(PeerId, Snapshot, u64)>, ChatError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let convs = txn.open_table(CONVERSATIONS).map_err(db_err)?;
        let history = txn.open_table(HISTORY).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in convs.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let Ok(peer) = k.value().parse::<PeerId>() else {
                tracing::warn!(
                    key = k.value(),
                    "chat: skipping a conversation with a bad key"
                );
                continue;
            };
            let snap = match Snapshot::decode(v.value()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, "chat: unreadable conversation state: {e}");
                    continue;
                }
            };
            let key = k.value().to_string();
            let next = history
                .range((key.as_str(), 0)..=(key.as_str(), u64::MAX))
                .map_err(db_err)?
                .next_back()
                .transpose()
                .map_err(db_err)?
                .map_or(0, |(k, _)| k.value().1 + 1);
            out.push((peer, snap, next));
        }
        Ok(out)
    }

    pub(super) fn rooms(&self) -> Result<Vec<(String, String)>, ChatError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let rooms = txn.open_table(ROOMS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in rooms.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.push((k.value().to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    /// The last `limit` history rows with `peer`, oldest first.
    pub(super) fn history(
        &self,
        peer: &PeerId,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, ChatError> {
        let key = peer.to_string();
        let txn = self.db.begin_read().map_err(db_err)?;
        let convs = txn.open_table(CONVERSATIONS).map_err(db_err)?;
        // Our own numbering never restarts while this database lives, so an outgoing
        // message is delivered exactly when its seq is covered by the peer's receipts.
        let acked = match convs.get(key.as_str()).map_err(db_err)? {
            Some(v) => {
                Snapshot::decode(v.value())
                    .map_err(corrupt)?
                    .cursor
                    .acked_up_to
            }
            None => 0,
        };
        let history = txn.open_table(HISTORY).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in history
            .range((key.as_str(), 0)..=(key.as_str(), u64::MAX))
            .map_err(db_err)?
            .rev()
            .take(limit)
        {
            let (_, v) = entry.map_err(db_err)?;
            let row: Row = ciborium::from_reader(v.value()).map_err(corrupt)?;
            out.push(message_of(&key, row, acked));
        }
        out.reverse();
        Ok(out)
    }

    /// What `peer`'s stored incoming messages take (a requester's quota use).
    pub(super) fn usage(&self, peer: &PeerId) -> Result<Usage, ChatError> {
        let key = peer.to_string();
        let txn = self.db.begin_read().map_err(db_err)?;
        let history = txn.open_table(HISTORY).map_err(db_err)?;
        let mut usage = Usage::default();
        for entry in history
            .range((key.as_str(), 0)..=(key.as_str(), u64::MAX))
            .map_err(db_err)?
        {
            let (_, v) = entry.map_err(db_err)?;
            let row: Row = ciborium::from_reader(v.value()).map_err(corrupt)?;
            if !row.outgoing {
                usage.add(row.body.len());
            }
        }
        Ok(usage)
    }

    pub(super) fn requests(&self) -> Result<Vec<ChatRequest>, ChatError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let requests = txn.open_table(REQUESTS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in requests.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.push(ChatRequest {
                peer_id: k.value().to_string(),
                first_at: v.value(),
                verified: false,
            });
        }
        Ok(out)
    }
}

pub(super) fn message_of(peer: &str, row: Row, acked: u64) -> ChatMessage {
    ChatMessage {
        peer_id: peer.to_string(),
        id: row.id,
        seq: row.seq,
        outgoing: row.outgoing,
        sent_at: row.sent_at,
        body: row.body,
        delivered: row.outgoing && row.seq <= acked,
        request: row.request,
    }
}

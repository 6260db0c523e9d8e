//! Room replay defence on the node: each joined room's gate task judges every message
//! gossipsub delivers before the owner sees it, stores the ids of accepted texts, and tells
//! gossipsub whether to forward the message (it forwards nothing unjudged).
//!
//! A room's join time and accepted text ids live in the node's database, so a restart
//! neither forgets an id (a captured message republished after the restart stays a
//! duplicate) nor accepts what was sent before we joined. An id is kept until its
//! message would be refused as too old anyway, which bounds the rows per room by the seen
//! capacity ([`RoomConfig::with_seen_capacity`]); rows of rooms we left are dropped at the
//! next join.

use p2pnode_node::event_loop::Validation;

use super::*;
use crate::id::MessageId;
use crate::{Admit, ReplayGuard, RoomBody, RoomError, RoomKey};

/// Rooms' join times: room id (hex) -> unix ms of our first join.
const ROOM_JOINED: TableDefinition<&str, u64> = TableDefinition::new("chat_room_joined");
/// Accepted text ids: (room id, sent_at, message id) -> (). Ordered by time within a
/// room, so the ids that aged out are one range.
const ROOM_SEEN: TableDefinition<(&str, u64, &[u8]), ()> = TableDefinition::new("chat_room_seen");

/// Messages a gate judges together (one transaction for their ids).
const GATE_BATCH: usize = 64;

/// A room's stored replay state.
pub(super) struct Stored {
    pub(super) joined_at: u64,
    pub(super) seen: Vec<(MessageId, u64)>,
}

/// Opens the replay state of room `id` at `now`. A room still listed as joined (a restart)
/// gets its join time and ids back; any other join starts afresh at `now`, dropping old
/// rows of this room and those of rooms no longer joined.
pub(super) fn open_room(
    db: &Database,
    id: &str,
    now: u64,
    max_age_ms: u64,
) -> Result<Stored, ChatError> {
    let txn = db.begin_write().map_err(db_err)?;
    let stored = {
        let rooms = txn.open_table(ROOMS).map_err(db_err)?;
        let mut joined = txn.open_table(ROOM_JOINED).map_err(db_err)?;
        let mut seen = txn.open_table(ROOM_SEEN).map_err(db_err)?;
        let rejoin = rooms.get(id).map_err(db_err)?.is_some();
        let known = joined.get(id).map_err(db_err)?.map(|v| v.value());
        // Rooms left since: their rows are no longer needed.
        let mut gone = Vec::new();
        for entry in joined.iter().map_err(db_err)? {
            let (k, _) = entry.map_err(db_err)?;
            let room = k.value();
            if room == id && rejoin {
                continue;
            }
            if room == id || rooms.get(room).map_err(db_err)?.is_none() {
                gone.push(room.to_string());
            }
        }
        for room in &gone {
            joined.remove(room.as_str()).map_err(db_err)?;
            remove_seen(&mut seen, room, u64::MAX)?;
        }
        match known {
            Some(joined_at) if rejoin => {
                let cutoff = now.saturating_sub(max_age_ms);
                remove_seen(&mut seen, id, cutoff)?;
                let mut ids = Vec::new();
                for entry in seen
                    .range((id, cutoff, &[][..])..=(id, u64::MAX, &[0xff; 32][..]))
                    .map_err(db_err)?
                {
                    let (k, _) = entry.map_err(db_err)?;
                    let (_, sent_at, raw) = k.value();
                    if let Ok(raw) = <[u8; crate::MESSAGE_ID_LEN]>::try_from(raw) {
                        ids.push((MessageId(raw), sent_at));
                    }
                }
                Stored {
                    joined_at,
                    seen: ids,
                }
            }
            _ => {
                joined.insert(id, now).map_err(db_err)?;
                Stored {
                    joined_at: now,
                    seen: Vec::new(),
                }
            }
        }
    };
    txn.commit().map_err(db_err)?;
    Ok(stored)
}

/// Removes room `room`'s ids of messages sent before `cutoff`.
fn remove_seen(
    seen: &mut redb::Table<(&str, u64, &[u8]), ()>,
    room: &str,
    cutoff: u64,
) -> Result<(), ChatError> {
    let keys: Vec<(u64, Vec<u8>)> = seen
        .range((room, 0, &[][..])..(room, cutoff, &[][..]))
        .map_err(db_err)?
        .map(|e| e.map(|(k, _)| (k.value().1, k.value().2.to_vec())))
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    for (t, id) in keys {
        seen.remove((room, t, id.as_slice())).map_err(db_err)?;
    }
    Ok(())
}

/// Stores the ids of texts accepted in `room` and drops those sent before `cutoff`.
fn record(
    db: &Database,
    room: &str,
    ids: &[(MessageId, u64)],
    cutoff: u64,
) -> Result<(), ChatError> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut seen = txn.open_table(ROOM_SEEN).map_err(db_err)?;
        for (id, sent_at) in ids {
            seen.insert((room, *sent_at, &id.0[..]), ())
                .map_err(db_err)?;
        }
        remove_seen(&mut seen, room, cutoff)?;
    }
    txn.commit().map_err(db_err)
}

/// One joined room's gate: between gossipsub and the owner task.
pub(super) struct Gate {
    pub(super) room_id: String,
    pub(super) key: RoomKey,
    pub(super) guard: ReplayGuard,
    pub(super) max_age_ms: u64,
    pub(super) db: Arc<Database>,
    pub(super) client: Client,
}

impl Gate {
    /// Judges the room's messages until the topic or the owner goes away. Accepted texts
    /// are stored before gossipsub is told to forward them and the owner shows them.
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<TopicMessage>,
        tx: mpsc::Sender<(String, TopicMessage)>,
    ) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < GATE_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let now = now_ms();
            let mut fresh = Vec::new();
            let mut verdicts: Vec<(Validation, bool)> = batch
                .iter()
                .map(|m| self.judge(m, now, &mut fresh))
                .collect();
            if !fresh.is_empty() {
                let db = self.db.clone();
                let room = self.room_id.clone();
                let cutoff = now.saturating_sub(self.max_age_ms);
                let stored =
                    tokio::task::spawn_blocking(move || record(&db, &room, &fresh, cutoff))
                        .await
                        .map_err(|e| ChatError::Db(e.into()))
                        .and_then(|r| r);
                if let Err(e) = stored {
                    // Shown but not stored, a text could be replayed after a restart.
                    tracing::error!(
                        room = %self.room_id,
                        "room message ids not stored, messages dropped: {e}"
                    );
                    for (v, text) in &mut verdicts {
                        if *text {
                            *v = Validation::Ignore;
                        }
                    }
                }
            }
            for (m, (v, _)) in batch.into_iter().zip(verdicts) {
                if let Err(e) = self.client.report_topic_message(m.id.clone(), v).await {
                    tracing::debug!("room message verdict not delivered: {e}");
                }
                if v == Validation::Accept && tx.send((self.room_id.clone(), m)).await.is_err() {
                    return;
                }
            }
        }
    }

    /// The verdict on one message, and whether it is a text (stored when accepted).
    fn judge(
        &mut self,
        m: &TopicMessage,
        now: u64,
        fresh: &mut Vec<(MessageId, u64)>,
    ) -> (Validation, bool) {
        // Strict gossipsub validation makes the source present and signed.
        let Some(publisher) = m
            .source
            .and_then(|p| p2pnode_node::peer::verifying_key_of(&p).ok())
            .map(|k| k.to_bytes())
        else {
            return (Validation::Reject, false);
        };
        match self.guard.check(&self.key, &m.data, Some(&publisher), now) {
            Ok((message, Admit::Fresh)) => {
                let text = matches!(message.body, RoomBody::Text(_));
                if text {
                    fresh.push((message.id, message.sent_at));
                }
                (Validation::Accept, text)
            }
            Ok((message, admit)) => {
                tracing::debug!(
                    room = %self.room_id, id = %message.id, ?admit, "room message not taken"
                );
                (Validation::Ignore, false)
            }
            // Late or early, not forged: no blame on whoever forwarded it.
            Err(e @ (RoomError::Stale { .. } | RoomError::Expired { .. })) => {
                tracing::debug!(room = %self.room_id, "room message refused: {e}");
                (Validation::Ignore, false)
            }
            Err(e) => {
                tracing::debug!(
                    room = %self.room_id, source = ?m.source, "room message rejected: {e}"
                );
                (Validation::Reject, false)
            }
        }
    }
}

//! Rooms: joining (and rejoining at start, with the stored join time and ids), timers of
//! conversations and rooms, and the reports rooms produce.

use std::collections::HashSet;

use libp2p::PeerId;

use super::*;
use crate::ReplayGuard;

impl Service {
    pub(super) fn find_room(&mut self, room: &str) -> Option<(String, &mut JoinedRoom)> {
        let room = room.trim();
        let id = if self.rooms.contains_key(room) {
            room.to_string()
        } else {
            self.rooms
                .iter()
                .find(|(_, j)| j.code == room)
                .map(|(id, _)| id.clone())?
        };
        self.rooms.get_mut(&id).map(|j| (id, j))
    }

    pub(super) async fn join_room(
        &mut self,
        code: &str,
        batch: &mut Batch,
        after: &mut After,
    ) -> Result<RoomInfo, ChatError> {
        let now = now_ms();
        let invite = Invite::decode(code, now)
            .map_err(|e| ChatError::Invalid(format!("invalid invite code: {e}")))?;
        let id = hex(&invite.room_id());
        if let Some(j) = self.rooms.get(&id) {
            return Ok(room_info(&id, j));
        }
        if self.rooms.len() >= MAX_ROOMS {
            return Err(ChatError::Invalid(format!(
                "already in {MAX_ROOMS} rooms; leave one first"
            )));
        }
        let config = RoomConfig::default()
            .with_presence_interval_ms(PRESENCE_EVERY_MS)
            .with_member_timeout_ms(MEMBER_TIMEOUT_MS);
        invite
            .room_key()
            .check_expiry(now)
            .map_err(|e| ChatError::Invalid(format!("cannot join the room: {e}")))?;
        // The join time and accepted ids survive restarts (room_store).
        let db = self.db.db.clone();
        let room_id = id.clone();
        let max_age = config.max_age_ms();
        let stored =
            tokio::task::spawn_blocking(move || room_store::open_room(&db, &room_id, now, max_age))
                .await
                .map_err(|e| ChatError::Db(e.into()))??;
        let (room, presence) = Room::resume(
            &invite,
            self.signer.clone(),
            config,
            stored.joined_at,
            now,
            &mut rand::rngs::OsRng,
        )
        .map_err(|e| ChatError::Invalid(format!("cannot join the room: {e}")))?;
        let mut guard = ReplayGuard::new(&config, stored.joined_at, now);
        for (msg_id, sent_at) in stored.seen {
            guard.remember(msg_id, sent_at, now);
        }
        let topic = room.topic().to_string();
        let rx = self.client.join_topic(&topic, ROOM_QUEUE).await?;
        // Every message passes the room's gate, which stores accepted ids and tells
        // gossipsub whether to forward it, before the owner sees it.
        let gate = room_store::Gate {
            room_id: id.clone(),
            key: room.key().clone(),
            guard,
            max_age_ms: max_age,
            db: self.db.db.clone(),
            client: self.client.clone(),
        };
        let forwarder = spawn(gate.run(rx, self.room_tx.clone())).abort_handle();
        // The creator is a good first member to know; best effort.
        if let Some(creator) = invite.creator().and_then(|b| PeerId::from_bytes(b).ok())
            && creator != self.me
        {
            let client = self.client.clone();
            spawn(async move {
                if let Err(e) = client.connect_peer(creator).await {
                    tracing::debug!(%creator, "room creator not reachable: {e}");
                }
            });
        }
        after.publish.push((topic, presence));
        batch.rooms_add.push((id.clone(), code.to_string()));
        let joined = JoinedRoom {
            room,
            code: code.to_string(),
            forwarder,
        };
        let info = room_info(&id, &joined);
        self.rooms.insert(id, joined);
        Ok(info)
    }

    /// Whether [`Self::tick`] has anything to do, now or later: a conversation waiting on
    /// its timer, a peer with queued messages and no stream, a room.
    pub(super) fn has_timed_work(&self) -> bool {
        self.peers
            .values()
            .any(|p| p.conv.poll_timeout().is_some() || Self::waiting_for_a_stream(p))
            || self.rooms.values().any(|r| r.room.poll_timeout().is_some())
    }

    /// A peer the tick tries to reach: messages queued, no stream, not blocked.
    fn waiting_for_a_stream(p: &Peer) -> bool {
        p.link.is_none() && p.conv.outbox().len() > 0 && p.admission != Admission::Block
    }

    pub(super) fn tick(
        &mut self,
        now: u64,
        batch: &mut Batch,
        after: &mut After,
        dirty: &mut HashSet<PeerId>,
    ) {
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.conv.poll_timeout().is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for peer in due {
            if let Some(p) = self.peers.get_mut(&peer) {
                let out = p.conv.handle_timeout(now);
                dirty.insert(peer);
                self.outputs(peer, out, now, batch, after);
            }
        }
        // Offline peers with queued messages: try again (cheap when unreachable, since
        // at most one attempt per peer runs at a time).
        let waiting: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| Self::waiting_for_a_stream(p))
            .map(|(k, _)| *k)
            .collect();
        for peer in waiting {
            self.try_open(peer, false);
        }
        let mut expired = Vec::new();
        for (id, joined) in &mut self.rooms {
            if joined.room.poll_timeout().is_some_and(|t| t <= now) {
                for o in joined.room.handle_timeout(now, &mut rand::rngs::OsRng) {
                    match o {
                        RoomOutput::Publish(bytes) => {
                            after.publish.push((joined.room.topic().to_string(), bytes));
                        }
                        RoomOutput::Event(RoomEvent::Expired) => {
                            expired.push(id.clone());
                            after.events.push(room_event(
                                id,
                                joined.room.name(),
                                RoomEvent::Expired,
                            ));
                        }
                        RoomOutput::Event(e) => {
                            after.events.push(room_event(id, joined.room.name(), e));
                        }
                    }
                }
            }
        }
        for id in expired {
            if let Some(joined) = self.rooms.remove(&id) {
                let client = self.client.clone();
                let topic = joined.room.topic().to_string();
                spawn(async move {
                    let _ = client.leave_topic(&topic).await;
                });
                batch.rooms_remove.push(id);
            }
        }
    }
}

pub(super) fn not_joined(room: &str) -> ChatError {
    ChatError::Invalid(format!(
        "not in a room {room:?}; join it with its invite code first"
    ))
}

pub(super) fn room_info(id: &str, joined: &JoinedRoom) -> RoomInfo {
    RoomInfo {
        room_id: id.to_string(),
        name: joined.room.name().to_string(),
        code: joined.code.clone(),
        expires_at: joined.room.key().expires_at(),
        members: joined
            .room
            .members()
            .iter()
            .map(|m| member_id(&m.key))
            .collect(),
    }
}

pub(super) fn room_event(room_id: &str, name: &str, e: RoomEvent) -> ChatEvent {
    match e {
        RoomEvent::Message(m) => ChatEvent::RoomMessage(RoomMessageInfo {
            room_id: room_id.to_string(),
            room: name.to_string(),
            sender: member_id(&m.sender),
            id: m.id.to_string(),
            sent_at: m.sent_at,
            body: match m.body {
                crate::RoomBody::Text(t) => t,
                _ => String::new(),
            },
        }),
        RoomEvent::Joined(k) => ChatEvent::MemberJoined {
            room_id: room_id.to_string(),
            member: member_id(&k),
        },
        RoomEvent::Left(k) => ChatEvent::MemberLeft {
            room_id: room_id.to_string(),
            member: member_id(&k),
        },
        RoomEvent::Expired => ChatEvent::RoomExpired {
            room_id: room_id.to_string(),
        },
    }
}

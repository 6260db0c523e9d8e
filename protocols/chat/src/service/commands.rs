//! The handle's commands, applied by the owner task inside a batch.

use std::collections::HashSet;

use libp2p::PeerId;

use super::*;

impl Service {
    pub(super) async fn command(
        &mut self,
        cmd: Command,
        now: u64,
        batch: &mut Batch,
        after: &mut After,
        dirty: &mut HashSet<PeerId>,
    ) {
        match cmd {
            Command::Send { peer, body, reply } => {
                let p = self.peer(peer);
                if p.admission == Admission::Block {
                    let _ = reply.send(Err(ChatError::Node(NodeError::Revoked {
                        peer: peer.to_string(),
                    })));
                    return;
                }
                let (message, out) = match p.conv.send(body, now, &mut rand::rngs::OsRng) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = reply.send(Err(ChatError::Invalid(e.to_string())));
                        return;
                    }
                };
                // Writing to someone answers their request.
                if p.admission == Admission::Request {
                    p.admission = Admission::Accept;
                    batch.requests_remove.push(peer.to_string());
                }
                let row = Row {
                    id: message.id.to_string(),
                    seq: message.seq,
                    outgoing: true,
                    sent_at: message.sent_at,
                    body: message.body,
                    request: false,
                };
                batch
                    .rows
                    .push((peer.to_string(), p.next_index, cbor(&row)));
                p.next_index += 1;
                dirty.insert(peer);
                let stored = message_of(&peer.to_string(), row, 0);
                after.events.push(ChatEvent::Sent(stored.clone()));
                after.replies.push(Box::new(move |r| {
                    let _ = reply.send(r.map(|()| stored).map_err(|e| DbError::Batch(e).into()));
                }));
                let online = p.link.is_some();
                self.outputs(peer, out, now, batch, after);
                if !online {
                    self.try_open(peer, true);
                }
            }
            Command::State { peer, reply } => {
                let state = match self.peers.get(&peer) {
                    Some(p) => ChatPeerState {
                        peer_id: peer.to_string(),
                        known: true,
                        online: p.conv.is_online(),
                        connected: false,
                        path: None,
                        verified: false,
                        queued: p.conv.outbox().len(),
                        request: p.admission == Admission::Request,
                        blocked: p.admission == Admission::Block,
                    },
                    None => ChatPeerState {
                        peer_id: peer.to_string(),
                        ..ChatPeerState::default()
                    },
                };
                let _ = reply.send(state);
            }
            Command::Admission {
                peer,
                admission,
                reply,
            } => {
                let p = self.peer(peer);
                p.admission = admission;
                if admission == Admission::Block {
                    p.link = None;
                    p.conv.disconnected();
                }
                dirty.insert(peer);
                batch.requests_remove.push(peer.to_string());
                after.replies.push(Box::new(move |_| {
                    let _ = reply.send(());
                }));
            }
            Command::RoomJoin { code, reply } => {
                let r = self.join_room(&code, batch, after).await;
                let _ = reply.send(r);
            }
            Command::RoomSend { room, body, reply } => {
                let me = self.me;
                let client = self.client.clone();
                let Some((id, joined)) = self.find_room(&room) else {
                    let _ = reply.send(Err(not_joined(&room)));
                    return;
                };
                match joined
                    .room
                    .send_text(body.clone(), now, &mut rand::rngs::OsRng)
                {
                    Ok((message, sealed)) => {
                        let topic = joined.room.topic().to_string();
                        let info = RoomMessageInfo {
                            room_id: id.clone(),
                            room: joined.room.name().to_string(),
                            sender: me.to_string(),
                            id: message.id.to_string(),
                            sent_at: message.sent_at,
                            body,
                        };
                        // Published right away (not after the batch) so the caller
                        // learns whether any member could be reached.
                        match client.publish(&topic, sealed).await {
                            Ok(()) => {
                                let _ = reply.send(Ok(info));
                            }
                            Err(e) => {
                                let _ = reply.send(Err(ChatError::Invalid(format!(
                                    "no room member reachable yet ({e}); try again in a moment"
                                ))));
                            }
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ChatError::Invalid(e.to_string())));
                    }
                }
            }
            Command::RoomInfo { room, reply } => {
                let r = match self.find_room(&room) {
                    Some((id, j)) => Ok(room_info(&id, j)),
                    None => Err(not_joined(&room)),
                };
                let _ = reply.send(r);
            }
            Command::RoomLeave { room, reply } => {
                let Some((id, _)) = self.find_room(&room) else {
                    let _ = reply.send(Err(not_joined(&room)));
                    return;
                };
                if let Some(mut joined) = self.rooms.remove(&id) {
                    let topic = joined.room.topic().to_string();
                    if let Ok(bye) = joined.room.leave(now, &mut rand::rngs::OsRng) {
                        let _ = self.client.publish(&topic, bye).await;
                    }
                    let _ = self.client.leave_topic(&topic).await;
                    batch.rooms_remove.push(id);
                }
                after.replies.push(Box::new(move |r| {
                    let _ = reply.send(r.map_err(|e| DbError::Batch(e).into()));
                }));
            }
        }
    }
}

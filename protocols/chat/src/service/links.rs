//! Inputs that concern 1:1 conversations: restoring them at start, frames and closes
//! from stream tasks, streams we opened or accepted (one live stream per peer, with a
//! symmetric tie-break), and the state machines' outputs.

use std::collections::HashSet;

use libp2p::PeerId;

use super::*;

impl Service {
    pub(super) async fn restore(&mut self) {
        let db = self.db.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            db.load().map(|c| {
                (
                    c,
                    db.rooms().unwrap_or_default(),
                    db.requests().unwrap_or_default(),
                )
            })
        })
        .await
        .map_err(|e| ChatError::Db(e.into()))
        .and_then(|r| r);
        let (convs, rooms, requests) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!("chat: cannot load conversations: {e}");
                return;
            }
        };
        let pending: HashSet<String> = requests.iter().map(|r| r.peer_id.clone()).collect();
        for (peer, snap, next_index) in convs {
            // An unanswered request stays one across restarts.
            let admission = if pending.contains(&peer.to_string()) {
                Admission::Request
            } else {
                Admission::Accept
            };
            let durable_reserved = snap.cursor.reserved_up_to;
            match Conversation::restore(ConvConfig::default(), snap) {
                Ok(conv) => {
                    self.peers.insert(
                        peer,
                        Peer {
                            durable_reserved,
                            conv,
                            admission,
                            link: None,
                            opening: false,
                            last_attempt: None,
                            next_index,
                            request_usage: Usage::default(),
                        },
                    );
                }
                Err(e) => tracing::warn!(%peer, "chat: cannot restore conversation: {e}"),
            }
        }
        self.restore_requesters(requests).await;
        tracing::info!(
            conversations = self.peers.len(),
            requests = self.requesters.len(),
            "chat: conversations restored"
        );
        for (_, code) in rooms {
            let mut batch = Batch::default();
            let mut after = After::default();
            if let Err(e) = self.join_room(&code, &mut batch, &mut after).await {
                tracing::warn!("chat: cannot rejoin a room: {e}");
            }
            self.finish(Ok(()), after).await;
        }
    }

    pub(super) fn peer(&mut self, peer: PeerId) -> &mut Peer {
        self.peers.entry(peer).or_insert_with(|| Peer {
            conv: Conversation::new(ConvConfig::default(), &mut rand::rngs::OsRng),
            admission: Admission::Accept,
            link: None,
            opening: false,
            last_attempt: None,
            next_index: 0,
            durable_reserved: 0,
            request_usage: Usage::default(),
        })
    }

    pub(super) async fn handle(
        &mut self,
        input: Input,
        batch: &mut Batch,
        after: &mut After,
        dirty: &mut HashSet<PeerId>,
    ) {
        let now = now_ms();
        match input {
            Input::Command(cmd) => self.command(cmd, now, batch, after, dirty).await,
            Input::Inbound(Inbound::Frame { peer, link, frame }) => {
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                if p.link.as_ref().map(|l| l.id) != Some(link) {
                    return; // from a stream that was replaced
                }
                if p.admission == Admission::Block || p.admission == Admission::KeyChanged {
                    return;
                }
                if p.admission == Admission::Request && !strangers::admits(peer, p, &frame) {
                    return;
                }
                let out = p.conv.handle_frame(frame, now);
                dirty.insert(peer);
                self.outputs(peer, out, now, batch, after);
            }
            Input::Inbound(Inbound::Closed { peer, link, reason }) => {
                if let Some(p) = self.peers.get_mut(&peer)
                    && p.link.as_ref().map(|l| l.id) == Some(link)
                {
                    tracing::debug!(%peer, %reason, "chat stream closed");
                    p.link = None;
                    p.conv.disconnected();
                    after.events.push(ChatEvent::PeerState {
                        peer_id: peer.to_string(),
                        online: false,
                    });
                }
            }
            Input::Opened(Opened::Ok(peer, stream)) => {
                self.peer(peer).opening = false;
                // Trust was checked before the dial and the handshake: a block since wins.
                match self.trust_now(peer).await {
                    Some(Admission::Block | Admission::KeyChanged) | None => {
                        tracing::info!(%peer, "chat stream dropped: the peer is no longer trusted");
                    }
                    Some(_) => {
                        self.attach(
                            peer,
                            *stream,
                            true,
                            Admission::Accept,
                            now,
                            batch,
                            after,
                            dirty,
                        );
                    }
                }
            }
            Input::Opened(Opened::Failed(peer, reason)) => {
                let p = self.peer(peer);
                p.opening = false;
                tracing::debug!(%peer, "chat: peer not reachable now: {reason}");
            }
            Input::Accepted(a) => {
                let a = *a;
                // The node decided before the handshake and the queue to us; what the
                // trust store says now (a block or an accept in between) is what counts.
                let Some(admission) = self.trust_now(a.peer).await else {
                    return;
                };
                match admission {
                    Admission::Block | Admission::KeyChanged => {
                        tracing::info!(peer = %a.peer, ?admission, "chat stream refused");
                    }
                    Admission::Accept | Admission::Request => {
                        self.attach(a.peer, a.stream, false, admission, now, batch, after, dirty);
                    }
                }
            }
            Input::Room(room_id, message) => {
                let Some(joined) = self.rooms.get_mut(&room_id) else {
                    return;
                };
                match joined.room.handle_message(&message.data, now) {
                    Ok(events) => {
                        for e in events {
                            after
                                .events
                                .push(room_event(&room_id, joined.room.name(), e));
                        }
                    }
                    Err(e) => tracing::debug!(room = %room_id, "room message dropped: {e}"),
                }
            }
            Input::Tick => self.tick(now, batch, after, dirty),
        }
    }

    /// Takes a stream to `peer` (opened by us when `outbound`) as its link, unless the
    /// peer is blocked or the stream loses the tie-break.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attach(
        &mut self,
        peer: PeerId,
        stream: p2pnode_secure::SecureStream<libp2p::Stream>,
        outbound: bool,
        admission: Admission,
        now: u64,
        batch: &mut Batch,
        after: &mut After,
        dirty: &mut HashSet<PeerId>,
    ) {
        let Some(preferred) = self.admit_link(peer, outbound, admission, batch, after) else {
            return;
        };
        let id = self.next_link;
        self.next_link += 1;
        let inbound_tx = self.inbound_tx.clone();
        let (session_io, session) = stream.into_parts();
        let session = Arc::new(Mutex::new(session));
        let (read, write) = session_io.split();
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let max = session
            .lock()
            .map(|s| s.config().max_frame_len())
            .unwrap_or(0);
        let reader = spawn(read_frames(
            peer,
            id,
            read,
            session.clone(),
            max,
            inbound_tx.clone(),
        ))
        .abort_handle();
        spawn(write_frames(peer, id, write, session, rx, inbound_tx));
        let link = Link {
            id,
            preferred,
            opened: Instant::now(),
            writer: tx,
            reader,
        };
        self.install_link(peer, link, now, after, dirty);
    }

    /// Whether a new stream to `peer` is to become its link (`Some(preferred)`), setting
    /// the peer's admission from it; a new requester may evict the oldest one.
    pub(super) fn admit_link(
        &mut self,
        peer: PeerId,
        outbound: bool,
        admission: Admission,
        batch: &mut Batch,
        after: &mut After,
    ) -> Option<bool> {
        let me = self.me;
        let p = self.peer(peer);
        if matches!(p.admission, Admission::Block | Admission::KeyChanged)
            && admission != Admission::Accept
        {
            return None;
        }
        // An outbound stream means we chose to talk, and so does having written to the
        // peer; otherwise the trust store's word for this stream decides.
        let we_wrote = p.conv.cursor().next_seq > 1;
        if outbound || admission == Admission::Accept || !we_wrote {
            p.admission = admission;
        }
        let preferred = preferred(me, peer, outbound);
        if let Some(old) = &p.link
            && old.preferred
            && !preferred
            && old.opened.elapsed() < TIE_WINDOW
        {
            tracing::debug!(%peer, "simultaneous chat streams: keeping the preferred one");
            return None;
        }
        if p.admission == Admission::Request {
            self.add_requester(peer, batch, after);
        }
        Some(preferred)
    }

    /// Makes `link` the peer's live stream (replacing any older one) and says hello.
    pub(super) fn install_link(
        &mut self,
        peer: PeerId,
        link: Link,
        now: u64,
        after: &mut After,
        dirty: &mut HashSet<PeerId>,
    ) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.link.is_some() {
            p.conv.disconnected();
        }
        p.link = Some(link);
        let out = p.conv.connected(now);
        dirty.insert(peer);
        after.events.push(ChatEvent::PeerState {
            peer_id: peer.to_string(),
            online: true,
        });
        for o in out {
            if let Output::Send(f) = o {
                after.frames.push((peer, f));
            }
        }
    }

    /// The peer's admission as the trust store has it now, or `None` (logged) when it
    /// cannot be read.
    pub(super) async fn trust_now(&self, peer: PeerId) -> Option<Admission> {
        use p2pnode_secure::TrustStore;
        let key = match p2pnode_node::peer::verifying_key_of(&peer) {
            Ok(k) => k.to_bytes(),
            Err(e) => {
                tracing::warn!(%peer, "chat: no trust decision: {e}");
                return None;
            }
        };
        let trust = self.trust.clone();
        let checked = tokio::task::spawn_blocking(move || {
            trust.check(&peer.to_bytes(), &key, crate::PROTOCOL)
        })
        .await;
        match checked {
            Ok(Ok(decision)) => Some(admit(decision)),
            Ok(Err(e)) => {
                tracing::warn!(%peer, "chat: cannot read the trust store: {e}");
                None
            }
            Err(e) => {
                tracing::warn!(%peer, "chat: trust check did not finish: {e}");
                None
            }
        }
    }

    pub(super) fn outputs(
        &mut self,
        peer: PeerId,
        out: Vec<Output>,
        now: u64,
        batch: &mut Batch,
        after: &mut After,
    ) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let key = peer.to_string();
        for o in out {
            match o {
                Output::Send(f) => after.frames.push((peer, f)),
                Output::Deliver(m) => {
                    let request = p.admission == Admission::Request;
                    if request {
                        p.request_usage.add(m.body.len());
                    }
                    let row = Row {
                        id: m.id.to_string(),
                        seq: m.seq,
                        outgoing: false,
                        sent_at: m.sent_at,
                        body: m.body,
                        request,
                    };
                    batch.rows.push((key.clone(), p.next_index, cbor(&row)));
                    p.next_index += 1;
                    let event = ChatEvent::Message(message_of(&key, row, 0));
                    if request {
                        batch.requests_add.push((key.clone(), now));
                        after.events.push(ChatEvent::Request {
                            peer_id: key.clone(),
                        });
                        after.events.push(event);
                    } else {
                        after.early_events.push(event);
                    }
                }
                Output::Delivered { up_to_seq, ids } => {
                    after.events.push(ChatEvent::Delivered {
                        peer_id: key.clone(),
                        up_to_seq,
                        ids: ids.iter().map(ToString::to_string).collect(),
                    });
                }
            }
        }
    }

    /// Starts opening a stream to `peer` unless one is open or being opened.
    pub(super) fn try_open(&mut self, peer: PeerId, now: bool) {
        let client = self.client.clone();
        let tx = self.opened_tx.clone();
        let p = self.peer(peer);
        if p.link.is_some() || p.opening {
            return;
        }
        if !now && p.last_attempt.is_some_and(|t| t.elapsed() < RETRY_EVERY) {
            return;
        }
        p.opening = true;
        p.last_attempt = Some(Instant::now());
        spawn(async move {
            let protocol = StreamProtocol::new(crate::STREAM_PROTOCOL);
            let opened = tokio::time::timeout(
                OPEN_TIMEOUT,
                client.open_secure(peer, protocol, crate::PROTOCOL),
            )
            .await;
            let result = match opened {
                Ok(Ok(stream)) => Opened::Ok(peer, Box::new(stream)),
                Ok(Err(e)) => Opened::Failed(peer, e.to_string()),
                Err(_) => Opened::Failed(peer, "timed out".into()),
            };
            let _ = tx.send(result).await;
        });
    }
}

/// Whether a stream between `me` and `peer` was opened by the smaller peer id, the
/// winner when both open at once (both ends compute the same answer).
pub(super) fn preferred(me: PeerId, peer: PeerId, outbound: bool) -> bool {
    (me < peer) == outbound
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pnode_secure::TrustDecision;

    #[test]
    fn tie_break_is_symmetric() {
        let a = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let b = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        // The stream a opens to b is preferred on both ends, or on neither; and exactly
        // one of the two possible streams is.
        assert_eq!(preferred(a, b, true), preferred(b, a, false));
        assert_eq!(preferred(b, a, true), preferred(a, b, false));
        assert_ne!(preferred(a, b, true), preferred(b, a, true));
        assert_eq!(admit(TrustDecision::UnknownPeer), Admission::Request);
    }
}

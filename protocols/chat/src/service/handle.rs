//! [`ChatHandle`]: what callers (the control routes, the CLI's embedded node, tests) use
//! to ask the chat service for work.

use super::*;

/// A cloneable handle to the chat service.
#[derive(Clone)]
pub struct ChatHandle {
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) events: Events,
    pub(super) db: ChatDb,
    pub(super) client: Client,
}

impl std::fmt::Debug for ChatHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatHandle")
    }
}

impl ChatHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ChatError> {
        Ok(p2pnode_node::ask(&self.commands, make).await?)
    }

    /// Queues a message to `peer`; returns it once it is stored (it is delivered when the
    /// peer is reachable, now or later).
    pub async fn send(&self, peer: PeerId, body: String) -> Result<ChatMessage, ChatError> {
        if body.len() > MAX_BODY_LEN {
            return Err(ChatError::Invalid(format!(
                "message is {} bytes; the limit is {MAX_BODY_LEN} bytes",
                body.len()
            )));
        }
        if peer == self.client.peer_id() {
            return Err(NodeError::SelfDial.into());
        }
        self.ask(|reply| Command::Send { peer, body, reply })
            .await?
    }

    /// The last `limit` messages with `peer`, oldest first.
    pub async fn history(&self, peer: PeerId, limit: usize) -> Result<Vec<ChatMessage>, ChatError> {
        let db = self.db.clone();
        let limit = limit.clamp(1, MAX_HISTORY);
        tokio::task::spawn_blocking(move || db.history(&peer, limit))
            .await
            .map_err(DbError::from)?
    }

    /// Pending message requests, each marked verified only when the trust store holds
    /// a verified key for that very peer id.
    pub async fn requests(&self) -> Result<Vec<ChatRequest>, ChatError> {
        let db = self.db.clone();
        let mut requests = tokio::task::spawn_blocking(move || db.requests())
            .await
            .map_err(DbError::from)??;
        let verified: std::collections::HashSet<String> = self
            .client
            .trust_list()
            .await?
            .into_iter()
            .filter(|t| t.verified)
            .map(|t| t.peer_id)
            .collect();
        for r in &mut requests {
            r.verified = verified.contains(&r.peer_id);
        }
        Ok(requests)
    }

    /// Accepts `peer`'s request: chat is allowed from now on.
    pub async fn accept(&self, peer: PeerId) -> Result<ChatPeerState, ChatError> {
        self.client.allow(peer, &["chat".to_string()]).await?;
        self.ask(|reply| Command::Admission {
            peer,
            admission: Admission::Accept,
            reply,
        })
        .await?;
        self.state(peer).await
    }

    /// Blocks `peer`: revoked in the trust store, its stream closed, its messages dropped.
    pub async fn block(&self, peer: PeerId) -> Result<ChatPeerState, ChatError> {
        self.client.revoke(peer).await?;
        self.ask(|reply| Command::Admission {
            peer,
            admission: Admission::Block,
            reply,
        })
        .await?;
        self.state(peer).await
    }

    /// The conversation's state (online, path, verified, queued).
    pub async fn state(&self, peer: PeerId) -> Result<ChatPeerState, ChatError> {
        let mut state = self.ask(|reply| Command::State { peer, reply }).await?;
        if let Some(info) = self
            .client
            .peers()
            .await?
            .into_iter()
            .find(|p| p.peer_id == state.peer_id)
        {
            state.connected = true;
            state.path = Some(info.path);
        }
        state.verified = self
            .client
            .trust_list()
            .await?
            .iter()
            .any(|t| t.peer_id == state.peer_id && t.verified);
        Ok(state)
    }

    /// Tries to reach `peer` (DHT lookup and dial); succeeds when connected, or when the
    /// conversation already exists (messages then wait in the queue). An unknown peer
    /// that cannot be reached is an error.
    pub async fn open(&self, peer: PeerId) -> Result<ChatPeerState, ChatError> {
        if peer == self.client.peer_id() {
            return Err(NodeError::SelfDial.into());
        }
        let reached = tokio::time::timeout(OPEN_TIMEOUT, self.client.connect_peer(peer)).await;
        let state = self.state(peer).await?;
        match reached {
            Ok(Ok(_)) => Ok(state),
            Ok(Err(_)) | Err(_) if state.known => Ok(state),
            // Addresses were found but none answered: a real peer that is offline now.
            Ok(Err(NodeError::Unreachable { .. })) => Ok(state),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(NodeError::Timeout {
                what: format!("reaching {peer}"),
                secs: OPEN_TIMEOUT.as_secs(),
            }
            .into()),
        }
    }

    /// Chat events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ChatEvent> {
        self.events.subscribe()
    }

    /// Creates a room and joins it; the returned info carries the invite code.
    pub async fn room_create(
        &self,
        name: &str,
        ttl: Option<Duration>,
    ) -> Result<RoomInfo, ChatError> {
        let invite = Invite::new(
            name,
            ttl,
            now_ms(),
            Some(self.client.peer_id().to_bytes()),
            &mut rand::rngs::OsRng,
        )
        .map_err(|e| ChatError::Invalid(format!("cannot create the room: {e}")))?;
        self.room_join(&invite.encode()).await
    }

    /// Joins the room of an invite code.
    pub async fn room_join(&self, code: &str) -> Result<RoomInfo, ChatError> {
        let code = code.trim().to_string();
        Invite::decode(&code, now_ms())
            .map_err(|e| ChatError::Invalid(format!("invalid invite code: {e}")))?;
        self.ask(|reply| Command::RoomJoin { code, reply }).await?
    }

    /// Sends a text message to a joined room (by room id or invite code).
    pub async fn room_send(&self, room: &str, body: String) -> Result<RoomMessageInfo, ChatError> {
        if body.len() > MAX_BODY_LEN {
            return Err(ChatError::Invalid(format!(
                "message is {} bytes; the limit is {MAX_BODY_LEN} bytes",
                body.len()
            )));
        }
        let room = room.to_string();
        self.ask(|reply| Command::RoomSend { room, body, reply })
            .await?
    }

    /// A joined room's name, id and members.
    pub async fn room_info(&self, room: &str) -> Result<RoomInfo, ChatError> {
        let room = room.to_string();
        self.ask(|reply| Command::RoomInfo { room, reply }).await?
    }

    /// Leaves a room (says goodbye, unsubscribes, forgets it).
    pub async fn room_leave(&self, room: &str) -> Result<(), ChatError> {
        let room = room.to_string();
        self.ask(|reply| Command::RoomLeave { room, reply }).await?
    }
}

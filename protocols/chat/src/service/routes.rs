//! Chat's control routes (`/v1/chat/...`, `/v1/room/...`), served on the node's control
//! socket through the protocol contract.

use p2pnode_node::control::{ControlReply, ControlRequest, Method};
use p2pnode_node::{NodeError, parse_peer_id};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use super::{ChatError, ChatHandle};
use crate::api::{
    ChatEvent, ChatHistoryRequest, ChatRequestAction, ChatSendRequest, RoomCreateRequest,
    RoomJoinRequest, RoomSendRequest, routes,
};

/// Longest room time-to-live accepted (a year).
const MAX_ROOM_TTL_SECS: u64 = 365 * 24 * 3600;
/// Most history rows returned when the request names no limit.
const DEFAULT_HISTORY: usize = 10_000;

/// Serves one request under chat's prefixes.
pub(super) async fn serve(chat: &ChatHandle, req: ControlRequest) -> ControlReply {
    match route(chat, &req).await {
        Ok(reply) => reply,
        Err(e) => ControlReply::error(&e),
    }
}

fn ok<T: Serialize>(value: &T) -> ControlReply {
    ControlReply::ok(value)
}

async fn route(chat: &ChatHandle, req: &ControlRequest) -> Result<ControlReply, ChatError> {
    use Method::{Get, Post};
    Ok(match (req.method(), req.route()) {
        (Get, routes::EVENTS) => events(chat),
        (Post, routes::SEND) => {
            let r = req.json::<ChatSendRequest>()?;
            ok(&chat.send(parse_peer_id(&r.peer_id)?, r.body).await?)
        }
        (Get, routes::HISTORY) => {
            let peer = req
                .query("peer")
                .ok_or_else(|| NodeError::InvalidInput("missing ?peer=<peer-id>".to_string()))?;
            let limit = match req.query("limit") {
                Some(l) => l
                    .parse()
                    .map_err(|_| NodeError::InvalidInput(format!("invalid limit {l:?}")))?,
                None => DEFAULT_HISTORY,
            };
            ok(&chat.history(parse_peer_id(&peer)?, limit).await?)
        }
        (Post, routes::HISTORY) => {
            let r = req.json::<ChatHistoryRequest>()?;
            let limit = r.limit.unwrap_or(DEFAULT_HISTORY);
            ok(&chat.history(parse_peer_id(&r.peer_id)?, limit).await?)
        }
        (Post, routes::OPEN) => ok(&chat.open(req.peer()?).await?),
        (Post, routes::STATE) => ok(&chat.state(req.peer()?).await?),
        (Get, routes::REQUESTS) => ok(&chat.requests().await?),
        (Post, routes::REQUESTS) => {
            let r = req.json::<ChatRequestAction>()?;
            let peer = parse_peer_id(&r.peer_id)?;
            match r.action.as_str() {
                "accept" => ok(&chat.accept(peer).await?),
                "block" => ok(&chat.block(peer).await?),
                other => {
                    return Err(ChatError::Invalid(format!(
                        "unknown action {other:?}; use \"accept\" or \"block\""
                    )));
                }
            }
        }
        (Post, routes::ROOM_CREATE) => {
            let r = req.json::<RoomCreateRequest>()?;
            let ttl = match r.ttl_secs {
                Some(0) => return Err(ChatError::Invalid("ttl must be positive".into())),
                Some(s) if s > MAX_ROOM_TTL_SECS => {
                    return Err(ChatError::Invalid(format!(
                        "ttl is at most {MAX_ROOM_TTL_SECS} s (a year)"
                    )));
                }
                Some(s) => Some(std::time::Duration::from_secs(s)),
                None => None,
            };
            ok(&chat.room_create(&r.name, ttl).await?)
        }
        (Post, routes::ROOM_JOIN) => {
            ok(&chat.room_join(&req.json::<RoomJoinRequest>()?.code).await?)
        }
        (Post, routes::ROOM_MEMBERS) => {
            ok(&chat.room_info(&req.json::<RoomJoinRequest>()?.code).await?)
        }
        (Post, routes::ROOM_LEAVE) => {
            chat.room_leave(&req.json::<RoomJoinRequest>()?.code)
                .await?;
            ok(&serde_json::json!({ "left": true }))
        }
        (Post, routes::ROOM_SEND) => {
            let r = req.json::<RoomSendRequest>()?;
            ok(&chat.room_send(&r.code, r.body).await?)
        }
        (_, route) => ControlReply::unknown(route),
    })
}

/// The chat event stream: one JSON object per line, until the client goes away. A client
/// that falls behind by more than the event buffer gets a `lagged` line, not a stall of
/// the chat service.
fn events(chat: &ChatHandle) -> ControlReply {
    let rx = chat.subscribe();
    let events = futures::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(e) => e,
            Err(RecvError::Lagged(missed)) => ChatEvent::Lagged { missed },
            Err(RecvError::Closed) => return None,
        };
        Some((event, rx))
    });
    ControlReply::lines(events)
}

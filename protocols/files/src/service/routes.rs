//! The files control routes (`/v1/files/...`), served on the node's control socket
//! through the protocol contract.

use std::path::PathBuf;
use std::time::Duration;

use p2pnode_node::control::{ControlReply, ControlRequest, Method};
use p2pnode_node::parse_peer_id;

use super::{FilesError, FilesHandle};
use crate::api::{
    AcceptRequest, ContentRequest, FilesEvent, GetRequest, OfferRequest, SendRequest, ShareRequest,
    routes,
};

/// Longest a client may ask to wait for a transfer's end in one request.
const MAX_WAIT_MS: u64 = 10_000;

/// Serves one request under the files prefix.
pub(super) async fn serve(files: &FilesHandle, req: ControlRequest) -> ControlReply {
    match route(files, &req).await {
        Ok(reply) => reply,
        Err(e) => ControlReply::error(&e),
    }
}

fn paths(list: Vec<String>) -> Vec<PathBuf> {
    list.into_iter().map(PathBuf::from).collect()
}

async fn route(files: &FilesHandle, req: &ControlRequest) -> Result<ControlReply, FilesError> {
    use Method::{Get, Post};
    Ok(match (req.method(), req.route()) {
        (Post, routes::SHARE) => {
            let r = req.json::<ShareRequest>()?;
            ControlReply::ok(&files.share(paths(r.paths)).await?)
        }
        (Post, routes::UNSHARE) => {
            let r = req.json::<ContentRequest>()?;
            ControlReply::ok(&files.unshare(&r.content_id).await?)
        }
        (Get, routes::SHARES) => ControlReply::ok(&files.shares()),
        (Get, routes::EVENTS) => events(files),
        (Post, routes::GET) => {
            let r = req.json::<GetRequest>()?;
            let from = r
                .from
                .iter()
                .map(|p| parse_peer_id(p))
                .collect::<Result<Vec<_>, _>>()?;
            ControlReply::ok(&files.get(&r.content_id, PathBuf::from(r.to), from).await?)
        }
        (Get, routes::TRANSFERS) => match req.query("id") {
            Some(id) => {
                let id = id
                    .parse()
                    .map_err(|_| FilesError::Invalid(format!("invalid transfer id {id:?}")))?;
                let wait_ms: u64 = match req.query("wait_ms") {
                    Some(ms) => ms
                        .parse()
                        .map_err(|_| FilesError::Invalid(format!("invalid wait_ms {ms:?}")))?,
                    None => 0,
                };
                let wait = Duration::from_millis(wait_ms.min(MAX_WAIT_MS));
                ControlReply::ok(&files.transfer_wait(id, wait).await?)
            }
            None => ControlReply::ok(&files.transfers()),
        },
        (Post, routes::SEND) => {
            let r = req.json::<SendRequest>()?;
            let peer = parse_peer_id(&r.peer_id)?;
            ControlReply::ok(&files.send(peer, paths(r.paths)).await?)
        }
        (Get, routes::INBOX) => ControlReply::ok(&files.inbox()),
        (Post, routes::ACCEPT) => {
            let r = req.json::<AcceptRequest>()?;
            ControlReply::ok(&files.accept(r.offer, PathBuf::from(r.to)).await?)
        }
        (Post, routes::REJECT) => {
            let r = req.json::<OfferRequest>()?;
            ControlReply::ok(&files.reject(r.offer)?)
        }
        _ => ControlReply::unknown(req.route()),
    })
}

fn events(files: &FilesHandle) -> ControlReply {
    use tokio::sync::broadcast::error::RecvError;
    let rx = files.subscribe();
    let events = futures::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(e) => e,
            Err(RecvError::Lagged(missed)) => FilesEvent::Lagged { missed },
            Err(RecvError::Closed) => return None,
        };
        Some((event, rx))
    });
    ControlReply::lines(events)
}

//! Sync's control routes (`/v1/db/...`), served on the node's control socket.

use p2pnode_crdt::Keep;
use p2pnode_node::control::{ControlReply, ControlRequest, Method};
use tokio::sync::broadcast::error::RecvError;

use super::{SyncError, SyncHandle};
use crate::api::{
    CreateRequest, DocRequest, ImportRequest, KeepChoice, PathRequest, PutRequest, ResolveRequest,
    WatchEvent, routes,
};

/// Serves one request under sync's prefix.
pub(super) async fn serve(db: &SyncHandle, req: ControlRequest) -> ControlReply {
    match route(db, &req).await {
        Ok(reply) => reply,
        Err(e) => ControlReply::error(&e),
    }
}

async fn route(db: &SyncHandle, req: &ControlRequest) -> Result<ControlReply, SyncError> {
    use Method::{Get, Post};
    Ok(match (req.method(), req.route()) {
        (Post, routes::CREATE) => {
            let r = req.json::<CreateRequest>()?;
            ControlReply::ok(&db.create(&r.doc, &r.network).await?)
        }
        (Post, routes::PUT) => {
            let r = req.json::<PutRequest>()?;
            ControlReply::ok(&db.put(&r.doc, &r.path, r.value).await?)
        }
        (Post, routes::GET) => {
            let r = req.json::<PathRequest>()?;
            ControlReply::ok(&db.get(&r.doc, r.path.as_deref().unwrap_or("")).await?)
        }
        (Post, routes::DELETE) => {
            let r = req.json::<PathRequest>()?;
            let path = r
                .path
                .ok_or_else(|| SyncError::Invalid("delete needs a path".into()))?;
            ControlReply::ok(&db.delete(&r.doc, &path).await?)
        }
        (Get, routes::LIST) => ControlReply::ok(&db.list().await?),
        (Get, routes::WATCH) => {
            let doc = req
                .query("doc")
                .ok_or_else(|| SyncError::Invalid("missing ?doc=<name>".into()))?;
            watch(db, &doc).await?
        }
        (Post, routes::HISTORY) => {
            let r = req.json::<DocRequest>()?;
            ControlReply::ok(&db.history(&r.doc, r.limit).await?)
        }
        (Post, routes::CONFLICTS) => {
            ControlReply::ok(&db.conflicts(&req.json::<DocRequest>()?.doc).await?)
        }
        (Post, routes::RESOLVE) => {
            let r = req.json::<ResolveRequest>()?;
            let keep = match r.keep {
                KeepChoice::Local => Keep::Local,
                KeepChoice::Remote => Keep::Remote,
                KeepChoice::Value(v) => Keep::Value(v),
            };
            ControlReply::ok(&db.resolve(&r.doc, &r.path, keep).await?)
        }
        (Post, routes::EXPORT) => {
            ControlReply::ok(&db.export(&req.json::<DocRequest>()?.doc).await?)
        }
        (Post, routes::IMPORT) => {
            let r = req.json::<ImportRequest>()?;
            ControlReply::ok(&db.import(&r.doc, r.network.as_deref(), r.value).await?)
        }
        (_, route) => ControlReply::unknown(route),
    })
}

/// The document's changes, one JSON line each, until the client goes away. A client that
/// falls behind gets a `lagged` line, not a stall of the service.
async fn watch(db: &SyncHandle, doc: &str) -> Result<ControlReply, SyncError> {
    let rx = db.watch(doc).await?;
    let events = futures::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(e) => e,
            Err(RecvError::Lagged(missed)) => WatchEvent::Lagged { missed },
            Err(RecvError::Closed) => return None,
        };
        Some((event, rx))
    });
    Ok(ControlReply::lines(events))
}

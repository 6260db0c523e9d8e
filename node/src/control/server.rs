//! The daemon's end of the control socket: reads each request (body bounded), answers the
//! connection layer's routes, and hands paths under a protocol's prefix to that protocol.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::Notify;

use super::{ControlReply, ControlRequest, MAX_PING_COUNT, Method};
use crate::api::{AllowRequest, ConnectRequest, PingRequest};
use crate::client::Client;
use crate::error::NodeError;
use crate::peer::parse_peer_id;
use crate::protocol::Protocols;

/// Largest request body the daemon reads.
const MAX_BODY: usize = 64 * 1024;
/// Most control connections served at once; more are refused, not queued.
const MAX_CONNECTIONS: usize = 64;
/// A client must send a request's headers within this long (a slow-header client would
/// otherwise hold a connection for ever).
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A response body: a whole JSON document, or a stream of JSON lines.
type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Serves control requests until `stop` is notified: the node's own routes through
/// `client`, and each registered protocol's under its prefixes. `POST /v1/shutdown`
/// notifies `shutdown_requested`, which the daemon waits on beside Ctrl-C.
pub async fn serve(
    listener: UnixListener,
    client: Client,
    protocols: Protocols,
    shutdown_requested: Arc<Notify>,
    stop: Arc<Notify>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.notified() => break,
        };
        while conns.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("control socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // The socket is mode 0600, but a directory or socket made by mistake with looser
        // modes must not let another user drive the node: check who connects.
        let uid = stream.peer_cred().map(|c| c.uid());
        let own = nix::unistd::geteuid().as_raw();
        if !matches!(uid, Ok(u) if u == own || u == 0) {
            tracing::warn!(?uid, "refused a control connection from another user");
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!("too many control connections; refusing one");
            continue;
        };
        let (client, protocols) = (client.clone(), protocols.clone());
        let shutdown_requested = shutdown_requested.clone();
        conns.spawn(tracing::Instrument::in_current_span(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let (client, protocols) = (client.clone(), protocols.clone());
                let shutdown_requested = shutdown_requested.clone();
                async move {
                    let reply = match read(req).await {
                        Ok(req) => dispatch(req, &client, &protocols, &shutdown_requested).await,
                        Err(e) => ControlReply::error(&e),
                    };
                    Ok::<_, Infallible>(response(reply))
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("control connection: {e}");
            }
        }));
    }
    conns.shutdown().await;
}

/// Reads a request whole, its body bounded by [`MAX_BODY`].
async fn read(req: Request<Incoming>) -> Result<ControlRequest, NodeError> {
    let method = match *req.method() {
        hyper::Method::GET => Method::Get,
        hyper::Method::POST => Method::Post,
        _ => Method::Other,
    };
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    tracing::debug!(?method, %path, "control request");
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| NodeError::InvalidInput(format!("cannot read request body: {e}")))?
        .to_bytes();
    // A path outside `/v1/` matches no route; keep it whole for the error message.
    let route = path.strip_prefix("/v1/").unwrap_or(&path);
    Ok(ControlRequest::new(method, route, &query, body))
}

async fn dispatch(
    req: ControlRequest,
    client: &Client,
    protocols: &Protocols,
    shutdown: &Notify,
) -> ControlReply {
    let prefix = req.route().split('/').next().unwrap_or("");
    match protocols.for_route(prefix) {
        Some(handler) => handler.handle(req).await,
        None => route(req, client, shutdown).await,
    }
}

/// The connection layer's own routes.
async fn route(req: ControlRequest, client: &Client, shutdown: &Notify) -> ControlReply {
    use Method::{Get, Post};
    match (req.method(), req.route()) {
        (Get, "status") => ControlReply::from_result(client.status().await),
        (Get, "peers") => ControlReply::from_result(client.peers().await),
        (Get, "diagnostics") => ControlReply::from_result(client.diagnostics().await),
        (Get, "trust") => ControlReply::from_result(client.trust_list().await),
        (Post, "connect") => match req.json::<ConnectRequest>() {
            Ok(r) => ControlReply::from_result(client.connect(&r.target).await),
            Err(e) => ControlReply::error(&e),
        },
        (Post, "find") => match req.peer() {
            Ok(peer) => ControlReply::from_result(client.find(peer).await),
            Err(e) => ControlReply::error(&e),
        },
        (Post, "ping") => match ping_request(&req) {
            Ok((peer, count)) => ControlReply::from_result(client.ping(peer, count).await),
            Err(e) => ControlReply::error(&e),
        },
        (Post, "verify") => match req.peer() {
            Ok(peer) => ControlReply::from_result(client.verify(peer).await),
            Err(e) => ControlReply::error(&e),
        },
        (Post, "verify/confirm") => match req.peer() {
            Ok(peer) => ControlReply::from_result(client.confirm_verified(peer).await),
            Err(e) => ControlReply::error(&e),
        },
        (Post, "trust/allow") => match req.json::<AllowRequest>() {
            Ok(r) => match parse_peer_id(&r.peer_id) {
                Ok(peer) => ControlReply::from_result(client.allow(peer, &r.protocols).await),
                Err(e) => ControlReply::error(&e),
            },
            Err(e) => ControlReply::error(&e),
        },
        (Post, "trust/revoke") => match req.peer() {
            Ok(peer) => ControlReply::from_result(client.revoke(peer).await),
            Err(e) => ControlReply::error(&e),
        },
        (_, r) if r == "net" || r.starts_with("net/") => {
            crate::networks::routes::handle(req, client).await
        }
        (_, r) if r == "contacts" || r.starts_with("contacts/") => {
            crate::contacts::handle(req, client).await
        }
        (Post, "shutdown") => {
            shutdown.notify_one();
            ControlReply::ok(&serde_json::json!({ "stopping": true }))
        }
        (_, route) => ControlReply::unknown(route),
    }
}

fn ping_request(req: &ControlRequest) -> Result<(libp2p::PeerId, u32), NodeError> {
    let r = req.json::<PingRequest>()?;
    if r.count == 0 || r.count > MAX_PING_COUNT {
        return Err(NodeError::InvalidInput(format!(
            "count must be 1 to {MAX_PING_COUNT}"
        )));
    }
    Ok((parse_peer_id(&r.peer_id)?, r.count))
}

fn response(reply: ControlReply) -> Response<Body> {
    let (status, content_type, body) = match reply {
        ControlReply::Json { status, body } => (
            status,
            "application/json",
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        ),
        ControlReply::Lines(lines) => (
            200,
            "application/x-ndjson",
            StreamBody::new(
                lines.map(|line| Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(line)))),
            )
            .boxed_unsync(),
        ),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

//! The control socket: HTTP/1.1 with JSON bodies over a Unix socket in the data directory
//! (mode 0600), as dockerd and tailscaled do, so `curl --unix-socket` and any program can
//! drive a node. Paths carry the API version: `/v1/status`. [`ControlClient`] is the other
//! end, used by the CLI.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use crate::api::{
    AllowRequest, ChatEvent, ChatHistoryRequest, ChatRequestAction, ChatSendRequest,
    ConnectRequest, ErrorBody, PeerRequest, PingRequest, RoomCreateRequest, RoomJoinRequest,
    RoomSendRequest,
};
use crate::chat::{ChatError, ChatHandle};
use crate::client::{Client, parse_peer_id};
use crate::error::NodeError;

/// File name of the control socket inside the data directory.
pub const SOCKET_FILE: &str = "control.sock";

/// Largest request body the daemon reads.
const MAX_BODY: usize = 64 * 1024;
/// Most control connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// Longest room time-to-live accepted (a year).
const MAX_ROOM_TTL_SECS: u64 = 365 * 24 * 3600;
/// Most history rows returned when the request names no limit.
const DEFAULT_HISTORY: usize = 10_000;

/// A response body: a whole JSON document, or a stream of JSON lines.
type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Most pings one request may ask for.
pub const MAX_PING_COUNT: u32 = 1000;

/// Errors of the control socket, on either end.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No daemon listens on the socket.
    #[error("no p2pnode daemon is running for {data_dir} (start one with `p2pnode start`)")]
    NoDaemon {
        /// The data directory whose socket was tried.
        data_dir: PathBuf,
    },
    /// A daemon already serves this data directory.
    #[error("a p2pnode daemon is already running for {data_dir}")]
    AlreadyRunning {
        /// The data directory.
        data_dir: PathBuf,
    },
    /// The socket could not be created or used.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("control protocol error: {0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error("{}", .0.message)]
    Api(ErrorBody),
}

impl ControlError {
    /// The machine-readable kind, for `--json` output.
    pub fn kind(&self) -> &str {
        match self {
            Self::NoDaemon { .. } => "no_daemon",
            Self::AlreadyRunning { .. } => "already_running",
            Self::Io { .. } => "io",
            Self::Protocol(_) => "protocol",
            Self::Api(body) => &body.kind,
        }
    }
}

/// Creates the control socket in `data_dir`, mode 0600. A stale socket left by a killed
/// daemon is replaced; a live one is an error.
pub async fn bind(data_dir: &Path) -> Result<UnixListener, ControlError> {
    let path = data_dir.join(SOCKET_FILE);
    let io_err = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(ControlError::AlreadyRunning {
                data_dir: data_dir.to_path_buf(),
            });
        }
        std::fs::remove_file(&path).map_err(io_err)?;
    }
    let listener = UnixListener::bind(&path).map_err(io_err)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(listener)
}

/// Serves control requests until `stop` is notified. `POST /v1/shutdown` notifies
/// `shutdown_requested`, which the daemon waits on beside Ctrl-C.
pub async fn serve(
    listener: UnixListener,
    client: Client,
    chat: ChatHandle,
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
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let client = client.clone();
        let chat = chat.clone();
        let shutdown_requested = shutdown_requested.clone();
        conns.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let client = client.clone();
                let chat = chat.clone();
                let shutdown_requested = shutdown_requested.clone();
                async move {
                    let path = req.uri().path();
                    if path.starts_with("/v1/chat/") || path.starts_with("/v1/room/") {
                        return Ok::<_, Infallible>(chat_route(req, &chat).await);
                    }
                    Ok(route(req, &client, &shutdown_requested).await.map(boxed))
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("control connection: {e}");
            }
        });
    }
    conns.shutdown().await;
}

async fn route(
    req: Request<Incoming>,
    client: &Client,
    shutdown: &Notify,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    tracing::debug!(%method, %path, "control request");
    let result = match (method, path.as_str()) {
        (Method::GET, "/v1/status") => json(client.status().await),
        (Method::GET, "/v1/peers") => json(client.peers().await),
        (Method::GET, "/v1/trust") => json(client.trust_list().await),
        (Method::POST, "/v1/connect") => match body::<ConnectRequest>(req).await {
            Ok(r) => json(client.connect(&r.target).await),
            Err(e) => Err(e),
        },
        (Method::POST, "/v1/find") => match peer_body(req).await {
            Ok(peer) => json(client.find(peer).await),
            Err(e) => Err(e),
        },
        (Method::POST, "/v1/ping") => match body::<PingRequest>(req).await {
            Ok(r) if r.count == 0 || r.count > MAX_PING_COUNT => Err(NodeError::InvalidInput(
                format!("count must be 1 to {MAX_PING_COUNT}"),
            )),
            Ok(r) => match parse_peer_id(&r.peer_id) {
                Ok(peer) => json(client.ping(peer, r.count).await),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        (Method::POST, "/v1/verify") => match peer_body(req).await {
            Ok(peer) => json(client.verify(peer).await),
            Err(e) => Err(e),
        },
        (Method::POST, "/v1/verify/confirm") => match peer_body(req).await {
            Ok(peer) => json(client.confirm_verified(peer).await),
            Err(e) => Err(e),
        },
        (Method::POST, "/v1/trust/allow") => match body::<AllowRequest>(req).await {
            Ok(r) => match parse_peer_id(&r.peer_id) {
                Ok(peer) => json(client.allow(peer, &r.protocols).await),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        (Method::POST, "/v1/trust/revoke") => match peer_body(req).await {
            Ok(peer) => json(client.revoke(peer).await),
            Err(e) => Err(e),
        },
        (Method::POST, "/v1/shutdown") => {
            shutdown.notify_one();
            json(Ok(serde_json::json!({ "stopping": true })))
        }
        _ => {
            return respond(
                StatusCode::NOT_FOUND,
                &ErrorBody {
                    kind: "unknown_endpoint".into(),
                    message: format!(
                        "no such control endpoint: {path} (this daemon speaks API v1)"
                    ),
                },
            );
        }
    };
    match result {
        Ok(resp) => resp,
        Err(e) => respond(
            node_status(&e),
            &ErrorBody {
                kind: e.kind().into(),
                message: e.to_string(),
            },
        ),
    }
}

fn boxed(body: Full<Bytes>) -> Body {
    body.map_err(|never| match never {}).boxed_unsync()
}

/// The chat and room endpoints.
async fn chat_route(req: Request<Incoming>, chat: &ChatHandle) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    tracing::debug!(%method, %path, "control request");
    let result: Result<Response<Body>, ChatError> = async {
        Ok(match (method, path.as_str()) {
            (Method::GET, "/v1/chat/events") => events(chat),
            (Method::POST, "/v1/chat/send") => {
                let r = body::<ChatSendRequest>(req).await?;
                ok(&chat.send(parse_peer_id(&r.peer_id)?, r.body).await?)
            }
            (Method::GET, "/v1/chat/history") => {
                let peer = query_param(&query, "peer").ok_or_else(|| {
                    NodeError::InvalidInput("missing ?peer=<peer-id>".to_string())
                })?;
                let limit = match query_param(&query, "limit") {
                    Some(l) => l
                        .parse()
                        .map_err(|_| NodeError::InvalidInput(format!("invalid limit {l:?}")))?,
                    None => DEFAULT_HISTORY,
                };
                ok(&chat.history(parse_peer_id(&peer)?, limit).await?)
            }
            (Method::POST, "/v1/chat/history") => {
                let r = body::<ChatHistoryRequest>(req).await?;
                let limit = r.limit.unwrap_or(DEFAULT_HISTORY);
                ok(&chat.history(parse_peer_id(&r.peer_id)?, limit).await?)
            }
            (Method::POST, "/v1/chat/open") => ok(&chat.open(peer_body(req).await?).await?),
            (Method::POST, "/v1/chat/state") => ok(&chat.state(peer_body(req).await?).await?),
            (Method::GET, "/v1/chat/requests") => ok(&chat.requests().await?),
            (Method::POST, "/v1/chat/requests") => {
                let r = body::<ChatRequestAction>(req).await?;
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
            (Method::POST, "/v1/room/create") => {
                let r = body::<RoomCreateRequest>(req).await?;
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
            (Method::POST, "/v1/room/join") => ok(&chat
                .room_join(&body::<RoomJoinRequest>(req).await?.code)
                .await?),
            (Method::POST, "/v1/room/members") => ok(&chat
                .room_info(&body::<RoomJoinRequest>(req).await?.code)
                .await?),
            (Method::POST, "/v1/room/leave") => {
                chat.room_leave(&body::<RoomJoinRequest>(req).await?.code)
                    .await?;
                ok(&serde_json::json!({ "left": true }))
            }
            (Method::POST, "/v1/room/send") => {
                let r = body::<RoomSendRequest>(req).await?;
                ok(&chat.room_send(&r.code, r.body).await?)
            }
            _ => {
                return Ok(respond(
                    StatusCode::NOT_FOUND,
                    &ErrorBody {
                        kind: "unknown_endpoint".into(),
                        message: format!(
                            "no such control endpoint: {path} (this daemon speaks API v1)"
                        ),
                    },
                )
                .map(boxed));
            }
        })
    }
    .await;
    match result {
        Ok(resp) => resp,
        Err(e) => {
            let status = match &e {
                ChatError::Invalid(_) => StatusCode::BAD_REQUEST,
                ChatError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
                ChatError::Node(n) => node_status(n),
            };
            respond(
                status,
                &ErrorBody {
                    kind: e.kind().into(),
                    message: e.to_string(),
                },
            )
            .map(boxed)
        }
    }
}

fn ok<T: Serialize>(value: &T) -> Response<Body> {
    respond(StatusCode::OK, value).map(boxed)
}

/// `?name=value` from a query string (values are peer ids, numbers and invite codes, which
/// need no percent-decoding).
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// The chat event stream: one JSON object per line, until the client goes away. A client
/// that falls behind by more than the event buffer gets a `lagged` line, not a stall of
/// the chat service.
fn events(chat: &ChatHandle) -> Response<Body> {
    let rx = chat.subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                ChatEvent::Lagged { missed }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        let mut line = serde_json::to_vec(&event).unwrap_or_else(|_| b"{}".to_vec());
        line.push(b'\n');
        Some((
            Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(line))),
            rx,
        ))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

fn node_status(e: &NodeError) -> StatusCode {
    match e {
        NodeError::InvalidInput(_) | NodeError::SelfDial => StatusCode::BAD_REQUEST,
        NodeError::Revoked { .. } | NodeError::KeyChanged { .. } => StatusCode::FORBIDDEN,
        NodeError::NotFound { .. } => StatusCode::NOT_FOUND,
        NodeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        NodeError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// A body naming one peer (`{"peer_id": ...}`), parsed and checked.
async fn peer_body(req: Request<Incoming>) -> Result<libp2p::PeerId, NodeError> {
    parse_peer_id(&body::<PeerRequest>(req).await?.peer_id)
}

async fn body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, NodeError> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| NodeError::InvalidInput(format!("cannot read request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| NodeError::InvalidInput(format!("invalid request body: {e}")))
}

fn json<T: Serialize>(result: Result<T, NodeError>) -> Result<Response<Full<Bytes>>, NodeError> {
    result.map(|v| respond(StatusCode::OK, &v))
}

fn respond<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The CLI's end of the control socket.
#[derive(Debug, Clone)]
pub struct ControlClient {
    data_dir: PathBuf,
}

impl ControlClient {
    /// A client for the daemon of `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// The socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.data_dir.join(SOCKET_FILE)
    }

    /// `GET /v1/<path>`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ControlError> {
        self.request(Method::GET, path, None).await
    }

    /// `POST /v1/<path>` with a JSON body.
    pub async fn post<T: DeserializeOwned, B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ControlError> {
        let body = serde_json::to_vec(body).map_err(|e| ControlError::Protocol(e.to_string()))?;
        self.request(Method::POST, path, Some(body)).await
    }

    /// `GET /v1/<path>` of a streaming endpoint: its JSON lines as they come.
    pub async fn lines(&self, path: &str) -> Result<Lines, ControlError> {
        let (status, body, driver) = self.exchange(Method::GET, path, None).await?;
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| ControlError::Protocol(e.to_string()))?
                .to_bytes();
            driver.abort();
            return Err(api_error(status, &bytes));
        }
        Ok(Lines {
            body,
            buf: Vec::new(),
            _driver: AbortOnDrop(driver),
        })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Incoming, tokio::task::JoinHandle<()>), ControlError> {
        let socket = self.socket_path();
        let stream = match UnixStream::connect(&socket).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(ControlError::NoDaemon {
                    data_dir: self.data_dir.clone(),
                });
            }
            Err(source) => {
                return Err(ControlError::Io {
                    path: socket,
                    source,
                });
            }
        };
        let proto = |e: hyper::Error| ControlError::Protocol(e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(proto)?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("control connection: {e}");
            }
        });
        let req = Request::builder()
            .method(method)
            .uri(format!("/v1/{path}"))
            .header(hyper::header::HOST, "p2pnode")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ControlError::Protocol(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(proto)?;
        let status = resp.status();
        Ok((status, resp.into_body(), driver))
    }

    async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ControlError> {
        let (status, body, driver) = self.exchange(method, path, body).await?;
        let bytes = body
            .collect()
            .await
            .map_err(|e| ControlError::Protocol(e.to_string()))?
            .to_bytes();
        driver.abort();
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|e| ControlError::Protocol(e.to_string()))
        } else {
            Err(api_error(status, &bytes))
        }
    }
}

fn api_error(status: StatusCode, bytes: &[u8]) -> ControlError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ControlError::Api(body),
        Err(_) => ControlError::Protocol(format!("daemon answered {status}")),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Longest line a streaming endpoint may send (a chat event with a 16 KiB body, JSON
/// escaped, fits with room to spare).
const MAX_LINE: usize = 1024 * 1024;

/// The lines of a streaming response.
pub struct Lines {
    body: Incoming,
    buf: Vec<u8>,
    _driver: AbortOnDrop,
}

impl std::fmt::Debug for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lines")
    }
}

impl Lines {
    /// The next line (without its newline); `None` when the daemon closed the stream.
    pub async fn next_line(&mut self) -> Result<Option<String>, ControlError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Ok(Some(String::from_utf8_lossy(&line[..pos]).into_owned()));
            }
            if self.buf.len() > MAX_LINE {
                return Err(ControlError::Protocol("event line too long".into()));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(ControlError::Protocol(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

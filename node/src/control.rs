//! The control socket: HTTP/1.1 with JSON bodies over a Unix socket in the data directory
//! (mode 0600), as dockerd and tailscaled do, so `curl --unix-socket` and any program can
//! drive a node. Paths carry the API version: `/v1/status`. [`ControlClient`] is the other
//! end, used by the CLI.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use crate::api::{AllowRequest, ConnectRequest, ErrorBody, PeerRequest, PingRequest};
use crate::client::{Client, parse_peer_id};
use crate::error::NodeError;

/// File name of the control socket inside the data directory.
pub const SOCKET_FILE: &str = "control.sock";

/// Largest request body the daemon reads.
const MAX_BODY: usize = 64 * 1024;
/// Most control connections served at once.
const MAX_CONNECTIONS: usize = 64;
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
        let shutdown_requested = shutdown_requested.clone();
        conns.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let client = client.clone();
                let shutdown_requested = shutdown_requested.clone();
                async move { Ok::<_, Infallible>(route(req, &client, &shutdown_requested).await) }
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
        Err(e) => {
            let status = match e {
                NodeError::InvalidInput(_) | NodeError::SelfDial => StatusCode::BAD_REQUEST,
                NodeError::Revoked { .. } | NodeError::KeyChanged { .. } => StatusCode::FORBIDDEN,
                NodeError::NotFound { .. } => StatusCode::NOT_FOUND,
                NodeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                NodeError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_GATEWAY,
            };
            respond(
                status,
                &ErrorBody {
                    kind: e.kind().into(),
                    message: e.to_string(),
                },
            )
        }
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

    async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ControlError> {
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
        let bytes = resp.into_body().collect().await.map_err(proto)?.to_bytes();
        driver.abort();
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|e| ControlError::Protocol(e.to_string()))
        } else {
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => Err(ControlError::Api(body)),
                Err(_) => Err(ControlError::Protocol(format!("daemon answered {status}"))),
            }
        }
    }
}

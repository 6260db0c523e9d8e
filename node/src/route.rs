//! Control requests and replies as a protocol sees them ([`ControlRequest`],
//! [`ControlReply`]), free of HTTP: the control server turns HTTP into these and back, and
//! a protocol's routes only ever see these. Re-exported from [`crate::control`].

use bytes::Bytes;
use futures::stream::BoxStream;
use libp2p::PeerId;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{ErrorBody, PeerRequest};
use crate::error::NodeError;
use crate::peer::parse_peer_id;

/// The method of a control request: reads are `GET`, everything else `POST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
    /// Any other method (no route takes one).
    Other,
}

/// A control request as a protocol sees it: the whole body is read (within the server's
/// bound) before the protocol gets it.
#[derive(Debug, Clone)]
pub struct ControlRequest {
    method: Method,
    route: String,
    query: String,
    body: Bytes,
}

impl ControlRequest {
    /// A request for `route` (the path after `/v1/`, e.g. `chat/send`).
    pub fn new(method: Method, route: &str, query: &str, body: Bytes) -> Self {
        Self {
            method,
            route: route.to_string(),
            query: query.to_string(),
            body,
        }
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The path after `/v1/`: `chat/send`. Route names are what [`ControlClient`](crate::control::ControlClient) takes.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// `?name=value` from the query string (values are peer ids, numbers and invite
    /// codes, which need no percent-decoding).
    pub fn query(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| v.to_string())
        })
    }

    /// The JSON body.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, NodeError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| NodeError::InvalidInput(format!("invalid request body: {e}")))
    }

    /// A body naming one peer (`{"peer_id": ...}`), parsed and checked.
    pub fn peer(&self) -> Result<PeerId, NodeError> {
        parse_peer_id(&self.json::<PeerRequest>()?.peer_id)
    }
}

/// A control reply: one JSON document, or a stream of JSON lines.
pub enum ControlReply {
    /// A whole JSON document with its HTTP status.
    Json {
        /// The HTTP status code.
        status: u16,
        /// The JSON text.
        body: Vec<u8>,
    },
    /// Newline-terminated JSON lines, sent as they come, until the stream ends or the
    /// client goes away.
    Lines(BoxStream<'static, Vec<u8>>),
}

impl std::fmt::Debug for ControlReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Json { status, .. } => write!(f, "Json({status})"),
            Self::Lines(_) => f.write_str("Lines"),
        }
    }
}

impl ControlReply {
    /// `200 OK` with `value`.
    pub fn ok<T: Serialize>(value: &T) -> Self {
        Self::json(200, value)
    }

    /// `value` with `status`.
    pub fn json<T: Serialize>(status: u16, value: &T) -> Self {
        Self::Json {
            status,
            body: serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec()),
        }
    }

    /// The reply to a failed request.
    pub fn error(e: &(impl ApiError + ?Sized)) -> Self {
        Self::json(
            e.status(),
            &ErrorBody {
                kind: e.kind().to_string(),
                message: e.to_string(),
            },
        )
    }

    /// A result as a reply: the value, or the error.
    pub fn from_result<T: Serialize, E: ApiError>(result: Result<T, E>) -> Self {
        match result {
            Ok(v) => Self::ok(&v),
            Err(e) => Self::error(&e),
        }
    }

    /// `404` for a route nobody serves.
    pub fn unknown(route: &str) -> Self {
        // A path outside `/v1/` reaches here whole.
        let path = if route.starts_with('/') {
            route.to_string()
        } else {
            format!("/v1/{route}")
        };
        Self::json(
            404,
            &ErrorBody {
                kind: "unknown_endpoint".into(),
                message: format!("no such control endpoint: {path} (this daemon speaks API v1)"),
            },
        )
    }

    /// A stream of values, one JSON line each.
    pub fn lines<T: Serialize + Send + 'static>(
        values: impl futures::Stream<Item = T> + Send + 'static,
    ) -> Self {
        use futures::StreamExt;
        Self::Lines(
            values
                .map(|v| {
                    let mut line = serde_json::to_vec(&v).unwrap_or_else(|_| b"{}".to_vec());
                    line.push(b'\n');
                    line
                })
                .boxed(),
        )
    }
}

/// An error a control route can answer with: a stable kind for scripts, an HTTP status,
/// and a one-line message (its `Display`).
pub trait ApiError: std::fmt::Display {
    /// A stable machine-readable name, e.g. `not_found`.
    fn kind(&self) -> &str;
    /// The HTTP status code.
    fn status(&self) -> u16;
}

impl ApiError for NodeError {
    fn kind(&self) -> &str {
        NodeError::kind(self)
    }

    fn status(&self) -> u16 {
        match self {
            NodeError::InvalidInput(_) | NodeError::SelfDial => 400,
            NodeError::Revoked { .. } | NodeError::KeyChanged { .. } => 403,
            NodeError::NotFound { .. } => 404,
            NodeError::Timeout { .. } => 504,
            NodeError::Stopped => 503,
            _ => 502,
        }
    }
}

//! The CLI's end of the control socket: one HTTP/1.1 exchange per request over the Unix
//! socket, and the JSON lines of streaming endpoints.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::{ControlError, SOCKET_FILE};
use crate::api::ErrorBody;

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
            let bytes = read_all(body).await?;
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
        let driver = tokio::spawn(tracing::Instrument::in_current_span(async move {
            if let Err(e) = conn.await {
                tracing::debug!("control connection: {e}");
            }
        }));
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
        let bytes = read_all(body).await?;
        driver.abort();
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|e| ControlError::Protocol(e.to_string()))
        } else {
            Err(api_error(status, &bytes))
        }
    }
}

/// A whole response body.
async fn read_all(body: Incoming) -> Result<Bytes, ControlError> {
    Ok(body
        .collect()
        .await
        .map_err(|e| ControlError::Protocol(e.to_string()))?
        .to_bytes())
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

/// Longest line a streaming endpoint may send (an event carrying a 16 KiB text, JSON
/// escaped, fits with a wide margin).
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

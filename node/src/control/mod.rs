//! The control socket: HTTP/1.1 with JSON bodies over a Unix socket in the data directory
//! (mode 0600), as dockerd and tailscaled do, so `curl --unix-socket` and any program can
//! drive a node. Paths carry the API version: `/v1/status`.
//!
//! The server ([`serve`]) answers the connection layer's own routes and hands every path
//! under a registered protocol's prefix (`/v1/<prefix>/...`) to that protocol as a
//! [`ControlRequest`], so it knows no protocol itself. [`ControlClient`] is the other end,
//! used by the CLI.

mod client;
mod server;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

pub use crate::route::{ApiError, ControlReply, ControlRequest, Method};
pub use client::{ControlClient, Lines};
pub use server::serve;

use crate::api::ErrorBody;

/// File name of the control socket inside the data directory.
pub const SOCKET_FILE: &str = "control.sock";

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
    /// Something owned by another user sits where the control socket goes.
    #[error(
        "{path} belongs to another user (uid {uid}); remove it, or use a data directory of your own"
    )]
    ForeignSocket {
        /// The socket path.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
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
            Self::ForeignSocket { .. } => "foreign_socket",
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
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        let uid = std::os::unix::fs::MetadataExt::uid(&meta);
        if uid != nix::unistd::geteuid().as_raw() {
            return Err(ControlError::ForeignSocket { path, uid });
        }
        if UnixStream::connect(&path).await.is_ok() {
            return Err(ControlError::AlreadyRunning {
                data_dir: data_dir.to_path_buf(),
            });
        }
        std::fs::remove_file(&path).map_err(io_err)?;
    }
    // Created 0600 from the start (bind has no mode argument, so under a umask of 077);
    // the umask is the process's, and any file another thread creates meanwhile only
    // comes out stricter. The chmod after is for a umask restored by someone else.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let bound = UnixListener::bind(&path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(io_err)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(listener)
}

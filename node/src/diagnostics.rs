//! What the daemon tells `p2pnode doctor` (`GET /v1/diagnostics`): the event loop's
//! observations and hole-punch outcomes, the database's health, and clock offsets
//! against connected peers, measured over the time protocol served here.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use redb::{Database, ReadableDatabase, ReadableTableMetadata};

use crate::api::{self, ClockSample, DatabaseHealth, Diagnostics};
use crate::client::Client;
use crate::error::NodeError;
use crate::event_loop::Command;
use crate::store::DB_FILE;
use crate::streams::serve_streams;

/// The time protocol: the server writes its clock (Unix time in milliseconds, 8 bytes
/// big-endian) and closes. As little as NTP reveals, and it costs the server one write.
pub const TIME_PROTOCOL: StreamProtocol = StreamProtocol::new("/p2pnode/time/1");

/// How many peers the doctor's clock check asks.
const CLOCK_PEERS: usize = 5;
/// How long one clock measurement may take.
const CLOCK_TIMEOUT: Duration = Duration::from_secs(3);

fn unix_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Serves the time protocol, at most `max_streams` at once.
pub(crate) async fn serve_time(incoming: libp2p_stream::IncomingStreams, max_streams: usize) {
    serve_streams(incoming, max_streams, "time", |_, mut stream| async move {
        // Whole milliseconds: the offset's uncertainty is half a round trip anyway.
        let now = unix_ms(SystemTime::now()) as u64;
        let _ = stream.write_all(&now.to_be_bytes()).await;
        let _ = stream.close().await;
    })
    .await;
}

impl Client {
    /// `peer`'s clock against ours: one time-protocol exchange over the existing
    /// connection (no dial).
    pub async fn clock_offset(&self, peer: PeerId) -> Result<ClockSample, NodeError> {
        let stream_err = |reason: String| NodeError::Stream {
            peer: peer.to_string(),
            reason,
        };
        let exchange = async {
            let sent = SystemTime::now();
            let mut stream = self
                .raw_streams()
                .open_stream(peer, TIME_PROTOCOL)
                .await
                .map_err(|e| stream_err(e.to_string()))?;
            let mut buf = [0u8; 8];
            stream
                .read_exact(&mut buf)
                .await
                .map_err(|e| stream_err(e.to_string()))?;
            let received = SystemTime::now();
            let (t0, t1) = (unix_ms(sent), unix_ms(received));
            Ok(ClockSample {
                peer_id: peer.to_string(),
                offset_ms: u64::from_be_bytes(buf) as f64 - (t0 + t1) / 2.0,
                rtt_ms: (t1 - t0).max(0.0),
            })
        };
        tokio::time::timeout(CLOCK_TIMEOUT, exchange)
            .await
            .map_err(|_| stream_err("no time within 3 s".into()))?
    }

    /// Everything `p2pnode doctor` asks the daemon.
    pub async fn diagnostics(&self) -> Result<Diagnostics, NodeError> {
        let from_loop = self.ask(Command::Diagnostics).await?;
        let db = self.security().trust().database().clone();
        let file = Path::new(&from_loop.data_dir).join(DB_FILE);
        let database = tokio::task::spawn_blocking(move || database_health(&db, &file))
            .await
            .unwrap_or_else(|e| DatabaseHealth {
                ok: false,
                tables: 0,
                entries: 0,
                bytes: 0,
                error: Some(format!("the check itself failed: {e}")),
            });
        // Direct peers first: their offsets come with the shortest round trips.
        let mut peers = self.peers().await?;
        peers.sort_by_key(|p| p.path != api::Path::Direct);
        let asks = peers
            .iter()
            .filter_map(|p| p.peer_id.parse::<PeerId>().ok())
            .take(CLOCK_PEERS)
            .map(|peer| self.clock_offset(peer));
        let clock = futures::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(|r| r.map_err(|e| tracing::debug!("clock check: {e}")).ok())
            .collect();
        Ok(Diagnostics {
            data_dir: from_loop.data_dir,
            pid: std::process::id(),
            relay_only: from_loop.relay_only,
            hole_punch: from_loop.hole_punch.to_string(),
            database,
            observed: from_loop.observed,
            punches: from_loop.punches,
            clock,
        })
    }
}

/// Opens every table of the database in one read and counts its entries: the pages on
/// the way to each table's root are read and checked.
fn database_health(db: &Database, file: &Path) -> DatabaseHealth {
    let bytes = std::fs::metadata(file).map_or(0, |m| m.len());
    let counted = (|| -> Result<(usize, u64), redb::Error> {
        let txn = db.begin_read()?;
        let (mut tables, mut entries) = (0, 0);
        for handle in txn.list_tables()? {
            entries += txn.open_untyped_table(handle)?.len()?;
            tables += 1;
        }
        for handle in txn.list_multimap_tables()? {
            entries += txn.open_untyped_multimap_table(handle)?.len()?;
            tables += 1;
        }
        Ok((tables, entries))
    })();
    match counted {
        Ok((tables, entries)) => DatabaseHealth {
            ok: true,
            tables,
            entries,
            bytes,
            error: None,
        },
        Err(e) => DatabaseHealth {
            ok: false,
            tables: 0,
            entries: 0,
            bytes,
            error: Some(e.to_string()),
        },
    }
}

/// One thing wrong with the data directory, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirProblem {
    /// The file or directory.
    pub path: String,
    /// What is wrong.
    pub problem: String,
    /// The command that fixes it.
    pub fix: String,
}

/// The effective user id of this process.
pub fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Checks the ownership and modes of the data directory and of what the node keeps in
/// it: the directory and every file belong to us; nobody else may write the directory
/// (the node refuses to start then) or read the key, the database or the socket.
pub fn check_data_dir(dir: &Path) -> Vec<DirProblem> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let uid = own_uid();
    let mut problems = Vec::new();
    let mut add = |path: &Path, problem: String, fix: String| {
        problems.push(DirProblem {
            path: path.display().to_string(),
            problem,
            fix,
        });
    };
    let meta = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => {
            add(
                dir,
                "is not a directory".into(),
                "pass --data-dir <a directory>".into(),
            );
            return problems;
        }
        Err(e) => {
            add(
                dir,
                format!("cannot be read: {e}"),
                "p2pnode start creates it".into(),
            );
            return problems;
        }
    };
    let shown = dir.display();
    if meta.uid() != uid {
        add(
            dir,
            format!("belongs to uid {}, not to us (uid {uid})", meta.uid()),
            format!("chown -R {uid} {shown}"),
        );
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        add(
            dir,
            format!("mode {mode:o}: others may enter it"),
            format!("chmod 700 {shown}"),
        );
    }
    let files = [
        crate::identity::IDENTITY_FILE,
        DB_FILE,
        crate::control::SOCKET_FILE,
    ];
    for name in files {
        let path = dir.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            add(
                &path,
                "is a symbolic link".into(),
                format!("replace {} by the file itself", path.display()),
            );
            continue;
        }
        if meta.uid() != uid {
            add(
                &path,
                format!("belongs to uid {}, not to us (uid {uid})", meta.uid()),
                format!("chown {uid} {}", path.display()),
            );
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            add(
                &path,
                format!("mode {mode:o}: others may read it"),
                format!("chmod 600 {}", path.display()),
            );
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_problems_are_found_with_their_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        crate::identity::ensure_data_dir(&home).unwrap();
        crate::identity::load_or_create(&home).unwrap();
        assert_eq!(check_data_dir(&home), vec![]);

        let key = home.join(crate::identity::IDENTITY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        let problems = check_data_dir(&home);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].fix.starts_with("chmod 700"), "{problems:?}");
        assert!(problems[1].problem.contains("644"), "{problems:?}");
        assert!(problems[1].fix.starts_with("chmod 600"), "{problems:?}");

        let missing = check_data_dir(&dir.path().join("nope"));
        assert_eq!(missing.len(), 1);
    }

    #[test]
    fn a_healthy_database_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let peer = PeerId::random();
        store
            .record_peer(&peer, &["/ip4/192.0.2.1/tcp/1".parse().unwrap()])
            .unwrap();
        let health = database_health(store.database(), &dir.path().join(DB_FILE));
        assert!(health.ok, "{health:?}");
        assert!(health.tables >= 1);
        assert!(health.entries >= 1);
        assert!(health.bytes > 0);
    }
}

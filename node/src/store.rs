//! The node's embedded database (redb) in the data directory. Every write is one committed
//! transaction, so what the node has acknowledged survives `kill -9`.
//!
//! Today it holds the peer store: the addresses seen per peer, so a restarted node finds
//! its peers again without a bootstrap list. Other tables (trust, and each protocol's own
//! state) live in the same file and reach it through [`Store::database`].

use std::collections::BTreeSet;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use libp2p::{Multiaddr, PeerId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "node.redb";

/// Peers: peer id (text) -> CBOR-encoded [`PeerRecord`].
const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");

/// How many addresses are kept per peer; the newest win.
pub const MAX_ADDRS_PER_PEER: usize = 8;

/// How many peers a restarted node redials from the store.
pub const MAX_REDIAL: usize = 32;

/// Errors of the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<redb::Error>,
    },
    /// Other users may read or write the database (room keys, history, peers).
    #[error("{path} is open to other users (mode {mode:o}); run `chmod 600 {path}`")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// A read or write failed.
    #[error("database error: {0}")]
    Db(#[from] Box<redb::Error>),
    /// A stored record could not be decoded.
    #[error("corrupt record for {key}: {reason}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What was wrong.
        reason: String,
    },
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(Box::new(e.into()))
}

/// What the node knows about one peer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerRecord {
    /// Addresses the peer was reached at or announced, newest last.
    pub addrs: Vec<String>,
    /// Seconds since the Unix epoch when the peer was last connected.
    pub last_seen: u64,
}

/// A handle to the node's database, cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Opens (or creates) the database in the data directory.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        let io_err = |e| StoreError::Open {
            path: path.clone(),
            source: Box::new(redb::Error::Io(e)),
        };
        // It holds room keys and chat history: the owner's alone. Created 0600 (redb
        // initialises an empty file), and an existing one others may read is refused.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                return Err(StoreError::Exposed {
                    path: path.clone(),
                    mode: meta.permissions().mode() & 0o7777,
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io_err)?;
            }
            Err(e) => return Err(io_err(e)),
        }
        let db = Database::create(&path).map_err(|e| StoreError::Open {
            path: path.clone(),
            source: Box::new(e.into()),
        })?;
        // Create the tables up front so readers never see "table does not exist".
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(PEERS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// The underlying database, for the tables of other subsystems.
    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    /// Merges `addrs` into the peer's record and marks it seen now. Returns whether
    /// anything changed on disk.
    pub fn record_peer(&self, peer: &PeerId, addrs: &[Multiaddr]) -> Result<bool, StoreError> {
        let key = peer.to_string();
        let txn = self.db.begin_write().map_err(db_err)?;
        let changed = {
            let mut table = txn.open_table(PEERS).map_err(db_err)?;
            let mut record = match table.get(key.as_str()).map_err(db_err)? {
                Some(v) => decode(&key, v.value())?,
                None => PeerRecord::default(),
            };
            let before = record.clone();
            for addr in addrs {
                let addr = addr.to_string();
                record.addrs.retain(|a| a != &addr);
                record.addrs.push(addr);
            }
            let excess = record.addrs.len().saturating_sub(MAX_ADDRS_PER_PEER);
            record.addrs.drain(..excess);
            record.last_seen = now_secs();
            // Re-writing only to bump last_seen by a few seconds is not worth an fsync.
            let changed = record.addrs != before.addrs || record.last_seen > before.last_seen + 60;
            if changed {
                let mut buf = Vec::new();
                ciborium::into_writer(&record, &mut buf).map_err(|e| StoreError::Corrupt {
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
                table.insert(key.as_str(), buf.as_slice()).map_err(db_err)?;
            }
            changed
        };
        if changed {
            txn.commit().map_err(db_err)?;
        } else {
            txn.abort().map_err(db_err)?;
        }
        Ok(changed)
    }

    /// Known peers, most recently seen first, at most `limit`. Unparsable entries are
    /// skipped with a warning rather than failing start-up.
    pub fn known_peers(&self, limit: usize) -> Result<Vec<(PeerId, Vec<Multiaddr>)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(PEERS).map_err(db_err)?;
        let mut peers = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let key = k.value().to_string();
            let (Ok(peer), Ok(record)) = (key.parse::<PeerId>(), decode(&key, v.value())) else {
                tracing::warn!(%key, "skipping unreadable peer record");
                continue;
            };
            let addrs: BTreeSet<Multiaddr> =
                record.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            peers.push((
                record.last_seen,
                peer,
                addrs.into_iter().collect::<Vec<_>>(),
            ));
        }
        peers.sort_by_key(|p| std::cmp::Reverse(p.0));
        Ok(peers
            .into_iter()
            .take(limit)
            .map(|(_, p, a)| (p, a))
            .collect())
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<PeerRecord, StoreError> {
    ciborium::from_reader(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_survive_reopen_and_addresses_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let peer = PeerId::random();
        {
            let store = Store::open(dir.path()).unwrap();
            for port in 0..20u16 {
                let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", 1000 + port)
                    .parse()
                    .unwrap();
                store.record_peer(&peer, &[addr]).unwrap();
            }
        }
        let store = Store::open(dir.path()).unwrap();
        let peers = store.known_peers(10).unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].0, peer);
        assert_eq!(peers[0].1.len(), MAX_ADDRS_PER_PEER);
        assert!(
            peers[0]
                .1
                .contains(&"/ip4/127.0.0.1/tcp/1019".parse().unwrap())
        );
    }

    #[test]
    fn unchanged_record_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let peer = PeerId::random();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        assert!(
            store
                .record_peer(&peer, std::slice::from_ref(&addr))
                .unwrap()
        );
        assert!(!store.record_peer(&peer, &[addr]).unwrap());
    }
}

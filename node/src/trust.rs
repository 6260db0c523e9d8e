//! The trust store on the node's database: which peers were verified by SAS comparison,
//! which protocols each may use, which are revoked. The decisions themselves are
//! `p2pnode_secure::decide`; this module only persists [`TrustEntry`]s.

use std::collections::BTreeSet;
use std::sync::Arc;

use libp2p::PeerId;
use p2pnode_secure::{PeerKey, TrustEntry, TrustStore};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// Trust: peer id (text) -> CBOR-encoded [`Record`].
const TRUST: TableDefinition<&str, &[u8]> = TableDefinition::new("trust");

/// A [`TrustEntry`] as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    peer_key: Vec<u8>,
    pinned_key: Option<Vec<u8>>,
    allowed_protocols: BTreeSet<String>,
    revoked: bool,
}

impl Record {
    fn into_entry(self) -> Option<TrustEntry> {
        Some(TrustEntry {
            peer_key: self.peer_key.try_into().ok()?,
            pinned_key: match self.pinned_key {
                Some(k) => Some(PeerKey::try_from(k).ok()?),
                None => None,
            },
            allowed_protocols: self.allowed_protocols,
            revoked: self.revoked,
        })
    }

    fn from_entry(e: &TrustEntry) -> Self {
        Self {
            peer_key: e.peer_key.to_vec(),
            pinned_key: e.pinned_key.map(|k| k.to_vec()),
            allowed_protocols: e.allowed_protocols.clone(),
            revoked: e.revoked,
        }
    }
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(Box::new(e.into()))
}

/// The trust table. Cheap to clone; every write is one committed transaction.
#[derive(Clone)]
pub struct TrustDb {
    db: Arc<Database>,
}

impl std::fmt::Debug for TrustDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrustDb")
    }
}

impl TrustDb {
    /// Opens the trust table in the node's database, creating it when missing.
    pub fn open(db: Arc<Database>) -> Result<Self, StoreError> {
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(TRUST).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Self { db })
    }

    /// The node's database, for the node's other tables (the contacts).
    pub(crate) fn database(&self) -> &Arc<Database> {
        &self.db
    }

    /// Every entry, by peer id.
    pub fn list(&self) -> Result<Vec<(PeerId, TrustEntry)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(TRUST).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let key = k.value().to_string();
            match (key.parse::<PeerId>(), decode(&key, v.value())) {
                (Ok(peer), Ok(entry)) => out.push((peer, entry)),
                _ => tracing::warn!(%key, "skipping unreadable trust record"),
            }
        }
        Ok(out)
    }

    /// Revoked peers, to block at start.
    pub fn revoked(&self) -> Result<Vec<PeerId>, StoreError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|(_, e)| e.revoked)
            .map(|(p, _)| p)
            .collect())
    }

    /// Reads, changes and writes one entry in a single transaction. `change` gets the
    /// current entry (or a fresh one for `key`).
    pub fn update(
        &self,
        peer: &PeerId,
        key: PeerKey,
        change: impl FnOnce(&mut TrustEntry),
    ) -> Result<TrustEntry, StoreError> {
        let id = peer.to_string();
        let txn = self.db.begin_write().map_err(db_err)?;
        let entry = {
            let mut table = txn.open_table(TRUST).map_err(db_err)?;
            let mut entry = match table.get(id.as_str()).map_err(db_err)? {
                Some(v) => decode(&id, v.value())?,
                None => TrustEntry::new(key),
            };
            change(&mut entry);
            let bytes = encode(&id, &entry)?;
            table
                .insert(id.as_str(), bytes.as_slice())
                .map_err(db_err)?;
            entry
        };
        txn.commit().map_err(db_err)?;
        Ok(entry)
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<TrustEntry, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: key.to_string(),
        reason,
    };
    ciborium::from_reader::<Record, _>(bytes)
        .map_err(|e| corrupt(e.to_string()))?
        .into_entry()
        .ok_or_else(|| corrupt("bad key length".into()))
}

fn encode(key: &str, entry: &TrustEntry) -> Result<Vec<u8>, StoreError> {
    let mut buf = Vec::new();
    ciborium::into_writer(&Record::from_entry(entry), &mut buf).map_err(|e| {
        StoreError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        }
    })?;
    Ok(buf)
}

impl TrustStore for TrustDb {
    type Error = StoreError;

    fn get(&self, peer: &[u8]) -> Result<Option<TrustEntry>, StoreError> {
        let Ok(peer) = PeerId::from_bytes(peer) else {
            return Ok(None);
        };
        let id = peer.to_string();
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(TRUST).map_err(db_err)?;
        match table.get(id.as_str()).map_err(db_err)? {
            Some(v) => decode(&id, v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn put(&mut self, peer: &[u8], entry: TrustEntry) -> Result<(), StoreError> {
        let peer = PeerId::from_bytes(peer).map_err(|e| StoreError::Corrupt {
            key: "peer id".into(),
            reason: e.to_string(),
        })?;
        self.update(&peer, entry.peer_key, |e| *e = entry.clone())
            .map(|_| ())
    }

    fn remove(&mut self, peer: &[u8]) -> Result<(), StoreError> {
        let Ok(peer) = PeerId::from_bytes(peer) else {
            return Ok(());
        };
        let id = peer.to_string();
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(TRUST)
            .map_err(db_err)?
            .remove(id.as_str())
            .map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pnode_secure::TrustDecision;

    #[test]
    fn entries_survive_reopen_and_decide() {
        let dir = tempfile::tempdir().unwrap();
        let kp = libp2p::identity::Keypair::generate_ed25519();
        let peer = kp.public().to_peer_id();
        let key: PeerKey = kp.public().try_into_ed25519().unwrap().to_bytes();
        {
            let store = crate::store::Store::open(dir.path()).unwrap();
            let trust = TrustDb::open(store.database().clone()).unwrap();
            assert_eq!(
                trust.check(&peer.to_bytes(), &key, "proto-a").unwrap(),
                TrustDecision::UnknownPeer
            );
            trust
                .update(&peer, key, |e| {
                    e.allowed_protocols.insert("proto-a".into());
                })
                .unwrap();
        }
        let store = crate::store::Store::open(dir.path()).unwrap();
        let trust = TrustDb::open(store.database().clone()).unwrap();
        assert_eq!(
            trust.check(&peer.to_bytes(), &key, "proto-a").unwrap(),
            TrustDecision::Allow
        );
        assert_eq!(
            trust.check(&peer.to_bytes(), &key, "proto-b").unwrap(),
            TrustDecision::NotAllowed
        );
        trust.update(&peer, key, |e| e.revoked = true).unwrap();
        assert_eq!(trust.revoked().unwrap(), vec![peer]);
        assert_eq!(
            trust.check(&peer.to_bytes(), &key, "proto-a").unwrap(),
            TrustDecision::Revoked
        );
    }
}

//! The networks' records in the node's database: one row per network, holding every op of
//! its record in causal order, rewritten whole in one transaction on each change (a record
//! is small, and a whole rewrite cannot leave half a change behind).

use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::network::{Membership, NetworkId, SignedOp};
use crate::store::StoreError;

/// Networks: network id (hex) -> CBOR-encoded [`Row`].
const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");

/// One network's record as stored: the encoded ops, genesis first.
#[derive(Serialize, Deserialize)]
struct Row {
    ops: Vec<crate::network::Bin>,
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(Box::new(e.into()))
}

/// A record encoded as its row, not yet written.
#[derive(Debug)]
pub struct Encoded {
    key: String,
    bytes: Vec<u8>,
}

/// The networks table. Cheap to clone; every write is one committed transaction.
#[derive(Clone)]
pub struct NetworkDb {
    db: Arc<Database>,
}

impl std::fmt::Debug for NetworkDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetworkDb")
    }
}

impl NetworkDb {
    /// Opens the table in the node's database, creating it when missing.
    pub fn open(db: Arc<Database>) -> Result<Self, StoreError> {
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(NETWORKS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Self { db })
    }

    /// Writes `m`'s whole record.
    pub fn save(&self, m: &Membership) -> Result<(), StoreError> {
        self.put(&Self::encode(m)?)
    }

    /// `m`'s whole record as its row, ready for [`NetworkDb::put`]: encoding is cheap and
    /// needs the record, the commit is slow (an fsync) and does not.
    pub fn encode(m: &Membership) -> Result<Encoded, StoreError> {
        let key = m.network().to_string();
        let row = Row {
            ops: m
                .ops()
                .map(|op| crate::network::Bin(op.encoded().to_vec()))
                .collect(),
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&row, &mut bytes).map_err(|e| StoreError::Corrupt {
            key: format!("network {key}"),
            reason: e.to_string(),
        })?;
        Ok(Encoded { key, bytes })
    }

    /// Writes a row made by [`NetworkDb::encode`], in one committed transaction.
    pub fn put(&self, row: &Encoded) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(NETWORKS)
            .map_err(db_err)?
            .insert(row.key.as_str(), row.bytes.as_slice())
            .map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// Removes a network's record (after leaving it).
    pub fn remove(&self, network: &NetworkId) -> Result<(), StoreError> {
        let key = network.to_string();
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(NETWORKS)
            .map_err(db_err)?
            .remove(key.as_str())
            .map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// Every stored record, each read again from its ops (so every signature and every
    /// rule is checked again). A record that does not read back is an error naming it; the
    /// others are unaffected.
    pub fn load_all(&self) -> Result<Vec<Result<Membership, StoreError>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(NETWORKS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push(decode(k.value(), v.value()));
        }
        Ok(out)
    }

    /// Writes raw bytes as a network's row: how tests corrupt a record.
    #[cfg(test)]
    pub(crate) fn put_raw(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(NETWORKS)
            .map_err(db_err)?
            .insert(key, bytes)
            .map_err(db_err)?;
        txn.commit().map_err(db_err)
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<Membership, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: format!("network {key}"),
        reason,
    };
    let row: Row = ciborium::from_reader(bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut ops = row.ops.into_iter().map(|b| SignedOp::decode(&b.0));
    let genesis = ops
        .next()
        .ok_or_else(|| corrupt("no ops".into()))?
        .map_err(|e| corrupt(format!("genesis: {e}")))?;
    let mut m = Membership::from_genesis(genesis).map_err(|e| corrupt(e.to_string()))?;
    if m.network().to_string() != key {
        return Err(corrupt("the genesis is another network's".into()));
    }
    let ops: Vec<SignedOp> = ops
        .enumerate()
        .map(|(i, op)| op.map_err(|e| corrupt(format!("op {}: {e}", i + 1))))
        .collect::<Result<_, _>>()?;
    for (i, r) in m.apply_all(ops).into_iter().enumerate() {
        if let Err(e) = r {
            return Err(corrupt(format!("op {}: {e}", i + 1)));
        }
    }
    if m.pending_len() > 0 {
        return Err(corrupt(format!("{} ops lack their deps", m.pending_len())));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{Op, Role};

    #[test]
    fn records_survive_reopen_and_corruption_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let other = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let id = {
            let store = crate::store::Store::open(dir.path()).unwrap();
            let db = NetworkDb::open(store.database().clone()).unwrap();
            let mut m = Membership::create("home", &key, 1, &mut rand::rngs::OsRng).unwrap();
            let add = Op::Add {
                peer: other,
                role: Role::Member,
                name: None,
                invite: None,
            };
            m.make(&key, add, 2).unwrap();
            m.make(&key, Op::Revoke { peer: other }, 3).unwrap();
            db.save(&m).unwrap();
            m.network()
        };
        let store = crate::store::Store::open(dir.path()).unwrap();
        let db = NetworkDb::open(store.database().clone()).unwrap();
        let loaded = db.load_all().unwrap();
        assert_eq!(loaded.len(), 1);
        let m = loaded.into_iter().next().unwrap().unwrap();
        assert_eq!(m.network(), id);
        assert_eq!(m.len(), 3);
        assert!(m.member(&other).unwrap().revoked());

        db.put_raw(&id.to_string(), b"\xa1garbage").unwrap();
        let err = db.load_all().unwrap().remove(0).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("corrupt record for network {id}")),
            "{err}"
        );
    }
}

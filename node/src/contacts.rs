//! The node's address book: short names for peer ids, kept in the node's database and
//! served on the control socket under `/v1/contacts`, so every command that takes a peer
//! id can take a name and every listing can show one. Not an application protocol: like
//! the trust store, it belongs to the node.
//!
//! Identity is the peer id. A contact's peer id never changes (a rename keeps it); someone
//! who comes back with a new peer id is a new peer, added under a new name and unverified
//! until `p2pnode verify`. Whether a contact is verified is the trust store's word, read
//! when contacts are reported, never stored here.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableError,
};
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::NodeError;
use crate::peer::parse_peer_id;
use crate::route::{ApiError, ControlReply, ControlRequest, Method};
use crate::store::StoreError;

/// Contacts: name (case-folded) -> CBOR-encoded [`Record`].
const CONTACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("contacts");

/// Longest name, in characters (all ASCII).
pub const MAX_NAME_LEN: usize = 32;
/// Most contacts kept; an address book, not a peer store.
pub const MAX_CONTACTS: usize = 10_000;

/// The control routes, for the daemon and the CLI alike.
pub mod routes {
    /// `GET`: every contact, by name.
    pub const LIST: &str = "contacts";
    /// `POST` [`AddContact`](super::AddContact).
    pub const ADD: &str = "contacts/add";
    /// `POST` [`RenameContact`](super::RenameContact).
    pub const RENAME: &str = "contacts/rename";
    /// `POST` [`NameRequest`](super::NameRequest).
    pub const REMOVE: &str = "contacts/remove";

    /// `GET`: one contact; `name` must have passed [`parse_name`](super::parse_name) (its
    /// characters need no escaping in a path).
    pub fn get(name: &str) -> String {
        format!("contacts/{name}")
    }
}

/// A contact as reported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Contact {
    /// The name, case-folded.
    pub name: String,
    /// The peer id the name stands for.
    pub peer_id: String,
    /// When it was added (seconds since the Unix epoch).
    pub added_at: u64,
    /// Whether this peer id's key was verified by SAS comparison (from the trust store).
    #[serde(default)]
    pub verified: bool,
}

/// Body of `POST /v1/contacts/add`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddContact {
    /// The new name.
    pub name: String,
    /// The peer id.
    pub peer_id: String,
}

/// Body of `POST /v1/contacts/rename`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenameContact {
    /// The current name.
    pub name: String,
    /// The new name.
    pub new_name: String,
}

/// Body naming one contact (`POST /v1/contacts/remove`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NameRequest {
    /// The name.
    pub name: String,
}

/// Errors of the address book.
#[derive(Debug, thiserror::Error)]
pub enum ContactError {
    /// The name breaks the naming rules.
    #[error("invalid contact name {name:?}: {reason}")]
    InvalidName {
        /// The name as given (bounded).
        name: String,
        /// Which rule.
        reason: &'static str,
    },
    /// Another contact already has the name.
    #[error("a contact named {0} already exists (see `p2pnode contacts list`)")]
    NameTaken(String),
    /// The peer id already has a name; one name per peer keeps listings unambiguous.
    #[error("{peer_id} is already a contact, named {name} (rename it instead)")]
    PeerTaken {
        /// The peer id.
        peer_id: String,
        /// Its name.
        name: String,
    },
    /// No contact has the name.
    #[error("no contact named {0} (see `p2pnode contacts list`)")]
    NotFound(String),
    /// The address book holds [`MAX_CONTACTS`] already.
    #[error("the address book is full ({MAX_CONTACTS} contacts); remove some first")]
    Full,
    /// A bad peer id or request body, or the node is stopping.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError for ContactError {
    fn kind(&self) -> &str {
        match self {
            Self::InvalidName { .. } => "invalid_input",
            Self::NameTaken(_) | Self::PeerTaken { .. } => "exists",
            Self::NotFound(_) => "not_found",
            Self::Full => "full",
            Self::Node(e) => e.kind(),
            Self::Store(_) => "database",
        }
    }

    fn status(&self) -> u16 {
        match self {
            Self::InvalidName { .. } | Self::Full => 400,
            Self::NameTaken(_) | Self::PeerTaken { .. } => 409,
            Self::NotFound(_) => 404,
            Self::Node(e) => e.status(),
            Self::Store(_) => 500,
        }
    }
}

/// Reads a contact name as a user typed it: 1 to [`MAX_NAME_LEN`] characters of
/// `a-z 0-9 . _ -` after ASCII case folding, and never something a peer id could be, so
/// an argument is always one or the other.
pub fn parse_name(s: &str) -> Result<String, ContactError> {
    let s = s.trim();
    let invalid = |reason| ContactError::InvalidName {
        // Bounded: the name goes into one line of output.
        name: s.chars().take(MAX_NAME_LEN + 8).collect(),
        reason,
    };
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return Err(invalid("a name has 1 to 32 characters"));
    }
    let name = s.to_ascii_lowercase();
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(invalid("use only a-z, 0-9, '.', '_' and '-'"));
    }
    if name.bytes().all(|b| b == b'.') {
        // "." and ".." would be path segments in `/v1/contacts/<name>`.
        return Err(invalid("a name needs a letter, digit, '_' or '-'"));
    }
    // Every p2pnode peer id starts so (an Ed25519 key inline); a name that does is a
    // mistyped peer id, not a name.
    if s.parse::<PeerId>().is_ok() || name.starts_with("12d3koow") {
        return Err(invalid("that is (or looks like) a peer id, not a name"));
    }
    Ok(name)
}

/// What is stored per name.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    peer_id: String,
    added_at: u64,
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(Box::new(e.into()))
}

/// The contacts table in the node's database. Cheap to clone; every write is one
/// committed transaction. Reads before the first write find the table missing and see
/// an empty address book.
#[derive(Clone)]
pub struct ContactsDb {
    db: Arc<Database>,
}

impl std::fmt::Debug for ContactsDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContactsDb")
    }
}

impl ContactsDb {
    /// The contacts table of the node's database.
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    /// Every contact, by name.
    pub fn list(&self) -> Result<Vec<Contact>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(CONTACTS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let name = k.value().to_string();
            match decode(&name, v.value()) {
                Ok(r) => out.push(contact(name, r)),
                Err(e) => tracing::warn!(%name, "skipping unreadable contact: {e}"),
            }
        }
        Ok(out)
    }

    /// The contact named `name` (case-folded first).
    pub fn get(&self, name: &str) -> Result<Contact, ContactError> {
        let name = parse_name(name)?;
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(CONTACTS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Err(ContactError::NotFound(name)),
            Err(e) => return Err(db_err(e).into()),
        };
        let record = match table.get(name.as_str()).map_err(db_err)? {
            Some(v) => decode(&name, v.value())?,
            None => return Err(ContactError::NotFound(name)),
        };
        Ok(contact(name, record))
    }

    /// Adds `name` for `peer`. Names are unique, and so are peer ids.
    pub fn add(&self, name: &str, peer: &PeerId) -> Result<Contact, ContactError> {
        let name = parse_name(name)?;
        let peer_id = peer.to_string();
        let txn = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut table = txn.open_table(CONTACTS).map_err(db_err)?;
            if table.get(name.as_str()).map_err(db_err)?.is_some() {
                return Err(ContactError::NameTaken(name));
            }
            if let Some(other) = name_of(&table, &peer_id)? {
                return Err(ContactError::PeerTaken {
                    peer_id,
                    name: other,
                });
            }
            if table.len().map_err(db_err)? >= MAX_CONTACTS as u64 {
                return Err(ContactError::Full);
            }
            let record = Record {
                peer_id,
                added_at: now_secs(),
            };
            table
                .insert(name.as_str(), encode(&name, &record)?.as_slice())
                .map_err(db_err)?;
            record
        };
        txn.commit().map_err(db_err)?;
        Ok(contact(name, record))
    }

    /// Renames `old` to `new`; the peer id stays.
    pub fn rename(&self, old: &str, new: &str) -> Result<Contact, ContactError> {
        let (old, new) = (parse_name(old)?, parse_name(new)?);
        let txn = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut table = txn.open_table(CONTACTS).map_err(db_err)?;
            let record = match table.get(old.as_str()).map_err(db_err)? {
                Some(v) => decode(&old, v.value())?,
                None => return Err(ContactError::NotFound(old)),
            };
            if old != new {
                if table.get(new.as_str()).map_err(db_err)?.is_some() {
                    return Err(ContactError::NameTaken(new));
                }
                table.remove(old.as_str()).map_err(db_err)?;
                table
                    .insert(new.as_str(), encode(&new, &record)?.as_slice())
                    .map_err(db_err)?;
            }
            record
        };
        txn.commit().map_err(db_err)?;
        Ok(contact(new, record))
    }

    /// Removes `name` and returns what it was.
    pub fn remove(&self, name: &str) -> Result<Contact, ContactError> {
        let name = parse_name(name)?;
        let txn = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut table = txn.open_table(CONTACTS).map_err(db_err)?;
            let removed = table.remove(name.as_str()).map_err(db_err)?;
            match removed {
                Some(v) => decode(&name, v.value())?,
                None => return Err(ContactError::NotFound(name)),
            }
        };
        txn.commit().map_err(db_err)?;
        Ok(contact(name, record))
    }
}

/// The name `peer_id` has in `table`, if any.
fn name_of(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    peer_id: &str,
) -> Result<Option<String>, StoreError> {
    for row in table.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        let name = k.value().to_string();
        if decode(&name, v.value()).is_ok_and(|r| r.peer_id == peer_id) {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

fn contact(name: String, r: Record) -> Contact {
    Contact {
        name,
        peer_id: r.peer_id,
        added_at: r.added_at,
        verified: false,
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record, StoreError> {
    ciborium::from_reader(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn encode(key: &str, record: &Record) -> Result<Vec<u8>, StoreError> {
    let mut buf = Vec::new();
    ciborium::into_writer(record, &mut buf).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })?;
    Ok(buf)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Serves `/v1/contacts` and everything under it, for the control server.
pub(crate) async fn handle(req: ControlRequest, client: &Client) -> ControlReply {
    let db = ContactsDb::new(client.security().trust().database().clone());
    match (req.method(), req.route()) {
        (Method::Get, routes::LIST) => {
            let list = async {
                let mut list = blocking(move || Ok(db.list()?)).await?;
                let verified = verified_peers(client).await?;
                for c in &mut list {
                    c.verified = verified.contains(&c.peer_id);
                }
                Ok::<_, ContactError>(list)
            };
            ControlReply::from_result(list.await)
        }
        (Method::Get, route) if route.starts_with("contacts/") => {
            let name = route["contacts/".len()..].to_string();
            reply(client, blocking(move || db.get(&name)).await).await
        }
        (Method::Post, routes::ADD) => {
            let r = match req.json::<AddContact>() {
                Ok(r) => r,
                Err(e) => return ControlReply::error(&e),
            };
            let peer = match parse_peer_id(&r.peer_id) {
                Ok(p) => p,
                Err(e) => return ControlReply::error(&e),
            };
            reply(client, blocking(move || db.add(&r.name, &peer)).await).await
        }
        (Method::Post, routes::RENAME) => match req.json::<RenameContact>() {
            Ok(r) => {
                reply(
                    client,
                    blocking(move || db.rename(&r.name, &r.new_name)).await,
                )
                .await
            }
            Err(e) => ControlReply::error(&e),
        },
        (Method::Post, routes::REMOVE) => match req.json::<NameRequest>() {
            Ok(r) => reply(client, blocking(move || db.remove(&r.name)).await).await,
            Err(e) => ControlReply::error(&e),
        },
        (_, route) => ControlReply::unknown(route),
    }
}

/// One contact as reported, `verified` filled in.
async fn reply(client: &Client, r: Result<Contact, ContactError>) -> ControlReply {
    let marked = async {
        let mut c = r?;
        c.verified = verified_peers(client).await?.contains(&c.peer_id);
        Ok::<_, ContactError>(c)
    };
    ControlReply::from_result(marked.await)
}

/// The peer ids the trust store holds as verified.
async fn verified_peers(client: &Client) -> Result<BTreeSet<String>, ContactError> {
    Ok(client
        .trust_list()
        .await?
        .into_iter()
        .filter(|t| t.verified)
        .map(|t| t.peer_id)
        .collect())
}

/// redb blocks on fsync: off the async workers, as the trust store does.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ContactError> + Send + 'static,
) -> Result<T, ContactError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ContactError::Node(NodeError::Stopped))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> (tempfile::TempDir, ContactsDb) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let db = ContactsDb::new(store.database().clone());
        (dir, db)
    }

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    #[test]
    fn add_get_rename_remove_and_survive_reopen() {
        let (dir, db) = book();
        assert!(
            db.list().unwrap().is_empty(),
            "no table yet: empty, no error"
        );
        assert!(matches!(db.get("alice"), Err(ContactError::NotFound(_))));
        let (alice, bob) = (peer(), peer());
        let added = db.add("Alice", &alice).unwrap();
        assert_eq!(added.name, "alice", "case-folded");
        db.add("bob.b_2-x", &bob).unwrap();
        assert_eq!(db.get("ALICE").unwrap().peer_id, alice.to_string());

        let renamed = db.rename("alice", "al").unwrap();
        assert_eq!(renamed.peer_id, alice.to_string(), "the peer id stays");
        assert_eq!(renamed.added_at, added.added_at);
        assert!(matches!(db.get("alice"), Err(ContactError::NotFound(_))));
        // Renaming to itself (another case) is a no-op, not "taken".
        db.rename("al", "AL").unwrap();

        drop(db);
        let store = crate::store::Store::open(dir.path()).unwrap();
        let db = ContactsDb::new(store.database().clone());
        let names: Vec<String> = db.list().unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["al", "bob.b_2-x"]);

        assert_eq!(db.remove("al").unwrap().peer_id, alice.to_string());
        assert!(matches!(db.remove("al"), Err(ContactError::NotFound(_))));
        assert_eq!(db.list().unwrap().len(), 1);
    }

    #[test]
    fn names_and_peer_ids_are_unique() {
        let (_dir, db) = book();
        let (a, b) = (peer(), peer());
        db.add("alice", &a).unwrap();
        let e = db.add("ALICE", &b).unwrap_err();
        assert!(matches!(e, ContactError::NameTaken(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "a contact named alice already exists (see `p2pnode contacts list`)"
        );
        let e = db.add("alice2", &a).unwrap_err();
        assert!(matches!(e, ContactError::PeerTaken { .. }), "{e}");
        db.add("bob", &b).unwrap();
        let e = db.rename("bob", "alice").unwrap_err();
        assert!(matches!(e, ContactError::NameTaken(_)), "{e}");
        assert_eq!(db.get("bob").unwrap().peer_id, b.to_string(), "unchanged");
        assert!(matches!(
            db.rename("carol", "dave"),
            Err(ContactError::NotFound(_))
        ));
    }

    #[test]
    fn invalid_names_are_refused_with_one_line() {
        let id = peer().to_string();
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "",
            "  ",
            long.as_str(),
            "al ice",
            "alice!",
            "al/ice",
            "élodie",
            ".",
            "..",
            id.as_str(),
            "12D3KooWnope",
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
        ] {
            let e = parse_name(bad).unwrap_err();
            let line = e.to_string();
            assert!(
                matches!(e, ContactError::InvalidName { .. }),
                "{bad:?}: {line}"
            );
            assert!(!line.contains('\n') && line.len() < 200, "{line}");
        }
        assert_eq!(parse_name("a").unwrap(), "a");
        assert_eq!(parse_name(&"Z".repeat(32)).unwrap(), "z".repeat(32));
        assert_eq!(parse_name(" Bob.Smith_2-x ").unwrap(), "bob.smith_2-x");
        let (_dir, db) = book();
        assert!(db.add("al ice", &peer()).is_err());
        assert!(
            db.list().unwrap().is_empty(),
            "nothing written on a refusal"
        );
    }

    #[test]
    fn the_book_is_bounded() {
        let (_dir, db) = book();
        // Fill it directly: adding 10 000 one by one would fsync 10 000 times.
        let txn = db.db.begin_write().unwrap();
        {
            let mut table = txn.open_table(CONTACTS).unwrap();
            for i in 0..MAX_CONTACTS {
                let r = Record {
                    peer_id: format!("peer{i}"),
                    added_at: 0,
                };
                let name = format!("n{i}");
                table
                    .insert(name.as_str(), encode(&name, &r).unwrap().as_slice())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
        assert!(matches!(
            db.add("one-more", &peer()),
            Err(ContactError::Full)
        ));
    }
}

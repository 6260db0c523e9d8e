//! [`Document`]: an automerge document read and written as JSON by path.
//!
//! Every value automerge stores sits in a multi-value register: a map key or a list element
//! keeps every value written concurrently (writes that did not see each other) until a later
//! write that has seen them all replaces them. automerge's own `get` picks the value with the
//! greatest operation id (Lamport counter, then actor bytes), the same on every replica.
//! [`Strategy`] chooses differently, at read time; see there.

use std::time::{SystemTime, UNIX_EPOCH};

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ChangeHash, ObjId, ObjType, ROOT, ReadDoc};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::path::Path;
use write::check_json;

mod navigate;
mod read;
#[cfg(test)]
mod tests;
mod write;

/// Longest peer id accepted, in bytes (a libp2p peer id is 38 bytes for Ed25519 keys).
pub const MAX_PEER_ID_LEN: usize = 128;

/// Bytes of per-session randomness after the peer id in an actor id. Two processes of one
/// peer that reused an actor id could write two different changes with the same sequence
/// number (after a crash that lost a change already sent out), which automerge cannot
/// merge; the suffix makes every opened document its own actor.
const SESSION_TAG_LEN: usize = 8;

/// How a read picks one value from a register that holds several concurrent values.
///
/// Strategies are views: none of them writes. A strategy that wrote its pick back would
/// make each replica's resolution a new concurrent write, and under local or remote wins
/// the replicas would keep overwriting each other. The concurrent values stay in the
/// document (listed by [`Document::conflicts`]) until some write replaces them, which
/// [`Document::resolve`] does on purpose.
///
/// Times are the change timestamps (milliseconds since the Unix epoch, from the writer's
/// clock); "local" means the change's author (see [`Document::history`]) is this
/// document's peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Strategy {
    /// The value whose change has the greatest timestamp; on a tie, automerge's own winner
    /// (greatest operation id). Every replica picks the same value.
    #[default]
    LatestTimestamp,
    /// The local peer's value; if there are several, or none, as [`Self::LatestTimestamp`]
    /// among them, or among all. Replicas may pick differently.
    LocalWins,
    /// The latest (as [`Self::LatestTimestamp`]) value written by another peer; if all are
    /// local, the latest local one. Replicas may pick differently.
    RemoteWins,
    /// No pick: a read or write whose path meets several values fails with
    /// [`Error::Conflict`] until [`Document::resolve`] replaces them (a delete of the path
    /// itself is allowed: it removes them all).
    /// [`Document::conflicts`] descends through such places along automerge's own winner.
    Manual,
}

/// What [`Document::resolve`] keeps.
#[derive(Debug, Clone, PartialEq)]
pub enum Keep {
    /// The local peer's value (the latest local one if several).
    Local,
    /// The latest value written by another peer.
    Remote,
    /// This value instead of any of them.
    Value(Value),
}

/// Message and time of one change. Without a time the system clock is read.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    message: Option<String>,
    time_ms: Option<i64>,
}

impl Commit {
    /// A change with no message, stamped now.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the change's message.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Sets the change's time in milliseconds since the Unix epoch.
    pub fn time_ms(mut self, time_ms: i64) -> Self {
        self.time_ms = Some(time_ms);
        self
    }

    fn options(&self) -> CommitOptions {
        let time = self.time_ms.unwrap_or_else(now_ms);
        let options = CommitOptions::default().with_time(time);
        match &self.message {
            Some(m) => options.with_message(m.clone()),
            None => options,
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One of the concurrent values of a register.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The value as JSON (nested conflicts inside it read along automerge's winner).
    pub value: Value,
    /// The peer id of the change's author.
    pub author: Vec<u8>,
    /// Whether the author is this document's peer.
    pub local: bool,
    /// The change's timestamp, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The change that wrote the value.
    pub change: ChangeHash,
}

/// A register holding several concurrent values.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// Where (see the path syntax in the crate docs).
    pub path: String,
    /// The values, in automerge's order (the last is automerge's own winner).
    pub candidates: Vec<Candidate>,
    /// The index in `candidates` the document's strategy reads; `None` under
    /// [`Strategy::Manual`].
    pub pick: Option<usize>,
}

/// One change of a document's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    /// The change's hash.
    pub hash: ChangeHash,
    /// The author's peer id: the actor id without its last 8 bytes (the session suffix).
    /// Every actor id is read this way, so one made by another automerge client shows its
    /// first bytes (or all of it, when 8 bytes or shorter).
    pub author: Vec<u8>,
    /// Milliseconds since the Unix epoch, from the author's clock.
    pub time_ms: i64,
    /// The change's message, if any.
    pub message: Option<String>,
    /// The changes it was made on top of.
    pub deps: Vec<ChangeHash>,
}

/// What the store remembers about a document between saves.
#[derive(Debug, Clone, Default)]
pub(crate) struct Persisted {
    /// Heads at the last save: the next incremental save writes the changes after them.
    pub(crate) heads: Vec<ChangeHash>,
    pub(crate) snapshot_len: u64,
    pub(crate) log_len: u64,
    /// The snapshot file this document was last saved to or loaded from: a save to any
    /// other name writes a full snapshot, since that name's log does not follow it.
    pub(crate) file: Option<std::path::PathBuf>,
}

/// A JSON document backed by automerge, written as one peer.
///
/// The author of every change is stored in automerge's actor id: the peer id bytes followed
/// by 8 random bytes per opened document (see [`HistoryEntry::author`]).
#[derive(Debug)]
pub struct Document {
    doc: Automerge,
    peer: Vec<u8>,
    strategy: Strategy,
    pub(crate) persisted: Persisted,
}

/// How navigation treats a register with several values on the way.
#[derive(Clone, Copy)]
enum Walk {
    /// Pick by the strategy; under Manual, fail with `Conflict`.
    Strict(Strategy),
    /// Pick by the strategy; under Manual, take automerge's winner.
    Descend(Strategy),
}

type Values = Vec<(automerge::Value<'static>, ObjId)>;

fn check_peer(peer: &[u8]) -> Result<()> {
    if peer.is_empty() || peer.len() > MAX_PEER_ID_LEN {
        return Err(Error::InvalidPeerId(peer.len()));
    }
    Ok(())
}

fn actor_for(peer: &[u8]) -> ActorId {
    let tag = ActorId::random();
    let mut bytes = Vec::with_capacity(peer.len() + SESSION_TAG_LEN);
    bytes.extend_from_slice(peer);
    bytes.extend_from_slice(&tag.to_bytes()[..SESSION_TAG_LEN]);
    ActorId::from(bytes)
}

/// The peer id inside an actor id made by [`actor_for`].
pub(crate) fn author_of(actor: &ActorId) -> &[u8] {
    let bytes = actor.to_bytes();
    if bytes.len() > SESSION_TAG_LEN {
        &bytes[..bytes.len() - SESSION_TAG_LEN]
    } else {
        bytes
    }
}

impl Document {
    /// An empty document (an empty JSON object) written as `peer` (its peer id bytes).
    pub fn new(peer: &[u8]) -> Result<Self> {
        check_peer(peer)?;
        Ok(Self {
            doc: Automerge::new().with_actor(actor_for(peer)),
            peer: peer.to_vec(),
            strategy: Strategy::default(),
            persisted: Persisted::default(),
        })
    }

    /// Loads a document saved by [`Self::save`] (or any automerge document), to be written
    /// as `peer`.
    pub fn load(peer: &[u8], bytes: &[u8]) -> Result<Self> {
        check_peer(peer)?;
        let doc = Automerge::load(bytes)?.with_actor(actor_for(peer));
        Ok(Self {
            doc,
            peer: peer.to_vec(),
            strategy: Strategy::default(),
            persisted: Persisted::default(),
        })
    }

    /// The whole document in automerge's compressed format.
    pub fn save(&self) -> Vec<u8> {
        self.doc.save()
    }

    /// A copy with the same changes, written as `peer` (a replica for tests and tools).
    pub fn fork(&self, peer: &[u8]) -> Result<Self> {
        check_peer(peer)?;
        Ok(Self {
            doc: self.doc.fork().with_actor(actor_for(peer)),
            peer: peer.to_vec(),
            strategy: self.strategy,
            persisted: Persisted::default(),
        })
    }

    /// Sets the strategy reads use when no strategy is given per call.
    pub fn with_strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the strategy reads use when no strategy is given per call.
    pub fn set_strategy(&mut self, strategy: Strategy) {
        self.strategy = strategy;
    }

    /// The document's strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// This document's peer id.
    pub fn peer(&self) -> &[u8] {
        &self.peer
    }

    /// The hashes of the changes no other change depends on: equal heads, equal documents.
    pub fn heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// How many changes the document holds.
    pub fn change_count(&self) -> u64 {
        self.doc.stats().num_changes
    }

    /// The automerge document underneath, for what this API does not cover.
    pub fn automerge(&self) -> &Automerge {
        &self.doc
    }

    pub(crate) fn automerge_mut(&mut self) -> &mut Automerge {
        &mut self.doc
    }

    /// Takes every change of `other` that this document lacks; returns how many.
    pub fn merge(&mut self, other: &mut Document) -> Result<u64> {
        let before = self.change_count();
        self.doc.merge(&mut other.doc)?;
        Ok(self.change_count() - before)
    }

    /// The value at `path` as JSON, read with the document's strategy.
    pub fn get(&self, path: &str) -> Result<Value> {
        self.get_with(path, self.strategy)
    }

    /// The value at `path` as JSON, read with `strategy`.
    pub fn get_with(&self, path: &str, strategy: Strategy) -> Result<Value> {
        let parsed = Path::parse(path)?;
        let walk = Walk::Strict(strategy);
        let mut at = parsed.segments.clone();
        match self.locate(&parsed, walk)? {
            None => self.object_json(&ROOT, walk, &mut at),
            Some((value, id)) => self.value_json(&value, &id, walk, &mut at),
        }
    }

    /// The keys of the object at `path` (sorted), or the indices of the list there.
    pub fn keys(&self, path: &str) -> Result<Vec<String>> {
        let parsed = Path::parse(path)?;
        let obj = match self.locate(&parsed, Walk::Strict(self.strategy))? {
            None => ROOT,
            Some((automerge::Value::Object(_), id)) => id,
            Some(_) => return Err(Error::NotAContainer(path.to_owned())),
        };
        Ok(match self.doc.object_type(&obj)? {
            ObjType::Map | ObjType::Table => self.doc.keys(&obj).collect(),
            ObjType::List => (0..self.doc.length(&obj)).map(|i| i.to_string()).collect(),
            ObjType::Text => return Err(Error::NotAContainer(path.to_owned())),
        })
    }

    /// Writes `value` at `path` in one change. The parent must exist; under a list, an
    /// index replaces that element, the list's length or `-` appends. The empty path
    /// replaces the whole document, which must then be an object. Returns the change's
    /// hash, `None` if nothing was written (an empty object put at an empty root).
    pub fn put(&mut self, path: &str, value: &Value) -> Result<Option<ChangeHash>> {
        self.put_with(path, value, &Commit::new())
    }

    /// [`Self::put`] with a message or time for the change.
    pub fn put_with(
        &mut self,
        path: &str,
        value: &Value,
        commit: &Commit,
    ) -> Result<Option<ChangeHash>> {
        check_json(value, 0)?;
        let parsed = Path::parse(path)?;
        self.write(&parsed, value, commit, Walk::Strict(self.strategy))
    }

    /// Removes the key or list element at `path` in one change.
    pub fn delete(&mut self, path: &str) -> Result<Option<ChangeHash>> {
        self.delete_with(path, &Commit::new())
    }

    /// [`Self::delete`] with a message or time for the change.
    pub fn delete_with(&mut self, path: &str, commit: &Commit) -> Result<Option<ChangeHash>> {
        let parsed = Path::parse(path)?;
        let Some(last) = parsed.segments.len().checked_sub(1) else {
            return Err(Error::InvalidPath {
                path: path.to_owned(),
                reason: "the root cannot be deleted",
            });
        };
        let parent = self.container(&parsed, last, Walk::Strict(self.strategy))?;
        let prop = self.existing_prop(&parent, &parsed, last)?;
        self.commit(commit, |tx| tx.delete(&parent, prop))
    }

    /// The changes, oldest first (a causal order), at most the last `limit` of them.
    pub fn history(&self, limit: usize) -> Vec<HistoryEntry> {
        let metas = self.doc.get_changes_meta(&[]);
        let skip = metas.len().saturating_sub(limit);
        metas
            .into_iter()
            .skip(skip)
            .map(|m| HistoryEntry {
                hash: m.hash,
                author: author_of(&m.actor).to_vec(),
                time_ms: m.timestamp,
                message: m.message.map(|s| s.into_owned()),
                deps: m.deps,
            })
            .collect()
    }

    /// Every register holding several values, found by descending from the root along the
    /// document's strategy (under [`Strategy::Manual`], along automerge's winner).
    pub fn conflicts(&self) -> Result<Vec<Conflict>> {
        self.conflicts_with(self.strategy)
    }

    /// [`Self::conflicts`] with `strategy` for the picks and the descent.
    pub fn conflicts_with(&self, strategy: Strategy) -> Result<Vec<Conflict>> {
        let mut out = Vec::new();
        let mut at = Vec::new();
        self.collect_conflicts(&ROOT, Walk::Descend(strategy), &mut at, &mut out)?;
        Ok(out)
    }

    /// The concurrent values at `path` (one value when there is no conflict).
    pub fn candidates(&self, path: &str) -> Result<Vec<Candidate>> {
        let parsed = Path::parse(path)?;
        let Some(last) = parsed.segments.len().checked_sub(1) else {
            return Ok(vec![]);
        };
        let walk = Walk::Descend(self.strategy);
        let parent = self.container(&parsed, last, walk)?;
        let prop = self.existing_prop(&parent, &parsed, last)?;
        let values = self.values(&parent, prop)?;
        let mut at = parsed.segments.clone();
        self.describe(&values, walk, &mut at)
    }

    /// Replaces the concurrent values at `path` by one, in one change that has seen them
    /// all, so every replica reads it under every strategy. Resolving a path without a
    /// conflict with [`Keep::Local`] or [`Keep::Remote`] writes nothing and returns `None`
    /// when the one value is already of that kind. An object kept is written as a copy.
    pub fn resolve(&mut self, path: &str, keep: Keep) -> Result<Option<ChangeHash>> {
        self.resolve_with(path, keep, &Commit::new())
    }

    /// [`Self::resolve`] with a message or time for the change.
    pub fn resolve_with(
        &mut self,
        path: &str,
        keep: Keep,
        commit: &Commit,
    ) -> Result<Option<ChangeHash>> {
        let parsed = Path::parse(path)?;
        if parsed.segments.is_empty() {
            return Err(Error::InvalidPath {
                path: path.to_owned(),
                reason: "the root holds no concurrent values",
            });
        }
        let value = match keep {
            Keep::Value(v) => {
                check_json(&v, 0)?;
                v
            }
            Keep::Local | Keep::Remote => {
                let local = keep == Keep::Local;
                let candidates = self.candidates(path)?;
                let pool: Vec<&Candidate> =
                    candidates.iter().filter(|c| c.local == local).collect();
                let chosen =
                    pool.iter()
                        .max_by_key(|c| c.time_ms)
                        .ok_or_else(|| Error::NoCandidate {
                            path: path.to_owned(),
                            which: if local { "local" } else { "remote" },
                        })?;
                if candidates.len() == 1 {
                    return Ok(None);
                }
                chosen.value.clone()
            }
        };
        // Resolution navigates like `conflicts` does, so a conflict listed there can be
        // resolved under Manual even when it sits inside another one.
        let walk = Walk::Descend(self.strategy);
        self.write(&parsed, &value, commit, walk)
    }
}

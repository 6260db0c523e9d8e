//! [`Document`]: an automerge document read and written as JSON by path.
//!
//! Every value automerge stores sits in a multi-value register: a map key or a list element
//! keeps every value written concurrently (writes that did not see each other) until a later
//! write that has seen them all replaces them. automerge's own `get` picks the value with the
//! greatest operation id (Lamport counter, then actor bytes), the same on every replica.
//! [`Strategy`] chooses differently, at read time; see there.

use std::time::{SystemTime, UNIX_EPOCH};

use automerge::transaction::{CommitOptions, Transactable, Transaction};
use automerge::{ActorId, Automerge, ChangeHash, ObjId, ObjType, Prop, ROOT, ReadDoc, ScalarValue};
use serde_json::{Map, Number, Value};

use crate::error::{Error, Result};
use crate::path::{self, MAX_DEPTH, Path};

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

    // --- navigation -----------------------------------------------------------------------

    fn values(&self, obj: &ObjId, prop: Prop) -> Result<Values> {
        Ok(self
            .doc
            .get_all(obj, prop)?
            .into_iter()
            .map(|(v, id)| (v.to_owned(), id))
            .collect())
    }

    /// Timestamp and locality of the change that wrote `id`.
    fn meta(&self, id: &ObjId) -> (i64, bool, Option<ChangeHash>, Vec<u8>) {
        let Some(hash) = self.doc.hash_for_opid(id) else {
            return (0, false, None, vec![]);
        };
        match self.doc.get_change_meta_by_hash(&hash) {
            Some(m) => {
                let author = author_of(&m.actor).to_vec();
                (m.timestamp, author == self.peer, Some(hash), author)
            }
            None => (0, false, Some(hash), vec![]),
        }
    }

    /// The index the strategy picks among several values; `None` under Manual.
    fn pick(&self, values: &Values, strategy: Strategy) -> Option<usize> {
        if values.len() == 1 {
            return Some(0);
        }
        let metas: Vec<(i64, bool)> = values
            .iter()
            .map(|(_, id)| {
                let (t, local, _, _) = self.meta(id);
                (t, local)
            })
            .collect();
        // Latest timestamp among the allowed, ties to the greatest operation id, which is
        // automerge's own order of winners.
        let latest = |allow: &dyn Fn(bool) -> bool| {
            (0..values.len())
                .filter(|&i| allow(metas[i].1))
                .max_by(|&a, &b| {
                    metas[a]
                        .0
                        .cmp(&metas[b].0)
                        .then(values[a].1.cmp(&values[b].1))
                })
        };
        match strategy {
            Strategy::LatestTimestamp => latest(&|_| true),
            Strategy::LocalWins => latest(&|l| l).or_else(|| latest(&|_| true)),
            Strategy::RemoteWins => latest(&|l| !l).or_else(|| latest(&|_| true)),
            Strategy::Manual => None,
        }
    }

    /// The value one register shows under `walk`; `at` is its path, for errors.
    fn choose(&self, values: &Values, walk: Walk, at: &[String]) -> Result<usize> {
        let (strategy, descend) = match walk {
            Walk::Strict(s) => (s, false),
            Walk::Descend(s) => (s, true),
        };
        match self.pick(values, strategy) {
            Some(i) => Ok(i),
            None if descend => Ok(winner(values)),
            None => Err(Error::Conflict {
                path: path::join(at),
                values: values.len(),
            }),
        }
    }

    /// The prop segment `n` of `path` names in `obj`, which must exist.
    fn existing_prop(&self, obj: &ObjId, parsed: &Path, n: usize) -> Result<Prop> {
        let segment = &parsed.segments[n];
        let unknown = || Error::UnknownPath(parsed.display_prefix(n + 1));
        match self.doc.object_type(obj)? {
            ObjType::Map | ObjType::Table => {
                if self.doc.get_all(obj, segment.as_str())?.is_empty() {
                    return Err(unknown());
                }
                Ok(Prop::Map(segment.clone()))
            }
            ObjType::List => match path::index(segment) {
                Some(i) if i < self.doc.length(obj) => Ok(Prop::Seq(i)),
                _ => Err(unknown()),
            },
            ObjType::Text => Err(Error::NotAContainer(parsed.display_prefix(n))),
        }
    }

    /// The object at the first `n` segments of `path`.
    fn container(&self, parsed: &Path, n: usize, walk: Walk) -> Result<ObjId> {
        let mut obj = ROOT;
        for i in 0..n {
            let prop = self.existing_prop(&obj, parsed, i)?;
            let values = self.values(&obj, prop)?;
            let chosen = self.choose(&values, walk, &parsed.segments[..=i])?;
            match &values[chosen] {
                (automerge::Value::Object(ObjType::Text), _) | (automerge::Value::Scalar(_), _) => {
                    return Err(Error::NotAContainer(parsed.display_prefix(i + 1)));
                }
                (automerge::Value::Object(_), id) => obj = id.clone(),
            }
        }
        if matches!(self.doc.object_type(&obj)?, ObjType::Text) {
            return Err(Error::NotAContainer(parsed.display_prefix(n)));
        }
        Ok(obj)
    }

    /// The value the whole path names, or `None` for the root.
    fn locate(
        &self,
        parsed: &Path,
        walk: Walk,
    ) -> Result<Option<(automerge::Value<'static>, ObjId)>> {
        let Some(last) = parsed.segments.len().checked_sub(1) else {
            return Ok(None);
        };
        let parent = self.container(parsed, last, walk)?;
        let prop = self.existing_prop(&parent, parsed, last)?;
        let mut values = self.values(&parent, prop)?;
        let chosen = self.choose(&values, walk, &parsed.segments)?;
        Ok(Some(values.swap_remove(chosen)))
    }

    // --- reading --------------------------------------------------------------------------

    fn value_json(
        &self,
        value: &automerge::Value<'_>,
        id: &ObjId,
        walk: Walk,
        at: &mut Vec<String>,
    ) -> Result<Value> {
        match value {
            automerge::Value::Scalar(s) => Ok(scalar_json(s)),
            automerge::Value::Object(_) => self.object_json(id, walk, at),
        }
    }

    fn object_json(&self, obj: &ObjId, walk: Walk, at: &mut Vec<String>) -> Result<Value> {
        if at.len() > MAX_DEPTH {
            return Err(Error::TooDeep(path::join(at)));
        }
        match self.doc.object_type(obj)? {
            ObjType::Map | ObjType::Table => {
                let mut map = Map::new();
                for key in self.doc.keys(obj) {
                    let values = self.values(obj, Prop::Map(key.clone()))?;
                    at.push(key.clone());
                    let chosen = self.choose(&values, walk, at)?;
                    let (v, id) = &values[chosen];
                    let json = self.value_json(v, id, walk, at)?;
                    at.pop();
                    map.insert(key, json);
                }
                Ok(Value::Object(map))
            }
            ObjType::List => {
                let len = self.doc.length(obj);
                let mut list = Vec::with_capacity(len);
                for i in 0..len {
                    let values = self.values(obj, Prop::Seq(i))?;
                    at.push(i.to_string());
                    let chosen = self.choose(&values, walk, at)?;
                    let (v, id) = &values[chosen];
                    list.push(self.value_json(v, id, walk, at)?);
                    at.pop();
                }
                Ok(Value::Array(list))
            }
            ObjType::Text => Ok(Value::String(self.doc.text(obj)?)),
        }
    }

    fn describe(
        &self,
        values: &Values,
        walk: Walk,
        at: &mut Vec<String>,
    ) -> Result<Vec<Candidate>> {
        values
            .iter()
            .map(|(v, id)| {
                let (time_ms, local, change, author) = self.meta(id);
                Ok(Candidate {
                    value: self.value_json(v, id, walk, at)?,
                    author,
                    local,
                    time_ms,
                    change: change.unwrap_or(ChangeHash([0; 32])),
                })
            })
            .collect()
    }

    fn collect_conflicts(
        &self,
        obj: &ObjId,
        walk: Walk,
        at: &mut Vec<String>,
        out: &mut Vec<Conflict>,
    ) -> Result<()> {
        if at.len() > MAX_DEPTH {
            return Err(Error::TooDeep(path::join(at)));
        }
        let props: Vec<Prop> = match self.doc.object_type(obj)? {
            ObjType::Map | ObjType::Table => self.doc.keys(obj).map(Prop::Map).collect(),
            ObjType::List => (0..self.doc.length(obj)).map(Prop::Seq).collect(),
            ObjType::Text => return Ok(()),
        };
        let strategy = match walk {
            Walk::Strict(s) | Walk::Descend(s) => s,
        };
        for prop in props {
            let values = self.values(obj, prop.clone())?;
            at.push(match &prop {
                Prop::Map(k) => k.clone(),
                Prop::Seq(i) => i.to_string(),
            });
            if values.len() > 1 {
                out.push(Conflict {
                    path: path::join(at),
                    candidates: self.describe(&values, walk, at)?,
                    pick: self.pick(&values, strategy),
                });
            }
            let chosen = self.choose(&values, walk, at)?;
            if let (automerge::Value::Object(_), id) = &values[chosen] {
                self.collect_conflicts(id, walk, at, out)?;
            }
            at.pop();
        }
        Ok(())
    }

    // --- writing --------------------------------------------------------------------------

    fn commit<F>(&mut self, commit: &Commit, f: F) -> Result<Option<ChangeHash>>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<(), automerge::AutomergeError>,
    {
        let options = commit.options();
        let done = self
            .doc
            .transact_with(|_| options, f)
            .map_err(|failure| Error::Automerge(failure.error))?;
        Ok(done.hash)
    }

    fn write(
        &mut self,
        parsed: &Path,
        value: &Value,
        commit: &Commit,
        walk: Walk,
    ) -> Result<Option<ChangeHash>> {
        let Some(last) = parsed.segments.len().checked_sub(1) else {
            let Value::Object(map) = value else {
                return Err(Error::InvalidJson(
                    "the document root must be an object".into(),
                ));
            };
            let stale: Vec<String> = self
                .doc
                .keys(&ROOT)
                .filter(|k| !map.contains_key(k))
                .collect();
            return self.commit(commit, |tx| {
                for key in stale {
                    tx.delete(&ROOT, key)?;
                }
                for (k, v) in map {
                    write_json(tx, &ROOT, Prop::Map(k.clone()), false, v)?;
                }
                Ok(())
            });
        };
        let parent = self.container(parsed, last, walk)?;
        let segment = &parsed.segments[last];
        let (prop, insert) = match self.doc.object_type(&parent)? {
            ObjType::Map | ObjType::Table => (Prop::Map(segment.clone()), false),
            ObjType::List => {
                let len = self.doc.length(&parent);
                let i = if segment == "-" {
                    Some(len)
                } else {
                    path::index(segment)
                };
                match i {
                    Some(i) if i < len => {
                        // Replacing an element that holds concurrent values picks a side
                        // under Manual: refuse, as a read would.
                        let values = self.values(&parent, Prop::Seq(i))?;
                        self.choose(&values, walk, &parsed.segments)?;
                        (Prop::Seq(i), false)
                    }
                    Some(i) if i == len => (Prop::Seq(i), true),
                    _ => return Err(Error::UnknownPath(parsed.display_prefix(last + 1))),
                }
            }
            ObjType::Text => return Err(Error::NotAContainer(parsed.display_prefix(last))),
        };
        if let (Prop::Map(key), Walk::Strict(Strategy::Manual)) = (&prop, walk) {
            let values = self.values(&parent, Prop::Map(key.clone()))?;
            if values.len() > 1 {
                return Err(Error::Conflict {
                    path: path::join(&parsed.segments),
                    values: values.len(),
                });
            }
        }
        self.commit(commit, |tx| write_json(tx, &parent, prop, insert, value))
    }
}

/// automerge's own winner among concurrent values: the greatest operation id.
fn winner(values: &Values) -> usize {
    (0..values.len())
        .max_by(|&a, &b| values[a].1.cmp(&values[b].1))
        .unwrap_or(0)
}

/// Refuses JSON nested deeper than [`MAX_DEPTH`]; anything else serde_json holds maps.
fn check_json(value: &Value, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::InvalidJson(format!(
            "nested deeper than {MAX_DEPTH} levels"
        )));
    }
    match value {
        Value::Array(items) => items.iter().try_for_each(|v| check_json(v, depth + 1)),
        Value::Object(map) => map.values().try_for_each(|v| check_json(v, depth + 1)),
        _ => Ok(()),
    }
}

fn scalar(value: &Value) -> ScalarValue {
    match value {
        Value::Bool(b) => ScalarValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => ScalarValue::Int(i),
            (None, Some(u), _) => ScalarValue::Uint(u),
            (None, None, Some(f)) => ScalarValue::F64(f),
            _ => ScalarValue::Null,
        },
        Value::String(s) => ScalarValue::Str(s.as_str().into()),
        Value::Null | Value::Array(_) | Value::Object(_) => ScalarValue::Null,
    }
}

fn write_json(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    prop: Prop,
    insert: bool,
    value: &Value,
) -> Result<(), automerge::AutomergeError> {
    let kind = match value {
        Value::Object(_) => Some(ObjType::Map),
        Value::Array(_) => Some(ObjType::List),
        _ => None,
    };
    let Some(kind) = kind else {
        return match (insert, prop) {
            (true, Prop::Seq(i)) => tx.insert(obj, i, scalar(value)),
            (_, prop) => tx.put(obj, prop, scalar(value)),
        };
    };
    let child = match (insert, prop) {
        (true, Prop::Seq(i)) => tx.insert_object(obj, i, kind)?,
        (_, prop) => tx.put_object(obj, prop, kind)?,
    };
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                write_json(tx, &child, Prop::Map(k.clone()), false, v)?;
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                write_json(tx, &child, Prop::Seq(i), true, v)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn scalar_json(s: &ScalarValue) -> Value {
    match s {
        ScalarValue::Str(s) => Value::String(s.to_string()),
        ScalarValue::Int(i) => Value::from(*i),
        ScalarValue::Uint(u) => Value::from(*u),
        ScalarValue::F64(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        ScalarValue::Counter(c) => Value::from(i64::from(c)),
        ScalarValue::Timestamp(t) => Value::from(*t),
        ScalarValue::Boolean(b) => Value::Bool(*b),
        ScalarValue::Bytes(b) => Value::Array(b.iter().map(|&x| Value::from(x)).collect()),
        ScalarValue::Null | ScalarValue::Unknown { .. } => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(peer: &str) -> Document {
        Document::new(peer.as_bytes()).unwrap()
    }

    #[test]
    fn put_get_delete_keys() {
        let mut d = doc("a");
        d.put("todos", &json!([])).unwrap();
        d.put("todos/-", &json!({"title": "milk", "done": false}))
            .unwrap();
        d.put(
            "todos/1",
            &json!({"title": "eggs", "tags": ["x", 1, 2.5, null]}),
        )
        .unwrap();
        d.put("todos/0/done", &json!(true)).unwrap();
        d.put("a~1b", &json!(u64::MAX)).unwrap();
        assert_eq!(d.get("todos/0/title").unwrap(), json!("milk"));
        assert_eq!(d.get("todos/1/tags").unwrap(), json!(["x", 1, 2.5, null]));
        assert_eq!(d.get("a~1b").unwrap(), json!(u64::MAX));
        assert_eq!(d.keys("").unwrap(), ["a/b", "todos"]);
        assert_eq!(d.keys("todos").unwrap(), ["0", "1"]);
        d.delete("todos/0").unwrap();
        assert_eq!(d.get("todos/0/title").unwrap(), json!("eggs"));
        assert!(matches!(d.get("todos/5"), Err(Error::UnknownPath(p)) if p == "todos/5"));
        assert!(matches!(d.put("nope/x", &json!(1)), Err(Error::UnknownPath(p)) if p == "nope"));
        assert!(matches!(
            d.get("todos/0/title/x"),
            Err(Error::NotAContainer(_))
        ));
        assert!(matches!(d.delete(""), Err(Error::InvalidPath { .. })));
        d.put("", &json!({"only": 1})).unwrap();
        assert_eq!(d.get("").unwrap(), json!({"only": 1}));
        assert!(matches!(d.put("", &json!(1)), Err(Error::InvalidJson(_))));
    }

    #[test]
    fn too_deep_json_is_refused() {
        let mut v = json!(1);
        for _ in 0..70 {
            v = json!([v]);
        }
        let mut d = doc("a");
        assert!(matches!(d.put("x", &v), Err(Error::InvalidJson(_))));
        assert!(d.get("x").is_err());
    }

    #[test]
    fn history_has_author_time_message() {
        let mut d = doc("peer-a");
        d.put_with(
            "x",
            &json!(1),
            &Commit::new().message("first").time_ms(1000),
        )
        .unwrap();
        let mut e = d.fork(b"peer-b").unwrap();
        e.put_with("x", &json!(2), &Commit::new().time_ms(2000))
            .unwrap();
        d.merge(&mut e).unwrap();
        let h = d.history(10);
        assert_eq!(h.len(), 2);
        assert_eq!(
            (h[0].author.as_slice(), h[0].time_ms),
            (&b"peer-a"[..], 1000)
        );
        assert_eq!(h[0].message.as_deref(), Some("first"));
        assert_eq!(
            (h[1].author.as_slice(), h[1].time_ms),
            (&b"peer-b"[..], 2000)
        );
        assert_eq!(h[1].deps, vec![h[0].hash]);
        assert_eq!(d.history(1), h[1..]);
    }

    /// `a` (local, older) and `b` (remote, newer) write `k` concurrently; `a` has merged.
    fn conflicted() -> Document {
        let mut a = doc("a");
        a.put_with("k", &json!(0), &Commit::new().time_ms(1))
            .unwrap();
        let mut b = a.fork(b"b").unwrap();
        a.put_with("k", &json!("local"), &Commit::new().time_ms(100))
            .unwrap();
        b.put_with("k", &json!("remote"), &Commit::new().time_ms(200))
            .unwrap();
        a.merge(&mut b).unwrap();
        a
    }

    #[test]
    fn strategies_pick_as_documented() {
        let mut a = conflicted();
        assert_eq!(a.get("k").unwrap(), json!("remote"));
        assert_eq!(
            a.get_with("k", Strategy::LocalWins).unwrap(),
            json!("local")
        );
        assert_eq!(
            a.get_with("k", Strategy::RemoteWins).unwrap(),
            json!("remote")
        );
        assert!(matches!(
            a.get_with("k", Strategy::Manual),
            Err(Error::Conflict { values: 2, .. })
        ));
        assert!(matches!(
            a.get_with("", Strategy::Manual),
            Err(Error::Conflict { .. })
        ));
        let conflicts = a.conflicts().unwrap();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].path, "k");
        let pick = conflicts[0].pick.unwrap();
        assert_eq!(conflicts[0].candidates[pick].value, json!("remote"));
        let local = a.conflicts_with(Strategy::LocalWins).unwrap();
        assert_eq!(
            local[0].candidates[local[0].pick.unwrap()].value,
            json!("local")
        );
        assert!(
            conflicts[0]
                .candidates
                .iter()
                .any(|c| c.local && c.time_ms == 100)
        );

        a.set_strategy(Strategy::Manual);
        assert!(matches!(a.put("k", &json!(1)), Err(Error::Conflict { .. })));
        assert_eq!(a.conflicts().unwrap()[0].pick, None);
        a.resolve("k", Keep::Local).unwrap();
        assert_eq!(a.get("k").unwrap(), json!("local"));
        assert!(a.conflicts().unwrap().is_empty());
        assert_eq!(a.resolve("k", Keep::Local).unwrap(), None);
        assert!(matches!(
            a.resolve("k", Keep::Remote),
            Err(Error::NoCandidate { .. })
        ));
    }

    #[test]
    fn latest_timestamp_ties_go_to_automerge_winner() {
        let mut a = doc("a");
        let mut b = doc("b");
        a.put_with("k", &json!(1), &Commit::new().time_ms(5))
            .unwrap();
        b.put_with("k", &json!(2), &Commit::new().time_ms(5))
            .unwrap();
        a.merge(&mut b).unwrap();
        let (v, _) = a.automerge().get(ROOT, "k").unwrap().unwrap();
        assert_eq!(a.get("k").unwrap(), scalar_json(v.as_scalar().unwrap()));
        // Candidates come in automerge's order: its winner last.
        let conflicts = a.conflicts().unwrap();
        let last = conflicts[0].candidates.last().unwrap();
        assert_eq!(last.value, scalar_json(v.as_scalar().unwrap()));
    }

    #[test]
    fn list_elements_and_nested_objects_conflict_too() {
        let mut a = doc("a");
        a.put_with("l", &json!([1, 2]), &Commit::new().time_ms(1))
            .unwrap();
        let mut b = a.fork(b"b").unwrap();
        a.put_with("l/1", &json!("a"), &Commit::new().time_ms(10))
            .unwrap();
        b.put_with("l/1", &json!("b"), &Commit::new().time_ms(20))
            .unwrap();
        // Both create `o` concurrently, then write inside their own object.
        a.put_with("o", &json!({"x": 1}), &Commit::new().time_ms(30))
            .unwrap();
        b.put_with("o", &json!({"x": 2}), &Commit::new().time_ms(5))
            .unwrap();
        a.merge(&mut b).unwrap();
        assert_eq!(a.get("").unwrap(), json!({"l": [1, "b"], "o": {"x": 1}}));
        let paths: Vec<String> = a.conflicts().unwrap().into_iter().map(|c| c.path).collect();
        assert_eq!(paths, ["l/1", "o"]);
        a.set_strategy(Strategy::Manual);
        assert!(matches!(a.get("o/x"), Err(Error::Conflict { path, .. }) if path == "o"));
        assert!(matches!(
            a.put("l/1", &json!(0)),
            Err(Error::Conflict { .. })
        ));
        assert_eq!(a.get("l/0").unwrap(), json!(1));
        a.resolve("l/1", Keep::Remote).unwrap();
        a.resolve("o", Keep::Local).unwrap();
        assert_eq!(a.get("").unwrap(), json!({"l": [1, "b"], "o": {"x": 1}}));
    }

    #[test]
    fn resolve_remote_and_value() {
        let mut a = conflicted();
        a.resolve("k", Keep::Remote).unwrap();
        assert_eq!(a.get_with("k", Strategy::Manual).unwrap(), json!("remote"));
        let mut a = conflicted();
        a.resolve("k", Keep::Value(json!({"n": 3}))).unwrap();
        assert_eq!(a.get_with("k/n", Strategy::Manual).unwrap(), json!(3));
    }
}

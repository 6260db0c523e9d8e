//! Navigation: from a path to the register it names, and which of a register's
//! concurrent values a walk takes.

use automerge::{ChangeHash, ObjId, ObjType, Prop, ROOT, ReadDoc};

use super::{Document, Strategy, Values, Walk, author_of};
use crate::error::{Error, Result};
use crate::path::{self, Path};

impl Document {
    pub(super) fn values(&self, obj: &ObjId, prop: Prop) -> Result<Values> {
        Ok(self
            .doc
            .get_all(obj, prop)?
            .into_iter()
            .map(|(v, id)| (v.to_owned(), id))
            .collect())
    }

    /// Timestamp and locality of the change that wrote `id`.
    pub(super) fn meta(&self, id: &ObjId) -> (i64, bool, Option<ChangeHash>, Vec<u8>) {
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
    pub(super) fn pick(&self, values: &Values, strategy: Strategy) -> Option<usize> {
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
    pub(super) fn choose(&self, values: &Values, walk: Walk, at: &[String]) -> Result<usize> {
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
    pub(super) fn existing_prop(&self, obj: &ObjId, parsed: &Path, n: usize) -> Result<Prop> {
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
    pub(super) fn container(&self, parsed: &Path, n: usize, walk: Walk) -> Result<ObjId> {
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
    pub(super) fn locate(
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
}

/// automerge's own winner among concurrent values: the greatest operation id.
fn winner(values: &Values) -> usize {
    (0..values.len())
        .max_by(|&a, &b| values[a].1.cmp(&values[b].1))
        .unwrap_or(0)
}

//! Writing: JSON into one automerge change.

use automerge::transaction::{Transactable, Transaction};
use automerge::{ChangeHash, ObjId, ObjType, Prop, ROOT, ReadDoc, ScalarValue};
use serde_json::Value;

use super::{Commit, Document, Strategy, Walk};
use crate::error::{Error, Result};
use crate::path::{self, MAX_DEPTH, Path};

impl Document {
    pub(super) fn commit<F>(&mut self, commit: &Commit, f: F) -> Result<Option<ChangeHash>>
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

    pub(super) fn write(
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

/// Refuses JSON nested deeper than [`MAX_DEPTH`]; anything else serde_json holds maps.
pub(super) fn check_json(value: &Value, depth: usize) -> Result<()> {
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

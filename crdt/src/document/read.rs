//! Reading: a register's chosen values as JSON, its candidates, and the conflicts
//! found by descending from the root.

use automerge::{ChangeHash, ObjId, ObjType, Prop, ReadDoc, ScalarValue};
use serde_json::{Map, Number, Value};

use super::{Candidate, Conflict, Document, Values, Walk};
use crate::error::{Error, Result};
use crate::path::{self, MAX_DEPTH};

impl Document {
    pub(super) fn value_json(
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

    pub(super) fn object_json(
        &self,
        obj: &ObjId,
        walk: Walk,
        at: &mut Vec<String>,
    ) -> Result<Value> {
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

    pub(super) fn describe(
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

    pub(super) fn collect_conflicts(
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
}

pub(super) fn scalar_json(s: &ScalarValue) -> Value {
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

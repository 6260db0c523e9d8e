//! [`Store`]: documents and sync states in one directory, crash-safe.
//!
//! Per document `NAME`:
//! - `NAME.am`: a full automerge save, replaced only by rename of a fsynced temp file
//!   (`.NAME.am.tmp`), then the directory fsynced; a crash leaves the old or the new one.
//! - `NAME.log`: incremental saves appended after it, each record `len u32 LE, crc32 u32 LE,
//!   automerge changes`, fsynced before `save` returns. Only the last record can be torn by
//!   a crash (records are appended one at a time after a fsync): load drops a torn or
//!   checksum-failing tail and truncates it; damage before the tail is an error, never
//!   silently dropped. When the log outgrows the snapshot (and a threshold), `save` writes
//!   a new snapshot and empties the log; a crash between the two leaves records already in
//!   the snapshot, which load applies as no-ops.
//! - `NAME.sync/PEERHEX.state`: the persistent part of automerge's sync state with one peer,
//!   written like the snapshot. [`Store::save_session`] writes the document before the
//!   states, so a state never claims heads the document on disk lacks.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::document::Document;
use crate::error::{Error, Result, io};
use crate::sync::{MAX_PEERS, MAX_STATE_BYTES, SyncSession};

/// Log size below which `save` never compacts, in bytes.
pub const DEFAULT_COMPACT_BYTES: u64 = 1 << 20;

const RECORD_HEADER: usize = 8;

/// What a save wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// Nothing: no change since the last save.
    Nothing,
    /// A record appended to the log, of this many bytes.
    Appended(u64),
    /// A full snapshot of this many bytes (the log emptied).
    Snapshot(u64),
}

/// A directory of documents and their sync states.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    compact_bytes: u64,
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_owned()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// CRC-32 (IEEE), enough to tell a torn or damaged record from a whole one.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io(path))?;
    fsync_dir(dir)
}

/// Reads a whole file of at most `max` bytes; `None` if it does not exist.
fn read_bounded(path: &Path, max: u64, what: &'static str) -> Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let len = file.metadata().map_err(io(path))?.len();
    if len > max {
        return Err(Error::Corrupt {
            what,
            path: path.to_owned(),
            reason: format!("{len} bytes, more than {max}"),
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max).read_to_end(&mut bytes).map_err(io(path))?;
    Ok(Some(bytes))
}

/// Largest document file read, a guard against a wrong path more than a real limit.
const MAX_FILE_BYTES: u64 = 16 << 30;

impl Store {
    /// Opens (creating it if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Self {
            dir,
            compact_bytes: DEFAULT_COMPACT_BYTES,
        })
    }

    /// Sets the log size below which `save` never compacts.
    pub fn with_compact_bytes(mut self, bytes: u64) -> Self {
        self.compact_bytes = bytes;
        self
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn snapshot_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.am"))
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    fn sync_dir(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sync"))
    }

    /// The names of the stored documents, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".am")) else {
                continue;
            };
            if check_name(name).is_ok() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Whether a document of this name is stored.
    pub fn contains(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        Ok(self.snapshot_path(name).exists())
    }

    /// Saves the changes since the last save or load: appended to the log, or as a new
    /// snapshot when the log has grown past the snapshot's size and the threshold, or when
    /// this document was not last loaded from or saved to this name (the file, if any, is
    /// replaced). Durable when it returns.
    pub fn save(&self, name: &str, doc: &mut Document) -> Result<Saved> {
        check_name(name)?;
        if doc.persisted.file.as_deref() != Some(self.snapshot_path(name).as_path()) {
            return self.compact(name, doc);
        }
        let heads = doc.heads();
        if heads == doc.persisted.heads {
            return Ok(Saved::Nothing);
        }
        let changes = doc.automerge().save_after(&doc.persisted.heads);
        let record_len = (RECORD_HEADER + changes.len()) as u64;
        let limit = self.compact_bytes.max(doc.persisted.snapshot_len);
        if doc.persisted.log_len + record_len > limit || changes.len() > u32::MAX as usize {
            return self.compact(name, doc);
        }
        let path = self.log_path(name);
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut record = Vec::with_capacity(record_len as usize);
        record.extend_from_slice(&(changes.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32(&changes).to_le_bytes());
        record.extend_from_slice(&changes);
        file.write_all(&record).map_err(io(&path))?;
        file.sync_data().map_err(io(&path))?;
        if created {
            fsync_dir(&self.dir)?;
        }
        doc.persisted.heads = heads;
        doc.persisted.log_len += record_len;
        tracing::debug!(name, bytes = record_len, "appended to log");
        Ok(Saved::Appended(record_len))
    }

    /// Writes a full snapshot and empties the log.
    pub fn compact(&self, name: &str, doc: &mut Document) -> Result<Saved> {
        check_name(name)?;
        let bytes = doc.save();
        let heads = doc.heads();
        write_atomic(&self.dir, &self.snapshot_path(name), &bytes)?;
        let log = self.log_path(name);
        if log.exists() {
            let file = OpenOptions::new()
                .write(true)
                .open(&log)
                .map_err(io(&log))?;
            file.set_len(0).map_err(io(&log))?;
            file.sync_all().map_err(io(&log))?;
        }
        doc.persisted.heads = heads;
        doc.persisted.snapshot_len = bytes.len() as u64;
        doc.persisted.log_len = 0;
        doc.persisted.file = Some(self.snapshot_path(name));
        tracing::debug!(name, bytes = bytes.len(), "snapshot written");
        Ok(Saved::Snapshot(bytes.len() as u64))
    }

    /// Loads a document to be written as `peer`: the snapshot, then every whole log record.
    pub fn load(&self, name: &str, peer: &[u8]) -> Result<Document> {
        check_name(name)?;
        let path = self.snapshot_path(name);
        let bytes = read_bounded(&path, MAX_FILE_BYTES, "document")?
            .ok_or_else(|| Error::UnknownDocument(name.to_owned()))?;
        let mut doc = Document::load(peer, &bytes).map_err(|e| match e {
            Error::Automerge(e) => Error::Corrupt {
                what: "document",
                path: path.clone(),
                reason: e.to_string(),
            },
            other => other,
        })?;
        let snapshot_len = bytes.len() as u64;
        drop(bytes);
        let log_len = self.replay_log(name, &mut doc)?;
        doc.persisted.heads = doc.heads();
        doc.persisted.snapshot_len = snapshot_len;
        doc.persisted.log_len = log_len;
        doc.persisted.file = Some(path);
        Ok(doc)
    }

    /// Applies the log's whole records; truncates a torn tail. Returns the log's length.
    fn replay_log(&self, name: &str, doc: &mut Document) -> Result<u64> {
        let path = self.log_path(name);
        let Some(log) = read_bounded(&path, MAX_FILE_BYTES, "log")? else {
            return Ok(0);
        };
        let mut at = 0usize;
        let mut records = 0usize;
        while at < log.len() {
            let rest = &log[at..];
            let whole = rest.len() >= RECORD_HEADER && {
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                rest.len() - RECORD_HEADER >= len
            };
            if !whole {
                break;
            }
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
            let payload = &rest[RECORD_HEADER..RECORD_HEADER + len];
            let end = at + RECORD_HEADER + len;
            if crc32(payload) != crc {
                if end < log.len() {
                    return Err(Error::Corrupt {
                        what: "log",
                        path,
                        reason: format!(
                            "checksum mismatch in record {records} at byte {at}, before the tail"
                        ),
                    });
                }
                break;
            }
            doc.automerge_mut()
                .load_incremental(payload)
                .map_err(|e| Error::Corrupt {
                    what: "log",
                    path: path.clone(),
                    reason: format!("record {records} at byte {at}: {e}"),
                })?;
            records += 1;
            at = end;
        }
        if at < log.len() {
            tracing::warn!(
                name,
                kept = at,
                dropped = log.len() - at,
                "torn log tail dropped"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            file.set_len(at as u64).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
        }
        Ok(at as u64)
    }

    /// Removes a document and its sync states.
    pub fn remove(&self, name: &str) -> Result<()> {
        check_name(name)?;
        for path in [self.snapshot_path(name), self.log_path(name)] {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
                _ => {}
            }
        }
        let sync = self.sync_dir(name);
        if sync.exists() {
            fs::remove_dir_all(&sync).map_err(io(&sync))?;
        }
        fsync_dir(&self.dir)
    }

    /// Writes the encoded sync state with `peer` for document `name`.
    pub fn save_sync_state(&self, name: &str, peer: &[u8], state: &[u8]) -> Result<()> {
        check_name(name)?;
        if peer.is_empty() || peer.len() > crate::MAX_PEER_ID_LEN {
            return Err(Error::InvalidPeerId(peer.len()));
        }
        let dir = self.sync_dir(name);
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
            fsync_dir(&self.dir)?;
        }
        write_atomic(&dir, &dir.join(format!("{}.state", hex(peer))), state)
    }

    /// The stored sync states of document `name`: (peer id, encoded state), sorted by peer.
    pub fn load_sync_states(&self, name: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        check_name(name)?;
        let dir = self.sync_dir(name);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            let file = entry.file_name();
            let Some(peer) = file
                .to_str()
                .and_then(|f| f.strip_suffix(".state"))
                .and_then(unhex)
            else {
                continue;
            };
            if out.len() == MAX_PEERS {
                tracing::warn!(
                    name,
                    "more sync states than a session holds; the rest ignored"
                );
                break;
            }
            let path = entry.path();
            if let Some(state) = read_bounded(&path, MAX_STATE_BYTES as u64, "sync state")? {
                out.push((peer, state));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Saves the session's document, then the sync states that moved since the last save.
    pub fn save_session(&self, name: &str, session: &mut SyncSession) -> Result<Saved> {
        let saved = self.save(name, session.document_mut())?;
        let dirty = session.take_dirty_states();
        for (i, (peer, state)) in dirty.iter().enumerate() {
            if let Err(e) = self.save_sync_state(name, peer, state) {
                let unsaved: Vec<Vec<u8>> = dirty[i..].iter().map(|(p, _)| p.clone()).collect();
                session.mark_unsaved(&unsaved);
                return Err(e);
            }
        }
        Ok(saved)
    }

    /// Loads a document and its sync states as a session.
    pub fn load_session(&self, name: &str, peer: &[u8]) -> Result<SyncSession> {
        let doc = self.load(name, peer)?;
        let mut session = SyncSession::new(doc);
        for (p, state) in self.load_sync_states(name)? {
            session
                .restore_peer(&p, &state)
                .map_err(|e| Error::Corrupt {
                    what: "sync state",
                    path: self.sync_dir(name).join(format!("{}.state", hex(&p))),
                    reason: e.to_string(),
                })?;
        }
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn names_and_hex() {
        assert!(check_name("todo-list_1.v2").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("abc"), None);
    }
}

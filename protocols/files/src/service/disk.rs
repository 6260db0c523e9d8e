//! What a transfer writes: each file as `<path>.part` under the target (joined with
//! [`safe_join`], opened without following links), groups written at their offsets, and
//! the resume state beside them as `.<content-id>.p2pnode-resume`. Verified groups are
//! written as they come; at a checkpoint (every [`checkpoint_groups`] groups or so often,
//! see the driver) the files are synced and only then the state marking those groups is
//! saved (write, fsync, rename), so the state never claims a group the disk does not hold,
//! and a kill loses at most the groups since the last checkpoint. A file is renamed into
//! place once whole, after the state saying so.
//!
//! Serving while fetching: a transfer given a [`Partial`] also writes each group's
//! outboard entries (what its proof established) into the partial outboard, and only then
//! marks the group there, so a group is served only once its bytes and proof are on disk.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::FilesError;
use super::share::Partial;
use crate::resume::MAX_STATE_BYTES;
use crate::{
    ContentId, GroupRef, Manifest, TransferState, VerifiedGroup, group_count, group_range,
    outboard_size, safe_join,
};

/// A group's bytes that verified, and the outboard entries its proof established.
pub(super) struct Checked {
    pub(super) bytes: Vec<u8>,
    pub(super) proven: VerifiedGroup,
}

/// Groups written since the last checkpoint at most (16 MiB) before the next one.
const CHECKPOINT_GROUPS: usize = 256;
/// A transfer checkpoints at least this many times, so a kill loses at most a thirty-second
/// of its content (what is sent again stays within the 1.1x budget whatever the size)...
const CHECKPOINTS_PER_TRANSFER: u64 = 32;
/// ... but no more often than every 16 groups (1 MiB): syncing is what costs.
const MIN_CHECKPOINT_GROUPS: usize = 16;

/// Groups between two checkpoints for a transfer of `groups_total` groups.
pub(super) fn checkpoint_groups(groups_total: u64) -> usize {
    let share = usize::try_from(groups_total / CHECKPOINTS_PER_TRANSFER).unwrap_or(usize::MAX);
    share.clamp(MIN_CHECKPOINT_GROUPS, CHECKPOINT_GROUPS)
}

fn io(path: &Path, e: impl std::fmt::Display) -> FilesError {
    FilesError::Io(format!("{}: {e}", path.display()))
}

/// Opens for writing without following a link at the last component (`O_NOFOLLOW`);
/// `create` makes a new file and fails if anything is already there.
fn open_nofollow(path: &Path, create: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).custom_flags(libc::O_NOFOLLOW);
    if create {
        o.create_new(true).mode(0o600);
    }
    o.open(path)
}

/// A write error; a full disk says what to do about it, as the verified part is kept.
fn write_err(path: &Path, e: std::io::Error) -> FilesError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        FilesError::Io(format!(
            "disk full writing {}: free some space and run the same command again to \
             resume (what was verified is kept)",
            path.display()
        ))
    } else {
        io(path, e)
    }
}

fn sync_dir(dir: &Path) -> Result<(), FilesError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// A transfer's files on disk and its resume state.
pub(super) struct Disk {
    target: PathBuf,
    state_path: PathBuf,
    finals: Vec<PathBuf>,
    parts: Vec<PathBuf>,
    executable: Vec<bool>,
    sizes: Vec<u64>,
    open: Vec<Option<File>>,
    pub(super) state: TransferState,
    /// Written and verified, not yet synced and marked in the state.
    unsynced: HashSet<GroupRef>,
    unsynced_bytes: u64,
    /// Bytes of the groups marked in the state, kept as they are marked: counting them
    /// anew for every progress report cost a tree of 10,000 files quadratic time.
    verified_bytes: u64,
    /// Files in `open`; past [`MAX_OPEN_FILES`] they are all closed.
    open_count: usize,
    /// Directories made for `.part` files so far.
    made_dirs: HashSet<PathBuf>,
    /// Serving while fetching: where written groups are made known, and each file's
    /// partial outboard, opened at its first group.
    serving: Option<Arc<Partial>>,
    outboards: Vec<Option<File>>,
}

/// Files a transfer keeps open at most: a tree of small files has many written and not
/// yet renamed between two checkpoints, and a process has only so many descriptors.
const MAX_OPEN_FILES: usize = 256;

impl Disk {
    /// Checks every path of `manifest` under `target`, loads the resume state if one is
    /// there (and consistent with the `.part` files), and creates the missing `.part` files.
    pub(super) fn prepare(
        target: &Path,
        manifest: &Manifest,
        content: ContentId,
    ) -> Result<Self, FilesError> {
        std::fs::create_dir_all(target).map_err(|e| io(target, e))?;
        let bad_path =
            |p: &str, e: crate::PathError| FilesError::Invalid(format!("refused path {p:?}: {e}"));
        let mut finals = Vec::new();
        let mut parts = Vec::new();
        for e in manifest.entries() {
            finals.push(safe_join(target, &e.path).map_err(|err| bad_path(&e.path, err))?);
            let part = format!("{}.part", e.path);
            parts.push(safe_join(target, &part).map_err(|err| bad_path(&part, err))?);
        }
        let sizes: Vec<u64> = manifest.entries().iter().map(|e| e.size).collect();
        let state_path = target.join(format!(".{content}.p2pnode-resume"));
        let mut disk = Self {
            target: target.to_path_buf(),
            state_path,
            finals,
            parts,
            executable: manifest.entries().iter().map(|e| e.executable).collect(),
            open: sizes.iter().map(|_| None).collect(),
            sizes,
            state: TransferState::for_manifest(manifest),
            unsynced: HashSet::new(),
            unsynced_bytes: 0,
            verified_bytes: 0,
            open_count: 0,
            made_dirs: HashSet::new(),
            serving: None,
            outboards: Vec::new(),
        };
        let resumed = disk.load_state(&content)?;
        disk.verified_bytes = disk.state.verified_bytes();
        if !resumed {
            for (fin, part) in disk.finals.iter().zip(&disk.parts) {
                if std::fs::symlink_metadata(fin).is_ok() {
                    return Err(FilesError::Invalid(format!(
                        "{} already exists; move it away or choose another --to",
                        fin.display()
                    )));
                }
                if std::fs::symlink_metadata(part).is_ok() {
                    // A .part without state: nothing in it is known good.
                    std::fs::remove_file(part).map_err(|e| io(part, e))?;
                }
            }
        }
        for i in 0..disk.parts.len() {
            let complete = disk.state.file(i as u32).is_some_and(|b| b.is_complete());
            let part = &disk.parts[i];
            if complete {
                // Saved as whole but killed before the rename: finish it.
                if std::fs::symlink_metadata(part).is_ok() {
                    disk.ready_file(i)?;
                    disk.rename_file(i)?;
                    if let Some(dir) = disk.finals[i].parent() {
                        sync_dir(dir)?;
                    }
                }
                continue;
            }
            // A missing .part is made when its first group is written (see `file`): a
            // tree of small files then costs one create per file, not a create here and
            // an open there.
        }
        if !resumed {
            // The state and its spare take their space now, while there is some.
            disk.save_state()?;
        }
        Ok(disk)
    }

    /// Loads a saved state; false if there is none (or it does not fit and was dropped).
    fn load_state(&mut self, content: &ContentId) -> Result<bool, FilesError> {
        let meta = match std::fs::symlink_metadata(&self.state_path) {
            Ok(m) => m,
            Err(_) => return Ok(false),
        };
        if !meta.is_file() || meta.len() > MAX_STATE_BYTES as u64 {
            return Err(FilesError::Io(format!(
                "{} is not a resume state",
                self.state_path.display()
            )));
        }
        let bytes = std::fs::read(&self.state_path).map_err(|e| io(&self.state_path, e))?;
        let state = match TransferState::decode(&bytes, content, &self.sizes) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("ignoring resume state {}: {e}", self.state_path.display());
                return Ok(false);
            }
        };
        // A file with verified groups must still have its .part (or, when whole, be in
        // place); otherwise the state is not about what is on disk.
        for i in 0..self.parts.len() {
            let Some(bits) = state.file(i as u32) else {
                return Ok(false);
            };
            let part = std::fs::symlink_metadata(&self.parts[i]).is_ok();
            let fin = std::fs::symlink_metadata(&self.finals[i]).is_ok();
            let consistent = if bits.is_complete() {
                part || fin
            } else {
                part || bits.verified() == 0
            };
            if !consistent || (!bits.is_complete() && fin) {
                tracing::warn!("resume state does not match the files on disk; starting over");
                return Ok(false);
            }
        }
        tracing::info!(
            groups = state.file(0).map_or(0, |b| b.verified()),
            "resuming from verified groups on disk"
        );
        self.state = state;
        Ok(true)
    }

    /// Where each file is written while fetched, and where it goes once whole.
    pub(super) fn paths(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        (self.parts.clone(), self.finals.clone())
    }

    /// Serves the groups written from now on through `partial`.
    pub(super) fn serve(&mut self, partial: Arc<Partial>) {
        self.outboards = self.sizes.iter().map(|_| None).collect();
        self.serving = Some(partial);
    }

    /// Writes a group's outboard entries into its file's partial outboard.
    fn write_outboard(&mut self, g: GroupRef, proven: &VerifiedGroup) -> Result<(), FilesError> {
        let i = g.file as usize;
        let size = self.sizes[i];
        let (Some(partial), Some(slot)) = (&self.serving, self.outboards.get_mut(i)) else {
            return Ok(());
        };
        if group_count(size) == 1 {
            return Ok(()); // no outboard: the group is the whole file
        }
        let path = partial.outboard(g.file);
        if slot.is_none() {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| io(&path, e))?;
            f.set_len(outboard_size(size)).map_err(|e| io(&path, e))?;
            *slot = Some(f);
        }
        let Some(f) = slot.as_ref() else {
            return Ok(());
        };
        for (offset, pair) in proven.outboard_entries() {
            f.write_all_at(pair, offset)
                .map_err(|e| write_err(&path, e))?;
        }
        Ok(())
    }

    /// File `i`'s `.part`, opened (or made, at its first group) and kept open.
    fn file(&mut self, i: usize) -> Result<&File, FilesError> {
        if self.open[i].is_none() {
            if self.open_count >= MAX_OPEN_FILES {
                self.open.iter_mut().for_each(|f| *f = None);
                self.open_count = 0;
            }
            let part = &self.parts[i];
            let f = match open_nofollow(part, false) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.make_part(i)?,
                Err(e) => return Err(io(part, e)),
            };
            self.open[i] = Some(f);
            self.open_count += 1;
        }
        self.open[i]
            .as_ref()
            .ok_or_else(|| FilesError::Io("file not open".into()))
    }

    /// Makes file `i`'s `.part` (and its directories), of the file's size.
    fn make_part(&mut self, i: usize) -> Result<File, FilesError> {
        let part = &self.parts[i];
        if let Some(parent) = part.parent()
            && !self.made_dirs.contains(parent)
        {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
            self.made_dirs.insert(parent.to_path_buf());
        }
        // Checked again now that the directories exist: a link put there since the
        // first check is refused here, and O_NOFOLLOW covers the last step.
        let rel = part
            .strip_prefix(&self.target)
            .ok()
            .and_then(|p| p.to_str())
            .ok_or_else(|| FilesError::Invalid(format!("bad path {}", part.display())))?;
        safe_join(&self.target, rel)
            .map_err(|e| FilesError::Invalid(format!("refused path {rel:?}: {e}")))?;
        let f = open_nofollow(part, true).map_err(|e| write_err(part, e))?;
        // A file of one group is written whole by that group; a larger one gets its size
        // now, so groups can land at their offsets in any order.
        if group_count(self.sizes[i]) > 1 {
            f.set_len(self.sizes[i]).map_err(|e| write_err(part, e))?;
        }
        Ok(f)
    }

    /// Whether `g` is written (checkpointed or not).
    pub(super) fn has(&self, g: GroupRef) -> bool {
        self.state.is_verified(g) || self.unsynced.contains(&g)
    }

    /// Bytes of the groups written.
    pub(super) fn bytes_done(&self) -> u64 {
        self.verified_bytes + self.unsynced_bytes
    }

    /// Groups written since the last checkpoint.
    pub(super) fn unsynced(&self) -> usize {
        self.unsynced.len()
    }

    /// Writes verified groups at their offsets (not synced yet), and when serving while
    /// fetching, their outboard entries; then makes them servable.
    pub(super) fn write(&mut self, groups: &[(GroupRef, Checked)]) -> Result<(), FilesError> {
        let written = self.write_groups(groups);
        if let Some(p) = &self.serving {
            // Those before a failure are whole on disk, as their proofs are.
            let n = match &written {
                Ok(n) => *n,
                Err((n, _)) => *n,
            };
            p.mark(groups.iter().take(n).map(|(g, _)| *g));
        }
        written.map(|_| ()).map_err(|(_, e)| e)
    }

    /// Writes groups in order; how many were written, or how many before the failure.
    fn write_groups(
        &mut self,
        groups: &[(GroupRef, Checked)],
    ) -> Result<usize, (usize, FilesError)> {
        for (n, (g, checked)) in groups.iter().enumerate() {
            self.write_one(*g, checked).map_err(|e| (n, e))?;
        }
        Ok(groups.len())
    }

    fn write_one(&mut self, g: GroupRef, checked: &Checked) -> Result<(), FilesError> {
        self.write_outboard(g, &checked.proven)?;
        let data = &checked.bytes;
        let i = g.file as usize;
        let range = group_range(self.sizes[i], g.group)
            .ok_or_else(|| FilesError::Io("group out of range".into()))?;
        let part = self.parts[i].clone();
        self.file(i)?
            .write_all_at(data, range.start)
            .map_err(|e| write_err(&part, e))?;
        if self.unsynced.insert(g) {
            self.unsynced_bytes += data.len() as u64;
        }
        Ok(())
    }

    /// Syncs the groups written since the last checkpoint, saves the state marking them,
    /// then moves the files that became whole into place.
    pub(super) fn checkpoint(&mut self) -> Result<(), FilesError> {
        if self.unsynced.is_empty() {
            return Ok(());
        }
        let mut new_groups: BTreeMap<usize, u64> = BTreeMap::new();
        for g in &self.unsynced {
            *new_groups.entry(g.file as usize).or_default() += 1;
        }
        let mut whole: Vec<usize> = Vec::new();
        for (&i, &n) in &new_groups {
            let becomes_whole = self
                .state
                .file(i as u32)
                .is_some_and(|b| b.verified() + n == b.groups());
            if becomes_whole {
                // Synced and given its mode now, renamed after the state is saved: one
                // sync for a file that is whole, not one here and one at the rename.
                self.ready_file(i)?;
                whole.push(i);
            } else {
                let part = self.parts[i].clone();
                self.file(i)?.sync_data().map_err(|e| io(&part, e))?;
            }
        }
        for g in self.unsynced.drain() {
            self.state.mark_verified(g);
        }
        self.verified_bytes += self.unsynced_bytes;
        self.unsynced_bytes = 0;
        self.save_state()?;
        let mut dirs: Vec<PathBuf> = Vec::new();
        for &i in &whole {
            self.rename_file(i)?;
            if let Some(dir) = self.finals[i].parent() {
                dirs.push(dir.to_path_buf());
            }
        }
        // Each directory that got files is synced once, not once per file.
        dirs.sort_unstable();
        dirs.dedup();
        for dir in &dirs {
            sync_dir(dir)?;
        }
        if self.state.is_complete() {
            std::fs::remove_file(&self.state_path).map_err(|e| io(&self.state_path, e))?;
            let _ = std::fs::remove_file(self.spare_path());
        }
        Ok(())
    }

    fn spare_path(&self) -> PathBuf {
        self.state_path.with_extension("p2pnode-resume-tmp")
    }

    /// Saves the state (write, fsync, rename). It is written into the spare file the
    /// last save left, whose space is already allocated, so the state marking what was
    /// verified can still be saved once the disk has filled up; then the old state's
    /// space, freed by the rename, becomes the next spare.
    fn save_state(&self) -> Result<(), FilesError> {
        let tmp = self.spare_path();
        let bytes = self.state.encode();
        let f = match open_nofollow(&tmp, false) {
            Ok(f) => f,
            Err(_) => {
                let _ = std::fs::remove_file(&tmp);
                open_nofollow(&tmp, true).map_err(|e| write_err(&tmp, e))?
            }
        };
        f.set_len(bytes.len() as u64)
            .and_then(|()| f.write_all_at(&bytes, 0))
            .and_then(|()| f.sync_all())
            .map_err(|e| write_err(&tmp, e))?;
        std::fs::rename(&tmp, &self.state_path).map_err(|e| io(&self.state_path, e))?;
        sync_dir(&self.target)?;
        // Best effort: without a spare the next save allocates, as any write would.
        if let Ok(spare) = open_nofollow(&tmp, true) {
            let _ = spare.write_all_at(&bytes, 0);
        }
        Ok(())
    }

    /// Syncs a whole file and sets its mode, and closes it.
    fn ready_file(&mut self, i: usize) -> Result<(), FilesError> {
        let f = match self.open[i].take() {
            Some(f) => {
                self.open_count = self.open_count.saturating_sub(1);
                f
            }
            None => open_nofollow(&self.parts[i], false).map_err(|e| io(&self.parts[i], e))?,
        };
        let mode = if self.executable[i] { 0o755 } else { 0o644 };
        f.sync_all().map_err(|e| io(&self.parts[i], e))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| io(&self.parts[i], e))
    }

    /// Renames a whole file into place (the caller syncs the directory).
    fn rename_file(&self, i: usize) -> Result<(), FilesError> {
        std::fs::rename(&self.parts[i], &self.finals[i]).map_err(|e| io(&self.finals[i], e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_come_at_least_every_thirty_second_of_a_transfer() {
        assert_eq!(checkpoint_groups(0), MIN_CHECKPOINT_GROUPS);
        assert_eq!(checkpoint_groups(1024), 32, "64 MiB: every 2 MiB");
        assert_eq!(
            checkpoint_groups(16_384),
            CHECKPOINT_GROUPS,
            "1 GiB: every 16 MiB"
        );
        assert_eq!(checkpoint_groups(u64::MAX), CHECKPOINT_GROUPS);
    }
}

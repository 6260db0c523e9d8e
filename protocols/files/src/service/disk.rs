//! What a transfer writes: each file as `<path>.part` under the target (its path checked
//! with [`check_path`], its directories opened without following links by [`Dirs`]),
//! groups written at their offsets, and
//! the resume state beside them as `.<content-id>.p2pnode-resume`. Verified groups are
//! written as they come; at a checkpoint (every [`checkpoint_groups`] groups or so often,
//! see the driver) the files are synced and only then the state marking those groups is
//! saved (write, fsync, rename), so the state never claims a group the disk does not hold,
//! and a kill loses at most the groups since the last checkpoint. A file is renamed into
//! place once whole, after the state saying so.
//!
//! Writes run beside the transfer ([`Writer`]): each batch is one short job on the
//! blocking pool, handed over once the batch before it is written, so the transfer goes
//! on receiving and verifying while the disk writes, with at most two batches held.
//!
//! Serving while fetching: a transfer given a [`Partial`] also writes each group's
//! outboard entries (what its proof established) into the partial outboard, and only then
//! marks the group there, so a group is served only once its bytes and proof are on disk.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::FilesError;
use super::dirs::{Dir, Dirs, Found, split};
use super::partial::Partial;
use crate::resume::MAX_STATE_BYTES;
use crate::{
    ContentId, GroupRef, Manifest, PathError, TransferState, VerifiedGroup, check_path,
    group_count, group_range, outboard_size,
};

mod writer;
pub(super) use writer::Writer;

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

/// Least time between two checkpoints (syncs and state saves) while groups come in.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

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

fn refused(rel: &str, e: PathError) -> FilesError {
    FilesError::Invalid(format!("refused path {rel:?}: {e}"))
}

fn sync_dir(dir: &Dir, path: &Path) -> Result<(), FilesError> {
    nix::unistd::fsync(dir).map_err(|e| io(path, e))
}

/// A transfer's files on disk and its resume state.
pub(super) struct Disk {
    target: PathBuf,
    state_path: PathBuf,
    /// Each file's path in the manifest (checked), and where that is under the target,
    /// whole and while fetched.
    rel: Vec<String>,
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
    /// The target and the directories under it that files are written in.
    dirs: Dirs,
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
        let mut dirs = Dirs::open(target).map_err(|e| io(target, e))?;
        let n = manifest.entries().len();
        let (mut rel, mut finals, mut parts) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        // What is already there of each file, whole and as a `.part`.
        let mut found: Vec<(Found, Found)> = Vec::with_capacity(n);
        // A manifest lists a directory's files together: its directory is looked up once,
        // and nothing is looked up under one that does not exist yet.
        let mut last: Option<(&str, Option<Dir>)> = None;
        for e in manifest.entries() {
            let part = format!("{}.part", e.path);
            check_path(&e.path).map_err(|err| refused(&e.path, err))?;
            check_path(&part).map_err(|err| refused(&part, err))?;
            let (dir, name) = split(&e.path);
            let here = match &last {
                Some((d, here)) if *d == dir => here.clone(),
                _ => {
                    let here = dirs.dir(dir, false).map_err(|err| refused(&e.path, err))?;
                    last = Some((dir, here.clone()));
                    here
                }
            };
            found.push(match &here {
                None => (Found::Nothing, Found::Nothing),
                Some(d) => (
                    dirs.look(d, &e.path, name)
                        .map_err(|err| refused(&e.path, err))?,
                    dirs.look(d, &part, &format!("{name}.part"))
                        .map_err(|err| refused(&part, err))?,
                ),
            });
            finals.push(target.join(&e.path));
            parts.push(target.join(&part));
            rel.push(e.path.clone());
        }
        drop(last);
        let sizes: Vec<u64> = manifest.entries().iter().map(|e| e.size).collect();
        let state_path = target.join(format!(".{content}.p2pnode-resume"));
        let mut disk = Self {
            target: target.to_path_buf(),
            state_path,
            rel,
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
            dirs,
            serving: None,
            outboards: Vec::new(),
        };
        let resumed = disk.load_state(&content, &found)?;
        disk.verified_bytes = disk.state.verified_bytes();
        if !resumed {
            for (i, &(fin, part)) in found.iter().enumerate() {
                if fin != Found::Nothing {
                    return Err(FilesError::Invalid(format!(
                        "{} already exists; move it away or choose another --to",
                        disk.finals[i].display()
                    )));
                }
                if part != Found::Nothing {
                    // A .part without state: nothing in it is known good.
                    let (d, name) = disk.part_dir(i)?;
                    Dirs::remove(&d, &name).map_err(|e| io(&disk.parts[i], e))?;
                }
            }
        }
        for (i, &(_, part)) in found.iter().enumerate() {
            let complete = disk.state.file(i as u32).is_some_and(|b| b.is_complete());
            if complete && part != Found::Nothing {
                // Saved as whole but killed before the rename: finish it.
                disk.ready_file(i)?;
                let d = disk.rename_file(i)?;
                sync_dir(&d, &disk.finals[i])?;
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

    /// File `i`'s directory (made if missing) and the name of its `.part` in it.
    fn part_dir(&mut self, i: usize) -> Result<(Dir, String), FilesError> {
        let (dir, name) = split(&self.rel[i]);
        let d = self
            .dirs
            .dir(dir, true)
            .map_err(|e| refused(&self.rel[i], e))?
            .ok_or_else(|| io(&self.parts[i], "no directory"))?;
        Ok((d, format!("{name}.part")))
    }

    /// Loads a saved state; false if there is none (or it does not fit and was dropped).
    fn load_state(
        &mut self,
        content: &ContentId,
        found: &[(Found, Found)],
    ) -> Result<bool, FilesError> {
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
        for (i, &(fin, part)) in found.iter().enumerate() {
            let Some(bits) = state.file(i as u32) else {
                return Ok(false);
            };
            let (fin, part) = (fin != Found::Nothing, part != Found::Nothing);
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
            let (d, name) = self.part_dir(i)?;
            let part = &self.parts[i];
            // Made at the file's first group; one made before (a resume, or closed past
            // the bound) is opened as it is.
            let f = match Dirs::open_file(&d, &name, true) {
                Ok(f) => {
                    // A file of one group is written whole by that group; a larger one
                    // gets its size now, so groups can land at their offsets in any order.
                    if group_count(self.sizes[i]) > 1 {
                        f.set_len(self.sizes[i]).map_err(|e| write_err(part, e))?;
                    }
                    f
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Dirs::open_file(&d, &name, false).map_err(|e| io(part, e))?
                }
                Err(e) => return Err(write_err(part, e)),
            };
            self.open[i] = Some(f);
            self.open_count += 1;
        }
        self.open[i]
            .as_ref()
            .ok_or_else(|| FilesError::Io("file not open".into()))
    }

    /// Bytes of the groups written.
    pub(super) fn bytes_done(&self) -> u64 {
        self.verified_bytes + self.unsynced_bytes
    }

    /// Writes verified groups at their offsets (not synced yet), and when serving while
    /// fetching, their outboard entries; then makes them servable.
    fn write(&mut self, groups: &[(GroupRef, Checked)]) -> Result<(), FilesError> {
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
        if self.open[i].is_none() && self.open_count >= MAX_OPEN_FILES {
            // A checkpoint syncs, renames and closes the files that are whole: taken now,
            // rather than closing every file and opening each again for its sync (a tree
            // of small files had most of its files opened twice).
            self.checkpoint()?;
        }
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
    fn checkpoint(&mut self) -> Result<(), FilesError> {
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
        // Each directory that got files is synced once, not once per file (`whole` is in
        // manifest order, which keeps a directory's files together).
        let mut last: Option<(usize, Dir)> = None;
        for &i in &whole {
            let d = self.rename_file(i)?;
            match &last {
                Some((j, _)) if split(&self.rel[*j]).0 == split(&self.rel[i]).0 => {}
                _ => {
                    if let Some((j, d)) = last.take() {
                        sync_dir(&d, &self.finals[j])?;
                    }
                    last = Some((i, d));
                }
            }
        }
        if let Some((j, d)) = last {
            sync_dir(&d, &self.finals[j])?;
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
        nix::unistd::fsync(self.dirs.root()).map_err(|e| io(&self.target, e))?;
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
            None => {
                let (d, name) = self.part_dir(i)?;
                Dirs::open_file(&d, &name, false).map_err(|e| io(&self.parts[i], e))?
            }
        };
        let mode = if self.executable[i] { 0o755 } else { 0o644 };
        f.sync_all().map_err(|e| io(&self.parts[i], e))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| io(&self.parts[i], e))
    }

    /// Renames a whole file into place; its directory, which the caller syncs.
    fn rename_file(&mut self, i: usize) -> Result<Dir, FilesError> {
        let (d, part) = self.part_dir(i)?;
        let name = split(&self.rel[i]).1;
        Dirs::rename(&d, &part, name).map_err(|e| io(&self.finals[i], e))?;
        Ok(d)
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

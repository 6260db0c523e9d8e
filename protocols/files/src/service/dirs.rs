//! The directories a transfer writes into, opened one component at a time from the
//! target without following links (`openat` with `O_NOFOLLOW | O_DIRECTORY`), and the
//! files in them made, opened, looked at and renamed relative to those descriptors.
//!
//! Why: checking a path with `lstat` per component and then using the path leaves a
//! window in which a link can replace a checked directory, and costs a few syscalls per
//! component per file. Here a link anywhere under the target is refused when it is met,
//! whenever it was planted, and a tree of small files costs one open per directory.
//! The target itself is the user's choice and may be a link.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::PathError;

/// Directories kept open at most; past it they are all closed (a manifest lists the files
/// of one directory together, so a tree is written a directory at a time).
const MAX_OPEN_DIRS: usize = 64;

/// What is at a name in a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    Nothing,
    /// A file (anything that is neither a directory nor a link).
    File,
}

/// A directory under the target, open.
pub(super) type Dir = Arc<OwnedFd>;

/// The target and the directories under it opened so far.
pub(super) struct Dirs {
    target: PathBuf,
    root: Dir,
    open: HashMap<String, Dir>,
}

/// Splits a checked relative path into its directory ("" for the target) and its name.
pub(super) fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Dirs {
    /// Opens `target` (following a link: it is the user's choice).
    pub(super) fn open(target: &Path) -> io::Result<Self> {
        let root = File::open(target)?;
        if !root.metadata()?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", target.display()),
            ));
        }
        Ok(Self {
            target: target.to_path_buf(),
            root: Arc::new(root.into()),
            open: HashMap::new(),
        })
    }

    /// The target, open.
    pub(super) fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Directory `rel` ("" is the target), opened without following links; `None` when
    /// it (or a directory above it) does not exist and `create` is false. With `create`
    /// the missing directories are made. A link or a file on the way is refused.
    pub(super) fn dir(&mut self, rel: &str, create: bool) -> Result<Option<Dir>, PathError> {
        if rel.is_empty() {
            return Ok(Some(self.root.clone()));
        }
        if let Some(d) = self.open.get(rel) {
            return Ok(Some(d.clone()));
        }
        // From the deepest directory already open on the way, one component at a time.
        let mut start = 0;
        let mut dir = self.root.clone();
        for (i, _) in rel.match_indices('/').collect::<Vec<_>>().into_iter().rev() {
            if let Some(d) = self.open.get(&rel[..i]) {
                dir = d.clone();
                start = i + 1;
                break;
            }
        }
        let mut end = start;
        for component in rel[start..].split('/') {
            end += component.len();
            let Some(next) = self.open_component(&dir, &rel[..end], component, create)? else {
                return Ok(None);
            };
            if self.open.len() >= MAX_OPEN_DIRS {
                self.open.clear();
            }
            self.open.insert(rel[..end].to_owned(), next.clone());
            dir = next;
            end += 1; // the '/'
        }
        Ok(Some(dir))
    }

    fn open_component(
        &self,
        parent: &Dir,
        rel: &str,
        name: &str,
        create: bool,
    ) -> Result<Option<Dir>, PathError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut made = false;
        loop {
            match openat(parent.as_fd(), name, flags, Mode::empty()) {
                Ok(fd) => return Ok(Some(Arc::new(fd))),
                Err(Errno::ENOENT) if !create => return Ok(None),
                Err(Errno::ENOENT) if !made => {
                    // The umask decides, as it did for `create_dir_all`.
                    match mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o777)) {
                        Ok(()) | Err(Errno::EEXIST) => made = true,
                        Err(e) => return Err(self.io_err(rel, e)),
                    }
                }
                // O_NOFOLLOW | O_DIRECTORY on a link says ENOTDIR (or ELOOP): which it is
                // decides the message.
                Err(Errno::ENOTDIR | Errno::ELOOP) => {
                    return Err(match self.kind(parent.as_fd(), rel, name)? {
                        Some(SFlag::S_IFLNK) => PathError::Symlink(self.target.join(rel)),
                        _ => PathError::NotADirectory(self.target.join(rel)),
                    });
                }
                Err(e) => return Err(self.io_err(rel, e)),
            }
        }
    }

    /// The type of what is at `name` in `dir` (not following a link), `None` if nothing.
    fn kind(&self, dir: BorrowedFd<'_>, rel: &str, name: &str) -> Result<Option<SFlag>, PathError> {
        match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(self.io_err(rel, e)),
        }
    }

    /// What is at `name` in `dir` (`rel` is its path under the target, for messages): a
    /// link or a directory where a file is to be written is refused.
    pub(super) fn look(&self, dir: &Dir, rel: &str, name: &str) -> Result<Found, PathError> {
        match self.kind(dir.as_fd(), rel, name)? {
            None => Ok(Found::Nothing),
            Some(SFlag::S_IFLNK) => Err(PathError::Symlink(self.target.join(rel))),
            Some(SFlag::S_IFDIR) => Err(PathError::IsADirectory(self.target.join(rel))),
            Some(_) => Ok(Found::File),
        }
    }

    /// Opens `name` in `dir` for writing without following a link; `create` makes a new
    /// file (mode 0600) and fails if anything is already there.
    pub(super) fn open_file(dir: &Dir, name: &str, create: bool) -> io::Result<File> {
        let mut flags = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        if create {
            flags |= OFlag::O_CREAT | OFlag::O_EXCL;
        }
        openat(dir.as_fd(), name, flags, Mode::from_bits_truncate(0o600))
            .map(File::from)
            .map_err(errno_io)
    }

    /// Renames `from` to `to`, both in `dir` (a link at `to` is replaced, not followed).
    pub(super) fn rename(dir: &Dir, from: &str, to: &str) -> io::Result<()> {
        renameat(dir.as_fd(), from, dir.as_fd(), to).map_err(errno_io)
    }

    /// Removes the file (or link) `name` in `dir`.
    pub(super) fn remove(dir: &Dir, name: &str) -> io::Result<()> {
        unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir).map_err(errno_io)
    }

    fn io_err(&self, rel: &str, e: Errno) -> PathError {
        PathError::Io {
            path: self.target.join(rel),
            source: errno_io(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn directories_are_made_and_found_and_missing_ones_are_none() {
        let t = tempfile::tempdir().unwrap();
        let mut dirs = Dirs::open(t.path()).unwrap();
        assert!(dirs.dir("a/b", false).unwrap().is_none());
        let d = dirs.dir("a/b/c", true).unwrap().unwrap();
        assert!(t.path().join("a/b/c").is_dir());
        let f = Dirs::open_file(&d, "x.part", true).unwrap();
        drop(f);
        assert!(
            Dirs::open_file(&d, "x.part", true).is_err(),
            "create is exclusive"
        );
        assert_eq!(
            dirs.look(&d, "a/b/c/x.part", "x.part").unwrap(),
            Found::File
        );
        Dirs::rename(&d, "x.part", "x").unwrap();
        assert_eq!(
            dirs.look(&d, "a/b/c/x.part", "x.part").unwrap(),
            Found::Nothing
        );
        // Found again through a fresh cache, and from a directory half way.
        let mut again = Dirs::open(t.path()).unwrap();
        again.dir("a", false).unwrap().unwrap();
        let d = again.dir("a/b/c", false).unwrap().unwrap();
        assert_eq!(again.look(&d, "a/b/c/x", "x").unwrap(), Found::File);
    }

    #[test]
    fn links_and_files_on_the_way_are_refused_even_when_planted_late() {
        let outside = tempfile::tempdir().unwrap();
        let t = tempfile::tempdir().unwrap();
        let mut dirs = Dirs::open(t.path()).unwrap();
        symlink(outside.path(), t.path().join("out")).unwrap();
        assert!(matches!(
            dirs.dir("out/x", true),
            Err(PathError::Symlink(p)) if p == t.path().join("out")
        ));
        // A link that stays inside is refused too: a later entry could go through it.
        std::fs::create_dir(t.path().join("real")).unwrap();
        symlink(t.path().join("real"), t.path().join("alias")).unwrap();
        assert!(matches!(
            dirs.dir("alias", true),
            Err(PathError::Symlink(_))
        ));
        std::fs::write(t.path().join("f"), b"").unwrap();
        assert!(matches!(
            dirs.dir("f/x", true),
            Err(PathError::NotADirectory(_))
        ));
        // A directory swapped for a link after it was checked missing is still refused.
        assert!(dirs.dir("late", false).unwrap().is_none());
        symlink(outside.path(), t.path().join("late")).unwrap();
        assert!(matches!(
            dirs.dir("late/y", true),
            Err(PathError::Symlink(_))
        ));
        // A link at the file's own name is neither opened nor made through.
        let root = dirs.dir("", false).unwrap().unwrap();
        symlink(outside.path().join("victim"), t.path().join("v.part")).unwrap();
        assert!(Dirs::open_file(&root, "v.part", false).is_err());
        assert!(Dirs::open_file(&root, "v.part", true).is_err());
        assert!(matches!(
            dirs.look(&root, "v.part", "v.part"),
            Err(PathError::Symlink(_))
        ));
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_target_may_be_a_link_and_open_directories_stay_bounded() {
        let t = tempfile::tempdir().unwrap();
        let via = tempfile::tempdir().unwrap();
        symlink(t.path(), via.path().join("t")).unwrap();
        let mut dirs = Dirs::open(&via.path().join("t")).unwrap();
        for i in 0..(MAX_OPEN_DIRS * 2) {
            dirs.dir(&format!("d{i}"), true).unwrap().unwrap();
            assert!(dirs.open.len() <= MAX_OPEN_DIRS);
        }
        assert!(t.path().join("d0").is_dir());
    }
}

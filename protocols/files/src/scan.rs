//! Building a manifest from paths on disk.
//!
//! Each path given becomes a top-level name in the manifest (a file `x.iso` is `x.iso`, a
//! directory `photos` gives `photos/...`). The paths the user names are followed if they
//! are symlinks (they chose them); inside a directory nothing is followed: symlinks,
//! sockets, devices and names that could not be written safely on the other side are
//! skipped and listed in [`Scan::skipped`] so the CLI can tell the user.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::ContentId;
use crate::error::{ManifestError, ScanError};
use crate::manifest::{Entry, MAX_ENTRIES, Manifest};
use crate::path::check_path;
#[cfg(unix)]
use crate::tree::compute_outboard_at;

/// A regular file found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedFile {
    /// Its path in the manifest.
    pub path: String,
    /// Where it is on disk.
    pub source: PathBuf,
    /// Its size when scanned.
    pub size: u64,
    /// Whether any execute bit is set.
    pub executable: bool,
}

/// Why an entry under a scanned directory was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// A symbolic link (never followed inside a directory).
    Symlink,
    /// Not a regular file or directory (socket, FIFO, device).
    Special,
    /// A name the receiving side would refuse (not UTF-8, or unsafe by
    /// [`check_path`]).
    Name,
}

/// An entry left out of the scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Where it is on disk.
    pub source: PathBuf,
    /// Why it was left out.
    pub reason: SkipReason,
}

/// Entries left out that [`Scan::skipped`] lists; the rest are only counted.
pub const MAX_SKIPPED_LISTED: usize = 1000;
/// Directories a scan enters, at most (each is held until walked).
pub const MAX_DIRECTORIES: usize = MAX_ENTRIES;

/// The files found by [`scan`] and what was left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Regular files, sorted by manifest path.
    pub files: Vec<ScannedFile>,
    /// Entries left out, in the order found (the first [`MAX_SKIPPED_LISTED`]).
    pub skipped: Vec<Skipped>,
    /// Entries left out in all, listed or not.
    pub skipped_count: u64,
}

impl Scan {
    /// The sum of the files' sizes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Hashes every file (with [`hash_file`]: a group buffer per thread) and builds the
    /// manifest. The outboards are thrown away; a sharing node has [`hash_file`] write
    /// them into its own storage instead.
    pub fn hash(&self) -> Result<Manifest, ScanError> {
        let mut entries = Vec::with_capacity(self.files.len());
        for file in &self.files {
            let root = hash_file(&file.source, file.size, io::sink())?;
            entries.push(Entry {
                path: file.path.clone(),
                size: file.size,
                root,
                executable: file.executable,
            });
        }
        Ok(Manifest::new(entries)?)
    }
}

/// Hashes the file at `source`, expected to be `size` bytes, writing its outboard: read
/// at offsets and hashed on every CPU (a 2 GiB file took 1.6 s on one thread of this
/// 2-vCPU machine), so that an offer or a share is ready sooner.
pub fn hash_file(
    source: &Path,
    size: u64,
    outboard: impl io::Write,
) -> Result<ContentId, ScanError> {
    let file = fs::File::open(source).map_err(|e| ScanError::Io {
        path: source.to_owned(),
        source: e,
    })?;
    #[cfg(unix)]
    let hashed = {
        // Asked once: std reads the process's cgroup files for it (mountinfo included),
        // which cost a tree of 10,000 small files more than their hashing.
        static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let threads =
            *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        compute_outboard_at(&file, size, threads, outboard)
    };
    #[cfg(not(unix))]
    let hashed = crate::tree::compute_outboard(file, size, outboard);
    hashed.map_err(|e| ScanError::Hash {
        path: source.to_owned(),
        source: e,
    })
}

/// Lists the regular files under `paths` (each a file or a directory) without following
/// symlinks inside directories, refusing more than [`MAX_ENTRIES`] files.
pub fn scan<P: AsRef<Path>>(paths: &[P]) -> Result<Scan, ScanError> {
    let mut out = Scan::default();
    for path in paths {
        let path = path.as_ref();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| check_path(n).is_ok())
            .ok_or_else(|| ScanError::BadName(path.to_owned()))?;
        let meta = fs::metadata(path).map_err(|e| io_error(path, e))?;
        if meta.is_dir() {
            walk(path, name, &mut out)?;
        } else if meta.is_file() {
            push_file(&mut out, name.to_owned(), path.to_owned(), &meta)?;
        } else {
            skip(
                &mut out,
                Skipped {
                    source: path.to_owned(),
                    reason: SkipReason::Special,
                },
            );
        }
    }
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    for s in &out.skipped {
        tracing::debug!(path = %s.source.display(), reason = ?s.reason, "left out of the manifest");
    }
    Ok(out)
}

/// Depth-first with an explicit stack, so a deep tree cannot overflow ours.
fn walk(root: &Path, root_name: &str, out: &mut Scan) -> Result<(), ScanError> {
    let mut stack = vec![(root.to_owned(), root_name.to_owned())];
    let mut directories = 1;
    while let Some((dir, prefix)) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| io_error(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&dir, e))?;
            let source = entry.path();
            let Some(path) = entry
                .file_name()
                .to_str()
                .map(|n| format!("{prefix}/{n}"))
                .filter(|p| check_path(p).is_ok())
            else {
                skip(
                    out,
                    Skipped {
                        source,
                        reason: SkipReason::Name,
                    },
                );
                continue;
            };
            // symlink_metadata: the entry itself, never what a link points to.
            let meta = fs::symlink_metadata(&source).map_err(|e| io_error(&source, e))?;
            let kind = meta.file_type();
            if kind.is_symlink() {
                skip(
                    out,
                    Skipped {
                        source,
                        reason: SkipReason::Symlink,
                    },
                );
            } else if kind.is_dir() {
                directories += 1;
                if directories > MAX_DIRECTORIES {
                    return Err(ScanError::TooManyDirectories {
                        max: MAX_DIRECTORIES,
                    });
                }
                stack.push((source, path));
            } else if kind.is_file() {
                push_file(out, path, source, &meta)?;
            } else {
                skip(
                    out,
                    Skipped {
                        source,
                        reason: SkipReason::Special,
                    },
                );
            }
        }
    }
    Ok(())
}

fn skip(out: &mut Scan, skipped: Skipped) {
    out.skipped_count += 1;
    if out.skipped.len() < MAX_SKIPPED_LISTED {
        out.skipped.push(skipped);
    }
}

fn push_file(
    out: &mut Scan,
    path: String,
    source: PathBuf,
    meta: &fs::Metadata,
) -> Result<(), ScanError> {
    if out.files.len() == MAX_ENTRIES {
        return Err(ManifestError::TooManyEntries { max: MAX_ENTRIES }.into());
    }
    out.files.push(ScannedFile {
        path,
        source,
        size: meta.len(),
        executable: is_executable(meta),
    });
    Ok(())
}

#[cfg(unix)]
fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_: &fs::Metadata) -> bool {
    false
}

fn io_error(path: &Path, source: io::Error) -> ScanError {
    ScanError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_file_is_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.bin");
        fs::write(&f, vec![7u8; 100_000]).unwrap();
        let scan = scan(&[&f]).unwrap();
        assert_eq!(scan.files.len(), 1);
        assert_eq!(scan.files[0].path, "x.bin");
        let m = scan.hash().unwrap();
        assert_eq!(m.entries()[0].root, ContentId::of(&vec![7u8; 100_000]));
        assert_eq!(m.total_size(), 100_000);
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_is_walked_without_following_symlinks() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"do not send").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("proj");
        fs::create_dir_all(top.join("src/deep")).unwrap();
        fs::create_dir_all(top.join("empty")).unwrap();
        fs::write(top.join("README"), b"hello").unwrap();
        fs::write(top.join("src/main.rs"), b"fn main() {}").unwrap();
        fs::write(top.join("src/deep/run.sh"), b"#!/bin/sh").unwrap();
        fs::set_permissions(
            top.join("src/deep/run.sh"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        symlink(outside.path(), top.join("src/escape")).unwrap();
        symlink(outside.path().join("secret"), top.join("link-to-file")).unwrap();
        symlink(top.join("README"), top.join("inside-link")).unwrap();
        fs::write(top.join("back\\slash"), b"").unwrap();

        let scan = scan(&[&top]).unwrap();
        let paths: Vec<&str> = scan.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["proj/README", "proj/src/deep/run.sh", "proj/src/main.rs"]
        );
        assert!(scan.files[1].executable && !scan.files[0].executable);
        let mut skipped: Vec<(String, SkipReason)> = scan
            .skipped
            .iter()
            .map(|s| {
                let name = s.source.file_name().unwrap().to_str().unwrap().to_owned();
                (name, s.reason.clone())
            })
            .collect();
        skipped.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            skipped,
            [
                ("back\\slash".into(), SkipReason::Name),
                ("escape".into(), SkipReason::Symlink),
                ("inside-link".into(), SkipReason::Symlink),
                ("link-to-file".into(), SkipReason::Symlink),
            ]
        );
        assert_eq!(scan.skipped_count, 4);
        let m = scan.hash().unwrap();
        assert_eq!(m.entries().len(), 3);
        assert_eq!(m.entries()[2].root, ContentId::of(b"fn main() {}"));
    }

    #[test]
    fn clashing_top_level_names_are_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        fs::write(a.path().join("same"), b"1").unwrap();
        fs::write(b.path().join("same"), b"2").unwrap();
        let scan = scan(&[a.path().join("same"), b.path().join("same")]).unwrap();
        assert!(matches!(
            scan.hash(),
            Err(ScanError::Manifest(ManifestError::Conflict(_)))
        ));
    }

    #[test]
    fn missing_and_unnamed_paths_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            scan(&[dir.path().join("nope")]),
            Err(ScanError::Io { .. })
        ));
        assert!(matches!(scan(&["/"]), Err(ScanError::BadName(_))));
        assert!(matches!(
            scan(&[dir.path().join("..")]),
            Err(ScanError::BadName(_))
        ));
    }

    #[test]
    fn a_file_that_changed_size_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("grows");
        fs::write(&f, b"short").unwrap();
        let scan = scan(&[&f]).unwrap();
        fs::write(&f, b"much longer now").unwrap();
        assert!(matches!(
            scan.hash(),
            Err(ScanError::Hash {
                source: crate::OutboardError::TooLong { .. },
                ..
            })
        ));
    }
}

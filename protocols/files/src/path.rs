//! Path safety: which relative paths a manifest may carry, and how one is placed under a
//! target directory without escaping it.
//!
//! A manifest comes from a peer, so every path in it is hostile until checked. The rules
//! are the union of what Unix and Windows would misread: one spelling per path (`/` only,
//! no `.` or empty components), nothing that climbs (`..`, absolute, drive prefixes), and
//! nothing Windows would map to a device or silently rename. The receiver also refuses to
//! write through a symlink that already exists under the target.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::PathError;

/// Longest manifest path in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest path component in bytes (`NAME_MAX` on common file systems).
pub const MAX_COMPONENT_LEN: usize = 255;

/// Windows device names, refused with any extension (`nul.txt` is the device too).
const DEVICES: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "COM0", "COM1", "COM2", "COM3", "COM4",
    "COM5", "COM6", "COM7", "COM8", "COM9", "COM¹", "COM²", "COM³", "LPT0", "LPT1", "LPT2", "LPT3",
    "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9", "LPT¹", "LPT²", "LPT³",
];

/// Checks that `path` is a safe relative path: `/`-separated components, each non-empty,
/// not `.` or `..`, no NUL, control characters, backslash or colon, no Windows device
/// name, no trailing dot or space, within [`MAX_PATH_LEN`] and [`MAX_COMPONENT_LEN`].
pub fn check_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong {
            len: path.len(),
            max: MAX_PATH_LEN,
        });
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    for b in path.bytes() {
        match b {
            0 => return Err(PathError::Nul),
            b'\\' => return Err(PathError::Backslash),
            b':' => return Err(PathError::Colon),
            1..=0x1f | 0x7f => return Err(PathError::Control(b)),
            _ => {}
        }
    }
    for component in path.split('/') {
        check_component(component)?;
    }
    Ok(())
}

fn check_component(c: &str) -> Result<(), PathError> {
    match c {
        "" => return Err(PathError::EmptyComponent),
        "." => return Err(PathError::CurDir),
        ".." => return Err(PathError::ParentDir),
        _ => {}
    }
    if c.len() > MAX_COMPONENT_LEN {
        return Err(PathError::ComponentTooLong {
            len: c.len(),
            max: MAX_COMPONENT_LEN,
        });
    }
    if c.ends_with('.') || c.ends_with(' ') {
        return Err(PathError::TrailingDotOrSpace(c.to_owned()));
    }
    // Windows takes the part before the first dot, trailing spaces stripped, as the name.
    let stem = c.split('.').next().unwrap_or(c).trim_end_matches(' ');
    if DEVICES.iter().any(|d| d.eq_ignore_ascii_case(stem)) {
        return Err(PathError::DeviceName(c.to_owned()));
    }
    Ok(())
}

/// Joins the safe relative `path` under `target` and returns where to write it.
///
/// Refuses unsafe paths ([`check_path`]) and any path whose existing components under
/// `target` include a symlink (even one pointing inside the target: a later entry could
/// be redirected through it) or a non-directory where a directory is needed. `target`
/// itself is the user's choice and may be a symlink. What does not exist yet is fine; the
/// caller creates the directories with `create_dir` (not following links) and opens the
/// file with `O_NOFOLLOW`/`create_new` on a temporary name, as a link could appear between
/// this check and the write.
pub fn safe_join(target: &Path, path: &str) -> Result<PathBuf, PathError> {
    check_path(path)?;
    let mut out = target.to_path_buf();
    let mut components = path.split('/').peekable();
    while let Some(component) = components.next() {
        out.push(component);
        let last = components.peek().is_none();
        match std::fs::symlink_metadata(&out) {
            Ok(meta) if meta.file_type().is_symlink() => return Err(PathError::Symlink(out)),
            Ok(meta) if !last && !meta.is_dir() => return Err(PathError::NotADirectory(out)),
            Ok(meta) if last && meta.is_dir() => return Err(PathError::IsADirectory(out)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Nothing below a missing component exists either.
                out.extend(components);
                break;
            }
            Err(source) => return Err(PathError::Io { path: out, source }),
        }
    }
    debug_assert!(out.starts_with(target));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_pass() {
        for p in [
            "a",
            "a/b/c.txt",
            ".hidden",
            "..hidden",
            "a..b",
            "dir/.config/x",
            "ünïcødé/名前.txt",
            "CONSOLE",
            "com10",
            "lpt",
            "auxiliary.txt",
            "with space/x y",
        ] {
            check_path(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        }
        let longest = "a/".repeat(MAX_PATH_LEN / 2 - 1) + "aa";
        assert_eq!(longest.len(), MAX_PATH_LEN);
        check_path(&longest).unwrap();
        check_path(&"x".repeat(MAX_COMPONENT_LEN)).unwrap();
    }

    #[test]
    fn absolute_paths_are_refused() {
        for p in ["/", "/etc/passwd", "//server/share"] {
            assert!(matches!(check_path(p), Err(PathError::Absolute)), "{p}");
        }
    }

    #[test]
    fn parent_components_are_refused() {
        for p in ["..", "../x", "a/../../x", "a/.."] {
            assert!(matches!(check_path(p), Err(PathError::ParentDir)), "{p}");
        }
    }

    #[test]
    fn empty_and_dot_components_are_refused() {
        assert!(matches!(check_path(""), Err(PathError::Empty)));
        for p in ["a//b", "a/", "a/b/"] {
            assert!(
                matches!(check_path(p), Err(PathError::EmptyComponent)),
                "{p}"
            );
        }
        for p in [".", "./a", "a/./b", "a/."] {
            assert!(matches!(check_path(p), Err(PathError::CurDir)), "{p}");
        }
    }

    #[test]
    fn nul_control_and_backslash_are_refused() {
        assert!(matches!(check_path("a\0b"), Err(PathError::Nul)));
        assert!(matches!(check_path("a\nb"), Err(PathError::Control(b'\n'))));
        assert!(matches!(
            check_path("a\x1b[2J"),
            Err(PathError::Control(0x1b))
        ));
        assert!(matches!(check_path("a\x7f"), Err(PathError::Control(0x7f))));
        for p in ["a\\b", "..\\..\\x", "\\x"] {
            assert!(matches!(check_path(p), Err(PathError::Backslash)), "{p}");
        }
    }

    #[test]
    fn drive_prefixes_and_streams_are_refused() {
        for p in ["C:", "C:/Windows", "c:x", "a/file.txt:stream"] {
            assert!(matches!(check_path(p), Err(PathError::Colon)), "{p}");
        }
    }

    #[test]
    fn windows_device_names_are_refused() {
        for p in [
            "CON",
            "con",
            "nul.txt",
            "a/Com1",
            "LPT9.tar.gz",
            "aux",
            "PRN",
            "COM¹",
            "con .txt",
            "conin$",
        ] {
            assert!(
                matches!(check_path(p), Err(PathError::DeviceName(_))),
                "{p}: {:?}",
                check_path(p)
            );
        }
        for p in ["a.", "a ", "dir./x", "nul."] {
            assert!(
                matches!(check_path(p), Err(PathError::TrailingDotOrSpace(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn overlong_paths_are_refused() {
        let long = "a/".repeat(MAX_PATH_LEN / 2) + "a";
        assert!(matches!(check_path(&long), Err(PathError::TooLong { .. })));
        let wide = "x".repeat(MAX_COMPONENT_LEN + 1);
        assert!(matches!(
            check_path(&wide),
            Err(PathError::ComponentTooLong { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn an_accepted_path_never_climbs(p in "[a./\\\\:\\x00\\nCONULTP1 ]{0,12}") {
            if check_path(&p).is_ok() {
                use std::path::Component;
                let joined = Path::new("/target").join(&p);
                proptest::prop_assert!(joined.starts_with("/target"));
                proptest::prop_assert!(
                    Path::new(&p).components().all(|c| matches!(c, Component::Normal(_))),
                    "{:?}", p
                );
                proptest::prop_assert_eq!(Path::new(&p).components().count(), p.split('/').count());
            }
        }
    }

    #[test]
    fn safe_join_stays_under_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path();
        assert_eq!(
            safe_join(target, "a/b.txt").unwrap(),
            target.join("a/b.txt")
        );
        std::fs::create_dir(target.join("a")).unwrap();
        std::fs::write(target.join("a/b.txt"), b"old").unwrap();
        // Existing directories and an existing file to overwrite (resume) are fine.
        assert_eq!(
            safe_join(target, "a/b.txt").unwrap(),
            target.join("a/b.txt")
        );
        assert!(matches!(
            safe_join(target, "../x"),
            Err(PathError::ParentDir)
        ));
        assert!(matches!(
            safe_join(target, "/etc/x"),
            Err(PathError::Absolute)
        ));
    }

    #[cfg(unix)]
    #[test]
    fn safe_join_refuses_symlinks_under_the_target() {
        use std::os::unix::fs::symlink;
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path();
        // A directory link leading out of the target.
        symlink(outside.path(), target.join("out")).unwrap();
        assert!(matches!(
            safe_join(target, "out/x"),
            Err(PathError::Symlink(p)) if p == target.join("out")
        ));
        // A link in place of the file itself (writing would follow it).
        symlink(outside.path().join("victim"), target.join("f")).unwrap();
        assert!(matches!(safe_join(target, "f"), Err(PathError::Symlink(_))));
        // Even a link that stays inside is refused: a later entry could be redirected.
        std::fs::create_dir(target.join("real")).unwrap();
        symlink(target.join("real"), target.join("alias")).unwrap();
        assert!(matches!(
            safe_join(target, "alias/x"),
            Err(PathError::Symlink(_))
        ));
        // Deeper: a link two levels down.
        std::fs::create_dir(target.join("real/sub")).unwrap();
        symlink(outside.path(), target.join("real/sub/deep")).unwrap();
        assert!(matches!(
            safe_join(target, "real/sub/deep/x"),
            Err(PathError::Symlink(_))
        ));
        // The target itself may be a link the user chose.
        let via = tempfile::tempdir().unwrap();
        symlink(target, via.path().join("t")).unwrap();
        assert!(safe_join(&via.path().join("t"), "real/y").is_ok());
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }

    #[test]
    fn safe_join_refuses_files_in_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path();
        std::fs::write(target.join("f"), b"").unwrap();
        assert!(matches!(
            safe_join(target, "f/x"),
            Err(PathError::NotADirectory(_))
        ));
        std::fs::create_dir(target.join("d")).unwrap();
        assert!(matches!(
            safe_join(target, "d"),
            Err(PathError::IsADirectory(_))
        ));
    }
}

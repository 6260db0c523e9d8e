//! Paths into a document: `todos/3/title`.
//!
//! Segments are separated by `/`; the empty path is the root. A segment is a map key, or,
//! under a list, a decimal index (`-` in `put` appends). Keys holding `/` or `~` are written
//! with JSON Pointer's escapes (RFC 6901): `~1` for `/`, `~0` for `~`. There is no leading
//! `/`: `todos/3` and JSON Pointer's `/todos/3` name the same value.

use crate::error::{Error, Result};

/// Longest path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Deepest nesting read or written; also bounds the recursion over JSON values and objects.
pub const MAX_DEPTH: usize = 64;

/// A parsed path: unescaped segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Path {
    pub(crate) segments: Vec<String>,
}

fn invalid(path: &str, reason: &'static str) -> Error {
    Error::InvalidPath {
        path: path.to_owned(),
        reason,
    }
}

impl Path {
    pub(crate) fn parse(path: &str) -> Result<Self> {
        if path.len() > MAX_PATH_LEN {
            return Err(invalid(path, "longer than 4096 bytes"));
        }
        if path.is_empty() {
            return Ok(Self { segments: vec![] });
        }
        if path.starts_with('/') {
            return Err(invalid(
                path,
                "starts with `/` (write `todos/3`, not `/todos/3`)",
            ));
        }
        let mut segments = Vec::new();
        for raw in path.split('/') {
            if segments.len() == MAX_DEPTH {
                return Err(invalid(path, "more than 64 segments"));
            }
            segments.push(
                unescape(raw).ok_or_else(|| invalid(path, "`~` must be followed by 0 or 1"))?,
            );
        }
        Ok(Self { segments })
    }

    /// The path of the first `n` segments, escaped again, for messages and conflict lists.
    pub(crate) fn display_prefix(&self, n: usize) -> String {
        join(&self.segments[..n])
    }
}

fn unescape(raw: &str) -> Option<String> {
    if !raw.contains('~') {
        return Some(raw.to_owned());
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// Escapes one segment.
pub(crate) fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Joins unescaped segments into a path.
pub(crate) fn join(segments: &[String]) -> String {
    segments
        .iter()
        .map(|s| escape(s))
        .collect::<Vec<_>>()
        .join("/")
}

/// A segment read as a list index: plain decimal, no sign, no leading zeros.
pub(crate) fn index(segment: &str) -> Option<usize> {
    if segment.is_empty() || (segment.len() > 1 && segment.starts_with('0')) {
        return None;
    }
    if !segment.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    segment.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_escapes() {
        assert!(Path::parse("").unwrap().segments.is_empty());
        assert_eq!(
            Path::parse("todos/3/title").unwrap().segments,
            ["todos", "3", "title"]
        );
        assert_eq!(Path::parse("a~1b/c~0d").unwrap().segments, ["a/b", "c~d"]);
        assert_eq!(join(&["a/b".into(), "c~d".into()]), "a~1b/c~0d");
        assert!(Path::parse("/todos").is_err());
        assert!(Path::parse("a~2").is_err());
        assert!(Path::parse(&"a/".repeat(65)).is_err());
        assert_eq!(index("12"), Some(12));
        assert_eq!(index("012"), None);
        assert_eq!(index("-"), None);
    }
}

//! Manifests: the list of files in a push or a share, and the root that binds them.
//!
//! Wire form (CBOR): `[1, [[path, size, root, flags], ...]]`, entries sorted by path
//! (byte order), `root` a 32-byte string, `flags` bit 0 the executable bit. The encoding
//! is canonical (definite lengths, shortest integers, one order), so a manifest has one id:
//! [`Manifest::id`], the BLAKE3 root of its bytes, which is the content id of a directory
//! share. The manifest travels like any content (by groups, verified against that id),
//! then [`Manifest::decode`] checks its size before decoding, the entry count while
//! decoding, and every path and the total size after.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::ContentId;
use crate::error::ManifestError;
use crate::path::check_path;

/// Wire version of manifests this build writes and reads.
pub const MANIFEST_VERSION: u64 = 1;
/// Most entries in one manifest.
pub const MAX_ENTRIES: usize = 100_000;
/// Largest encoded manifest; refused before decoding.
pub const MAX_MANIFEST_BYTES: usize = 16 << 20;
/// Largest sum of file sizes in one manifest (4 TiB), which also bounds resume state.
pub const MAX_TOTAL_SIZE: u64 = 4 << 40;

const FLAG_EXECUTABLE: u64 = 1;
/// Carries the entry bound out of serde (its errors are strings).
const TOO_MANY: &str = "too many manifest entries";

/// One file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative path, `/`-separated, safe by [`check_path`].
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// The BLAKE3 root of the file's bytes.
    pub root: ContentId,
    /// Whether the file is executable (the only mode bit carried).
    pub executable: bool,
}

/// The files of a push or share, validated: safe, distinct paths (no file is also a
/// directory of another), sorted, within [`MAX_ENTRIES`] and [`MAX_TOTAL_SIZE`].
/// Empty directories are not carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    entries: Vec<Entry>,
    total_size: u64,
}

impl Manifest {
    /// A manifest of `entries` in any order; sorts them and checks every rule.
    pub fn new(mut entries: Vec<Entry>) -> Result<Self, ManifestError> {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Self::validated(entries)
    }

    /// Checks sorted entries.
    fn validated(entries: Vec<Entry>) -> Result<Self, ManifestError> {
        if entries.len() > MAX_ENTRIES {
            return Err(ManifestError::TooManyEntries { max: MAX_ENTRIES });
        }
        let mut total_size = 0u64;
        for entry in &entries {
            check_path(&entry.path).map_err(|source| ManifestError::Path {
                path: entry.path.chars().take(200).collect(),
                source,
            })?;
            total_size = total_size
                .checked_add(entry.size)
                .filter(|&t| t <= MAX_TOTAL_SIZE)
                .ok_or(ManifestError::TotalTooLarge {
                    max: MAX_TOTAL_SIZE,
                })?;
        }
        // Sorted by bytes, the paths under "a/" are one run starting at the first path
        // >= "a/": one binary search per entry finds a file that is also a directory,
        // with no set of every prefix (that would grow with the path depth).
        let mut probe = String::new();
        for (i, entry) in entries.iter().enumerate() {
            if entries
                .get(i + 1)
                .is_some_and(|next| next.path == entry.path)
            {
                return Err(ManifestError::Conflict(entry.path.clone()));
            }
            probe.clear();
            probe.push_str(&entry.path);
            probe.push('/');
            let at = entries.partition_point(|e| e.path.as_str() < probe.as_str());
            if entries.get(at).is_some_and(|e| e.path.starts_with(&probe)) {
                return Err(ManifestError::Conflict(entry.path.clone()));
            }
        }
        Ok(Self {
            entries,
            total_size,
        })
    }

    /// The entries, sorted by path.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The sum of the files' sizes.
    pub fn total_size(&self) -> u64 {
        self.total_size
    }

    /// The canonical CBOR encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.entries.len() * 64);
        let wire = WireOut(
            MANIFEST_VERSION,
            self.entries
                .iter()
                .map(|e| WireEntryOut(&e.path, e.size, &e.root, u64::from(e.executable)))
                .collect(),
        );
        #[allow(clippy::expect_used)] // writing plain data to a Vec cannot fail
        ciborium::into_writer(&wire, &mut out).expect("CBOR into a Vec");
        out
    }

    /// The manifest's content id: the BLAKE3 root of [`encode`](Self::encode).
    pub fn id(&self) -> ContentId {
        ContentId::of(&self.encode())
    }

    /// Decodes a manifest from a peer: refuses more than [`MAX_MANIFEST_BYTES`] before
    /// decoding and more than [`MAX_ENTRIES`] while decoding, then checks every rule of
    /// [`Manifest::new`] and that the entries are in canonical order.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                len: bytes.len(),
                max: MAX_MANIFEST_BYTES,
            });
        }
        let mut reader = bytes;
        let wire: WireIn = match ciborium::from_reader(&mut reader) {
            Ok(wire) => wire,
            Err(ciborium::de::Error::Semantic(_, msg)) if msg == TOO_MANY => {
                return Err(ManifestError::TooManyEntries { max: MAX_ENTRIES });
            }
            Err(e) => {
                // A later version may have another shape: say so rather than "malformed".
                if let Ok(VersionOnly(v, _)) = ciborium::from_reader(bytes)
                    && v != MANIFEST_VERSION
                {
                    return Err(ManifestError::Version(v));
                }
                return Err(ManifestError::Malformed(e.to_string()));
            }
        };
        if !reader.is_empty() {
            return Err(ManifestError::Malformed("trailing bytes".into()));
        }
        if wire.0 != MANIFEST_VERSION {
            return Err(ManifestError::Version(wire.0));
        }
        let mut entries = Vec::with_capacity(wire.1.0.len());
        for WireEntryIn(path, size, root, flags) in wire.1.0 {
            if flags & !FLAG_EXECUTABLE != 0 {
                return Err(ManifestError::Flags(flags));
            }
            entries.push(Entry {
                path,
                size,
                root,
                executable: flags & FLAG_EXECUTABLE != 0,
            });
        }
        if entries.windows(2).any(|p| p[0].path > p[1].path) {
            return Err(ManifestError::NotCanonical);
        }
        Self::validated(entries)
    }
}

#[derive(Serialize)]
struct WireOut<'a>(u64, Vec<WireEntryOut<'a>>);

#[derive(Serialize)]
struct WireEntryOut<'a>(&'a str, u64, &'a ContentId, u64);

#[derive(Deserialize)]
struct WireIn(u64, Entries);

#[derive(Deserialize)]
struct VersionOnly(u64, de::IgnoredAny);

#[derive(Deserialize)]
struct WireEntryIn(String, u64, ContentId, u64);

/// The entry list, refusing more than [`MAX_ENTRIES`] before allocating for them.
struct Entries(Vec<WireEntryIn>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of manifest entries")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entries, A::Error> {
                let hint = seq.size_hint().unwrap_or(0);
                if hint > MAX_ENTRIES {
                    return Err(de::Error::custom(TOO_MANY));
                }
                let mut out = Vec::with_capacity(hint);
                while let Some(entry) = seq.next_element()? {
                    if out.len() == MAX_ENTRIES {
                        return Err(de::Error::custom(TOO_MANY));
                    }
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64) -> Entry {
        Entry {
            path: path.into(),
            size,
            root: ContentId::of(path.as_bytes()),
            executable: path.ends_with(".sh"),
        }
    }

    /// Encodes arbitrary (possibly invalid) entries the way a hostile peer could.
    fn raw(version: u64, entries: &[(&str, u64, u64)]) -> Vec<u8> {
        let root = ContentId::of(b"x");
        let wire = WireOut(
            version,
            entries
                .iter()
                .map(|&(p, s, f)| WireEntryOut(p, s, &root, f))
                .collect(),
        );
        let mut out = Vec::new();
        ciborium::into_writer(&wire, &mut out).unwrap();
        out
    }

    #[test]
    fn round_trips_with_a_stable_id() {
        let m = Manifest::new(vec![
            entry("photos/b.jpg", 10),
            entry("photos/a.jpg", 0),
            entry("run.sh", 5),
            entry("photos/sub/c", 1 << 20),
        ])
        .unwrap();
        assert_eq!(m.entries()[0].path, "photos/a.jpg");
        assert_eq!(m.total_size(), 15 + (1 << 20));
        let bytes = m.encode();
        let back = Manifest::decode(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.id(), m.id());
        assert!(back.entries().iter().any(|e| e.executable));
        // Order of construction does not change the id.
        let mut rev = m.entries().to_vec();
        rev.reverse();
        assert_eq!(Manifest::new(rev).unwrap().id(), m.id());
        // Any change does.
        let mut other = m.entries().to_vec();
        other[0].size += 1;
        assert_ne!(Manifest::new(other).unwrap().id(), m.id());
    }

    #[test]
    fn unsafe_paths_are_refused_in_new_and_decode() {
        for bad in [
            "../x",
            "/etc/passwd",
            "a//b",
            "./a",
            "a\\b",
            "C:/x",
            "nul",
            "a\0b",
        ] {
            assert!(
                matches!(
                    Manifest::new(vec![entry(bad, 1)]),
                    Err(ManifestError::Path { .. })
                ),
                "{bad:?}"
            );
            assert!(
                matches!(
                    Manifest::decode(&raw(1, &[(bad, 1, 0)])),
                    Err(ManifestError::Path { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn duplicates_and_file_directory_clashes_are_refused() {
        assert!(matches!(
            Manifest::new(vec![entry("a", 1), entry("a", 2)]),
            Err(ManifestError::Conflict(p)) if p == "a"
        ));
        assert!(matches!(
            Manifest::new(vec![entry("a", 1), entry("a.txt", 1), entry("a/b", 2)]),
            Err(ManifestError::Conflict(p)) if p == "a"
        ));
        assert!(matches!(
            Manifest::new(vec![entry("x/a", 1), entry("x/a/b/c", 2)]),
            Err(ManifestError::Conflict(_))
        ));
        Manifest::new(vec![entry("a/b", 1), entry("a/c", 1), entry("ab", 1)]).unwrap();
    }

    #[test]
    fn bounds_are_checked() {
        let huge = vec![0u8; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            Manifest::decode(&huge),
            Err(ManifestError::TooLarge { .. })
        ));
        // An array header claiming 2^32 entries in a few bytes: refused, nothing reserved.
        let mut lying = vec![0x82, 0x01, 0x9a, 0xff, 0xff, 0xff, 0xff];
        lying.extend(raw(1, &[("a", 1, 0)])[2..].iter());
        assert!(matches!(
            Manifest::decode(&lying),
            Err(ManifestError::TooManyEntries { .. })
        ));
        // One entry too many, really there.
        let names: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("{i:06}")).collect();
        let many: Vec<(&str, u64, u64)> = names.iter().map(|n| (n.as_str(), 0, 0)).collect();
        assert!(matches!(
            Manifest::decode(&raw(1, &many)),
            Err(ManifestError::TooManyEntries { .. })
        ));
        assert!(matches!(
            Manifest::decode(&raw(1, &[("a", MAX_TOTAL_SIZE, 0), ("b", 1, 0)])),
            Err(ManifestError::TotalTooLarge { .. })
        ));
        assert!(matches!(
            Manifest::decode(&raw(1, &[("a", u64::MAX, 0), ("b", u64::MAX, 0)])),
            Err(ManifestError::TotalTooLarge { .. })
        ));
        let long = "a".repeat(crate::path::MAX_COMPONENT_LEN + 1);
        assert!(matches!(
            Manifest::decode(&raw(1, &[(&long, 1, 0)])),
            Err(ManifestError::Path { .. })
        ));
    }

    #[test]
    fn non_canonical_or_unknown_input_is_refused() {
        assert!(matches!(
            Manifest::decode(&raw(1, &[("b", 1, 0), ("a", 1, 0)])),
            Err(ManifestError::NotCanonical)
        ));
        assert!(matches!(
            Manifest::decode(&raw(1, &[("a", 1, 2)])),
            Err(ManifestError::Flags(2))
        ));
        assert!(matches!(
            Manifest::decode(&raw(2, &[("a", 1, 0)])),
            Err(ManifestError::Version(2))
        ));
        let mut trailing = raw(1, &[("a", 1, 0)]);
        trailing.push(0);
        assert!(matches!(
            Manifest::decode(&trailing),
            Err(ManifestError::Malformed(_))
        ));
        assert!(matches!(
            Manifest::decode(b"\xff\xff"),
            Err(ManifestError::Malformed(_))
        ));
    }
}

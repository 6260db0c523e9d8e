//! Resume state: which chunk groups of each file are verified on disk.
//!
//! A receiver marks a group once it is verified, written and synced; the state is saved
//! (CBOR, [`TransferState::encode`]) with the partial files, so a receiver killed at any
//! point asks only for [`TransferState::missing`] when it runs again. One bit per 64 KiB
//! group: 2 KiB for a GiB, and [`MAX_TOTAL_SIZE`] bounds
//! it to 8 MiB.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::ContentId;
use crate::error::ResumeError;
use crate::manifest::{MAX_ENTRIES, MAX_TOTAL_SIZE, Manifest};
use crate::plan::GroupRef;
use crate::tree::{GROUP_SIZE, group_count, group_range};

/// Wire version of resume state this build writes and reads.
pub const RESUME_VERSION: u64 = 1;
/// Largest encoded state; refused before decoding. The bitmaps of [`MAX_TOTAL_SIZE`] plus
/// a few bytes per file.
pub const MAX_STATE_BYTES: usize =
    (MAX_TOTAL_SIZE / GROUP_SIZE / 8) as usize + MAX_ENTRIES * 16 + 1024;

/// One bit per chunk group of a file: set when the group is verified on disk.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupBitmap {
    groups: u64,
    verified: u64,
    bits: Vec<u8>,
}

impl GroupBitmap {
    /// All `groups` groups missing. Callers bound `groups` (through [`TransferState`]).
    fn new(groups: u64) -> Self {
        Self {
            groups,
            verified: 0,
            bits: vec![0; groups.div_ceil(8) as usize],
        }
    }

    /// From saved bytes, which must be exactly the bitmap of `groups` groups.
    fn from_bytes(groups: u64, bits: Vec<u8>) -> Option<Self> {
        if bits.len() as u64 != groups.div_ceil(8) {
            return None;
        }
        // Bits past the last group must be clear: one state, one encoding.
        if !groups.is_multiple_of(8) && bits.last().is_some_and(|b| b >> (groups % 8) != 0) {
            return None;
        }
        let verified = bits.iter().map(|b| u64::from(b.count_ones())).sum();
        Some(Self {
            groups,
            verified,
            bits,
        })
    }

    /// Groups of the file.
    pub fn groups(&self) -> u64 {
        self.groups
    }

    /// Groups verified.
    pub fn verified(&self) -> u64 {
        self.verified
    }

    /// Whether group `g` is verified (false past the end).
    pub fn get(&self, g: u64) -> bool {
        g < self.groups && self.bits[(g / 8) as usize] & (1 << (g % 8)) != 0
    }

    /// Marks group `g` verified; true if it was not already.
    fn set(&mut self, g: u64) -> bool {
        if g >= self.groups || self.get(g) {
            return false;
        }
        self.bits[(g / 8) as usize] |= 1 << (g % 8);
        self.verified += 1;
        true
    }

    /// Whether every group is verified.
    pub fn is_complete(&self) -> bool {
        self.verified == self.groups
    }

    /// The groups not verified, in order.
    pub fn missing(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.groups).filter(|&g| !self.get(g))
    }
}

impl fmt::Debug for GroupBitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupBitmap({}/{})", self.verified, self.groups)
    }
}

/// What a receiver has verified of one content (a file, or the files of a manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferState {
    content: ContentId,
    sizes: Vec<u64>,
    files: Vec<GroupBitmap>,
}

impl TransferState {
    /// Nothing verified yet of `content`, whose files have `sizes` (one size for a single
    /// file). Refuses more than [`MAX_ENTRIES`] files or [`MAX_TOTAL_SIZE`] bytes.
    pub fn new(content: ContentId, sizes: &[u64]) -> Result<Self, ResumeError> {
        check_shape(sizes)?;
        Ok(Self {
            content,
            sizes: sizes.to_vec(),
            files: sizes
                .iter()
                .map(|&s| GroupBitmap::new(group_count(s)))
                .collect(),
        })
    }

    /// Nothing verified yet of the files of `manifest`.
    pub fn for_manifest(manifest: &Manifest) -> Self {
        let sizes: Vec<u64> = manifest.entries().iter().map(|e| e.size).collect();
        // A valid manifest is within both bounds.
        Self {
            content: manifest.id(),
            files: sizes
                .iter()
                .map(|&s| GroupBitmap::new(group_count(s)))
                .collect(),
            sizes,
        }
    }

    /// The content this state is for.
    pub fn content(&self) -> &ContentId {
        &self.content
    }

    /// The bitmap of file `file`.
    pub fn file(&self, file: u32) -> Option<&GroupBitmap> {
        self.files.get(file as usize)
    }

    /// Marks a group verified on disk; true if it was not already (false also for a group
    /// that does not exist).
    pub fn mark_verified(&mut self, g: GroupRef) -> bool {
        self.files
            .get_mut(g.file as usize)
            .is_some_and(|b| b.set(g.group))
    }

    /// Whether a group is verified.
    pub fn is_verified(&self, g: GroupRef) -> bool {
        self.files
            .get(g.file as usize)
            .is_some_and(|b| b.get(g.group))
    }

    /// Every group still to fetch, file by file, in order.
    pub fn missing(&self) -> impl Iterator<Item = GroupRef> + '_ {
        self.files.iter().enumerate().flat_map(|(file, bitmap)| {
            bitmap.missing().map(move |group| GroupRef {
                file: file as u32,
                group,
            })
        })
    }

    /// Bytes verified so far (for progress and for the resumed transfer's byte count).
    pub fn verified_bytes(&self) -> u64 {
        let mut total = 0;
        for (bitmap, &size) in self.files.iter().zip(&self.sizes) {
            if bitmap.is_complete() {
                total += size;
                continue;
            }
            let last = bitmap.groups() - 1;
            total += bitmap.verified() * GROUP_SIZE;
            if bitmap.get(last) {
                // The last group is short.
                let r = group_range(size, last).unwrap_or(0..0);
                total = total - GROUP_SIZE + (r.end - r.start);
            }
        }
        total
    }

    /// Whether every group of every file is verified.
    pub fn is_complete(&self) -> bool {
        self.files.iter().all(GroupBitmap::is_complete)
    }

    /// The state for saving: `[1, content, [[size, bitmap], ...]]` in CBOR.
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireOut(
            RESUME_VERSION,
            &self.content,
            self.sizes
                .iter()
                .zip(&self.files)
                .map(|(&size, b)| (size, Bytes(&b.bits)))
                .collect(),
        );
        let mut out =
            Vec::with_capacity(64 + self.files.iter().map(|b| b.bits.len() + 12).sum::<usize>());
        #[allow(clippy::expect_used)] // writing plain data to a Vec cannot fail
        ciborium::into_writer(&wire, &mut out).expect("CBOR into a Vec");
        out
    }

    /// Reads saved state back, refusing it unless it is for `content` with exactly these
    /// file `sizes` (from the verified manifest). Refuses more than [`MAX_STATE_BYTES`]
    /// before decoding.
    pub fn decode(bytes: &[u8], content: &ContentId, sizes: &[u64]) -> Result<Self, ResumeError> {
        if bytes.len() > MAX_STATE_BYTES {
            return Err(ResumeError::TooLarge {
                len: bytes.len(),
                max: MAX_STATE_BYTES,
            });
        }
        check_shape(sizes)?;
        let mut reader = bytes;
        let wire: WireIn = ciborium::from_reader(&mut reader)
            .map_err(|e| ResumeError::Malformed(e.to_string()))?;
        if !reader.is_empty() {
            return Err(ResumeError::Malformed("trailing bytes".into()));
        }
        if wire.0 != RESUME_VERSION {
            return Err(ResumeError::Version(wire.0));
        }
        if wire.1 != *content {
            return Err(ResumeError::OtherContent);
        }
        if wire.2.0.len() != sizes.len() {
            return Err(ResumeError::Shape);
        }
        let mut files = Vec::with_capacity(sizes.len());
        for ((size, bits), &expected) in wire.2.0.into_iter().zip(sizes) {
            if size != expected {
                return Err(ResumeError::Shape);
            }
            files.push(GroupBitmap::from_bytes(group_count(size), bits).ok_or(ResumeError::Shape)?);
        }
        Ok(Self {
            content: *content,
            sizes: sizes.to_vec(),
            files,
        })
    }
}

fn check_shape(sizes: &[u64]) -> Result<(), ResumeError> {
    let total = sizes
        .iter()
        .try_fold(0u64, |t, &s| t.checked_add(s))
        .filter(|&t| t <= MAX_TOTAL_SIZE);
    if sizes.len() > MAX_ENTRIES || total.is_none() {
        return Err(ResumeError::TotalTooLarge {
            max: MAX_TOTAL_SIZE,
        });
    }
    Ok(())
}

/// A byte string on the wire (serde's `Vec<u8>` would be an array of integers).
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

#[derive(Serialize)]
struct WireOut<'a>(u64, &'a ContentId, Vec<(u64, Bytes<'a>)>);

#[derive(Deserialize)]
struct WireIn(u64, ContentId, Files);

/// The per-file list, refusing more than [`MAX_ENTRIES`] before allocating for it.
struct Files(Vec<(u64, Vec<u8>)>);

struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

impl<'de> Deserialize<'de> for Files {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Files;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of file states")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Files, A::Error> {
                let hint = seq.size_hint().unwrap_or(0);
                if hint > MAX_ENTRIES {
                    return Err(de::Error::custom("too many files"));
                }
                let mut out = Vec::with_capacity(hint);
                while let Some((size, ByteBuf(bits))) = seq.next_element::<(u64, ByteBuf)>()? {
                    if out.len() == MAX_ENTRIES {
                        return Err(de::Error::custom("too many files"));
                    }
                    out.push((size, bits));
                }
                Ok(Files(out))
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = GROUP_SIZE;

    fn g(file: u32, group: u64) -> GroupRef {
        GroupRef { file, group }
    }

    #[test]
    fn marks_count_and_missing() {
        let id = ContentId::of(b"c");
        let mut s = TransferState::new(id, &[3 * G + 5, 0, G]).unwrap();
        assert_eq!(s.missing().count(), 4 + 1 + 1);
        assert!(s.mark_verified(g(0, 1)));
        assert!(!s.mark_verified(g(0, 1)), "twice");
        assert!(!s.mark_verified(g(0, 4)), "past the end");
        assert!(!s.mark_verified(g(9, 0)), "no such file");
        assert!(s.mark_verified(g(0, 3)));
        assert_eq!(s.verified_bytes(), G + 5);
        assert_eq!(
            s.missing().collect::<Vec<_>>(),
            [g(0, 0), g(0, 2), g(1, 0), g(2, 0)]
        );
        for r in s.missing().collect::<Vec<_>>() {
            s.mark_verified(r);
        }
        assert!(s.is_complete());
        assert_eq!(s.verified_bytes(), 4 * G + 5);
    }

    #[test]
    fn a_killed_receiver_resumes_from_the_saved_state() {
        let id = ContentId::of(b"c");
        let sizes = [20 * G + 1, 7];
        let mut s = TransferState::new(id, &sizes).unwrap();
        for group in [0, 1, 2, 5, 17, 20] {
            s.mark_verified(g(0, group));
        }
        let saved = s.encode();
        assert!(saved.len() < 64, "compact: {} bytes", saved.len());
        let back = TransferState::decode(&saved, &id, &sizes).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.missing().count(), 21 - 6 + 1);
        assert!(back.is_verified(g(0, 17)) && !back.is_verified(g(0, 16)));
    }

    #[test]
    fn saved_state_for_something_else_is_refused() {
        let id = ContentId::of(b"c");
        let sizes = [10 * G];
        let saved = TransferState::new(id, &sizes).unwrap().encode();
        assert!(matches!(
            TransferState::decode(&saved, &ContentId::of(b"d"), &sizes),
            Err(ResumeError::OtherContent)
        ));
        assert!(matches!(
            TransferState::decode(&saved, &id, &[10 * G + 1]),
            Err(ResumeError::Shape)
        ));
        assert!(matches!(
            TransferState::decode(&saved, &id, &[10 * G, 1]),
            Err(ResumeError::Shape)
        ));
        assert!(matches!(
            TransferState::decode(&vec![0; MAX_STATE_BYTES + 1], &id, &sizes),
            Err(ResumeError::TooLarge { .. })
        ));
        let mut trailing = saved.clone();
        trailing.push(0);
        assert!(matches!(
            TransferState::decode(&trailing, &id, &sizes),
            Err(ResumeError::Malformed(_))
        ));
    }

    #[test]
    fn bitmaps_of_the_wrong_length_or_with_stray_bits_are_refused() {
        let id = ContentId::of(b"c");
        // 10 groups: 2 bytes, bits 10..16 must be clear.
        let sizes = [10 * G];
        let wire = |bits: &[u8]| {
            let mut out = Vec::new();
            ciborium::into_writer(&WireOut(1, &id, vec![(10 * G, Bytes(bits))]), &mut out).unwrap();
            out
        };
        TransferState::decode(&wire(&[0xff, 0x03]), &id, &sizes).unwrap();
        for bad in [&[0xff, 0x07][..], &[0xff][..], &[0, 0, 0][..]] {
            assert!(matches!(
                TransferState::decode(&wire(bad), &id, &sizes),
                Err(ResumeError::Shape)
            ));
        }
    }

    #[test]
    fn oversized_transfers_are_refused() {
        let id = ContentId::of(b"c");
        assert!(TransferState::new(id, &[MAX_TOTAL_SIZE]).is_ok());
        assert!(matches!(
            TransferState::new(id, &[MAX_TOTAL_SIZE, 1]),
            Err(ResumeError::TotalTooLarge { .. })
        ));
        assert!(matches!(
            TransferState::new(id, &[u64::MAX, u64::MAX]),
            Err(ResumeError::TotalTooLarge { .. })
        ));
    }
}

//! The BLAKE3 tree over chunk groups: outboards, proofs and verification.
//!
//! BLAKE3 hashes 1 KiB chunks into a left-balanced binary tree. We cut that tree at the
//! level of [`GROUP_SIZE`] (64 chunks): a group's chaining value is computed from its bytes,
//! and only the parent nodes above the groups are kept. That set of parents is the
//! *outboard*: `(groups - 1)` pairs of child chaining values, 64 bytes each, in post-order
//! (so it is written append-only while the content streams through). The root is not in
//! the outboard; it is the [`ContentId`].
//!
//! A [`Proof`] for group `i` is the sibling chaining value at each level from the root
//! down to the group. [`verify_group`] recomputes the group's chaining value at its
//! offset, folds the siblings up and compares with the root, so a group from any provider
//! can be checked on its own, in any order (what striping and resume need).
//!
//! The size is part of the tree's shape. When it does not come from a manifest (which binds
//! every file's size), verify the last group first: only the last group proves the size.

use std::io::{self, Read, Write};
use std::ops::Range;

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::ContentId;
use crate::error::{OutboardError, ProofError, VerifyError};

/// BLAKE3's chunk size in bytes.
pub const CHUNK_SIZE: u64 = blake3::CHUNK_LEN as u64;
/// log2 of the chunks in a group.
pub const GROUP_CHUNKS_LOG: u32 = 6;
/// Bytes in a chunk group (64 KiB): the unit of verification, of requests to a provider
/// and of resume. Every group but the last of a file is full.
pub const GROUP_SIZE: u64 = CHUNK_SIZE << GROUP_CHUNKS_LOG;
/// Bytes of one outboard entry: a parent node's left and right child chaining values.
pub const PAIR_SIZE: u64 = 64;
/// Bytes of one proof node.
pub const NODE_SIZE: usize = 32;
/// The deepest a proof can be: a tree of 2^64 bytes over 2^16-byte groups.
pub const MAX_PROOF_NODES: usize = 64 - 16;

/// The number of chunk groups of a content of `size` bytes. Empty content is one empty
/// group, as BLAKE3 hashes it as one empty chunk.
pub fn group_count(size: u64) -> u64 {
    size.div_ceil(GROUP_SIZE).max(1)
}

/// The byte range of group `group` in a content of `size` bytes, or `None` past the end.
pub fn group_range(size: u64, group: u64) -> Option<Range<u64>> {
    if group >= group_count(size) {
        return None;
    }
    let start = group * GROUP_SIZE;
    Some(start..(start + GROUP_SIZE).min(size))
}

/// Length in bytes of the outboard of a content of `size` bytes. Content of at most one
/// group has an empty outboard (and empty proofs).
pub fn outboard_size(size: u64) -> u64 {
    (group_count(size) - 1) * PAIR_SIZE
}

/// Groups in the left subtree of a subtree of `n >= 2` groups: the largest power of two
/// below `n`, which is where BLAKE3 splits (`hazmat::left_subtree_len`) when all groups but
/// the last are full.
fn left_groups(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// One level on the way from the root down to a group.
#[derive(Debug, Clone, Copy)]
struct Step {
    /// Post-order index of the parent node in the outboard.
    parent: u64,
    /// Whether the group lies in the parent's left subtree (the sibling is on the right).
    go_left: bool,
}

/// The parents from the root down to `group`, in a tree of `groups` groups. In post-order
/// a subtree of `n` groups holds `n - 1` parents, its own last, so a subtree whose parents
/// start at `base` has its parent at `base + n - 2`.
fn path(groups: u64, group: u64) -> Vec<Step> {
    let mut steps = Vec::with_capacity(64 - groups.leading_zeros() as usize);
    let (mut start, mut n, mut base) = (0u64, groups, 0u64);
    while n > 1 {
        let left = left_groups(n);
        let parent = base + n - 2;
        if group < start + left {
            steps.push(Step {
                parent,
                go_left: true,
            });
            n = left;
        } else {
            steps.push(Step {
                parent,
                go_left: false,
            });
            base += left - 1;
            start += left;
            n -= left;
        }
    }
    steps
}

/// The chaining value of a group that is not the whole content.
fn group_cv(group: u64, data: &[u8]) -> ChainingValue {
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(group * GROUP_SIZE);
    hasher.update(data);
    hasher.finalize_non_root()
}

/// Builds an outboard group by group, sans-IO: the caller reads the content and passes
/// each group's bytes in order; the builder writes parent pairs as they complete and keeps
/// only a stack of at most [`MAX_PROOF_NODES`] chaining values, whatever the size.
#[derive(Debug)]
pub struct OutboardBuilder {
    size: u64,
    groups: u64,
    next: u64,
    stack: Vec<ChainingValue>,
    root: Option<blake3::Hash>,
}

impl OutboardBuilder {
    /// A builder for a content of exactly `size` bytes.
    pub fn new(size: u64) -> Self {
        Self {
            size,
            groups: group_count(size),
            next: 0,
            stack: Vec::with_capacity(MAX_PROOF_NODES + 1),
            root: None,
        }
    }

    /// The range of the group [`push`](Self::push) expects next, or `None` when all are in.
    pub fn next_group(&self) -> Option<Range<u64>> {
        group_range(self.size, self.next)
    }

    /// Hashes the next group (`data` must be exactly its bytes) and writes the parent pairs
    /// it completes to `outboard`.
    pub fn push(&mut self, data: &[u8], outboard: &mut impl Write) -> Result<(), OutboardError> {
        let range = self
            .next_group()
            .ok_or(OutboardError::TooLong { size: self.size })?;
        if data.len() as u64 != range.end - range.start {
            return Err(OutboardError::WrongGroupLength {
                expected: range.end - range.start,
                got: data.len() as u64,
            });
        }
        let index = self.next;
        self.next += 1;
        if self.groups == 1 {
            self.root = Some(blake3::hash(data));
            return Ok(());
        }
        self.stack.push(group_cv(index, data));
        if self.next < self.groups {
            // Each complete, aligned power-of-two run of groups is a subtree of BLAKE3's
            // tree: merge as many as the count's trailing zeros say.
            for _ in 0..self.next.trailing_zeros() {
                self.merge(outboard, false)?;
            }
        } else {
            // The right edge: merge what is left from the top; the last merge is the root.
            while self.stack.len() > 1 {
                let root = self.stack.len() == 2;
                self.merge(outboard, root)?;
            }
        }
        Ok(())
    }

    fn merge(&mut self, outboard: &mut impl Write, root: bool) -> io::Result<()> {
        let (Some(right), Some(left)) = (self.stack.pop(), self.stack.pop()) else {
            unreachable!("merges are only done with two subtrees on the stack");
        };
        let mut pair = [0u8; PAIR_SIZE as usize];
        pair[..32].copy_from_slice(&left);
        pair[32..].copy_from_slice(&right);
        outboard.write_all(&pair)?;
        if root {
            self.root = Some(merge_subtrees_root(&left, &right, Mode::Hash));
        } else {
            self.stack
                .push(merge_subtrees_non_root(&left, &right, Mode::Hash));
        }
        Ok(())
    }

    /// The content id, once every group is in.
    pub fn finish(self) -> Result<ContentId, OutboardError> {
        match self.root {
            Some(root) if self.next == self.groups => Ok(ContentId::from(root)),
            _ => Err(OutboardError::Incomplete {
                groups: self.groups,
                pushed: self.next,
            }),
        }
    }
}

/// Reads exactly `size` bytes from `content`, one group at a time through a single
/// [`GROUP_SIZE`] buffer, writes the outboard to `outboard` and returns the content id.
/// Content that ends early or goes on past `size` (a file changed while read) is an error.
pub fn compute_outboard(
    mut content: impl Read,
    size: u64,
    mut outboard: impl Write,
) -> Result<ContentId, OutboardError> {
    let mut builder = OutboardBuilder::new(size);
    let mut buf = vec![0u8; GROUP_SIZE as usize];
    while let Some(range) = builder.next_group() {
        let len = (range.end - range.start) as usize;
        content.read_exact(&mut buf[..len]).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                OutboardError::TooShort { size }
            } else {
                OutboardError::Io(e)
            }
        })?;
        builder.push(&buf[..len], &mut outboard)?;
    }
    if content.read(&mut buf[..1])? != 0 {
        return Err(OutboardError::TooLong { size });
    }
    outboard.flush()?;
    builder.finish()
}

/// Reading at an offset, for outboards kept in memory or in a file.
pub trait ReadAt {
    /// Fills `buf` from `offset`, or fails (short data is an error).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

#[cfg(unix)]
impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// The sibling chaining values from the root down to one group: what a sender attaches
/// to a group so the receiver can check it against the content id alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proof {
    nodes: Vec<ChainingValue>,
}

impl Proof {
    /// The proof nodes, root end first.
    pub fn nodes(&self) -> &[ChainingValue] {
        &self.nodes
    }

    /// The nodes concatenated, 32 bytes each, for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.nodes.concat()
    }

    /// Parses [`to_bytes`](Self::to_bytes) output, refusing more than [`MAX_PROOF_NODES`]
    /// nodes before allocating.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, VerifyError> {
        if !bytes.len().is_multiple_of(NODE_SIZE) || bytes.len() / NODE_SIZE > MAX_PROOF_NODES {
            return Err(VerifyError::MalformedProof { len: bytes.len() });
        }
        let nodes = bytes
            .chunks_exact(NODE_SIZE)
            .map(|c| {
                let mut node = [0u8; NODE_SIZE];
                node.copy_from_slice(c);
                node
            })
            .collect();
        Ok(Self { nodes })
    }
}

/// Reads the proof of `group` of a content of `size` bytes from its outboard.
pub fn proof<O: ReadAt + ?Sized>(outboard: &O, size: u64, group: u64) -> Result<Proof, ProofError> {
    let groups = group_count(size);
    if group >= groups {
        return Err(ProofError::NoSuchGroup { group, groups });
    }
    let steps = path(groups, group);
    let mut nodes = Vec::with_capacity(steps.len());
    let mut pair = [0u8; PAIR_SIZE as usize];
    for step in steps {
        outboard.read_exact_at(&mut pair, step.parent * PAIR_SIZE)?;
        let sibling = if step.go_left {
            &pair[32..]
        } else {
            &pair[..32]
        };
        let mut node = [0u8; NODE_SIZE];
        node.copy_from_slice(sibling);
        nodes.push(node);
    }
    Ok(Proof { nodes })
}

/// A group that verified, with the outboard entries its proof established: the parent
/// pair at each level of its path. Written at their offsets into a file of
/// [`outboard_size`] bytes, they make a partial outboard from which [`proof`] serves every
/// verified group, so a receiver can provide what it has while it is still fetching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedGroup {
    pairs: Vec<(u64, [u8; PAIR_SIZE as usize])>,
}

impl VerifiedGroup {
    /// The outboard entries the proof established: byte offset in the outboard, and the
    /// 64-byte parent pair to write there.
    pub fn outboard_entries(&self) -> impl Iterator<Item = (u64, &[u8; PAIR_SIZE as usize])> {
        self.pairs.iter().map(|(offset, pair)| (*offset, pair))
    }
}

/// Checks that `data` is group `group` of the content `root` of `size` bytes, given the
/// sender's `proof`. A byte changed anywhere, a wrong offset, a short or long group or a
/// proof of the wrong depth all fail.
pub fn verify_group(
    root: &ContentId,
    size: u64,
    group: u64,
    data: &[u8],
    proof: &Proof,
) -> Result<VerifiedGroup, VerifyError> {
    let groups = group_count(size);
    let range = group_range(size, group).ok_or(VerifyError::NoSuchGroup { group, groups })?;
    let expected = range.end - range.start;
    if data.len() as u64 != expected {
        return Err(VerifyError::WrongLength {
            expected,
            got: data.len() as u64,
        });
    }
    let steps = path(groups, group);
    if proof.nodes.len() != steps.len() {
        return Err(VerifyError::WrongProofLength {
            expected: steps.len(),
            got: proof.nodes.len(),
        });
    }
    let mut pairs = Vec::with_capacity(steps.len());
    let computed = if groups == 1 {
        blake3::hash(data)
    } else {
        let mut cv = group_cv(group, data);
        let mut levels = steps.iter().zip(&proof.nodes).rev().peekable();
        loop {
            let Some((step, sibling)) = levels.next() else {
                unreachable!("a tree of two or more groups has a root parent");
            };
            let (left, right) = if step.go_left {
                (&cv, sibling)
            } else {
                (sibling, &cv)
            };
            let mut pair = [0u8; PAIR_SIZE as usize];
            pair[..32].copy_from_slice(left);
            pair[32..].copy_from_slice(right);
            pairs.push((step.parent * PAIR_SIZE, pair));
            if levels.peek().is_none() {
                break merge_subtrees_root(left, right, Mode::Hash);
            }
            cv = merge_subtrees_non_root(left, right, Mode::Hash);
        }
    };
    // blake3::Hash compares in constant time.
    if computed == blake3::Hash::from(*root.as_bytes()) {
        Ok(VerifiedGroup { pairs })
    } else {
        Err(VerifyError::Mismatch { group })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic, incompressible-looking test content.
    fn content(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn build(data: &[u8]) -> (ContentId, Vec<u8>) {
        let mut outboard = Vec::new();
        let id = compute_outboard(data, data.len() as u64, &mut outboard).unwrap();
        (id, outboard)
    }

    fn group_of(data: &[u8], group: u64) -> &[u8] {
        let r = group_range(data.len() as u64, group).unwrap();
        &data[r.start as usize..r.end as usize]
    }

    const G: usize = GROUP_SIZE as usize;
    const SIZES: &[usize] = &[
        0,
        1,
        1023,
        1024,
        1025,
        G - 1,
        G,
        G + 1,
        2 * G - 1,
        2 * G,
        2 * G + 1,
        3 * G,
        3 * G + 7,
        4 * G,
        5 * G + 1024,
        7 * G + 1,
        8 * G,
        9 * G - 1,
        13 * G + 513,
    ];

    #[test]
    fn root_is_blake3_and_outboard_has_expected_size() {
        for &len in SIZES {
            let data = content(len, len as u64);
            let (id, outboard) = build(&data);
            assert_eq!(id.as_bytes(), blake3::hash(&data).as_bytes(), "len {len}");
            assert_eq!(
                outboard.len() as u64,
                outboard_size(len as u64),
                "len {len}"
            );
        }
    }

    #[test]
    fn every_group_verifies_with_its_proof() {
        for &len in SIZES {
            let data = content(len, 7 + len as u64);
            let (id, outboard) = build(&data);
            let size = len as u64;
            for g in 0..group_count(size) {
                let p = proof(&outboard, size, g).unwrap();
                let p = Proof::from_bytes(&p.to_bytes()).unwrap();
                verify_group(&id, size, g, group_of(&data, g), &p)
                    .unwrap_or_else(|e| panic!("len {len} group {g}: {e}"));
            }
        }
    }

    #[test]
    fn empty_content_is_one_empty_group() {
        let (id, outboard) = build(&[]);
        assert_eq!(group_count(0), 1);
        assert!(outboard.is_empty());
        assert_eq!(id.as_bytes(), blake3::hash(b"").as_bytes());
        verify_group(&id, 0, 0, &[], &Proof::default()).unwrap();
        assert!(matches!(
            verify_group(&id, 0, 0, b"x", &Proof::default()),
            Err(VerifyError::WrongLength { .. })
        ));
    }

    #[test]
    fn a_flipped_byte_anywhere_fails() {
        let len = 5 * G + 333;
        let data = content(len, 1);
        let (id, outboard) = build(&data);
        let size = len as u64;
        // Every 997th byte, first and last byte of every group.
        let mut positions: Vec<usize> = (0..len).step_by(997).collect();
        for g in 0..group_count(size) {
            let r = group_range(size, g).unwrap();
            positions.extend([r.start as usize, r.end as usize - 1]);
        }
        for pos in positions {
            let g = pos as u64 / GROUP_SIZE;
            let mut bad = group_of(&data, g).to_vec();
            bad[pos % G] ^= 0x01;
            let p = proof(&outboard, size, g).unwrap();
            assert!(
                matches!(
                    verify_group(&id, size, g, &bad, &p),
                    Err(VerifyError::Mismatch { .. })
                ),
                "flip at {pos} passed"
            );
        }
    }

    #[test]
    fn a_flipped_proof_bit_fails() {
        let len = 6 * G;
        let data = content(len, 2);
        let (id, outboard) = build(&data);
        let size = len as u64;
        for g in 0..group_count(size) {
            let p = proof(&outboard, size, g).unwrap();
            for i in 0..p.to_bytes().len() {
                let mut bytes = p.to_bytes();
                bytes[i] ^= 0x80;
                let bad = Proof::from_bytes(&bytes).unwrap();
                assert!(verify_group(&id, size, g, group_of(&data, g), &bad).is_err());
            }
        }
    }

    #[test]
    fn a_wrong_offset_fails() {
        // Full groups, so the lengths agree and only the position can give it away.
        let len = 8 * G;
        let data = content(len, 3);
        let (id, outboard) = build(&data);
        let size = len as u64;
        for g in 0..8u64 {
            for other in (0..8u64).filter(|&o| o != g) {
                // Group g's bytes claimed to be group `other`, with either proof.
                for p in [proof(&outboard, size, g), proof(&outboard, size, other)] {
                    let p = p.unwrap();
                    assert!(verify_group(&id, size, other, group_of(&data, g), &p).is_err());
                }
            }
        }
        // The same bytes hashed at offset 0 and at their real offset differ even when the
        // content repeats (BLAKE3's chunk counter).
        let twice = [content(G, 9), content(G, 9)].concat();
        let (id, outboard) = build(&twice);
        let p0 = proof(&outboard, 2 * GROUP_SIZE, 0).unwrap();
        assert!(verify_group(&id, 2 * GROUP_SIZE, 1, &twice[..G], &p0).is_err());
    }

    #[test]
    fn a_truncated_last_chunk_fails() {
        let len = 3 * G + 2000;
        let data = content(len, 4);
        let (id, outboard) = build(&data);
        let size = len as u64;
        let last = group_count(size) - 1;
        let p = proof(&outboard, size, last).unwrap();
        let full = group_of(&data, last);
        assert!(matches!(
            verify_group(&id, size, last, &full[..full.len() - 1], &p),
            Err(VerifyError::WrongLength { .. })
        ));
        // A sender that also lies about the size (one byte shorter) is caught too.
        assert!(verify_group(&id, size - 1, last, &full[..full.len() - 1], &p).is_err());
        // A short file where a full group is expected.
        let p0 = proof(&outboard, size, 0).unwrap();
        assert!(verify_group(&id, size, 0, &group_of(&data, 0)[..G - 1], &p0).is_err());
    }

    #[test]
    fn a_wrong_size_claim_fails_on_the_last_group() {
        let len = 4 * G + 10;
        let data = content(len, 5);
        let (id, _) = build(&data);
        // A provider claims the content is 4 full groups and serves the true prefix with
        // a self-made outboard: the last group cannot be proven.
        let (_, fake_outboard) = build(&data[..4 * G]);
        let p = proof(&fake_outboard, 4 * GROUP_SIZE, 3).unwrap();
        assert!(verify_group(&id, 4 * GROUP_SIZE, 3, group_of(&data, 3), &p).is_err());
    }

    #[test]
    fn proof_depth_and_range_are_checked() {
        let len = 4 * G;
        let data = content(len, 6);
        let (id, outboard) = build(&data);
        let size = len as u64;
        let p = proof(&outboard, size, 1).unwrap();
        let mut short = p.to_bytes();
        short.truncate(short.len() - NODE_SIZE);
        let short = Proof::from_bytes(&short).unwrap();
        assert!(matches!(
            verify_group(&id, size, 1, group_of(&data, 1), &short),
            Err(VerifyError::WrongProofLength { .. })
        ));
        assert!(matches!(
            verify_group(&id, size, 4, &[], &p),
            Err(VerifyError::NoSuchGroup { .. })
        ));
        assert!(matches!(
            proof(&outboard, size, 4),
            Err(ProofError::NoSuchGroup { .. })
        ));
        assert!(Proof::from_bytes(&[0u8; 33]).is_err());
        assert!(Proof::from_bytes(&vec![0u8; NODE_SIZE * (MAX_PROOF_NODES + 1)]).is_err());
    }

    #[test]
    fn streams_content_it_never_holds() {
        // 48 MiB from a reader that has no buffer behind it: the builder holds one group.
        use std::io::Read as _;
        let size = 48 << 20;
        let mut outboard = Vec::new();
        let id = compute_outboard(io::repeat(0xa5).take(size), size, &mut outboard).unwrap();
        let mut reference = blake3::Hasher::new();
        reference
            .update_reader(io::repeat(0xa5).take(size))
            .unwrap();
        assert_eq!(id.as_bytes(), reference.finalize().as_bytes());
        assert_eq!(outboard.len() as u64, outboard_size(size));
    }

    #[test]
    fn streaming_refuses_content_that_changed_size() {
        let data = content(2 * G + 5, 8);
        let mut sink = Vec::new();
        assert!(matches!(
            compute_outboard(&data[..], data.len() as u64 + 1, &mut sink),
            Err(OutboardError::TooShort { .. })
        ));
        assert!(matches!(
            compute_outboard(&data[..], data.len() as u64 - 1, &mut sink),
            Err(OutboardError::TooLong { .. })
        ));
        let mut b = OutboardBuilder::new(data.len() as u64);
        b.push(&data[..G], &mut sink).unwrap();
        assert!(matches!(
            b.push(&data[..10], &mut sink),
            Err(OutboardError::WrongGroupLength { .. })
        ));
        assert!(matches!(b.finish(), Err(OutboardError::Incomplete { .. })));
    }

    #[test]
    fn outboard_is_bao_trees_post_order_outboard() {
        // n0's bao-tree as an independent reference for the tree's shape and the order of
        // the parent pairs (its post-order outboard at 2^6-chunk blocks).
        use bao_tree::BlockSize;
        use bao_tree::io::outboard::PostOrderMemOutboard;
        for &len in SIZES {
            let data = content(len, 11 + len as u64);
            let (id, outboard) = build(&data);
            let reference = PostOrderMemOutboard::create(
                &data,
                BlockSize::from_chunk_log(GROUP_CHUNKS_LOG as u8),
            );
            assert_eq!(id.as_bytes(), reference.root.as_bytes(), "len {len}");
            assert_eq!(outboard, reference.data, "len {len}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn any_size_verifies_and_any_flip_fails(
            len in 0usize..(12 * G),
            pick in 0usize..usize::MAX,
            bit in 0u8..8,
        ) {
            let data = content(len, len as u64 ^ 0x55);
            let (id, outboard) = build(&data);
            let size = len as u64;
            let reference = blake3::hash(&data);
            proptest::prop_assert_eq!(id.as_bytes(), reference.as_bytes());
            for g in 0..group_count(size) {
                let p = proof(&outboard, size, g).unwrap();
                proptest::prop_assert!(verify_group(&id, size, g, group_of(&data, g), &p).is_ok());
            }
            if len > 0 {
                let pos = pick % len;
                let g = pos as u64 / GROUP_SIZE;
                let mut bad = group_of(&data, g).to_vec();
                bad[pos % G] ^= 1 << bit;
                let p = proof(&outboard, size, g).unwrap();
                proptest::prop_assert!(verify_group(&id, size, g, &bad, &p).is_err());
            }
        }
    }

    #[test]
    fn a_receiver_builds_the_outboard_from_what_it_verified() {
        let len = 11 * G + 100;
        let data = content(len, 12);
        let (id, outboard) = build(&data);
        let size = len as u64;
        let mut partial = vec![0u8; outboard_size(size) as usize];
        // Groups arrive out of order; after each, the receiver can prove what it has.
        let order = [7u64, 0, 11, 3, 4, 10, 1, 2, 9, 5, 8, 6];
        for (n, &g) in order.iter().enumerate() {
            let p = proof(&outboard, size, g).unwrap();
            let verified = verify_group(&id, size, g, group_of(&data, g), &p).unwrap();
            for (offset, pair) in verified.outboard_entries() {
                partial[offset as usize..offset as usize + 64].copy_from_slice(pair);
            }
            for &have in &order[..=n] {
                let from_partial = proof(&partial, size, have).unwrap();
                verify_group(&id, size, have, group_of(&data, have), &from_partial).unwrap();
            }
        }
        assert_eq!(partial, outboard, "all groups: the whole outboard");
    }

    #[test]
    fn path_indices_cover_the_outboard_once() {
        // Every parent index appears on some path, each is in range, and the root is last.
        for groups in 2..200u64 {
            let mut seen = vec![false; groups as usize - 1];
            for g in 0..groups {
                let steps = path(groups, g);
                assert_eq!(steps[0].parent, groups - 2);
                for s in steps {
                    seen[s.parent as usize] = true;
                }
            }
            assert!(seen.iter().all(|&s| s), "groups {groups}");
        }
    }
}

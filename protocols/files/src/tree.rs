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
        if self.groups == 1 {
            self.next += 1;
            self.root = Some(blake3::hash(data));
            return Ok(());
        }
        self.push_cv(group_cv(self.next, data), outboard)
    }

    /// Takes the next group's chaining value, computed elsewhere (with [`group_cv`], of a
    /// content of more than one group), and writes the parent pairs it completes.
    fn push_cv(
        &mut self,
        cv: ChainingValue,
        outboard: &mut impl Write,
    ) -> Result<(), OutboardError> {
        if self.next >= self.groups {
            return Err(OutboardError::TooLong { size: self.size });
        }
        self.next += 1;
        self.stack.push(cv);
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
        content
            .read_exact(&mut buf[..len])
            .map_err(|e| read_error(e, size))?;
        builder.push(&buf[..len], &mut outboard)?;
    }
    if content.read(&mut buf[..1])? != 0 {
        return Err(OutboardError::TooLong { size });
    }
    outboard.flush()?;
    builder.finish()
}

/// Groups hashed at a time by [`compute_outboard_at`] (64 MiB), split between threads:
/// what it holds beside the outboard is one chaining value per group of a part.
const PARALLEL_GROUPS: u64 = 1024;
/// A part smaller than this many groups (2 MiB) is hashed on the calling thread: a
/// thread's start would cost more than it saves.
const MIN_PART_GROUPS: u64 = 32;

/// Like [`compute_outboard`], for content read at offsets (a file), hashed on up to
/// `threads` threads at once: the groups of each 64 MiB stretch are split among them, and
/// the outboard is written in order from their chaining values. Memory stays flat in the
/// size: one group buffer per thread and one chaining value per group of a stretch.
/// Content that ends early or goes on past `size` is an error, as there.
pub fn compute_outboard_at<C: ReadAt + Sync + ?Sized>(
    content: &C,
    size: u64,
    threads: usize,
    outboard: impl Write,
) -> Result<ContentId, OutboardError> {
    outboard_at(content, size, threads, PARALLEL_GROUPS, outboard)
}

fn outboard_at<C: ReadAt + Sync + ?Sized>(
    content: &C,
    size: u64,
    threads: usize,
    stretch: u64,
    mut outboard: impl Write,
) -> Result<ContentId, OutboardError> {
    let mut builder = OutboardBuilder::new(size);
    let groups = builder.groups;
    if groups == 1 {
        let mut buf = vec![0u8; size as usize];
        read_at(content, &mut buf, 0, size)?;
        builder.push(&buf, &mut outboard)?;
    } else {
        let mut first = 0;
        while first < groups {
            let end = (first + stretch).min(groups);
            let parts = usize::try_from((end - first) / MIN_PART_GROUPS)
                .unwrap_or(usize::MAX)
                .clamp(1, threads.max(1));
            for cv in stretch_cvs(content, size, first..end, parts)? {
                builder.push_cv(cv, &mut outboard)?;
            }
            first = end;
        }
    }
    // One byte at `size` means the content went on past it.
    if content.read_exact_at(&mut [0u8], size).is_ok() {
        return Err(OutboardError::TooLong { size });
    }
    outboard.flush()?;
    builder.finish()
}

/// The chaining values of groups `range` of a content of `size` bytes (of more than one
/// group), in order, hashed in `parts` parts: the first on this thread, each other on a
/// thread of its own.
fn stretch_cvs<C: ReadAt + Sync + ?Sized>(
    content: &C,
    size: u64,
    range: Range<u64>,
    parts: usize,
) -> Result<Vec<ChainingValue>, OutboardError> {
    let per = (range.end - range.start).div_ceil(parts as u64);
    let cuts: Vec<Range<u64>> = (0..parts as u64)
        .map(|i| range.start + i * per..(range.start + (i + 1) * per).min(range.end))
        .filter(|r| !r.is_empty())
        .collect();
    std::thread::scope(|scope| {
        let others: Vec<_> = cuts[1..]
            .iter()
            .map(|r| {
                let r = r.clone();
                scope.spawn(move || part_cvs(content, size, r))
            })
            .collect();
        let mut cvs = part_cvs(content, size, cuts[0].clone())?;
        for other in others {
            let part = other
                .join()
                .map_err(|_| io::Error::other("a hashing thread panicked"))??;
            cvs.extend(part);
        }
        Ok(cvs)
    })
}

/// The chaining values of groups `range`, read one group at a time.
fn part_cvs<C: ReadAt + ?Sized>(
    content: &C,
    size: u64,
    range: Range<u64>,
) -> Result<Vec<ChainingValue>, OutboardError> {
    let mut buf = vec![0u8; GROUP_SIZE as usize];
    let mut cvs = Vec::with_capacity((range.end - range.start) as usize);
    for group in range {
        let Some(bytes) = group_range(size, group) else {
            break;
        };
        let data = &mut buf[..(bytes.end - bytes.start) as usize];
        read_at(content, data, bytes.start, size)?;
        cvs.push(group_cv(group, data));
    }
    Ok(cvs)
}

/// Fills `buf` from `offset` of a content of `size` bytes.
fn read_at<C: ReadAt + ?Sized>(
    content: &C,
    buf: &mut [u8],
    offset: u64,
    size: u64,
) -> Result<(), OutboardError> {
    content
        .read_exact_at(buf, offset)
        .map_err(|e| read_error(e, size))
}

/// A failed read of a content of `size` bytes: one that ended first means the content
/// shrank.
fn read_error(e: io::Error, size: u64) -> OutboardError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        OutboardError::TooShort { size }
    } else {
        OutboardError::Io(e)
    }
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

/// Reads the proof of `group` of a content of `size` bytes from its outboard. A sender
/// going through many groups of one content keeps a [`ProofReader`] instead.
pub fn proof<O: ReadAt + ?Sized>(outboard: &O, size: u64, group: u64) -> Result<Proof, ProofError> {
    ProofReader::new(size).proof(outboard, group)
}

/// Reads the proofs of one content's groups, keeping the parent pairs of the last one.
///
/// Two groups' paths share the parents from the root down to where they part, so groups
/// read in order cost about one outboard read each instead of one per level: on a file
/// outboard each read is a syscall, and a 2 GiB file's proofs took 15 of them a group.
/// Only pairs read from the outboard are kept, so a partial outboard that grows while it
/// is served gives the same proofs as [`proof()`] for every group whose path it holds.
#[derive(Debug)]
pub struct ProofReader {
    size: u64,
    /// The last proof's parents, root first: each one's post-order index and pair.
    path: Vec<(u64, [u8; PAIR_SIZE as usize])>,
}

impl ProofReader {
    /// A reader for a content of `size` bytes.
    pub fn new(size: u64) -> Self {
        Self {
            size,
            path: Vec::new(),
        }
    }

    /// The proof of `group`, reading only the parents not on the last proof's path.
    pub fn proof<O: ReadAt + ?Sized>(
        &mut self,
        outboard: &O,
        group: u64,
    ) -> Result<Proof, ProofError> {
        let groups = group_count(self.size);
        if group >= groups {
            return Err(ProofError::NoSuchGroup { group, groups });
        }
        let steps = path(groups, group);
        let shared = steps
            .iter()
            .zip(&self.path)
            .take_while(|(step, (parent, _))| step.parent == *parent)
            .count();
        // On a failed read the path keeps the parents read so far: still the right ones.
        self.path.truncate(shared);
        for step in &steps[shared..] {
            let mut pair = [0u8; PAIR_SIZE as usize];
            outboard.read_exact_at(&mut pair, step.parent * PAIR_SIZE)?;
            self.path.push((step.parent, pair));
        }
        let nodes = steps
            .iter()
            .zip(&self.path)
            .map(|(step, (_, pair))| {
                let sibling = if step.go_left {
                    &pair[32..]
                } else {
                    &pair[..32]
                };
                let mut node = [0u8; NODE_SIZE];
                node.copy_from_slice(sibling);
                node
            })
            .collect();
        Ok(Proof { nodes })
    }
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
mod tests;

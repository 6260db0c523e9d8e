//! The file transfer protocol of p2pnode, its sans-IO core: content ids, verified
//! streaming, manifests, path safety, resume state and the striping planner. No networking
//! and no storage in the core; the service (streams through the secure gate, provider
//! records, its table and routes: [`service`], [`api`]) comes with the `service` feature,
//! as in `p2pnode-chat`.
//!
//! - [`tree`]: a content id ([`ContentId`], text `b3:` + base32) is the BLAKE3 root of the
//!   bytes. [`compute_outboard`] streams a file once and writes its *outboard* (the hash
//!   tree's parents above 64 KiB chunk groups, 0.1 % of the size); [`proof()`] reads a
//!   group's proof from it, and [`verify_group`] checks a group from any provider against
//!   the root alone, so every group is verified before it is written; what a proof
//!   establishes also builds the receiver's own outboard ([`VerifiedGroup`]), so it can
//!   serve the groups it has while still fetching.
//! - [`manifest`]: a [`Manifest`] lists the files of a push or share (safe relative path,
//!   size, root, executable bit) and its own root is the content id of a directory share.
//!   [`scan()`] builds one from paths without following symlinks; [`path`] refuses unsafe
//!   names and joins them under a target directory without escaping it.
//! - [`resume`]: a [`TransferState`] records the verified groups of each file (a bitmap,
//!   CBOR) so a killed receiver continues where it was; [`plan`]'s [`Planner`] hands the
//!   missing groups out to several providers at once, drops a provider that sent a bad
//!   group, and re-requests a slow provider's groups elsewhere at the end.
//!
//! Why our own tree code on `blake3::hazmat` and not n0's `bao-tree` (0.17): the hashing
//! primitives (chunk and parent compression, offsets) are BLAKE3's own, already in the
//! workspace; what is left is the tree's shape (a merge stack, post-order indices, the
//! path of a proof), under 350 lines with its types, checked against `blake3::hash` for
//! every size class. bao-tree would add
//! `bytes`, `positioned-io`, `range-collections`, `self_cell`, `smallvec` (and
//! `iroh-io`, `futures-lite`, `genawaiter` by default), and its API is built around
//! range queries over one pre-order response stream from one sender, while we want a
//! self-contained proof per group so groups can come from different providers in any
//! order. Reuse still checks us: a test compares our outboard byte for byte with
//! bao-tree's post-order outboard at the same group size (bao-tree is a dev-dependency
//! only), so the format is iroh's too.
//!
//! Why 64 KiB groups: proofs are 32 bytes per tree level per group, 0.7 % of the bytes at
//! 1 GiB (14 levels) and under 1 % up to 64 GiB; at iroh's 16 KiB they would be 3.1 % at
//! 1 GiB, too much of the 1.1x budget for bytes sent. The outboard is 0.1 % of the size.
//! BLAKE3's SIMD runs at full width inside a group (16 chunks at once with AVX-512).
//! Small enough that a file of up to 64 KiB (most files of a source tree) is one group
//! with no outboard and no proof; that a 1 MiB file still stripes over 3 providers; that
//! a provider's window of 16 requests is 1 MiB; and that what an endgame duplicates or a
//! crash loses is little. Measured (`benches/files_hashing.rs`, same run): building the
//! outboard runs at 96 % and verifying every group at 90 % of plain `blake3::hash`.
//!
//! ```
//! use p2pnode_files::{Answer, PlanConfig, Planner, TransferState};
//! use p2pnode_files::{compute_outboard, group_range, proof, verify_group};
//! use std::time::Instant;
//!
//! // The sender hashes once, streaming, and keeps the outboard.
//! let file = vec![7u8; 300_000];
//! let mut outboard = Vec::new();
//! let id = compute_outboard(&file[..], file.len() as u64, &mut outboard)?;
//! assert_eq!(id.to_string().parse::<p2pnode_files::ContentId>()?, id);
//!
//! // The receiver plans the missing groups over two providers and checks each answer.
//! let size = file.len() as u64;
//! let mut state = TransferState::new(id, &[size])?;
//! let mut plan = Planner::new(PlanConfig::default(), state.missing());
//! plan.add_provider("a");
//! plan.add_provider("b");
//! while let Some(req) = plan.next_request(Instant::now()) {
//!     // ... sent to req.provider; the answer is the group's bytes and its proof:
//!     let r = group_range(size, req.group.group).unwrap();
//!     let data = &file[r.start as usize..r.end as usize];
//!     let p = proof(&outboard, size, req.group.group)?;
//!     verify_group(&id, size, req.group.group, data, &p)?; // then write, sync, and:
//!     state.mark_verified(req.group);
//!     assert!(matches!(plan.on_verified(&req.provider, req.group), Answer::Done { .. }));
//! }
//! assert!(plan.is_done() && state.is_complete());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

#[cfg(feature = "service")]
pub mod api;
pub mod error;
mod id;
pub mod manifest;
pub mod path;
pub mod plan;
pub mod resume;
pub mod scan;
#[cfg(feature = "service")]
pub mod service;
pub mod tree;

pub use error::{
    ContentIdError, ManifestError, OutboardError, PathError, ProofError, ResumeError, ScanError,
    VerifyError,
};
pub use id::{CONTENT_ID_PREFIX, ContentId};
pub use manifest::{Entry, Manifest};
pub use path::{check_path, safe_join};
pub use plan::{Answer, GroupRef, PlanConfig, Planner, Request};
pub use resume::{GroupBitmap, TransferState};
pub use scan::{Scan, ScannedFile, SkipReason, Skipped, hash_file, scan};

/// The protocol name for trust decisions: offers need it granted.
pub const PROTOCOL: &str = "files";

/// The libp2p stream protocol, also the secure handshake's label.
pub const STREAM_PROTOCOL: &str = "/p2pnode/files/1";

pub use tree::{
    GROUP_SIZE, OutboardBuilder, Proof, ProofReader, ReadAt, VerifiedGroup, compute_outboard,
    compute_outboard_at, group_count, group_range, outboard_size, proof, verify_group,
};

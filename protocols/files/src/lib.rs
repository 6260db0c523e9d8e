//! The file transfer protocol of p2pnode, its sans-IO core: content ids, verified
//! streaming, manifests, path safety, resume state and the striping planner. No networking
//! and no storage here; the service (streams through the secure gate, provider records,
//! its tables and routes) will come behind a `service` feature, as in `p2pnode-chat`.
//!
//! - [`tree`]: a content id ([`ContentId`], text `b3:` + base32) is the BLAKE3 root of the
//!   bytes. [`compute_outboard`] streams a file once and writes its *outboard* (the hash
//!   tree's parents above 64 KiB chunk groups, 0.1 % of the size); [`proof`] reads a
//!   group's proof from it, and [`verify_group`] checks a group from any provider against
//!   the root alone, so every group is verified before it is written.
//! - [`manifest`]: a [`Manifest`] lists the files of a push or share (safe relative path,
//!   size, root, executable bit) and its own root is the content id of a directory share.
//!   [`scan`] builds one from paths without following symlinks; [`path`] refuses unsafe
//!   names and joins them under a target directory without escaping it.
//! - [`resume`]: a [`TransferState`] records the verified groups of each file (a bitmap,
//!   CBOR) so a killed receiver continues where it was; [`plan`]'s [`Planner`] hands the
//!   missing groups out to several providers at once, drops a provider that sent a bad
//!   group, and re-requests a slow provider's groups elsewhere at the end.
//!
//! Why our own tree code on `blake3::hazmat` and not n0's `bao-tree` (0.17): the hashing
//! primitives (chunk and parent compression, offsets) are BLAKE3's own, already in the
//! workspace; what is left is the tree's shape, about 150 lines, checked here against
//! `blake3::hash` as an independent reference for every size class. bao-tree would add
//! `bytes`, `positioned-io`, `range-collections`, `self_cell`, `smallvec` (and
//! `iroh-io`, `futures-lite`, `genawaiter` by default), and its API is built around
//! range queries over one pre-order response stream from one sender, while we want a
//! self-contained proof per group so groups can come from different providers in any
//! order.
//!
//! Why 64 KiB groups: big enough that proofs cost under 1 % of the bytes up to a TiB
//! (32 bytes per tree level: 448 bytes per group at 1 GiB), the outboard 0.1 %, and
//! BLAKE3's SIMD runs at full width inside a group; small enough that a file of up to
//! 64 KiB (most files of a source tree) is one group with no outboard and no proof, that a
//! provider's window of requests stays a few hundred KiB, and that what an endgame
//! duplicates or a crash loses is little.
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod error;
mod id;
pub mod manifest;
pub mod path;
pub mod plan;
pub mod resume;
pub mod scan;
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

pub use tree::{
    GROUP_SIZE, OutboardBuilder, Proof, ReadAt, compute_outboard, group_count, group_range,
    outboard_size, proof, verify_group,
};

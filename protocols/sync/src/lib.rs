//! Document sync for p2pnode: moves automerge sync messages between peers so that every
//! member of a document's network ends with the same changes.
//!
//! - [`wire`]: the frames on a `/p2pnode/sync/1` stream: length-prefixed CBOR holding a
//!   document name, its network and one automerge sync message, size-checked before any
//!   allocation. Always built, no IO.
//! - `service` (feature `service`): the protocol on a node. One owner task holds every
//!   document as a [`p2pnode_crdt::SyncSession`], one secure stream per connected peer that
//!   may sync, and the `db` control routes; [`api`] holds their paths and JSON types.
//!
//! A document belongs to one network (a name stored beside it). Access is membership of
//! that network, which the node answers (its `Networks`), checked
//! for every frame in and out in one place (`may_sync`); a membership change closes the
//! streams of peers that share no network any more at once.
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

#[cfg(feature = "service")]
pub mod api;
#[cfg(feature = "service")]
pub mod service;
pub mod wire;

pub use wire::{Frame, FrameError, MAX_FRAME_LEN};

/// The protocol name, as the node registers it.
pub const PROTOCOL: &str = "sync";

/// The libp2p stream protocol, also the secure handshake's label.
pub const STREAM_PROTOCOL: &str = "/p2pnode/sync/1";

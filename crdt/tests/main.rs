//! The CRDT store's integration tests: one test binary, each file a module.
//!
//! One binary, not one per file, as in the other crates: a binary per file is a link and
//! a copy of every dependency per file, and the workspace's clean test build outgrew a CI
//! machine's disk.

mod properties;
mod storage;
mod sync;

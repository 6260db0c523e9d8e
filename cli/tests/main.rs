//! The binary's tests, through real `p2pnode` processes: one test binary, each file a module.
//!
//! One binary, not one per file: each test binary links all of libp2p, and one per
//! file made the workspace's clean test build outgrow a CI machine's disk.

mod chat;
mod chat_tui;
mod common;
mod contacts;
mod errors;
mod files;
mod habits;
mod net;
mod network;
mod sync_kill;

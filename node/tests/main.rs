//! The connection layer's integration tests: one test binary, each file a module.
//!
//! One binary, not one per file: each test binary links all of libp2p, and one per
//! file made the workspace's clean test build outgrow a CI machine's disk.

mod common;
mod event_loop;
mod holepunch;
mod hostile;
mod metrics;
mod networks;
mod privacy;
mod protocol;
mod providers;
mod relay_limits;
mod secure;
mod start;
mod topics;

//! The NAT lab: namespaces, NAT routers, link faults, `p2pnode` processes and the
//! scenarios built from them.
//!
//! Layout of a lab (every namespace name starts with the run's prefix, `p2l<pid>x<n>-`):
//!
//! ```text
//!  [relay] 198.51.100.2 ──┐
//!                         │ bridge br0 in namespace "pub" (198.51.100.0/24)
//!  [r1] wan 198.51.100.11 ┤   [r2] wan 198.51.100.12 ...
//!   │ lan 10.1.0.1/24 (bridge)    │ lan 10.2.0.1/24
//!  [a] 10.1.0.2  [c] 10.1.0.3    [b] 10.2.0.2
//! ```
//!
//! Interfaces live inside the namespaces (veth pairs are created directly in them), so
//! deleting the namespaces deletes everything the lab made and nothing in the root
//! namespace is touched. No namespace has a route beyond the lab's own addresses.
//!
//! - [`topology`]: [`LabBuilder`] and the [`Lab`] guard.
//! - [`delay`]: the userspace delay link run inside router namespaces.
//! - [`udp`]: a tiny UDP echo and probe used to check NAT behaviour.
//! - [`node`]: starting `p2pnode` daemons and reading their JSON.
//! - [`scenarios`] and [`bench`](mod@bench): the hole-punching scenarios and benchmark.

pub mod bench;
pub mod cleanup;
mod cmd;
pub mod delay;
mod error;
pub mod logscan;
pub mod node;
pub mod ping;
pub mod poll;
pub mod scenarios;
pub mod topology;
pub mod udp;

pub use error::LabError;
pub use node::{Node, NodeSpec};
pub use topology::{Lab, LabBuilder, LinkFaults, NatKind};

/// Checks that the process may build a lab (network namespaces need root).
pub fn require_root() -> Result<(), LabError> {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot(uid.as_raw()))
    }
}

//! p2pnode-sim: simulations of the p2pnode network.
//!
//! [`lab`] is the NAT lab: real `p2pnode` processes in Linux network namespaces, on a
//! public segment (TEST-NET-2, 198.51.100.0/24) with a relay, and behind nftables NAT
//! routers that behave like home routers (`cone`: ports kept; `symmetric`: a new port per
//! flow). Routers can add delay (a userspace link over a TUN device), loss and a rate
//! limit. On top of it sit the hole-punching scenarios and the hole-punching benchmark.
//! The lab needs root; everything it creates carries a per-run prefix and is deleted by a
//! guard when the lab is dropped.
//!
//! The `p2pnode-sim` binary exposes the scenarios (`lab <scenario>`), the benchmark
//! (`bench-holepunch`), leftover cleanup (`lab cleanup`) and the helper processes the lab
//! starts inside namespaces (`delay-link`, `udp-echo`, `udp-probe`). [`flood`] is a
//! reservation flood against a relay (`flood-relay`), for the relay's load test.

pub mod flood;
pub mod lab;
pub mod sim;

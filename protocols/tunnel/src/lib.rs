//! p2pnode's mesh VPN, the sans-IO core: what a member's tunnel addresses are, how every
//! member settles address collisions alike with no allocator, where a packet read from the
//! TUN device goes, and which packets from members may reach it. No sockets, no TUN device,
//! no clock: the service (feature `service`, as in the other protocol crates) feeds it the
//! network's members from the node and moves the packets.
//!
//! - [`addr`]: a network's IPv4 /16 in 100.64.0.0/10 and IPv6 ULA /48, derived from the
//!   network id, and a member's first-choice addresses in them, derived from its id;
//! - [`lease`]: the address table every member computes from the same claims, with the
//!   tie-break on member id;
//! - [`packet`]: header parsing, the inbound checks (membership, revocation, source
//!   address, destination) and outbound routing, with drop counts by reason;
//! - [`dns`]: `<name>.p2p` answered with a member's tunnel addresses, bytes in and out;
//! - [`icmp`]: "packet too big" replies for packets over the tunnel's MTU;
//! - [`engine`]: one network's tunnel as a state machine: route, check, count;
//! - [`queue`]: the bounded, deadline-keeping packet queue in front of a relayed path;
//! - `device` (feature `device`): the TUN device, behind the `device::PacketDevice` trait;
//! - `service` (feature `service`): the protocol on a node: per network that is up, the
//!   engine, the TUN device and one secure stream per member on [`STREAM_PROTOCOL`], and
//!   the `vpn` control routes, whose paths and JSON types are in `api`.

pub mod addr;
#[cfg(feature = "service")]
pub mod api;
pub mod datagram;
#[cfg(feature = "device")]
pub mod device;
pub mod dns;
pub mod engine;
pub mod icmp;
pub mod lease;
pub mod packet;
pub mod queue;
#[cfg(feature = "service")]
pub mod service;

pub use addr::{MemberId, NetworkId, Prefixes};
pub use engine::{Engine, PeerCounts, Slot};
pub use lease::{AddressTable, Claim, LEASE_BYTES, Lease, LeaseError};
pub use packet::{
    DropReason, Drops, IpHeader, Outbound, check_from, check_inbound, parse, route_by,
    route_outbound,
};
pub use queue::PacketQueue;

/// The tunnel's default MTU: IPv6's minimum, which fits inside any path's MTU with the
/// tunnel's overhead on top.
pub const DEFAULT_MTU: u16 = 1280;

/// The protocol name, as the node registers it (and the trust store grants it).
pub const PROTOCOL: &str = "tunnel";

/// The libp2p stream protocol, also the secure handshake's label.
pub const STREAM_PROTOCOL: &str = "/p2pnode/tunnel/1";

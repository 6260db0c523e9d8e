//! The p2pnode connection layer. It knows no application protocol: chat, file transfer,
//! sync and the tunnel are crates that plug into it through [`protocol`], and the binary
//! composes them.
//!
//! A [`Node`] owns a libp2p swarm (TCP, QUIC, relay client; Kademlia, identify, AutoNAT,
//! hole punching ([`holepunch`], or libp2p's DCUtR), mDNS, ping, and on `--relay` nodes the
//! relay server) driven by one [`EventLoop`](event_loop::EventLoop) task. Everything else
//! asks that task for work through a cloneable [`Client`]; the daemon exposes the same
//! operations on a Unix control socket ([`control`]) so the CLI and scripts can drive a
//! running node.
//!
//! Parts: [`config`] (defaults, TOML file, flags), [`identity`] (the Ed25519 key on disk),
//! [`peer`] (peer ids and keys), [`store`] (the embedded database and peer store),
//! [`behaviour`] and [`swarm`] (the network stack, also on the memory transport for tests
//! and simulations), [`relay_limits`] (a relay's per-network rate limits), [`api`] (the
//! reported types), [`error`], [`trust`] (the trust store), [`secure`] (the gate every
//! application stream passes: trust check, then the post-quantum handshake), [`streams`]
//! (bounded accept loops, echo), [`diagnostics`] (what `p2pnode doctor` asks the daemon),
//! [`network`] (the sans-IO membership record of a network) with [`networks`] (its
//! storage, exchange between members, joins and control routes) and [`protocol`] (the
//! contract a protocol implements;
//! [`NodeBuilder`] registers it).

pub mod api;
pub mod behaviour;
pub mod buffered;
pub mod client;
pub mod config;
pub mod contacts;
pub mod control;
pub mod diagnostics;
pub mod error;
pub mod event_loop;
pub mod gate;
pub mod gossip_idle;
pub mod holepunch;
pub mod identity;
mod listeners;
pub mod metrics;
pub mod network;
pub mod networks;
mod node;
pub mod open_schedule;
pub mod peer;
pub mod peer_changes;
pub mod prefix_connections;
pub mod privacy;
pub mod protocol;
pub mod redials;
pub mod relay_limits;
mod route;
pub mod secure;
pub mod store;
pub mod streams;
pub mod swarm;
pub mod tls;
pub mod trust;

pub use client::{Client, ask};
pub use config::Config;
pub use error::NodeError;
pub use node::{Node, NodeBuilder, StartError, TransportKind};
pub use peer::{Target, parse_peer_id, parse_target, short_id};
pub use peer_changes::PeerChanges;
pub use protocol::{Context, OwnerTask, Protocol, ProtocolError, ProtocolHandler, Protocols};

pub use libp2p::identity::Keypair;
pub use libp2p::{Multiaddr, PeerId, StreamProtocol, multiaddr};

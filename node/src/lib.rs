//! The p2pnode connection layer.
//!
//! A [`Node`] owns a libp2p swarm (TCP, QUIC, relay client; Kademlia, identify, AutoNAT,
//! hole punching ([`holepunch`], or libp2p's DCUtR), mDNS, ping, and on `--relay` nodes the relay server) driven by one
//! [`EventLoop`](event_loop::EventLoop) task. Everything else asks that task for work through
//! a cloneable [`Client`]; the daemon exposes the same operations on a Unix control socket
//! ([`control`]) so the CLI and scripts can drive a running node.
//!
//! Parts: [`config`] (defaults, TOML file, flags), [`identity`] (the Ed25519 key on disk),
//! [`store`] (the embedded database and peer store), [`behaviour`] and [`swarm`] (the
//! network stack, also on the memory transport for tests and simulations), [`api`] (the
//! reported types), [`error`], [`trust`] (the trust store) and [`secure`] (application
//! streams, always behind the post-quantum handshake and a trust check).

pub mod api;
pub mod behaviour;
pub mod chat;
pub mod client;
pub mod config;
pub mod control;
pub mod error;
pub mod event_loop;
pub mod gossip_idle;
pub mod holepunch;
pub mod identity;
mod node;
pub mod privacy;
pub mod secure;
pub mod store;
pub mod swarm;
pub mod trust;

pub use client::{Client, Target, parse_peer_id, parse_target};
pub use config::Config;
pub use error::NodeError;
pub use node::{Node, StartError, TransportKind, short_id};

pub use libp2p::identity::Keypair;
pub use libp2p::{Multiaddr, PeerId, StreamProtocol};

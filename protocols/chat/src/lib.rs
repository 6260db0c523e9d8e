//! The chat protocol of p2pnode. The core is wire format and sans-IO state machines, no
//! networking and no storage; with the `service` feature, [`service`] runs them on a node
//! (streams, rooms over gossipsub, its tables in the node's database, its control routes)
//! and [`api`] holds its control API (routes and JSON types), which the CLI calls.
//!
//! - 1:1 chat runs over a [`SecureStream`](p2pnode_secure::SecureStream) per peer, one
//!   [`Frame`] per secure message ([`wire`]). A [`Conversation`] per peer
//!   ([`conversation`]) numbers messages, queues them while the peer is offline, resends
//!   after reconnects, delivers incoming ones exactly once and in order, and emits
//!   cumulative receipts. Its [`Snapshot`] is what the node persists after every call, so
//!   a node killed mid-conversation loses and duplicates nothing.
//! - [`request::admit`] turns the secure layer's trust decision for a peer into how its
//!   chat is treated: contact, message request, blocked, or key-change alarm.
//! - Rooms run over gossipsub. An [`Invite`] code ([`invite`]) carries the room secret;
//!   from it come the topic name and the [`RoomKey`]. Room messages are signed by their
//!   sender and encrypted with the room key ([`room`]); a [`Room`] de-duplicates them,
//!   keeps the member list from presence messages and closes the room when its TTL ends.
//!
//! Everything takes time as unix milliseconds and randomness as an argument, so tests
//! and simulations drive it without clocks or sockets.
//!
//! ```
//! use p2pnode_chat::{Config, Conversation, Frame, Output};
//! # use rand::rngs::OsRng;
//! let (mut alice, mut bob) =
//!     (Conversation::new(Config::default(), &mut OsRng), Conversation::new(Config::default(), &mut OsRng));
//! alice.send("queued while bob is away", 1_000, &mut OsRng)?; // persist alice.snapshot()
//!
//! // A stream opens: both write their Hello; then frames flow until nothing is left.
//! let mut to_bob: Vec<Frame> = Vec::new();
//! let mut to_alice: Vec<Frame> = Vec::new();
//! let frames = |out: Vec<Output>| out.into_iter().filter_map(|o| match o {
//!     Output::Send(f) => Some(f),
//!     _ => None,
//! });
//! to_bob.extend(frames(alice.connected(2_000)));
//! to_alice.extend(frames(bob.connected(2_000)));
//! let mut shown = Vec::new();
//! while !to_bob.is_empty() || !to_alice.is_empty() {
//!     for f in std::mem::take(&mut to_bob) {
//!         let wire = f.encode(); // bytes for SecureStream::send
//!         for o in bob.handle_frame(Frame::decode(&wire)?, 2_001) {
//!             match o {
//!                 Output::Deliver(m) => shown.push(m.body),
//!                 Output::Send(f) => to_alice.push(f),
//!                 Output::Delivered { .. } => {}
//!             }
//!         }
//!     }
//!     for f in std::mem::take(&mut to_alice) {
//!         to_bob.extend(frames(alice.handle_frame(f, 2_002)));
//!     }
//! }
//! assert_eq!(shown, ["queued while bob is away"]);
//! assert_eq!(alice.outbox().len(), 0, "bob's receipt emptied the outbox");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

#[cfg(feature = "service")]
pub mod api;
pub mod conversation;
pub mod error;
mod id;
pub mod invite;
pub mod request;
pub mod room;
#[cfg(feature = "service")]
pub mod service;
pub mod wire;

pub use conversation::{Config, Conversation, Cursor, Output, Snapshot};
pub use error::{DecodeError, InviteError, RestoreError, RoomError, SendError};
pub use id::{MESSAGE_ID_LEN, MessageId};
pub use invite::{INVITE_PREFIX, Invite, RoomSecret};
pub use request::{Admission, admit};
pub use room::{
    Admit, Member, Members, ReplayGuard, Room, RoomBody, RoomConfig, RoomEvent, RoomKey,
    RoomMessage, RoomOutput, SeenSet, open_room_message, seal_room_message,
};
pub use wire::{Frame, Hello, MAX_BODY_LEN, MAX_FRAME_LEN, Message, Receipt};

/// The protocol name for trust decisions ([`p2pnode_secure::decide`]).
pub const PROTOCOL: &str = "chat";

/// The libp2p stream protocol, also the secure handshake's label.
pub const STREAM_PROTOCOL: &str = "/p2pnode/chat/1";

//! The chat protocol of p2pnode: wire format and sans-IO state machines, no networking
//! and no storage.
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
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod conversation;
pub mod error;
mod id;
pub mod invite;
pub mod request;
pub mod room;
pub mod wire;

pub use conversation::{Config, Conversation, Cursor, Output, Snapshot};
pub use error::{DecodeError, InviteError, RestoreError, RoomError, SendError};
pub use id::{MESSAGE_ID_LEN, MessageId};
pub use invite::{INVITE_PREFIX, Invite, RoomSecret};
pub use request::{Admission, admit};
pub use room::{
    Member, Members, Room, RoomBody, RoomConfig, RoomEvent, RoomKey, RoomMessage, RoomOutput,
    SeenSet, open_room_message, seal_room_message,
};
pub use wire::{Frame, Hello, MAX_BODY_LEN, MAX_FRAME_LEN, Message, Receipt};

/// The protocol name for trust decisions ([`p2pnode_secure::decide`]).
pub const PROTOCOL: &str = "chat";

/// The libp2p stream protocol, also the secure handshake's label.
pub const STREAM_PROTOCOL: &str = "/p2pnode/chat/1";

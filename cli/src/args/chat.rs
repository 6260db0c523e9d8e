//! The chat protocol's clap types: `p2pnode chat ...` and `p2pnode room ...`.

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct ChatArgs {
    #[command(subcommand)]
    pub(crate) command: Option<ChatCommand>,
    /// The peer to chat with: a peer id or a contact's name.
    #[arg(value_name = "PEER")]
    pub(crate) peer_id: Option<String>,
    /// Chat in the room of this invite code instead.
    #[arg(long, value_name = "CODE", conflicts_with = "peer_id")]
    pub(crate) room: Option<String>,
    /// Line mode for scripts: stdin lines are sent, events are printed as JSON lines.
    #[arg(long)]
    pub(crate) line: bool,
    /// At the end of stdin, wait until the peer has received every message.
    #[arg(long)]
    pub(crate) wait_delivered: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ChatCommand {
    /// List message requests from peers not in the trust store.
    Requests,
    /// Accept a peer's message request (allows it chat).
    Accept {
        /// The peer id, or a contact's name.
        #[arg(value_name = "PEER")]
        peer_id: String,
    },
    /// Block a peer: its messages are dropped from now on.
    Block {
        /// The peer id, or a contact's name.
        #[arg(value_name = "PEER")]
        peer_id: String,
    },
    /// Print the stored conversation with a peer.
    History {
        /// The peer id, or a contact's name.
        #[arg(value_name = "PEER")]
        peer_id: String,
        /// Most messages shown (the newest).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RoomCommand {
    /// Create a room and print its invite code.
    Create {
        /// The room's name.
        name: String,
        /// Close the room after this long: 90s, 30m, 1h, 2d.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Join a room by invite code.
    Join {
        /// The invite code.
        code: String,
    },
    /// List a joined room's members.
    Members {
        /// The invite code or room id.
        code: String,
    },
    /// Leave a room.
    Leave {
        /// The invite code or room id.
        code: String,
    },
}

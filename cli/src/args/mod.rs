//! What the user typed: clap types only, no logic.
// The doc comments here are `--help` text, where `<data-dir>` is a placeholder, not HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;

mod chat;
mod db;
mod files;
mod net;
mod vpn;

use clap::{ArgAction, Args, Parser, Subcommand};
use p2pnode_node::Multiaddr;

pub(crate) use chat::{ChatArgs, ChatCommand, RoomCommand};
pub(crate) use db::DbCommand;
pub(crate) use files::{AcceptArgs, GetArgs, SendArgs, ShareArgs};
pub(crate) use net::NetCommand;
pub(crate) use vpn::VpnCommand;

/// p2pnode: a serverless peer-to-peer node.
///
/// Start a node with `p2pnode start`; other commands talk to that running node through its
/// control socket in the data directory.
/// `p2pnode --version`: the package version, the git revision and the build date (both
/// stamped by `build.rs`; "unknown" revision in a build outside git).
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("P2PNODE_GIT_REV"),
    ", built ",
    env!("P2PNODE_BUILD_DATE"),
    ")"
);

#[derive(Debug, Parser)]
#[command(name = "p2pnode", version = VERSION, propagate_version = true)]
pub(crate) struct Cli {
    /// Data directory holding the identity, database and control socket
    /// [default: $P2PNODE_HOME, else ~/.local/share/p2pnode].
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// Log only errors on stderr (results are still printed). RUST_LOG, when set, wins.
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,

    /// Log more on stderr: -v debug for p2pnode itself, -vv debug for everything, -vvv
    /// trace. RUST_LOG, when set, wins.
    #[arg(long, short = 'v', global = true, action = ArgAction::Count)]
    pub(crate) verbose: u8,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a node in the foreground until Ctrl-C or SIGTERM.
    Start(StartArgs),
    /// Print this node's peer id (creates the identity on first use; no daemon needed).
    Id,
    /// Show the running node's addresses, NAT status, relay reservations and peer count.
    Status,
    /// List connected peers with their path (direct or relayed), transport and round trip.
    Peers,
    /// Check this node and explain what to do about each finding: the data directory's
    /// ownership and modes, whether the control socket is the daemon's, the database,
    /// reachability (AutoNAT), how the NAT maps our ports (from what peers observe), relay
    /// reservations, recent hole punches and clock skew against peers. Exits 1 when a
    /// check fails.
    Doctor,
    /// Connect to a peer by multiaddr, or by peer id alone (found through the DHT).
    Connect {
        /// A multiaddr such as /ip4/192.0.2.1/tcp/4701/p2p/12D3KooW..., a peer id, or a
        /// contact's name.
        target: String,
    },
    /// Look a peer up in the DHT and print the addresses found.
    Find {
        /// The peer id to look up, or a contact's name.
        #[arg(value_name = "PEER")]
        peer_id: String,
    },
    /// Send echo probes to a peer over an application stream and print round-trip times.
    Ping {
        /// The peer id, or a contact's name.
        #[arg(value_name = "PEER")]
        peer_id: String,
        /// How many probes.
        #[arg(long, short = 'c', default_value_t = 3)]
        count: u32,
    },
    /// Ask the running node to shut down cleanly.
    Stop,
    /// Compare a short authentication string with a peer to rule out a man in the middle.
    ///
    /// Both users run `p2pnode verify <the other's peer id>`; both see the same code when
    /// nobody intercepts. Confirming pins the peer's key as verified: if it ever changes,
    /// every protocol refuses the peer with an alarm.
    Verify {
        /// The peer id, or a contact's name.
        #[arg(value_name = "PEER")]
        peer_id: String,
        /// Record that the codes were compared elsewhere and matched, without asking.
        #[arg(long)]
        confirm: bool,
    },
    /// Manage the trust store: who may use which protocol, who is revoked.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Name peers: every command that takes a peer id takes a contact's name too.
    ///
    /// A name stands for one peer id for good: someone who comes back with a new peer id
    /// is a new peer (add it under a new name, and verify it again).
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// Chat with a peer (end-to-end encrypted, queued while it is offline), or in a room.
    ///
    /// `p2pnode chat <peer-id> --line` sends each line of stdin as a message and prints
    /// incoming messages and delivery receipts as JSON lines; `--room <code>` does the
    /// same in a room.
    Chat(ChatArgs),
    /// Create chat rooms and list their members.
    #[command(subcommand)]
    Room(RoomCommand),
    /// Networks: who may use the members-only protocols (sync, vpn). Membership is a signed
    /// record the members exchange whenever they connect; no server, and a revocation
    /// reaches every connected member at once.
    #[command(subcommand)]
    Net(NetCommand),
    /// JSON documents synced with the members of their network (automerge: offline edits
    /// merge).
    #[command(subcommand)]
    Db(DbCommand),
    /// A mesh VPN between the members of a network: each member gets addresses in the
    /// network's prefixes on a TUN device, and packets go straight to the member that
    /// holds the destination, over an end-to-end encrypted stream.
    #[command(subcommand)]
    Vpn(VpnCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    #[command(after_help = "Install it where your shell looks, for example:
  bash: p2pnode completions bash > ~/.local/share/bash-completion/completions/p2pnode
  zsh:  p2pnode completions zsh > ~/.zfunc/_p2pnode   (with ~/.zfunc in $fpath)
  fish: p2pnode completions fish > ~/.config/fish/completions/p2pnode.fish")]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout: `p2pnode man > ~/.local/share/man/man1/p2pnode.1`.
    #[command(after_help = "Install it with:
  mkdir -p ~/.local/share/man/man1 && p2pnode man > ~/.local/share/man/man1/p2pnode.1
then `man p2pnode`; or read it at once with `p2pnode man | man -l -`.")]
    Man,
    /// Share files or directories: prints a content id others fetch with `p2pnode get`.
    Share(ShareArgs),
    /// Stop sharing a content id.
    Unshare {
        /// The content id.
        content_id: String,
    },
    /// List what this node shares.
    Shares,
    /// Fetch a content id from every provider at once, verifying every chunk; running
    /// it again after an interruption resumes from the verified chunks on disk.
    Get(GetArgs),
    /// Offer files or directories to a peer (it needs to accept them).
    Send(SendArgs),
    /// List file offers waiting for an answer.
    Inbox,
    /// Accept a file offer and fetch it from the offering peer.
    Accept(AcceptArgs),
    /// Reject a file offer.
    Reject {
        /// The offer id.
        offer: u64,
    },
    /// List running and finished transfers.
    Transfers,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TrustCommand {
    /// List every peer in the trust store.
    List,
    /// Allow a peer the given protocols (all when none given); lifts a revocation.
    Allow {
        /// The peer id, or a contact's name.
        #[arg(value_name = "PEER")]
        peer_id: String,
        /// Comma-separated names of protocols this node runs (today: chat, files, sync, tunnel).
        #[arg(long, value_delimiter = ',')]
        protocols: Vec<String>,
    },
    /// Revoke a peer: its connections close now and it is refused from then on.
    Revoke {
        /// The peer id, or a contact's name.
        #[arg(value_name = "PEER")]
        peer_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ContactsCommand {
    /// Give a peer id a name (1 to 32 characters of a-z, 0-9, '.', '_', '-').
    Add {
        /// The name; upper case is folded to lower case.
        name: String,
        /// The peer id, or a contact's name.
        #[arg(value_name = "PEER")]
        peer_id: String,
    },
    /// List contacts with their peer ids and whether each key was verified.
    List,
    /// Rename a contact; its peer id stays.
    Rename {
        /// The current name.
        old: String,
        /// The new name.
        new: String,
    },
    /// Remove a contact (the trust store and chat history are left as they are).
    Remove {
        /// The name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct StartArgs {
    /// Read the configuration from this TOML file instead of <data-dir>/config.toml (a
    /// missing file is then an error). Flags still override it.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Address to listen on (repeatable) [default: all interfaces, TCP and QUIC, port 4701,
    /// or a free port when 4701 is taken].
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) listen: Vec<Multiaddr>,

    /// Bootstrap peer, a multiaddr ending in /p2p/<peer-id> (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) bootstrap: Vec<Multiaddr>,

    /// Run as a relay and bootstrap node (for a machine with a public address): relay
    /// server, DHT server and AutoNAT server.
    #[arg(long)]
    pub(crate) relay: bool,

    /// A public address this machine is known to have (repeatable); a relay vouches for it.
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) external_address: Vec<Multiaddr>,

    /// Do not discover peers on the local network with mDNS.
    #[arg(long)]
    pub(crate) no_mdns: bool,

    /// Privacy mode: never dial or accept direct connections and never advertise our own
    /// addresses; everything goes through the --bootstrap relays, so peers only ever see
    /// the relay's address.
    #[arg(long)]
    pub(crate) relay_only: bool,

    /// How to turn a relayed connection into a direct one: "p2pnode" (the default: our own
    /// introductions and exchange, the fastest, with libp2p's DCUtR for peers that speak
    /// only that), "dcutr" (libp2p's DCUtR alone) or "off".
    #[arg(long, value_name = "MODE", value_parser = ["p2pnode", "dcutr", "off"])]
    pub(crate) hole_punch: Option<String>,

    /// Pad application frames to a few fixed sizes to hide message lengths (costs
    /// bandwidth; off by default).
    #[arg(long)]
    pub(crate) pad: bool,

    /// Serve Prometheus metrics (OpenMetrics text) on this address, e.g. 127.0.0.1:9464
    /// (`curl http://127.0.0.1:9464/metrics`). They show whom the node talks to: keep the
    /// address private.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) metrics: Option<std::net::SocketAddr>,

    /// Relay nodes: longest life of one relayed circuit, in seconds.
    #[arg(long, value_name = "SECS")]
    pub(crate) max_circuit_duration: Option<u64>,

    /// Relay nodes: most bytes one relayed circuit may carry.
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_circuit_bytes: Option<u64>,

    /// Relay nodes: most reservations held at once.
    #[arg(long, value_name = "N")]
    pub(crate) max_reservations: Option<usize>,
}

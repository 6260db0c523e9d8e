//! The files protocol's clap types: `p2pnode share`, `get`, `send`, `inbox`, ...

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct ShareArgs {
    /// Files or directories to share (symlinks inside directories are not followed).
    #[arg(required = true)]
    pub(crate) paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// The content id (`b3:...`) that `p2pnode share` printed.
    pub(crate) content_id: String,
    /// Directory to write into [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub(crate) to: Option<PathBuf>,
    /// A peer (id or contact name) to fetch from besides those the DHT names (repeatable).
    #[arg(long, value_name = "PEER")]
    pub(crate) from: Vec<String>,
    /// Start the transfer and return at once (watch it with `p2pnode transfers`).
    #[arg(long)]
    pub(crate) no_wait: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// The receiving peer (a peer id or a contact's name).
    pub(crate) peer_id: String,
    /// Files or directories to offer.
    #[arg(required = true)]
    pub(crate) paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct AcceptArgs {
    /// The offer id `p2pnode inbox` lists.
    pub(crate) offer: u64,
    /// Directory to write into [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub(crate) to: Option<PathBuf>,
    /// Start the transfer and return at once.
    #[arg(long)]
    pub(crate) no_wait: bool,
}

//! The sync protocol's clap types: `p2pnode db ...`.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum DbCommand {
    /// Create an empty document that belongs to a network we are in; its members get it.
    Create {
        /// The document's name (1 to 128 of A-Z a-z 0-9 . _ -).
        doc: String,
        /// The network it belongs to.
        #[arg(long)]
        network: String,
    },
    /// Write a JSON value at a path (`todos/0/title`; `-` appends to a list).
    Put {
        /// The document.
        doc: String,
        /// Where ("" for the whole document, which must then be an object).
        path: String,
        /// The value, as JSON: '"text"', '42', '{"done":false}'.
        #[arg(value_name = "JSON")]
        value: String,
    },
    /// Print the value at a path, or the whole document.
    Get {
        /// The document.
        doc: String,
        /// Where (the whole document when left out).
        path: Option<String>,
    },
    /// Remove the key or list element at a path.
    Delete {
        /// The document.
        doc: String,
        /// Where.
        path: String,
    },
    /// List the documents with their networks.
    List,
    /// Print the document's changes as they are saved, local and remote (JSON lines).
    Watch {
        /// The document.
        doc: String,
    },
    /// Print the document's changes: author, time, message.
    History {
        /// The document.
        doc: String,
        /// Most changes shown (the newest).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// List the paths holding concurrent values.
    Conflicts {
        /// The document.
        doc: String,
    },
    /// Replace the concurrent values at a path by one.
    Resolve {
        /// The document.
        doc: String,
        /// The path of the conflict.
        path: String,
        /// `local`, `remote`, or a JSON value to keep instead.
        #[arg(long, value_name = "local|remote|JSON")]
        keep: String,
    },
    /// Print the document as JSON (with its network and heads).
    Export {
        /// The document.
        doc: String,
    },
    /// Replace the document's content by a JSON file (an object, or a `db export`).
    Import {
        /// The document.
        doc: String,
        /// The JSON file.
        file: PathBuf,
        /// Create the document in this network if it does not exist (an export names
        /// its own).
        #[arg(long)]
        network: Option<String>,
    },
}

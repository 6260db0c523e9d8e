//! Error types, one enum per operation.

use std::io;
use std::path::PathBuf;

/// Why a text is not a content id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentIdError {
    /// The text does not start with `b3:`.
    #[error("a content id starts with \"b3:\"")]
    Prefix,
    /// The text after `b3:` is not 52 characters long.
    #[error("a content id has 52 characters after \"b3:\", this one has {len}")]
    Length {
        /// Characters found after the prefix.
        len: usize,
    },
    /// A character outside base32 (`a`-`z`, `2`-`7`).
    #[error("{c:?} cannot appear in a content id (base32: a-z, 2-7)")]
    Character {
        /// The character.
        c: char,
    },
    /// The last character has bits set that no id produces (a typo).
    #[error("the last character of the content id is not possible (a typo?)")]
    Padding,
}

/// Why an outboard could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum OutboardError {
    /// Reading the content or writing the outboard failed.
    #[error("reading content or writing its outboard: {0}")]
    Io(#[from] io::Error),
    /// The content ended before the size it was announced with (it shrank while read).
    #[error("the content ended before its size of {size} bytes (changed while read?)")]
    TooShort {
        /// The size announced.
        size: u64,
    },
    /// The content went on past the size it was announced with (it grew while read).
    #[error("the content is longer than its size of {size} bytes (changed while read?)")]
    TooLong {
        /// The size announced.
        size: u64,
    },
    /// A group pushed to the builder is not as long as its place in the content says.
    #[error("chunk group of {got} bytes where {expected} were expected")]
    WrongGroupLength {
        /// The group's length by the size.
        expected: u64,
        /// The length pushed.
        got: u64,
    },
    /// The builder was finished before every group was pushed.
    #[error("outboard finished after {pushed} of {groups} chunk groups")]
    Incomplete {
        /// Groups of the content.
        groups: u64,
        /// Groups pushed.
        pushed: u64,
    },
}

/// Why a proof could not be read from an outboard.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// The group is past the end of the content.
    #[error("chunk group {group} does not exist (the content has {groups})")]
    NoSuchGroup {
        /// The group asked for.
        group: u64,
        /// Groups of the content.
        groups: u64,
    },
    /// Reading the outboard failed (or it is shorter than the size says).
    #[error("reading the outboard: {0}")]
    Io(#[from] io::Error),
}

/// Why a chunk group was not accepted as part of a content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The group is past the end of the content.
    #[error("chunk group {group} does not exist (the content has {groups})")]
    NoSuchGroup {
        /// The group received.
        group: u64,
        /// Groups of the content.
        groups: u64,
    },
    /// The group's bytes are not as many as its place in the content says.
    #[error("chunk group of {got} bytes where {expected} were expected")]
    WrongLength {
        /// The group's length by the size.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// The proof has a different number of nodes than the group's depth in the tree.
    #[error("proof of {got} nodes where the tree has {expected} levels")]
    WrongProofLength {
        /// The group's depth.
        expected: usize,
        /// Nodes received.
        got: usize,
    },
    /// The proof bytes are not whole nodes, or too many of them.
    #[error("malformed proof of {len} bytes")]
    MalformedProof {
        /// Bytes received.
        len: usize,
    },
    /// The bytes and proof do not hash to the content id: corrupt data or a lying sender.
    #[error("chunk group {group} does not match the content id")]
    Mismatch {
        /// The group received.
        group: u64,
    },
}

/// Why a path from a manifest is refused, or cannot be placed under a target directory.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The path is empty.
    #[error("empty path")]
    Empty,
    /// The path is longer than the limit.
    #[error("path of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Bytes of the path.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// One component is longer than file systems allow.
    #[error("path component of {len} bytes exceeds the limit of {max}")]
    ComponentTooLong {
        /// Bytes of the component.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The path starts at the root (`/`).
    #[error("absolute path")]
    Absolute,
    /// The path has a `..` component.
    #[error("path goes up with \"..\"")]
    ParentDir,
    /// The path has a `.` component (only one spelling of each path is allowed).
    #[error("path has a \".\" component")]
    CurDir,
    /// The path has an empty component (`a//b`, or a trailing `/`).
    #[error("path has an empty component")]
    EmptyComponent,
    /// The path has a NUL byte.
    #[error("path has a NUL byte")]
    Nul,
    /// The path has a control character (they rewrite a terminal that shows the path).
    #[error("path has control character {0:#04x}")]
    Control(u8),
    /// The path has a backslash (a separator on Windows).
    #[error("path has a backslash")]
    Backslash,
    /// The path has a `:` (a Windows drive prefix such as `C:`, or a data stream).
    #[error("path has a colon (a drive prefix or stream name on Windows)")]
    Colon,
    /// A component is a Windows device name (`CON`, `NUL`, `COM1`, ...).
    #[error("path component {0:?} is a Windows device name")]
    DeviceName(String),
    /// A component ends in a dot or a space, which Windows strips (two names, one file).
    #[error("path component {0:?} ends in a dot or space")]
    TrailingDotOrSpace(String),
    /// Something under the target directory on the way to the path is a symbolic link.
    #[error("{} is a symbolic link; refusing to write through it", .0.display())]
    Symlink(PathBuf),
    /// Something under the target directory on the way to the path is not a directory.
    #[error("{} is in the way: not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// A directory exists where the file is to be written.
    #[error("{} is a directory; a file of that name is to be written", .0.display())]
    IsADirectory(PathBuf),
    /// Checking the existing components failed.
    #[error("checking {}: {source}", path.display())]
    Io {
        /// The path checked.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

/// Why a manifest was refused (built or decoded).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The encoded manifest is larger than the limit; refused before decoding.
    #[error("manifest of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Bytes of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More entries than the limit.
    #[error("manifest has more than {max} entries")]
    TooManyEntries {
        /// The limit.
        max: usize,
    },
    /// The files add up to more than the limit (or overflow).
    #[error("manifest's files add up to more than {max} bytes")]
    TotalTooLarge {
        /// The limit.
        max: u64,
    },
    /// A version this build does not read.
    #[error("unsupported manifest version {0}")]
    Version(u64),
    /// An entry's path is unsafe.
    #[error("manifest path {path:?}: {source}")]
    Path {
        /// The path (lossy if it was not even short enough to keep).
        path: String,
        /// Why it is refused.
        source: PathError,
    },
    /// Two entries have the same path, or one is a file and a directory of another.
    #[error("manifest path {0:?} appears twice, or as both a file and a directory")]
    Conflict(String),
    /// Decoded entries are not in canonical (sorted) order: one manifest, one id.
    #[error("manifest entries are not in canonical order")]
    NotCanonical,
    /// Flags other than the executable bit.
    #[error("manifest entry has unknown flags {0:#x}")]
    Flags(u64),
    /// Not well-formed CBOR of a manifest.
    #[error("malformed manifest: {0}")]
    Malformed(String),
}

/// Why scanning paths for a manifest failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A path could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A path given to scan has no usable file name (`/`, `..`, or not UTF-8).
    #[error("{}: cannot be sent under this name", .0.display())]
    BadName(PathBuf),
    /// The tree has more directories than the limit.
    #[error("more than {max} directories")]
    TooManyDirectories {
        /// The limit.
        max: usize,
    },
    /// Hashing a file failed.
    #[error("hashing {}: {source}", path.display())]
    Hash {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: OutboardError,
    },
    /// The files found do not make a valid manifest (too many, too large, name clash).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// Why saved resume state was refused.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The encoded state is larger than the limit; refused before decoding.
    #[error("resume state of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Bytes of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A version this build does not read.
    #[error("unsupported resume state version {0}")]
    Version(u64),
    /// The state is for another content.
    #[error("resume state is for another content")]
    OtherContent,
    /// The state's files or sizes differ from the manifest's.
    #[error("resume state does not match the manifest's files")]
    Shape,
    /// Not well-formed CBOR of a resume state.
    #[error("malformed resume state: {0}")]
    Malformed(String),
    /// More files or bytes than a manifest may have.
    #[error("transfer larger than the limits (files, or {max} bytes)")]
    TotalTooLarge {
        /// The limit.
        max: u64,
    },
}

//! Error types, one enum per operation.

use std::io;

/// A handshake message could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message does not have the exact length its type requires.
    #[error("handshake message has length {actual}, expected {expected}")]
    Length {
        /// Length the message type requires.
        expected: usize,
        /// Length received.
        actual: usize,
    },
    /// The peer speaks a protocol version we do not.
    #[error("unsupported handshake version {0}")]
    Version(u8),
    /// The message is a different handshake step than the one expected.
    #[error("expected handshake message type {expected}, got {actual}")]
    MessageType {
        /// Type of the step we are at.
        expected: u8,
        /// Type received.
        actual: u8,
    },
}

/// The handshake failed; the stream must be dropped.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// A handshake message was malformed (wrong length, version or type).
    #[error("malformed handshake message: {0}")]
    Decode(#[from] DecodeError),
    /// The remote presented an identity key other than the one expected for its peer id.
    #[error("remote presented an unexpected identity key")]
    RemoteKeyMismatch,
    /// The ML-KEM encapsulation key fails the FIPS 203 input check (coefficient not mod q).
    #[error("invalid ML-KEM encapsulation key")]
    InvalidKemKey,
    /// ML-KEM encapsulation or decapsulation failed.
    #[error("ML-KEM operation failed")]
    Kem,
    /// The X25519 exchange produced an all-zero secret (low-order point from the peer).
    #[error("non-contributory X25519 share")]
    WeakX25519,
    /// The remote's transcript signature does not verify: tampering, replay or wrong context.
    #[error("bad transcript signature")]
    BadSignature,
    /// No cipher in common, or the responder chose one we did not offer (a bit set).
    #[error("no common cipher (the peer named {0:#04b})")]
    Cipher(u8),
    /// The initiator's SAS opening does not match the commitment it sent first.
    #[error("SAS commitment does not match its opening")]
    CommitmentMismatch,
    /// A length prefix announced a handshake message larger than the cap.
    #[error("handshake message of {len} bytes exceeds cap of {max}")]
    MessageTooLarge {
        /// Announced length.
        len: usize,
        /// Cap in force.
        max: usize,
    },
    /// The peer closed the stream where a handshake message was due, without sending a
    /// byte of it: how a responder refuses (too many handshakes from us, or too often, or
    /// it does not take us), and how an initiator gives up.
    #[error(
        "the peer closed the stream instead of answering the handshake \
         (it refuses handshakes when busy, when asked too often, or from peers it does not take)"
    )]
    Closed,
    /// Reading or writing the underlying stream failed (including EOF mid-message).
    #[error("I/O error during handshake: {0}")]
    Io(#[from] io::Error),
}

/// A frame could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The payload is larger than the session's maximum payload length.
    #[error("payload of {len} bytes exceeds maximum of {max}")]
    PayloadTooLarge {
        /// Payload length passed in.
        len: usize,
        /// Maximum in force.
        max: usize,
    },
    /// `seal_in_place` was given a buffer without room for the frame header.
    #[error("buffer has no room for the frame header")]
    NoHeaderRoom,
    /// The sequence or epoch counter is exhausted; a new handshake is needed.
    #[error("session counters exhausted, run a new handshake")]
    Exhausted,
    /// The AEAD refused to encrypt (only possible for absurd lengths).
    #[error("AEAD encryption failed")]
    Encrypt,
}

/// A received frame was refused. The frame is dropped; the session stays usable, except
/// in ordered mode, where the caller should close the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The frame is shorter than a header plus tag.
    #[error("frame of {len} bytes is too short")]
    TooShort {
        /// Length received.
        len: usize,
    },
    /// The frame is longer than the session's maximum frame length.
    #[error("frame of {len} bytes exceeds maximum of {max}")]
    TooLarge {
        /// Length received.
        len: usize,
        /// Maximum in force.
        max: usize,
    },
    /// The header carries flag bits this version does not know.
    #[error("unknown frame flags {0:#04x}")]
    UnknownFlags(u8),
    /// Ordered mode: the frame's sequence number is not the next one.
    #[error("frame {actual} out of order, expected {expected}")]
    OutOfOrder {
        /// Next sequence number expected.
        expected: u64,
        /// Sequence number received.
        actual: u64,
    },
    /// Window mode: this sequence number was already accepted.
    #[error("frame {0} replayed")]
    Replayed(u64),
    /// Window mode: the sequence number is older than the replay window.
    #[error("frame {0} is older than the replay window")]
    TooOld(u64),
    /// The frame's key epoch is one whose key is gone or too far ahead to derive.
    #[error("frame key epoch {actual} unusable (current {current})")]
    Epoch {
        /// Current receive epoch.
        current: u32,
        /// Epoch in the frame header.
        actual: u32,
    },
    /// Authentication failed: the frame was forged, corrupted or sealed with another key.
    #[error("frame authentication failed")]
    Decrypt,
    /// The padding trailer inside an authenticated frame is inconsistent.
    #[error("bad padding")]
    Padding,
}

/// An error on a [`SecureStream`](crate::SecureStream) after the handshake.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The peer closed the stream cleanly between two frames.
    #[error("stream closed")]
    Closed,
    /// A length prefix announced a frame larger than the session allows.
    #[error("frame of {len} bytes exceeds maximum of {max}")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// Maximum in force.
        max: usize,
    },
    /// Sealing an outgoing message failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// An incoming frame was refused; the stream should be closed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Reading or writing the underlying stream failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Reading a length-prefixed message failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// EOF before the first byte of the length prefix.
    #[error("stream closed")]
    Closed,
    /// The announced length exceeds the cap; nothing was allocated.
    #[error("message of {len} bytes exceeds cap of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Cap in force.
        max: usize,
    },
    /// Reading failed, including EOF inside a prefix or body.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

//! Error types, one enum per operation.

/// Why bytes from the network are not a valid chat frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input is larger than the limit; it was refused before any decoding.
    #[error("chat frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame carries a wire version this build does not speak.
    #[error("unsupported chat wire version {found} (this build speaks version {supported})")]
    UnsupportedVersion {
        /// Version found in the frame.
        found: u16,
        /// Version this build speaks.
        supported: u16,
    },
    /// The bytes are not a well-formed frame (bad CBOR, missing or mistyped fields).
    #[error("malformed chat frame: {0}")]
    Malformed(String),
    /// A message body is longer than the limit.
    #[error("message body of {len} bytes exceeds the limit of {max} bytes")]
    BodyTooLong {
        /// Length of the body in bytes (UTF-8).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A message has sequence number 0, which is never assigned.
    #[error("message has sequence number 0")]
    ZeroSeq,
}

/// Why [`Conversation::send`](crate::Conversation::send) refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The body is longer than the limit.
    #[error("message of {len} bytes is too long: the limit is {max} bytes")]
    BodyTooLong {
        /// Length of the body in bytes (UTF-8).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Too many messages wait for the peer's receipt; wait until it comes back online.
    #[error("{limit} messages are already queued for this peer; wait until it is reachable")]
    OutboxFull {
        /// The outbox bound.
        limit: usize,
    },
}

/// Why persisted conversation state was refused by
/// [`Conversation::restore`](crate::Conversation::restore).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The stored bytes are not a valid snapshot.
    #[error("stored chat state is unreadable: {0}")]
    Decode(String),
    /// The outbox does not hold exactly the messages after `acked_up_to`, in order.
    #[error(
        "stored chat state is inconsistent: outbox message {index} has seq {found}, expected {expected}"
    )]
    OutboxSequence {
        /// Position in the outbox.
        index: usize,
        /// Sequence number found.
        found: u64,
        /// Sequence number expected there.
        expected: u64,
    },
    /// The outbox ends before `next_seq - 1`.
    #[error("stored chat state is inconsistent: next_seq {next_seq} but outbox ends at {last}")]
    NextSeq {
        /// Stored next sequence number.
        next_seq: u64,
        /// Last sequence number covered by the acknowledged prefix and the outbox.
        last: u64,
    },
}

/// Why a room invite code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    /// The text does not start with the invite prefix.
    #[error("not a room invite code: codes start with \"{expected}\"")]
    MissingPrefix {
        /// The prefix codes start with.
        expected: &'static str,
    },
    /// The code is from a newer (or unknown) invite format.
    #[error("unsupported invite code version \"{found}\" (this build reads \"{expected}\")")]
    UnsupportedVersion {
        /// Prefix found.
        found: String,
        /// Prefix this build reads.
        expected: &'static str,
    },
    /// The code is longer than any invite can be.
    #[error("invite code of {len} characters is too long (at most {max})")]
    TooLong {
        /// Characters in the code.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The code is too short to hold an invite: it was probably cut off.
    #[error("invite code is too short: it was probably cut off when copied")]
    TooShort,
    /// A character that cannot appear in a code.
    #[error("invalid character {ch:?} at position {position} of the invite code")]
    InvalidCharacter {
        /// The character.
        ch: char,
        /// Its position (in characters, after the prefix).
        position: usize,
    },
    /// The checksum does not match: a character was mistyped, dropped or added.
    #[error("invite code checksum mismatch: the code was mistyped or cut off")]
    ChecksumMismatch,
    /// The checksum matched but the content is not a valid invite.
    #[error("invite code content is malformed: {0}")]
    Malformed(String),
    /// The room name is empty, too long or contains control characters.
    #[error("invalid room name: {0}")]
    InvalidName(&'static str),
    /// The creator hint is longer than allowed.
    #[error("creator hint of {len} bytes is too long (at most {max})")]
    CreatorTooLong {
        /// Length of the hint.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The time-to-live is zero or does not fit.
    #[error("invalid room time-to-live: it must be at least one second")]
    InvalidTtl,
    /// The room expired.
    #[error("the room expired at unix time {expired_at} (seconds)")]
    Expired {
        /// Expiry, unix seconds.
        expired_at: u64,
    },
}

/// Why a room message could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// The sealed message is larger than the limit; refused before decrypting.
    #[error("room message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A text body is longer than the limit.
    #[error("message of {len} bytes is too long: the limit is {max} bytes")]
    BodyTooLong {
        /// Length of the body in bytes (UTF-8).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The sealed message is from an unknown format version.
    #[error("unsupported room message version {found} (this build speaks {supported})")]
    UnsupportedVersion {
        /// Version byte found.
        found: u8,
        /// Version this build speaks.
        supported: u8,
    },
    /// Decryption failed: the message is for another room or was altered.
    #[error("room message does not decrypt with this room's key (other room, or tampered)")]
    Decrypt,
    /// The decrypted content is not a well-formed room message.
    #[error("malformed room message: {0}")]
    Malformed(String),
    /// The sender field is not a valid Ed25519 public key.
    #[error("room message sender is not a valid Ed25519 key")]
    BadSenderKey,
    /// The sender's signature does not verify.
    #[error("room message signature does not verify")]
    BadSignature,
    /// The message names a sender other than the signing key.
    #[error("room message sender does not match the signing key")]
    SenderMismatch,
    /// The room expired; nothing is sent or accepted any more.
    #[error("the room expired at unix time {expired_at} (seconds)")]
    Expired {
        /// Expiry, unix seconds.
        expired_at: u64,
    },
    /// The message's timestamp is too far in the past or future to accept.
    #[error("room message sent at {sent_at} ms is outside the accepted window at {now} ms")]
    Stale {
        /// The message's `sent_at`, unix milliseconds.
        sent_at: u64,
        /// The receiver's time, unix milliseconds.
        now: u64,
    },
}

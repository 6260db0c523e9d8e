//! The wire exchange of `/p2pnode/files/1`: CBOR messages, one per secure frame. A
//! fetcher sends requests (each with its own id) and reads the answers in order. The
//! bytes of a manifest or group follow its header as raw data frames of at most
//! [`DATA_CHUNK`] bytes (the header gives their length), so content is neither wrapped
//! in CBOR nor copied into a message: a whole 64 KiB group is one secure frame.

use libp2p::Stream;
use p2pnode_secure::SecureStream;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ContentId;

/// Bytes of content per data frame: a secure frame's whole payload, which is one group.
pub(super) const DATA_CHUNK: usize = p2pnode_secure::MAX_PAYLOAD_LEN;

/// A request from a fetcher or an offering peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum Request {
    /// The manifest of `content`: answered by [`Response::Manifest`] and data frames.
    Manifest { req: u64, content: ContentId },
    /// Groups of `content`, each `(file, group)`, of one file or many (a tree of small
    /// files is asked for many at a time): for each, in order, [`Response::Group`] and
    /// its data frames.
    Groups {
        req: u64,
        content: ContentId,
        groups: Vec<(u32, u64)>,
    },
    /// An offer of `content`, to fetch from the sender once accepted.
    Offer {
        req: u64,
        content: ContentId,
        name: String,
        files: u64,
        size: u64,
    },
}

/// Why a request was not served.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Not shared here (or not with this peer).
    NotFound,
    /// The peer lacks the files permission (offers).
    NotAllowed,
    /// A bound was reached (too many offers, streams, groups per request).
    Busy,
    /// Malformed (no such file or group).
    BadRequest,
    /// The provider could not read its copy.
    Io,
}

/// An answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum Response {
    /// The manifest follows: `len` bytes in raw data frames.
    Manifest { req: u64, len: u64 },
    /// A group follows: its proof, and `len` bytes in raw data frames.
    Group {
        req: u64,
        file: u32,
        group: u64,
        len: u32,
        proof: Blob,
    },
    /// The offer is in the peer's inbox.
    OfferTaken { req: u64 },
    /// In place of a [`Response::Group`]: a provider still fetching the content has not
    /// verified this group yet. The request goes on with the next group; ask another
    /// provider for this one, and keep this provider for the others.
    NotYet { req: u64, file: u32, group: u64 },
    /// The request was refused; nothing (more) follows for it.
    Refused {
        req: u64,
        refusal: Refusal,
        message: String,
    },
}

/// Bytes that travel as one CBOR byte string (a `Vec<u8>` would be an array of numbers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Blob(pub(super) Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }
        }
        // ciborium's `deserialize_bytes` takes only strings that fit its small scratch
        // buffer; `deserialize_byte_buf` takes any length.
        d.deserialize_byte_buf(V)
    }
}

/// Why a frame exchange failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum WireError {
    /// The secure stream failed or closed.
    #[error(transparent)]
    Stream(#[from] p2pnode_secure::StreamError),
    /// A frame did not decode as a message.
    #[error("malformed message: {0}")]
    Decode(String),
    /// The peer broke the exchange (an answer to another request, a size past a bound).
    #[error("protocol violation: {0}")]
    Violation(String),
    /// No frame within the time allowed.
    #[error("no answer within {0} s")]
    Timeout(u64),
}

pub(super) type Secure = SecureStream<Stream>;

/// Sends one message.
pub(super) async fn send<T: Serialize>(s: &mut Secure, msg: &T) -> Result<(), WireError> {
    feed(s, msg).await?;
    s.flush().await?;
    Ok(())
}

/// Writes one message without flushing (see [`SecureStream::feed`]).
pub(super) async fn feed<T: Serialize>(s: &mut Secure, msg: &T) -> Result<(), WireError> {
    let mut buf = Vec::new();
    ciborium::into_writer(msg, &mut buf).map_err(|e| WireError::Decode(e.to_string()))?;
    s.feed(&buf).await?;
    Ok(())
}

/// Receives one message, waiting at most `timeout`.
pub(super) async fn recv<T: DeserializeOwned>(
    s: &mut Secure,
    timeout: std::time::Duration,
) -> Result<T, WireError> {
    let frame = tokio::time::timeout(timeout, s.recv())
        .await
        .map_err(|_| WireError::Timeout(timeout.as_secs()))??;
    ciborium::from_reader(frame.as_slice()).map_err(|e| WireError::Decode(e.to_string()))
}

/// Writes `bytes` as raw data frames, without flushing.
pub(super) async fn feed_data(s: &mut Secure, bytes: &[u8]) -> Result<(), WireError> {
    for chunk in bytes.chunks(DATA_CHUNK) {
        s.feed(chunk).await?;
    }
    Ok(())
}

/// Sends `bytes` as raw data frames.
pub(super) async fn send_data(s: &mut Secure, bytes: &[u8]) -> Result<(), WireError> {
    feed_data(s, bytes).await?;
    s.flush().await?;
    Ok(())
}

/// Reads `len` bytes from raw data frames into `out` (cleared first).
pub(super) async fn recv_data(
    s: &mut Secure,
    len: usize,
    out: &mut Vec<u8>,
    timeout: std::time::Duration,
) -> Result<(), WireError> {
    out.clear();
    while out.len() < len {
        tokio::time::timeout(timeout, s.recv_into(out))
            .await
            .map_err(|_| WireError::Timeout(timeout.as_secs()))??;
        if out.len() > len {
            return Err(WireError::Violation("more data than announced".into()));
        }
    }
    Ok(())
}

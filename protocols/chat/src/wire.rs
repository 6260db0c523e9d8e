//! The 1:1 chat wire format: CBOR frames sent as whole messages over a
//! [`SecureStream`](p2pnode_secure::SecureStream).
//!
//! Every frame is `{ v: VERSION, frame: Frame }`. [`Frame::decode`] refuses inputs larger
//! than [`MAX_FRAME_LEN`] before decoding, then checks the version, body length and
//! sequence number, so the state machine only ever sees valid frames.

use serde::{Deserialize, Serialize};

use crate::error::DecodeError;
use crate::id::MessageId;

/// Wire version of chat frames.
pub const VERSION: u16 = 1;

/// Largest message body, in bytes of UTF-8.
pub const MAX_BODY_LEN: usize = 16 * 1024;

/// Largest encoded frame: a maximal body plus room for the other fields.
pub const MAX_FRAME_LEN: usize = MAX_BODY_LEN + 1024;

/// One chat message as sent, stored in history and kept in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Unique id, chosen by the sender.
    pub id: MessageId,
    /// Position in the sender's stream of messages to this peer, starting at 1.
    pub seq: u64,
    /// When the sender wrote it, unix milliseconds (sender's clock).
    pub sent_at: u64,
    /// The text, at most [`MAX_BODY_LEN`] bytes.
    pub body: String,
    /// Set on a placeholder with no text: the sender restarted without a record of what,
    /// if anything, it sent numbered `seq..=skip_to`, and never will send those numbers;
    /// the receiver moves past them instead of waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_to: Option<u64>,
}

impl Message {
    /// The last sequence number this message occupies.
    pub fn last_seq(&self) -> u64 {
        self.skip_to.unwrap_or(self.seq).max(self.seq)
    }
}

/// Sent first on every stream, by both sides, to resynchronise after a (re)connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Random id of the sender's conversation state; a new value means the sender lost
    /// its state (e.g. a wiped database) and starts over.
    pub epoch: u64,
    /// The epoch of the receiver's state as the sender knows it (`None` at first
    /// contact); `received_up_to` only counts if this matches.
    pub your_epoch: Option<u64>,
    /// The sender delivered the receiver's messages up to this sequence number.
    pub received_up_to: u64,
    /// The receiver acknowledged the sender's messages up to this sequence number.
    pub acked_up_to: u64,
    /// The sender has not yet seen the receiver's `Hello` on this connection; answer
    /// with one.
    pub want_reply: bool,
}

/// Cumulative delivery receipt: every message up to `up_to` was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The epoch of the receiver's state the acknowledged messages belong to.
    pub epoch: u64,
    /// Highest sequence number delivered in order.
    pub up_to: u64,
}

/// A chat frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Resynchronisation, first on each stream.
    Hello(Hello),
    /// A message.
    Message(Message),
    /// A delivery receipt.
    Receipt(Receipt),
}

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    v: u16,
    frame: &'a Frame,
}

#[derive(Deserialize)]
struct Envelope {
    v: u16,
    frame: Frame,
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u16,
}

impl Frame {
    /// Encodes the frame (with the version) as CBOR.
    pub fn encode(&self) -> Vec<u8> {
        to_cbor(&EnvelopeRef {
            v: VERSION,
            frame: self,
        })
    }

    /// Decodes a frame, refusing anything over [`MAX_FRAME_LEN`] before decoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_FRAME_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_FRAME_LEN,
            });
        }
        let envelope: Envelope = match ciborium::from_reader(bytes) {
            Ok(envelope) => envelope,
            Err(err) => {
                // A frame from a future version may not parse as ours: say so instead.
                if let Ok(VersionOnly { v }) = ciborium::from_reader::<VersionOnly, _>(bytes)
                    && v != VERSION
                {
                    return Err(DecodeError::UnsupportedVersion {
                        found: v,
                        supported: VERSION,
                    });
                }
                return Err(DecodeError::Malformed(err.to_string()));
            }
        };
        if envelope.v != VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: envelope.v,
                supported: VERSION,
            });
        }
        if let Frame::Message(message) = &envelope.frame {
            check_body(&message.body)?;
            if message.seq == 0 {
                return Err(DecodeError::ZeroSeq);
            }
        }
        Ok(envelope.frame)
    }
}

/// Checks a body against [`MAX_BODY_LEN`].
pub(crate) fn check_body(body: &str) -> Result<(), DecodeError> {
    if body.len() > MAX_BODY_LEN {
        return Err(DecodeError::BodyTooLong {
            len: body.len(),
            max: MAX_BODY_LEN,
        });
    }
    Ok(())
}

/// CBOR encoding of our own types into a `Vec`.
pub(crate) fn to_cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail, and our types serialize without custom errors.
    #[allow(clippy::expect_used)]
    ciborium::into_writer(value, &mut out).expect("CBOR encoding into a Vec cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &str) -> Frame {
        Frame::Message(Message {
            id: MessageId([7; 16]),
            seq: 1,
            sent_at: 1_700_000_000_000,
            body: body.to_owned(),
            skip_to: None,
        })
    }

    #[test]
    fn round_trips() {
        let frames = [
            message("héllo"),
            Frame::Hello(Hello {
                epoch: 9,
                your_epoch: Some(3),
                received_up_to: 4,
                acked_up_to: 5,
                want_reply: true,
            }),
            Frame::Receipt(Receipt {
                epoch: 1,
                up_to: 77,
            }),
        ];
        for frame in frames {
            assert_eq!(Frame::decode(&frame.encode()).unwrap(), frame);
        }
    }

    #[test]
    fn maximal_body_fits_and_oversize_is_refused() {
        let max = message(&"x".repeat(MAX_BODY_LEN));
        assert!(max.encode().len() <= MAX_FRAME_LEN);
        assert_eq!(Frame::decode(&max.encode()).unwrap(), max);

        let over = message(&"x".repeat(MAX_BODY_LEN + 1));
        let err = Frame::decode(&over.encode()).unwrap_err();
        assert_eq!(
            err,
            DecodeError::BodyTooLong {
                len: MAX_BODY_LEN + 1,
                max: MAX_BODY_LEN
            }
        );
        assert!(err.to_string().contains("16384"), "{err}");
    }

    #[test]
    fn too_large_is_refused_before_decoding() {
        let err = Frame::decode(&vec![0u8; MAX_FRAME_LEN + 1]).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }));
    }

    #[test]
    fn other_version_is_named() {
        #[derive(Serialize)]
        struct Future {
            v: u16,
            frame: &'static str,
        }
        let bytes = to_cbor(&Future {
            v: 2,
            frame: "something new",
        });
        assert_eq!(
            Frame::decode(&bytes).unwrap_err(),
            DecodeError::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        );
    }

    #[test]
    fn seq_zero_and_garbage_are_errors() {
        let Frame::Message(mut m) = message("a") else {
            unreachable!()
        };
        m.seq = 0;
        assert_eq!(
            Frame::decode(&Frame::Message(m).encode()).unwrap_err(),
            DecodeError::ZeroSeq
        );
        assert!(matches!(
            Frame::decode(b"\xff\x00garbage").unwrap_err(),
            DecodeError::Malformed(_)
        ));
        assert!(matches!(
            Frame::decode(&[]).unwrap_err(),
            DecodeError::Malformed(_)
        ));
    }
}

//! Sync frames: `len u32 BE` then CBOR `[doc, network, message]` (two text strings and a
//! byte string). The length is checked against [`MAX_FRAME_LEN`] before the body is
//! allocated; a secure stream carries a frame in chunks of at most [`CHUNK_LEN`] bytes.

use ciborium::Value;

/// Largest frame body, in bytes. automerge sends everything a peer lacks as one message,
/// so this is also the most a fresh peer receives of one document in one exchange.
pub const MAX_FRAME_LEN: usize = 32 << 20;

/// Bytes of a frame per secure message: under the secure layer's 64 KiB payload limit.
pub const CHUNK_LEN: usize = 60 * 1024;

/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 4;

/// Longest document or network name on the wire (the store allows 128).
pub const MAX_NAME_LEN: usize = 128;

/// One automerge sync message for one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The document's name.
    pub doc: String,
    /// The network it belongs to.
    pub network: String,
    /// automerge's encoded sync message.
    pub message: Vec<u8>,
}

/// Why bytes are not a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes, more than {MAX_FRAME_LEN}")]
    TooLarge(usize),
    /// The body is not `[text, text, bytes]` CBOR, or a name is too long.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl Frame {
    /// The frame with its length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let value = Value::Array(vec![
            Value::Text(self.doc.clone()),
            Value::Text(self.network.clone()),
            Value::Bytes(self.message.clone()),
        ]);
        let mut out = vec![0; PREFIX_LEN];
        // Writing CBOR into a Vec cannot fail.
        let _ = ciborium::into_writer(&value, &mut out);
        let len = u32::try_from(out.len() - PREFIX_LEN).unwrap_or(u32::MAX);
        out[..PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
        out
    }

    /// The body length a prefix announces, refused past [`MAX_FRAME_LEN`].
    pub fn body_len(prefix: [u8; PREFIX_LEN]) -> Result<usize, FrameError> {
        let len = u32::from_be_bytes(prefix) as usize;
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge(len));
        }
        Ok(len)
    }

    /// Decodes a body (the bytes after the prefix).
    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        if body.len() > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge(body.len()));
        }
        let bad = |why: &str| FrameError::Malformed(why.to_string());
        let value: Value =
            ciborium::from_reader(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
        let Value::Array(items) = value else {
            return Err(bad("not an array"));
        };
        let mut items = items.into_iter();
        match (items.next(), items.next(), items.next(), items.next()) {
            (
                Some(Value::Text(doc)),
                Some(Value::Text(network)),
                Some(Value::Bytes(message)),
                None,
            ) if doc.len() <= MAX_NAME_LEN && network.len() <= MAX_NAME_LEN => Ok(Self {
                doc,
                network,
                message,
            }),
            _ => Err(bad("expected [doc, network, message] with short names")),
        }
    }
}

/// Reassembles frames from the chunks of one stream.
#[derive(Debug, Default)]
pub struct Assembler {
    body: Vec<u8>,
    want: Option<usize>,
}

impl Assembler {
    /// Takes one chunk; returns a frame when it completes one. A frame starts a new chunk
    /// (the writer never puts two frames in one chunk).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Option<Frame>, FrameError> {
        let rest = match self.want {
            Some(_) => chunk,
            None => {
                let prefix: [u8; PREFIX_LEN] = chunk
                    .get(..PREFIX_LEN)
                    .and_then(|p| p.try_into().ok())
                    .ok_or_else(|| FrameError::Malformed("short first chunk".into()))?;
                let len = Frame::body_len(prefix)?;
                self.want = Some(len);
                // Only now, with the length checked, is the body allocated.
                self.body = Vec::with_capacity(len);
                &chunk[PREFIX_LEN..]
            }
        };
        let want = self.want.unwrap_or(0);
        if self.body.len() + rest.len() > want {
            return Err(FrameError::Malformed("chunk runs past its frame".into()));
        }
        self.body.extend_from_slice(rest);
        if self.body.len() < want {
            return Ok(None);
        }
        self.want = None;
        let body = std::mem::take(&mut self.body);
        Frame::decode(&body).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_chunks() {
        let frame = Frame {
            doc: "todo".into(),
            network: "home".into(),
            message: (0..200_000u32).map(|i| i as u8).collect(),
        };
        let bytes = frame.encode();
        let mut asm = Assembler::default();
        let mut out = None;
        for chunk in bytes.chunks(CHUNK_LEN) {
            assert!(out.is_none());
            out = asm.push(chunk).unwrap();
        }
        assert_eq!(out, Some(frame));
        // A byte string, not an array of integers: the body is barely larger than the message.
        assert!(bytes.len() < 200_000 + 32);
    }

    #[test]
    fn oversized_and_garbage_frames_are_refused_before_allocation() {
        let mut asm = Assembler::default();
        let huge = u32::try_from(MAX_FRAME_LEN + 1).unwrap().to_be_bytes();
        assert_eq!(
            asm.push(&huge),
            Err(FrameError::TooLarge(MAX_FRAME_LEN + 1))
        );
        assert!(Frame::decode(&[0x42, 0x00]).is_err());
        let mut asm = Assembler::default();
        let mut bad = 2u32.to_be_bytes().to_vec();
        bad.extend_from_slice(&[0, 0, 0]);
        assert!(asm.push(&bad).is_err());
    }
}

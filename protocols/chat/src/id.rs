//! Message ids and the serde helpers that store byte arrays compactly.
//!
//! In CBOR, ids and keys are byte strings; in human-readable formats (the node's JSON
//! line mode) they are lowercase hex, so `--line` output stays readable.

use std::fmt;

use rand_core::CryptoRngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Length of a [`MessageId`] in bytes.
pub const MESSAGE_ID_LEN: usize = 16;

/// A unique message id: 6 bytes of the sender's unix-millisecond clock (big-endian, so ids
/// sort roughly by creation time, like a ULID) followed by 10 random bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub [u8; MESSAGE_ID_LEN]);

impl MessageId {
    /// A fresh id for a message created at `now_ms` (unix milliseconds).
    pub fn new(now_ms: u64, rng: &mut impl CryptoRngCore) -> Self {
        let mut bytes = [0u8; MESSAGE_ID_LEN];
        bytes[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
        rng.fill_bytes(&mut bytes[6..]);
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; MESSAGE_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        byte_array::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        byte_array::deserialize(d).map(Self)
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// `#[serde(with = "byte_array")]` for `[u8; N]`: CBOR byte string or hex string.
pub(crate) mod byte_array {
    use super::*;
    use serde::de::{Error, SeqAccess, Visitor};

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex(bytes))
        } else {
            s.serialize_bytes(bytes)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        struct ArrayVisitor<const N: usize>;

        impl<'de, const N: usize> Visitor<'de> for ArrayVisitor<N> {
            type Value = [u8; N];

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{N} bytes")
            }

            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<[u8; N], E> {
                v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
            }

            fn visit_str<E: Error>(self, v: &str) -> Result<[u8; N], E> {
                let bytes = unhex(v).ok_or_else(|| E::custom("invalid hex"))?;
                self.visit_bytes(&bytes)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
                let mut out = [0u8; N];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| A::Error::invalid_length(i, &self))?;
                }
                if seq.next_element::<u8>()?.is_some() {
                    return Err(A::Error::invalid_length(N + 1, &self));
                }
                Ok(out)
            }
        }

        if d.is_human_readable() {
            d.deserialize_str(ArrayVisitor::<N>)
        } else {
            d.deserialize_bytes(ArrayVisitor::<N>)
        }
    }
}

/// `#[serde(with = "byte_vec")]` for `Vec<u8>`: CBOR byte string or hex string.
pub(crate) mod byte_vec {
    use super::*;
    use serde::de::{Error, SeqAccess, Visitor};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex(bytes))
        } else {
            s.serialize_bytes(bytes)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct VecVisitor;

        impl<'de> Visitor<'de> for VecVisitor {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }

            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }

            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }

            fn visit_str<E: Error>(self, v: &str) -> Result<Vec<u8>, E> {
                unhex(v).ok_or_else(|| E::custom("invalid hex"))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }

        if d.is_human_readable() {
            d.deserialize_str(VecVisitor)
        } else {
            d.deserialize_byte_buf(VecVisitor)
        }
    }
}

/// `#[serde(with = "opt_byte_vec")]` for `Option<Vec<u8>>`.
pub(crate) mod opt_byte_vec {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Wrap(#[serde(with = "byte_vec")] Vec<u8>);

    pub(crate) fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => s.serialize_some(&Wrap(bytes.clone())),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_sorts_by_time_and_prints_hex() {
        let mut rng = rand::rngs::OsRng;
        let a = MessageId::new(1_000, &mut rng);
        let b = MessageId::new(2_000, &mut rng);
        assert!(a < b);
        assert_eq!(a.to_string().len(), 32);
        assert_eq!(unhex(&a.to_string()).unwrap(), a.0.to_vec());
    }

    #[test]
    fn id_is_hex_in_json_and_bytes_in_cbor() {
        let id = MessageId([0xab; 16]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(16)));
        assert_eq!(serde_json::from_str::<MessageId>(&json).unwrap(), id);
        let mut cbor = Vec::new();
        ciborium::into_writer(&id, &mut cbor).unwrap();
        assert_eq!(cbor.len(), 17, "a 16-byte CBOR byte string");
        assert_eq!(
            ciborium::from_reader::<MessageId, _>(&cbor[..]).unwrap(),
            id
        );
    }
}

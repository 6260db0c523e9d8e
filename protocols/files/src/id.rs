//! Content ids: a BLAKE3 root, written `b3:` + 52 characters of base32.

use std::fmt;
use std::str::FromStr;

use crate::error::ContentIdError;

/// The text prefix of a content id.
pub const CONTENT_ID_PREFIX: &str = "b3:";
/// RFC 4648 base32, lower case: case-insensitive to read back, no characters that need
/// quoting in a shell or a URL, and 12 characters shorter than hex.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Characters of base32 for 32 bytes, without padding.
const TEXT_LEN: usize = 52;

/// The BLAKE3 root of a content (a file's bytes, or a directory share's encoded
/// [`Manifest`](crate::Manifest)). Text form: `b3:` + base32, as in
/// `b3:afz...` (55 characters), parsed back by [`FromStr`] in either case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId([u8; 32]);

impl ContentId {
    /// A content id from its 32 root bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 root bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The id of `content` held in memory (small contents such as manifests).
    pub fn of(content: &[u8]) -> Self {
        Self::from(blake3::hash(content))
    }
}

impl From<blake3::Hash> for ContentId {
    fn from(hash: blake3::Hash) -> Self {
        Self(*hash.as_bytes())
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::with_capacity(CONTENT_ID_PREFIX.len() + TEXT_LEN);
        text.push_str(CONTENT_ID_PREFIX);
        let (mut acc, mut bits) = (0u32, 0u32);
        for &b in &self.0 {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                text.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
            }
        }
        if bits > 0 {
            text.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
        }
        f.write_str(&text)
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({self})")
    }
}

impl FromStr for ContentId {
    type Err = ContentIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let body = s
            .get(..CONTENT_ID_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(CONTENT_ID_PREFIX))
            .map(|_| &s[CONTENT_ID_PREFIX.len()..])
            .ok_or(ContentIdError::Prefix)?;
        if body.len() != TEXT_LEN {
            return Err(ContentIdError::Length { len: body.len() });
        }
        let mut out = [0u8; 32];
        let (mut acc, mut bits, mut n) = (0u32, 0u32, 0usize);
        for c in body.bytes() {
            let v = match c.to_ascii_lowercase() {
                c @ b'a'..=b'z' => c - b'a',
                c @ b'2'..=b'7' => c - b'2' + 26,
                _ => return Err(ContentIdError::Character { c: c as char }),
            };
            acc = (acc << 5) | u32::from(v);
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                out[n] = (acc >> bits) as u8;
                n += 1;
            }
        }
        // 52 * 5 = 260 bits: the 4 spare bits must be zero, so each id has one spelling.
        if acc & ((1 << bits) - 1) != 0 {
            return Err(ContentIdError::Padding);
        }
        Ok(Self(out))
    }
}

impl serde::Serialize for ContentId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ContentId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ContentId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("32 bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ContentId, E> {
                <[u8; 32]>::try_from(v)
                    .map(ContentId)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_is_short() {
        for seed in 0..50u8 {
            let id = ContentId::of(&[seed; 3]);
            let text = id.to_string();
            assert_eq!(text.len(), 55);
            assert!(text.starts_with("b3:"));
            assert_eq!(text.parse::<ContentId>().unwrap(), id);
            assert_eq!(text.to_uppercase().parse::<ContentId>().unwrap(), id);
        }
        let zero = ContentId::from_bytes([0; 32]);
        assert_eq!(zero.to_string(), format!("b3:{}", "a".repeat(52)));
        let ones = ContentId::from_bytes([0xff; 32]);
        assert_eq!(ones.to_string().parse::<ContentId>().unwrap(), ones);
    }

    #[test]
    fn bad_text_is_refused() {
        let good = ContentId::of(b"x").to_string();
        assert_eq!(good[3..].parse::<ContentId>(), Err(ContentIdError::Prefix));
        assert!(matches!(
            good[..54].parse::<ContentId>(),
            Err(ContentIdError::Length { .. })
        ));
        let bad_char = format!("{}1{}", &good[..10], &good[11..]);
        assert!(matches!(
            bad_char.parse::<ContentId>(),
            Err(ContentIdError::Character { c: '1' })
        ));
        // Last character with non-zero spare bits: 'b' is 00001.
        let mut spare = good[..54].to_string();
        let last = good.as_bytes()[54];
        let v = if last.is_ascii_lowercase() {
            last - b'a'
        } else {
            last - b'2' + 26
        };
        spare.push(ALPHABET[(v | 1) as usize] as char);
        assert_eq!(spare.parse::<ContentId>(), Err(ContentIdError::Padding));
    }
}

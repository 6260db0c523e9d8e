//! Room invite codes: `p2pr1-` followed by Crockford base32 of a CBOR invite and a
//! 4-byte checksum.
//!
//! The code is the room's capability: whoever holds it can read and post. Crockford
//! base32 is case-insensitive and reads `o` as `0` and `i`/`l` as `1`, so codes survive
//! being read aloud or retyped; the checksum catches the typos that remain. Whitespace
//! and `-` inside the code are ignored, so it can be wrapped or grouped.

use std::fmt;
use std::time::Duration;

use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::InviteError;
use crate::id::{byte_array, hex, opt_byte_vec};
use crate::wire::to_cbor;

/// Prefix of every invite code of this version.
pub const INVITE_PREFIX: &str = "p2pr1-";
/// Longest room name, in bytes of UTF-8.
pub const MAX_ROOM_NAME_LEN: usize = 64;
/// Longest creator hint, in bytes (a libp2p peer id is 38 bytes).
pub const MAX_CREATOR_LEN: usize = 64;
/// Longest invite code accepted, in characters.
pub const MAX_CODE_LEN: usize = 512;

const CHECKSUM_LEN: usize = 4;
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// The 32 random bytes every room key is derived from.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop, Serialize, Deserialize)]
pub struct RoomSecret(#[serde(with = "byte_array")] pub [u8; 32]);

impl fmt::Debug for RoomSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoomSecret(..)")
    }
}

/// A room invitation: everything needed to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    room_name: String,
    room_secret: RoomSecret,
    expires_at: Option<u64>,
    creator: Option<Vec<u8>>,
}

/// CBOR layout: a 4-element array, to keep codes short.
#[derive(Serialize, Deserialize)]
struct InviteWire(
    String,
    RoomSecret,
    Option<u64>,
    #[serde(with = "opt_byte_vec")] Option<Vec<u8>>,
);

impl Invite {
    /// Creates a room with a fresh secret. `ttl` closes the room that long after
    /// `now_ms` (unix milliseconds); `creator` is an optional bootstrap hint (the
    /// creator's peer id bytes).
    pub fn new(
        room_name: impl Into<String>,
        ttl: Option<Duration>,
        now_ms: u64,
        creator: Option<Vec<u8>>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, InviteError> {
        let expires_at = match ttl {
            None => None,
            Some(ttl) if ttl.as_secs() == 0 => return Err(InviteError::InvalidTtl),
            Some(ttl) => Some(
                (now_ms / 1000)
                    .checked_add(ttl.as_secs())
                    .ok_or(InviteError::InvalidTtl)?,
            ),
        };
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Self::from_parts(room_name, RoomSecret(secret), expires_at, creator)
    }

    /// Builds an invite from its parts, validating the name and creator hint.
    pub fn from_parts(
        room_name: impl Into<String>,
        room_secret: RoomSecret,
        expires_at: Option<u64>,
        creator: Option<Vec<u8>>,
    ) -> Result<Self, InviteError> {
        let room_name = room_name.into();
        validate_name(&room_name)?;
        if let Some(c) = &creator
            && c.len() > MAX_CREATOR_LEN
        {
            return Err(InviteError::CreatorTooLong {
                len: c.len(),
                max: MAX_CREATOR_LEN,
            });
        }
        Ok(Self {
            room_name,
            room_secret,
            expires_at,
            creator,
        })
    }

    /// The room's display name.
    pub fn room_name(&self) -> &str {
        &self.room_name
    }

    /// The room secret.
    pub fn room_secret(&self) -> &RoomSecret {
        &self.room_secret
    }

    /// When the room closes, unix seconds; `None` if never.
    pub fn expires_at(&self) -> Option<u64> {
        self.expires_at
    }

    /// The creator's bootstrap hint (peer id bytes), if given.
    pub fn creator(&self) -> Option<&[u8]> {
        self.creator.as_deref()
    }

    /// Whether the room is closed at `now_ms` (unix milliseconds).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|at| now_ms / 1000 >= at)
    }

    /// `Err(Expired)` if the room is closed at `now_ms`.
    pub fn check_expiry(&self, now_ms: u64) -> Result<(), InviteError> {
        match self.expires_at {
            Some(expired_at) if self.is_expired(now_ms) => Err(InviteError::Expired { expired_at }),
            _ => Ok(()),
        }
    }

    /// The room id: a hash of the secret, expiry and name. Signatures bind it, and the
    /// topic is derived from it, so changing any of them makes another room.
    pub fn room_id(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"p2pnode room id v1\0");
        h.update(self.room_secret.0);
        match self.expires_at {
            Some(at) => {
                h.update([1]);
                h.update(at.to_be_bytes());
            }
            None => h.update([0]),
        }
        h.update(self.room_name.as_bytes());
        h.finalize().into()
    }

    /// The gossipsub topic: derived from the room id, so it reveals neither the name nor
    /// the secret.
    pub fn topic(&self) -> String {
        format!("p2pnode/room/1/{}", hex(&self.room_id()[..16]))
    }

    /// The text code to share.
    pub fn encode(&self) -> String {
        let mut data = to_cbor(&InviteWire(
            self.room_name.clone(),
            self.room_secret.clone(),
            self.expires_at,
            self.creator.clone(),
        ));
        let sum = checksum(&data);
        data.extend_from_slice(&sum);
        let mut code = String::from(INVITE_PREFIX);
        base32_encode(&data, &mut code);
        code
    }

    /// Parses a code and refuses it if the room expired at `now_ms` (unix ms).
    pub fn decode(code: &str, now_ms: u64) -> Result<Self, InviteError> {
        let invite = Self::parse(code)?;
        invite.check_expiry(now_ms)?;
        Ok(invite)
    }

    /// Parses a code without looking at the expiry.
    pub fn parse(code: &str) -> Result<Self, InviteError> {
        let code = code.trim();
        if code.len() > MAX_CODE_LEN {
            return Err(InviteError::TooLong {
                len: code.chars().count(),
                max: MAX_CODE_LEN,
            });
        }
        let lower = code.to_ascii_lowercase();
        let Some(body) = lower.strip_prefix(INVITE_PREFIX) else {
            if lower.starts_with("p2pr")
                && let Some((found, _)) = lower.split_once('-')
            {
                return Err(InviteError::UnsupportedVersion {
                    found: format!("{found}-"),
                    expected: INVITE_PREFIX,
                });
            }
            return Err(InviteError::MissingPrefix {
                expected: INVITE_PREFIX,
            });
        };
        let (data, padding_ok) = base32_decode(body)?;
        if data.len() <= CHECKSUM_LEN {
            return Err(InviteError::TooShort);
        }
        if !padding_ok {
            return Err(InviteError::ChecksumMismatch);
        }
        let (payload, sum) = data.split_at(data.len() - CHECKSUM_LEN);
        if checksum(payload) != sum {
            return Err(InviteError::ChecksumMismatch);
        }
        let InviteWire(name, secret, expires_at, creator) =
            ciborium::from_reader(payload).map_err(|e| InviteError::Malformed(e.to_string()))?;
        Self::from_parts(name, secret, expires_at, creator)
    }
}

fn validate_name(name: &str) -> Result<(), InviteError> {
    if name.trim().is_empty() {
        return Err(InviteError::InvalidName("it is empty"));
    }
    if name.len() > MAX_ROOM_NAME_LEN {
        return Err(InviteError::InvalidName("it is longer than 64 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(InviteError::InvalidName("it contains control characters"));
    }
    Ok(())
}

fn checksum(payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut h = Sha256::new();
    h.update(b"p2pnode invite checksum v1\0");
    h.update(payload);
    let digest = h.finalize();
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    out
}

fn base32_encode(data: &[u8], out: &mut String) {
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
}

fn base32_value(c: char) -> Option<u32> {
    let c = match c {
        'o' => '0',
        'i' | 'l' => '1',
        c => c,
    };
    let c = u8::try_from(c).ok()?;
    ALPHABET.iter().position(|&a| a == c).map(|v| v as u32)
}

fn base32_decode(body: &str) -> Result<(Vec<u8>, bool), InviteError> {
    let mut out = Vec::with_capacity(body.len() * 5 / 8);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for (position, ch) in body.chars().enumerate() {
        if ch == '-' || ch.is_whitespace() {
            continue;
        }
        let v = base32_value(ch).ok_or(InviteError::InvalidCharacter { ch, position })?;
        acc = ((acc << 5) | v) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // Leftover bits must be the zero padding of the last character; anything else is a
    // character too many or a typo in the last one.
    let padding_ok = bits < 5 && acc & ((1 << bits) - 1) == 0;
    Ok((out, padding_ok))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    const NOW: u64 = 1_700_000_000_000;

    fn invite() -> Invite {
        Invite::new(
            "rust-fans",
            Some(Duration::from_secs(3600)),
            NOW,
            Some(vec![0, 36, 8, 1]),
            &mut OsRng,
        )
        .unwrap()
    }

    #[test]
    fn round_trips_and_is_forgiving() {
        let inv = invite();
        let code = inv.encode();
        assert!(code.starts_with("p2pr1-"));
        assert!(code.len() < 200, "{} chars: {code}", code.len());
        assert_eq!(Invite::decode(&code, NOW).unwrap(), inv);
        // Upper case, wrapped, grouped, confusable letters.
        let shouted = format!("  {}\n", code.to_uppercase());
        assert_eq!(Invite::parse(&shouted).unwrap(), inv);
        let body = &code[INVITE_PREFIX.len()..];
        let grouped: Vec<String> = body
            .as_bytes()
            .chunks(8)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let grouped = format!("{INVITE_PREFIX}{}", grouped.join("-"));
        assert_eq!(Invite::parse(&grouped).unwrap(), inv);
        let confused = format!(
            "{INVITE_PREFIX}{}",
            body.replace('0', "o").replace('1', "l")
        );
        assert_eq!(Invite::parse(&confused).unwrap(), inv);
    }

    #[test]
    fn every_single_typo_is_detected() {
        let code = invite().encode();
        let body_start = INVITE_PREFIX.len();
        for i in body_start..code.len() {
            for &c in ALPHABET {
                let mut typo = code.clone().into_bytes();
                if typo[i] == c {
                    continue;
                }
                typo[i] = c;
                let typo = String::from_utf8(typo).unwrap();
                let err = Invite::parse(&typo).unwrap_err();
                assert!(
                    matches!(
                        err,
                        InviteError::ChecksumMismatch | InviteError::Malformed(_)
                    ),
                    "{typo}: {err}"
                );
            }
        }
    }

    #[test]
    fn clear_errors() {
        let code = invite().encode();
        assert!(matches!(
            Invite::parse("hello"),
            Err(InviteError::MissingPrefix { .. })
        ));
        let err = Invite::parse("p2pr9-abc").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported invite code version \"p2pr9-\" (this build reads \"p2pr1-\")"
        );
        assert_eq!(
            Invite::parse(&format!("{code}a")).unwrap_err(),
            InviteError::ChecksumMismatch
        );
        assert_eq!(
            Invite::parse(&code[..code.len() - 10]).unwrap_err(),
            InviteError::ChecksumMismatch
        );
        assert_eq!(
            Invite::parse("p2pr1-ab").unwrap_err(),
            InviteError::TooShort
        );
        assert_eq!(
            Invite::parse(&format!("{}!{}", &code[..10], &code[11..])).unwrap_err(),
            InviteError::InvalidCharacter {
                ch: '!',
                position: 4
            }
        );
        assert!(matches!(
            Invite::parse(&"p2pr1-".repeat(100)),
            Err(InviteError::TooLong { .. })
        ));
        let expired = Invite::decode(&code, NOW + 3600 * 1000).unwrap_err();
        assert_eq!(
            expired,
            InviteError::Expired {
                expired_at: NOW / 1000 + 3600
            }
        );
        assert!(Invite::decode(&code, NOW + 3599 * 1000).is_ok());
    }

    #[test]
    fn names_and_ttls_are_validated() {
        for bad in ["", "   ", "a\nb", &"x".repeat(65)] {
            assert!(matches!(
                Invite::new(bad, None, NOW, None, &mut OsRng),
                Err(InviteError::InvalidName(_))
            ));
        }
        assert_eq!(
            Invite::new("r", Some(Duration::from_millis(10)), NOW, None, &mut OsRng),
            Err(InviteError::InvalidTtl)
        );
        assert!(matches!(
            Invite::new("r", None, NOW, Some(vec![0; 65]), &mut OsRng),
            Err(InviteError::CreatorTooLong { .. })
        ));
    }

    #[test]
    fn topic_hides_the_name_and_depends_on_everything() {
        let a = invite();
        assert!(!a.topic().contains("rust"));
        let renamed =
            Invite::from_parts("other", a.room_secret().clone(), a.expires_at(), None).unwrap();
        let extended =
            Invite::from_parts(a.room_name(), a.room_secret().clone(), None, None).unwrap();
        let same = Invite::from_parts(a.room_name(), a.room_secret().clone(), a.expires_at(), None)
            .unwrap();
        assert_ne!(a.topic(), renamed.topic());
        assert_ne!(a.topic(), extended.topic());
        assert_eq!(
            a.topic(),
            same.topic(),
            "the creator hint is not part of the room"
        );
    }
}

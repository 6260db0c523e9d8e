//! Short authentication strings (SAS): a few words or digits both users read to each
//! other out of band. Equal codes mean both ends hold the same handshake transcript, so no
//! one sat in the middle, even if the peer ids were substituted.

use std::fmt;

/// Number of words in [`Sas::words`]; each word carries 8 bits, so 40 bits in all.
pub const SAS_WORDS: usize = 5;
/// Number of decimal digits in [`Sas::digits`] (about 49.8 bits), shown in groups of 5.
pub const SAS_DIGITS: u32 = 15;

/// A short authentication string derived from the handshake transcript.
///
/// Comparing codes is done by people, so equality here needs no constant-time care.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sas([u8; 8]);

impl Sas {
    pub(crate) fn from_hash(hash: &[u8; 32]) -> Self {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&hash[..8]);
        Self(bytes)
    }

    /// The raw 64 bits the renderings are taken from.
    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }

    /// Three groups of five digits, e.g. `"48213 90217 33410"`.
    pub fn digits(&self) -> String {
        // 2^64 / 10^15 is about 18447, so the bias of the remainder is negligible.
        let n = u64::from_be_bytes(self.0) % 10u64.pow(SAS_DIGITS);
        let s = format!("{n:015}");
        format!("{} {} {}", &s[0..5], &s[5..10], &s[10..15])
    }

    /// Five words from a list of 256, e.g. `"lamp frog tide gold ruby"`.
    pub fn words(&self) -> String {
        self.0[..SAS_WORDS]
            .iter()
            .map(|&b| WORDS[usize::from(b)])
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Shows the digits.
impl fmt::Display for Sas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.digits())
    }
}

impl fmt::Debug for Sas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sas({})", self.digits())
    }
}

/// 256 short, common English words, sorted, all distinct, none a homophone of another
/// on the list, so each word read aloud stands for one byte.
pub const WORDS: [&str; 256] = [
    "able", "acid", "aged", "apple", "baby", "back", "ball", "band", "bank", "base", "bath",
    "bear", "beat", "bell", "belt", "bird", "blue", "boat", "body", "bone", "book", "boot", "bowl",
    "burn", "bush", "cake", "calm", "camp", "candy", "card", "care", "cart", "case", "cast",
    "cell", "chat", "chef", "city", "clay", "cloud", "club", "coal", "coat", "cold", "cook",
    "cool", "corn", "crew", "crop", "dark", "date", "dawn", "deep", "deer", "desk", "dial", "dish",
    "dock", "door", "draw", "drop", "drum", "duck", "dust", "east", "easy", "echo", "edge", "epic",
    "exit", "face", "fair", "fall", "farm", "fast", "fern", "file", "film", "fine", "fire", "firm",
    "fish", "five", "flag", "flat", "flow", "folk", "food", "foot", "fork", "fort", "four", "free",
    "frog", "fuel", "full", "game", "gate", "gear", "gift", "girl", "glad", "glow", "goal", "goat",
    "gold", "golf", "good", "gray", "grid", "grow", "gulf", "hair", "half", "hall", "hand", "hard",
    "harp", "hawk", "head", "heat", "herb", "hero", "high", "hill", "home", "horn", "host", "hour",
    "inch", "iron", "jazz", "joke", "jump", "keen", "king", "kite", "knee", "knot", "lake", "lamp",
    "land", "lane", "lava", "lawn", "lead", "leaf", "lemon", "lens", "lift", "lily", "line",
    "lion", "load", "lock", "loft", "loop", "luck", "lung", "mail", "maple", "mark", "mask",
    "mast", "meal", "meat", "mild", "milk", "mill", "mind", "mint", "mist", "moon", "moss", "moth",
    "nail", "name", "navy", "neck", "nest", "news", "nine", "noon", "nose", "note", "oak", "olive",
    "oven", "pace", "pair", "palm", "park", "path", "peak", "piano", "pine", "pink", "plum",
    "poem", "pole", "pond", "pool", "port", "post", "pump", "quiz", "race", "rain", "ramp", "reef",
    "rest", "rice", "ride", "ring", "river", "road", "rock", "roof", "room", "rope", "rose",
    "ruby", "sail", "salt", "sand", "seal", "seed", "ship", "shoe", "silk", "sing", "skin", "sled",
    "snow", "soap", "sock", "sofa", "song", "soup", "star", "step", "stone", "suit", "swan",
    "tail", "tent", "tide", "tiger", "tree", "tulip", "tune", "vase", "wave", "wolf", "yard",
    "zebra",
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn word_list_is_clean() {
        let set: BTreeSet<_> = WORDS.iter().collect();
        assert_eq!(set.len(), 256, "words must be distinct");
        assert!(
            WORDS.windows(2).all(|w| w[0] < w[1]),
            "list must stay sorted"
        );
        assert!(
            WORDS
                .iter()
                .all(|w| w.len() >= 3 && w.bytes().all(|b| b.is_ascii_lowercase()))
        );
    }

    #[test]
    fn renderings() {
        let sas = Sas([0xff; 8]);
        assert_eq!(sas.digits(), "74407 37095 51615"); // u64::MAX mod 10^15
        assert_eq!(sas.words(), ["zebra"; 5].join(" "));
        let sas = Sas([0; 8]);
        assert_eq!(sas.digits(), "00000 00000 00000");
        assert_eq!(sas.words(), [WORDS[0]; 5].join(" "));
    }
}

//! Fixtures shared by the fuzz targets: fixed identities, seeded randomness and one
//! recorded valid handshake, so that every run of a target is reproducible.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use p2pnode_secure::{HandshakeConfig, Initiator, Responder, SessionConfig, SigningKey};
use rand::SeedableRng;
use rand::rngs::StdRng;

const LABEL: &[u8] = b"/p2pnode/fuzz/1";
pub const INITIATOR_SEED: u64 = 1;
pub const RESPONDER_SEED: u64 = 2;

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn alice() -> SigningKey {
    SigningKey::from_bytes(&[0xa1; 32])
}

fn bob() -> SigningKey {
    SigningKey::from_bytes(&[0xb0; 32])
}

pub fn initiator_config(session: SessionConfig) -> HandshakeConfig {
    HandshakeConfig::new(alice(), bob().verifying_key(), LABEL).with_session(session)
}

pub fn responder_config(session: SessionConfig) -> HandshakeConfig {
    HandshakeConfig::new(bob(), alice().verifying_key(), LABEL).with_session(session)
}

/// The messages of one valid handshake between the fixed peers and seeds.
pub struct Recorded {
    pub msg1: Vec<u8>,
    pub msg2: Vec<u8>,
    pub msg3: Vec<u8>,
}

pub fn recorded() -> &'static Recorded {
    static RECORDED: OnceLock<Recorded> = OnceLock::new();
    RECORDED.get_or_init(|| {
        let (initiator, msg1) = Initiator::start(
            initiator_config(SessionConfig::default()),
            &mut rng(INITIATOR_SEED),
        );
        let (responder, msg2) = Responder::accept(
            responder_config(SessionConfig::default()),
            &msg1,
            &mut rng(RESPONDER_SEED),
        )
        .expect("recorded handshake msg1");
        let (_, msg3) = initiator.finish(&msg2).expect("recorded handshake msg2");
        responder.finish(&msg3).expect("recorded handshake msg3");
        Recorded { msg1, msg2, msg3 }
    })
}

/// Lays the fuzz input over a valid message: byte i of the result is `valid[i] ^ data[i]`
/// (or `data[i]` past the end of `valid`), and its length is the input's. For each length
/// this is a bijection, so every byte string is still reachable, but an all-zero input is
/// the valid message and small inputs are near-valid ones.
pub fn overlay(valid: &[u8], data: &[u8]) -> Vec<u8> {
    data.iter()
        .enumerate()
        .map(|(i, d)| valid.get(i).map_or(*d, |v| v ^ d))
        .collect()
}

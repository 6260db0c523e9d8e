//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use p2pnode_secure::{HandshakeConfig, Initiator, Responder, Session, SessionConfig, SigningKey};
use rand::SeedableRng;
use rand::rngs::StdRng;

pub(crate) const LABEL: &[u8] = b"/p2pnode/test/1";

/// A deterministic RNG, so every test run sees the same keys and messages.
pub(crate) fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub(crate) fn key(seed: u64) -> SigningKey {
    SigningKey::generate(&mut rng(seed ^ 0x5eed_0000))
}

/// Alice (initiator) and Bob (responder) with fixed identities.
pub(crate) struct Peers {
    pub(crate) alice: SigningKey,
    pub(crate) bob: SigningKey,
}

impl Default for Peers {
    fn default() -> Self {
        Self {
            alice: key(1),
            bob: key(2),
        }
    }
}

impl Peers {
    pub(crate) fn alice_config(&self, session: SessionConfig) -> HandshakeConfig {
        HandshakeConfig::new(self.alice.clone(), self.bob.verifying_key(), LABEL)
            .with_session(session)
    }

    pub(crate) fn bob_config(&self, session: SessionConfig) -> HandshakeConfig {
        HandshakeConfig::new(self.bob.clone(), self.alice.verifying_key(), LABEL)
            .with_session(session)
    }
}

/// The three messages of one handshake run.
pub(crate) struct Transcript {
    pub(crate) msg1: Vec<u8>,
    pub(crate) msg2: Vec<u8>,
    pub(crate) msg3: Vec<u8>,
}

/// Runs a whole handshake in memory with per-side seeds.
pub(crate) fn handshake(
    peers: &Peers,
    session: SessionConfig,
    seed_a: u64,
    seed_b: u64,
) -> (Session, Session, Transcript) {
    let (initiator, msg1) = Initiator::start(peers.alice_config(session.clone()), &mut rng(seed_a));
    let (responder, msg2) =
        Responder::accept(peers.bob_config(session), &msg1, &mut rng(seed_b)).unwrap();
    let (a, msg3) = initiator.finish(&msg2).unwrap();
    let b = responder.finish(&msg3).unwrap();
    (a, b, Transcript { msg1, msg2, msg3 })
}

pub(crate) fn pair(session: SessionConfig) -> (Session, Session) {
    let (a, b, _) = handshake(&Peers::default(), session, 10, 20);
    (a, b)
}

//! Post-quantum secure channels for p2pnode application protocols.
//!
//! libp2p's transport security authenticates peer ids, but is post-quantum only in part:
//! TLS 1.3 (TCP and QUIC) exchanges keys with X25519MLKEM768, while Noise (relayed
//! connections, peers that speak only Noise) is classical, and neither reaches end to end
//! through a relay. So every application stream (chat, files, tunnel, sync) runs this
//! crate on top:
//!
//! 1. [`handshake`]: a three-message hybrid handshake (X25519 + ML-KEM-768, transcript
//!    signed by both Ed25519 identity keys) as a sans-IO state machine
//!    ([`Initiator`], [`Responder`]) producing a [`Session`].
//! 2. [`session`]: AEAD frames (AES-256-GCM where both ends have AES in hardware, else
//!    ChaCha20-Poly1305) with counter nonces, per-direction keys,
//!    strict or windowed replay protection, deterministic rekeying, optional padding.
//! 3. [`stream`]: async wrappers ([`initiate`], [`respond`], [`SecureStream`]) that run
//!    both over any `futures::io` stream with length-prefixed messages.
//! 4. [`sas`]: the short authentication string users compare to rule out a man in the
//!    middle; [`trust`]: the pure decision whether a peer may use a protocol.
//!
//! The sans-IO parts take randomness and time as arguments and never touch a clock or
//! socket, so they run the same in tests, simulations, fuzzers and the node.
//!
//! # Using it on a libp2p stream
//!
//! ```text
//! local  = SigningKey::from_bytes(&ed25519_keypair.secret().as_ref().try_into()?)
//! remote = VerifyingKey::from_bytes(&PublicKey::try_decode_protobuf(peer_id.as_ref().digest())?
//!                                       .try_into_ed25519()?.to_bytes())?
//! config = HandshakeConfig::new(local, remote, b"/p2pnode/chat/1".to_vec())
//! stream = timeout(10 s, initiate(libp2p_stream, config, &mut OsRng)).await??   // or respond(..)
//! match trust_store.check(&peer_id.to_bytes(), &stream.remote_key().to_bytes(), "chat")? { .. }
//! stream.send(b"hi").await?; let msg = stream.recv().await?; stream.sas().words()
//! ```
//!
//! Datagram users (the tunnel) run the sans-IO [`Session`] directly with
//! [`ReceiveMode::Window`] and put one frame in each packet.
//!
//! ```
//! # use p2pnode_secure::*;
//! # use rand::rngs::OsRng;
//! let alice = SigningKey::generate(&mut OsRng);
//! let bob = SigningKey::generate(&mut OsRng);
//! let label = b"/p2pnode/chat/1".to_vec();
//! let (initiator, msg1) =
//!     Initiator::start(HandshakeConfig::new(alice.clone(), bob.verifying_key(), label.clone()), &mut OsRng);
//! let (responder, msg2) =
//!     Responder::accept(HandshakeConfig::new(bob, alice.verifying_key(), label), &msg1, &mut OsRng)?;
//! let (mut a, msg3) = initiator.finish(&msg2)?;
//! let mut b = responder.finish(&msg3)?;
//! assert_eq!(a.sas(), b.sas());
//!
//! let now = std::time::Instant::now();
//! let mut frame = Vec::new();
//! a.seal(b"hello", now, &mut frame)?;
//! assert_eq!(b.open(&mut frame)?, b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod error;
pub mod handshake;
pub mod replay;
pub mod sas;
pub mod session;
pub mod stream;
pub mod trust;
pub mod wire;

pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use error::{DecodeError, HandshakeError, OpenError, ReadError, SealError, StreamError};
pub use handshake::{HandshakeConfig, Initiator, Responder};
pub use sas::Sas;
pub use session::{Cipher, MAX_PAYLOAD_LEN, ReceiveMode, Session, SessionConfig, Traffic};
pub use stream::{SecureStream, initiate, respond};
pub use trust::{MemoryTrustStore, PeerKey, TrustDecision, TrustEntry, TrustStore, decide};

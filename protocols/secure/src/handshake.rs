//! The hybrid handshake as a sans-IO state machine.
//!
//! ```text
//! initiator                                         responder
//!   Initiator::start      -- msg1: nonce, commit(o), id_I, X_I, EK -->
//!                         <-- msg2: nonce, id_R, X_R, CT, sig_R(h2u) -- Responder::accept
//!   Initiator::finish     -- msg3: o, sig_I(h2) ----------------------->
//!                                                                       Responder::finish
//! ```
//!
//! Every byte of every message goes into a running SHA-256 transcript that starts with
//! the protocol name, the caller's context label and both identity keys. The responder
//! signs the transcript up to its own shares (h2u), the initiator signs everything up to
//! and including that signature (h2). Both signatures are checked against the identity
//! keys the callers expect, so a substituted key, a flipped bit or a message replayed from
//! another run (whose transcript carried other nonces and ephemeral keys) fails.
//!
//! The session secret comes from HKDF-SHA256 with the final transcript hash as salt and
//! both shared secrets plus the raw public shares and KEM ciphertext as input key material,
//! in the spirit of the X-Wing combiner: breaking the session needs breaking both X25519
//! and ML-KEM-768. There is no classical-only path: without a valid ML-KEM share the
//! message does not parse.
//!
//! The AEAD: msg1 lists the ciphers the initiator takes (ChaCha20-Poly1305 always,
//! AES-256-GCM where its CPU runs AES in hardware) and msg2 names the one the responder
//! chose (AES-256-GCM when both have it). Both fields are in the signed transcript, so a
//! man in the middle cannot strike AES from the list, and either choice is a strong AEAD.
//!
//! The SAS is derived from h2 and the opening `o` of a commitment the initiator sent in
//! msg1. The responder has fixed msg2 before learning `o`, and the initiator committed to
//! `o` before seeing msg2, so a man in the middle cannot grind either of its two sessions
//! until the 40-bit codes collide (the ZRTP hash-commitment trick).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use ml_kem::kem::{Decapsulate, DecapsulationKey, Encapsulate, EncapsulationKey};
use ml_kem::{EncodedSizeUser, KemCore, MlKem768, MlKem768Params};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use x25519_dalek::{EphemeralSecret, PublicKey as X25519Public};
use zeroize::{Zeroize, Zeroizing};

use crate::error::HandshakeError;
use crate::sas::Sas;
use crate::session::{Cipher, Role, Session, SessionConfig, SessionKeys};
use crate::wire::{self, Msg1, Msg2, Msg3, NONCE_LEN};

const PROTOCOL_NAME: &[u8] = b"p2pnode-secure/2 X25519+MLKEM768 Ed25519 ChaCha20Poly1305|AES256GCM";
const RESPONDER_SIG_CONTEXT: &[u8] = b"p2pnode-secure/1 responder signature";
const INITIATOR_SIG_CONTEXT: &[u8] = b"p2pnode-secure/1 initiator signature";
const SAS_COMMIT_CONTEXT: &[u8] = b"p2pnode-secure/1 sas commitment";
const SAS_CONTEXT: &[u8] = b"p2pnode-secure/1 sas";
const KEY_I2R_INFO: &[u8] = b"p2pnode-secure/1 key initiator to responder";
const KEY_R2I_INFO: &[u8] = b"p2pnode-secure/1 key responder to initiator";

type MlKemDk = DecapsulationKey<MlKem768Params>;
type MlKemEk = EncapsulationKey<MlKem768Params>;

/// What both sides must agree on before the handshake: who we are, who we expect, and
/// what the stream is for.
pub struct HandshakeConfig {
    local_key: SigningKey,
    remote_key: VerifyingKey,
    context: Vec<u8>,
    session: SessionConfig,
    /// Offer (initiator) or choose (responder) AES-256-GCM.
    aes: bool,
}

impl HandshakeConfig {
    /// `local_key` is our Ed25519 identity (built from the libp2p keypair's secret),
    /// `remote_key` the key the remote must present (derived from its `PeerId`), and
    /// `context` an application label such as `b"/p2pnode/chat/1"`; a peer using another
    /// label fails the handshake, so a session for one protocol cannot serve another.
    pub fn new(
        local_key: SigningKey,
        remote_key: VerifyingKey,
        context: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            local_key,
            remote_key,
            context: context.into(),
            session: SessionConfig::default(),
            aes: Cipher::aes_in_hardware(),
        }
    }

    /// Whether this side offers or chooses AES-256-GCM; by default where the CPU runs AES
    /// in hardware ([`Cipher::aes_in_hardware`]). Off, the session uses ChaCha20-Poly1305
    /// (for tests, and to measure one cipher against the other).
    pub fn with_aes(mut self, aes: bool) -> Self {
        self.aes = aes;
        self
    }

    /// Sets framing parameters for the session that results.
    pub fn with_session(mut self, session: SessionConfig) -> Self {
        self.session = session;
        self
    }

    /// Framing parameters of the resulting session.
    pub fn session(&self) -> &SessionConfig {
        &self.session
    }
}

impl std::fmt::Debug for HandshakeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeConfig")
            .field("local_key", &self.local_key.verifying_key())
            .field("remote_key", &self.remote_key)
            .field("context", &String::from_utf8_lossy(&self.context))
            .field("session", &self.session)
            .field("aes", &self.aes)
            .finish()
    }
}

/// Running SHA-256 hash over length-prefixed fields, so field boundaries cannot shift.
#[derive(Clone)]
struct Transcript(Sha256);

impl Transcript {
    fn new(context: &[u8], initiator: &VerifyingKey, responder: &VerifyingKey) -> Self {
        let mut t = Self(Sha256::new());
        t.append(PROTOCOL_NAME);
        t.append(context);
        t.append(initiator.as_bytes());
        t.append(responder.as_bytes());
        t
    }

    fn append(&mut self, data: &[u8]) {
        self.0.update((data.len() as u64).to_be_bytes());
        self.0.update(data);
    }

    fn hash(&self) -> [u8; 32] {
        self.0.clone().finalize().into()
    }
}

fn sas_commitment(opening: &[u8; NONCE_LEN]) -> [u8; 32] {
    Sha256::new()
        .chain_update(SAS_COMMIT_CONTEXT)
        .chain_update(opening)
        .finalize()
        .into()
}

fn derive_sas(h2: &[u8; 32], opening: &[u8; NONCE_LEN]) -> Sas {
    let hash: [u8; 32] = Sha256::new()
        .chain_update(SAS_CONTEXT)
        .chain_update(h2)
        .chain_update(opening)
        .finalize()
        .into();
    Sas::from_hash(&hash)
}

fn signed_message(context: &[u8], hash: &[u8; 32]) -> Vec<u8> {
    [context, hash.as_slice()].concat()
}

fn verify(
    key: &VerifyingKey,
    context: &[u8],
    hash: &[u8; 32],
    sig: &[u8; 64],
) -> Result<(), HandshakeError> {
    // verify_strict also rejects small-order keys and non-canonical signatures, so a
    // signature cannot be mauled into another valid one.
    key.verify_strict(&signed_message(context, hash), &Signature::from_bytes(sig))
        .map_err(|_| HandshakeError::BadSignature)
}

/// FIPS 203 section 7.2 input check: every 12-bit coefficient of the encoded vector t
/// must already be reduced mod q. The `ml-kem` crate reduces silently while decoding,
/// which would let two different byte strings stand for one key.
fn check_encapsulation_key(ek: &[u8; wire::MLKEM_EK_LEN]) -> Result<(), HandshakeError> {
    const Q: u16 = 3329;
    // The last 32 bytes are the seed rho, not coefficients.
    let coefficients = &ek[..wire::MLKEM_EK_LEN - 32];
    for chunk in coefficients.chunks_exact(3) {
        let [b0, b1, b2] = [chunk[0], chunk[1], chunk[2]].map(u16::from);
        let c0 = b0 | ((b1 & 0x0f) << 8);
        let c1 = (b1 >> 4) | (b2 << 4);
        if c0 >= Q || c1 >= Q {
            return Err(HandshakeError::InvalidKemKey);
        }
    }
    Ok(())
}

/// Moves an ML-KEM shared secret into a buffer that is wiped on drop, wiping the original.
fn kem_secret(mut shared: ml_kem::SharedKey<MlKem768>) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&shared);
    shared.as_mut_slice().zeroize();
    out
}

fn x25519_shared(
    secret: EphemeralSecret,
    public: [u8; 32],
) -> Result<Zeroizing<[u8; 32]>, HandshakeError> {
    let shared = secret.diffie_hellman(&X25519Public::from(public));
    if !shared.was_contributory() {
        return Err(HandshakeError::WeakX25519);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// Input key material for the combiner: both shared secrets and the public values they
/// came from. The transcript hash (the HKDF salt) covers these again with everything else.
struct KeyMaterial(Zeroizing<Vec<u8>>);

impl KeyMaterial {
    fn new(
        mlkem_ss: &[u8],
        x25519_ss: &[u8; 32],
        x_i: &[u8; 32],
        x_r: &[u8; 32],
        ct: &[u8],
    ) -> Self {
        let mut ikm = Zeroizing::new(Vec::with_capacity(32 + 32 + 32 + 32 + ct.len()));
        ikm.extend_from_slice(mlkem_ss);
        ikm.extend_from_slice(x25519_ss);
        ikm.extend_from_slice(x_i);
        ikm.extend_from_slice(x_r);
        ikm.extend_from_slice(ct);
        Self(ikm)
    }

    fn session_keys(&self, transcript_hash: &[u8; 32], cipher: Cipher) -> SessionKeys {
        let hk = Hkdf::<Sha256>::new(Some(transcript_hash), &self.0);
        let mut keys = SessionKeys {
            cipher,
            ..SessionKeys::default()
        };
        // Expanding 32 bytes from HKDF-SHA256 cannot fail (limit is 255 * 32).
        let ok = hk
            .expand(KEY_I2R_INFO, &mut keys.initiator_to_responder[..])
            .is_ok()
            && hk
                .expand(KEY_R2I_INFO, &mut keys.responder_to_initiator[..])
                .is_ok();
        debug_assert!(ok);
        keys
    }
}

/// Initiator side, waiting for msg2.
pub struct Initiator {
    /// The `CIPHER_*` bits we offered.
    ciphers: u8,
    local_key: SigningKey,
    remote_key: VerifyingKey,
    session: SessionConfig,
    transcript: Transcript,
    x25519_secret: EphemeralSecret,
    x25519_public: [u8; 32],
    mlkem_dk: MlKemDk,
    sas_opening: Zeroizing<[u8; NONCE_LEN]>,
}

impl Initiator {
    /// Generates fresh ephemeral keys and returns the state plus msg1 to send.
    pub fn start(config: HandshakeConfig, rng: &mut impl CryptoRngCore) -> (Self, Vec<u8>) {
        let HandshakeConfig {
            local_key,
            remote_key,
            context,
            session,
            aes,
        } = config;
        let ciphers = if aes {
            Cipher::ChaCha20Poly1305.wire_bit() | Cipher::Aes256Gcm.wire_bit()
        } else {
            Cipher::ChaCha20Poly1305.wire_bit()
        };
        let x25519_secret = EphemeralSecret::random_from_rng(&mut *rng);
        let x25519_public = X25519Public::from(&x25519_secret).to_bytes();
        let (mlkem_dk, mlkem_ek) = MlKem768::generate(rng);
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let mut sas_opening = Zeroizing::new([0u8; NONCE_LEN]);
        rng.fill_bytes(&mut sas_opening[..]);

        let msg1 = Msg1 {
            ciphers,
            nonce,
            sas_commitment: sas_commitment(&sas_opening),
            identity: local_key.verifying_key().to_bytes(),
            x25519: x25519_public,
            mlkem_ek: Box::new(mlkem_ek.as_bytes().into()),
        }
        .encode();
        let mut transcript = Transcript::new(&context, &local_key.verifying_key(), &remote_key);
        transcript.append(&msg1);
        tracing::debug!(remote = ?remote_key, "secure handshake: sent msg1");
        let state = Self {
            ciphers,
            local_key,
            remote_key,
            session,
            transcript,
            x25519_secret,
            x25519_public,
            mlkem_dk,
            sas_opening,
        };
        (state, msg1)
    }

    /// Processes msg2; on success returns the session and msg3 to send. The session may
    /// be used right away: the responder only accepts our frames after checking msg3.
    pub fn finish(self, msg2: &[u8]) -> Result<(Session, Vec<u8>), HandshakeError> {
        let Self {
            ciphers,
            local_key,
            remote_key,
            session,
            mut transcript,
            x25519_secret,
            x25519_public,
            mlkem_dk,
            sas_opening,
        } = self;
        let msg2 = Msg2::decode(msg2)?;
        if msg2.identity != remote_key.to_bytes() {
            return Err(HandshakeError::RemoteKeyMismatch);
        }
        // One cipher, and one we offered.
        let cipher = Cipher::from_wire_bit(msg2.cipher)
            .filter(|c| c.wire_bit() & ciphers != 0)
            .ok_or(HandshakeError::Cipher(msg2.cipher))?;
        transcript.append(&msg2.encode_unsigned());
        verify(
            &remote_key,
            RESPONDER_SIG_CONTEXT,
            &transcript.hash(),
            &msg2.signature,
        )?;
        transcript.append(&msg2.signature);
        let h2 = transcript.hash();

        // Decapsulation never fails for a well-formed ciphertext: a wrong one yields an
        // unrelated secret (implicit rejection), which the signature above already ruled out.
        let ct = ml_kem::Ciphertext::<MlKem768>::from(*msg2.mlkem_ct);
        let mlkem_ss = kem_secret(
            mlkem_dk
                .decapsulate(&ct)
                .map_err(|()| HandshakeError::Kem)?,
        );
        let x25519_ss = x25519_shared(x25519_secret, msg2.x25519)?;

        let signature = local_key.sign(&signed_message(INITIATOR_SIG_CONTEXT, &h2));
        let msg3 = Msg3 {
            sas_opening: *sas_opening,
            signature: signature.to_bytes(),
        }
        .encode();
        transcript.append(&msg3);
        let transcript_hash = transcript.hash();
        let ikm = KeyMaterial::new(
            &mlkem_ss[..],
            &x25519_ss,
            &x25519_public,
            &msg2.x25519,
            &msg2.mlkem_ct[..],
        );
        let keys = ikm.session_keys(&transcript_hash, cipher);
        let sas = derive_sas(&h2, &sas_opening);
        tracing::debug!(remote = ?remote_key, "secure handshake: initiator done");
        let session = Session::new(
            Role::Initiator,
            keys,
            session,
            sas,
            remote_key,
            transcript_hash,
        );
        Ok((session, msg3))
    }
}

/// Responder side, waiting for msg3.
pub struct Responder {
    cipher: Cipher,
    remote_key: VerifyingKey,
    session: SessionConfig,
    transcript: Transcript,
    h2: [u8; 32],
    sas_commitment: [u8; 32],
    key_material: KeyMaterial,
}

impl Responder {
    /// Processes msg1; on success returns the state plus msg2 to send.
    pub fn accept(
        config: HandshakeConfig,
        msg1: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let HandshakeConfig {
            local_key,
            remote_key,
            context,
            session,
            aes,
        } = config;
        let msg1 = Msg1::decode(msg1)?;
        // Cheap checks first, so a wrong peer costs us no KEM work.
        if msg1.identity != remote_key.to_bytes() {
            return Err(HandshakeError::RemoteKeyMismatch);
        }
        let offered = |c: Cipher| msg1.ciphers & c.wire_bit() != 0;
        let cipher = if aes && offered(Cipher::Aes256Gcm) {
            Cipher::Aes256Gcm
        } else if offered(Cipher::ChaCha20Poly1305) {
            Cipher::ChaCha20Poly1305
        } else {
            return Err(HandshakeError::Cipher(msg1.ciphers));
        };
        check_encapsulation_key(&msg1.mlkem_ek)?;
        let mut transcript = Transcript::new(&context, &remote_key, &local_key.verifying_key());
        transcript.append(&msg1.encode());

        let ek = MlKemEk::from_bytes(&(*msg1.mlkem_ek).into());
        let (ct, mlkem_ss) = ek
            .encapsulate(&mut *rng)
            .map_err(|()| HandshakeError::Kem)?;
        let mlkem_ss = kem_secret(mlkem_ss);
        let x25519_secret = EphemeralSecret::random_from_rng(&mut *rng);
        let x25519_public = X25519Public::from(&x25519_secret).to_bytes();
        let x25519_ss = x25519_shared(x25519_secret, msg1.x25519)?;
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);

        let mut msg2 = Msg2 {
            cipher: cipher.wire_bit(),
            nonce,
            identity: local_key.verifying_key().to_bytes(),
            x25519: x25519_public,
            mlkem_ct: Box::new(ct.into()),
            signature: [0; 64],
        };
        transcript.append(&msg2.encode_unsigned());
        msg2.signature = local_key
            .sign(&signed_message(RESPONDER_SIG_CONTEXT, &transcript.hash()))
            .to_bytes();
        transcript.append(&msg2.signature);
        let h2 = transcript.hash();
        let key_material = KeyMaterial::new(
            &mlkem_ss[..],
            &x25519_ss,
            &msg1.x25519,
            &x25519_public,
            &msg2.mlkem_ct[..],
        );
        tracing::debug!(remote = ?remote_key, "secure handshake: sent msg2");
        let state = Self {
            cipher,
            remote_key,
            session,
            transcript,
            h2,
            sas_commitment: msg1.sas_commitment,
            key_material,
        };
        Ok((state, msg2.encode()))
    }

    /// Processes msg3 and returns the session.
    pub fn finish(self, msg3: &[u8]) -> Result<Session, HandshakeError> {
        let Self {
            cipher,
            remote_key,
            session,
            mut transcript,
            h2,
            sas_commitment: commitment,
            key_material,
        } = self;
        let msg3 = Msg3::decode(msg3)?;
        verify(&remote_key, INITIATOR_SIG_CONTEXT, &h2, &msg3.signature)?;
        if sas_commitment(&msg3.sas_opening) != commitment {
            return Err(HandshakeError::CommitmentMismatch);
        }
        transcript.append(&msg3.encode());
        let transcript_hash = transcript.hash();
        let keys = key_material.session_keys(&transcript_hash, cipher);
        let sas = derive_sas(&h2, &msg3.sas_opening);
        tracing::debug!(remote = ?remote_key, "secure handshake: responder done");
        Ok(Session::new(
            Role::Responder,
            keys,
            session,
            sas,
            remote_key,
            transcript_hash,
        ))
    }
}

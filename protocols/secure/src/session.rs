//! An established session: AEAD framing, replay protection and rekeying. Sans-IO: frames
//! are byte slices in and out, time is an argument.
//!
//! Frame layout (the length prefix, if any, belongs to the transport wrapper):
//!
//! ```text
//! flags: u8 | epoch: u32 BE | seq: u56 BE | ciphertext | tag: 16 bytes
//! ```
//!
//! The AEAD is ChaCha20-Poly1305 or AES-256-GCM, agreed in the handshake (see
//! [`Cipher`]). The 12-byte header *is* the AEAD nonce, which authenticates it: both derive
//! the tag's mask from the nonce (Poly1305's key, GCM's encrypted counter block 0), so a
//! changed header bit fails the tag. There is no associated data on purpose: the
//! `poly1305` crate's AVX2 path runs about 25% slower
//! when the associated data is not a multiple of 64 bytes, and that alone would blow the
//! framing budget. `seq` counts every frame of one direction from 0 and never resets, so
//! the replay window works across rekeys; each epoch has its own key, so no (key, nonce)
//! pair ever repeats. 2^56 frames per direction is more than any session will send.
//!
//! Rekeying is decided by the sender alone (after a number of frames or an amount of time)
//! and announced by the epoch field; the key of epoch n+1 is HKDF-Expand(key of epoch n).
//! The receiver follows when a frame of a newer epoch authenticates, so both sides step
//! through the same key chain without any extra message. Old keys are dropped (zeroized),
//! which gives forward secrecy inside a long session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;

use crate::error::{OpenError, SealError};
use crate::replay::ReplayWindow;
use crate::sas::Sas;

mod keys;

pub use keys::Cipher;
pub(crate) use keys::SessionKeys;
use keys::{EpochKey, Header, Library};

/// Length of the frame header (flags, epoch, sequence number).
pub const HEADER_LEN: usize = 12;
/// Length of the authentication tag ending each frame (both ciphers' tags are 16 bytes).
pub const TAG_LEN: usize = 16;
/// Length of the padding trailer inside a padded frame's plaintext.
pub const PAD_TRAILER_LEN: usize = 4;
/// Largest payload a frame may carry; [`SessionConfig`] can lower it.
pub const MAX_PAYLOAD_LEN: usize = 64 * 1024;
/// Padded plaintexts grow to the first of these sizes that fits; larger ones to the
/// maximum frame.
pub const PADDING_BUCKETS: [usize; 4] = [256, 1024, 4096, 16384];

const FLAG_PADDED: u8 = 0b0000_0001;
/// Sequence numbers are 56-bit on the wire; this one is never sent, so that the receiver's
/// `seq + 1` cannot overflow.
const SEQ_LIMIT: u64 = (1 << 56) - 1;
const KNOWN_FLAGS: u8 = FLAG_PADDED;
const REKEY_INFO: &[u8] = b"p2pnode-secure/1 rekey";
/// Window mode: how many epochs a frame may be ahead (all frames of the epochs between
/// were lost). Bounds the HKDF work a forged header can cause.
const MAX_EPOCH_SKIP: u32 = 8;

/// How received frames are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReceiveMode {
    /// Every frame must be the next one: for reliable streams, where any gap, replay or
    /// reordering is an attack.
    #[default]
    Ordered,
    /// Frames may arrive late, out of order or not at all, within a window of
    /// [`replay::WINDOW`](crate::replay::WINDOW) sequence numbers; replays are refused.
    /// For datagrams (tunnel packets).
    Window,
}

/// Framing parameters. Build with `SessionConfig::default().with_...()`.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    max_payload_len: usize,
    rekey_after_frames: u64,
    rekey_after: Duration,
    receive_mode: ReceiveMode,
    padding: bool,
    packet_frames: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_payload_len: MAX_PAYLOAD_LEN,
            rekey_after_frames: 1 << 20,
            rekey_after: Duration::from_secs(10 * 60),
            receive_mode: ReceiveMode::Ordered,
            padding: false,
            packet_frames: false,
        }
    }
}

impl SessionConfig {
    /// Lowers the largest payload per frame (clamped to 1..=[`MAX_PAYLOAD_LEN`]). Frames
    /// longer than this allows are refused before anything is allocated for them.
    pub fn with_max_payload_len(mut self, len: usize) -> Self {
        self.max_payload_len = len.clamp(1, MAX_PAYLOAD_LEN);
        self
    }

    /// Sends with a new key after this many frames (at least 1).
    pub fn with_rekey_after_frames(mut self, frames: u64) -> Self {
        self.rekey_after_frames = frames.max(1);
        self
    }

    /// Sends with a new key once this much time passed since the current key's first frame.
    pub fn with_rekey_after(mut self, interval: Duration) -> Self {
        self.rekey_after = interval;
        self
    }

    /// Sets how received frames are ordered.
    pub fn with_receive_mode(mut self, mode: ReceiveMode) -> Self {
        self.receive_mode = mode;
        self
    }

    /// Pads outgoing plaintexts to [`PADDING_BUCKETS`] to hide their exact sizes.
    pub fn with_padding(mut self, padding: bool) -> Self {
        self.padding = padding;
        self
    }

    /// Frames of one packet each (a tunnel's datagrams), often one after an idle moment:
    /// sealed and opened by ring's code, which is as fast as aws-lc's at packet sizes and
    /// takes about half the time when the caches are cold. Streams' large frames keep
    /// aws-lc's where it is the faster (see `Library::for_frames`). The cipher and the
    /// bytes on the wire are the same.
    pub fn with_packet_frames(mut self) -> Self {
        self.packet_frames = true;
        self
    }

    /// Largest payload per frame.
    pub fn max_payload_len(&self) -> usize {
        self.max_payload_len
    }

    /// Largest whole frame (header, padded payload, tag) this configuration accepts.
    pub fn max_frame_len(&self) -> usize {
        HEADER_LEN + self.max_payload_len + PAD_TRAILER_LEN + TAG_LEN
    }

    /// Plaintext length on the wire for a payload of `len` bytes.
    fn inner_len(&self, len: usize) -> usize {
        if !self.padding {
            return len;
        }
        let needed = len + PAD_TRAILER_LEN;
        let largest = self.max_payload_len + PAD_TRAILER_LEN;
        PADDING_BUCKETS
            .iter()
            .copied()
            .find(|&bucket| bucket >= needed && bucket <= largest)
            .unwrap_or(largest)
    }
}

/// Which side of the handshake we were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Initiator,
    Responder,
}

struct SendState {
    key: EpochKey,
    epoch: u32,
    next_seq: u64,
    frames_in_epoch: u64,
    /// When the current key sealed its first frame; `None` before any frame.
    epoch_started: Option<Instant>,
}

enum Order {
    Ordered { next_seq: u64 },
    Window(Box<ReplayWindow>),
}

struct RecvState {
    key: EpochKey,
    epoch: u32,
    /// Window mode keeps the previous epoch's key for frames that were sent before the
    /// rekey but arrive after it.
    previous: Option<EpochKey>,
    order: Order,
}

/// An established, authenticated session. Seal frames to send, open frames received.
///
/// Not `Clone`: two copies would seal different data under the same nonces.
pub struct Session {
    send: SendState,
    recv: RecvState,
    config: SessionConfig,
    sas: Sas,
    remote_key: VerifyingKey,
    transcript_hash: [u8; 32],
    traffic: Option<Arc<dyn Traffic>>,
}

/// Where a session reports what it seals and opens: the node counts bytes and rejected
/// frames per protocol with it. The session carries it, so it counts however the frames
/// travel (a [`crate::SecureStream`], or its parts split between a reader and a writer).
pub trait Traffic: Send + Sync {
    /// A frame of `bytes` (header and tag included) was sealed.
    fn sealed(&self, bytes: usize);
    /// A frame of `bytes` was opened and verified.
    fn opened(&self, bytes: usize);
    /// A frame failed to open (forged, replayed, out of order or malformed).
    fn rejected(&self);
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("remote_key", &self.remote_key)
            .field("sas", &self.sas)
            .field("send_epoch", &self.send.epoch)
            .field("recv_epoch", &self.recv.epoch)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(
        role: Role,
        keys: SessionKeys,
        config: SessionConfig,
        sas: Sas,
        remote_key: VerifyingKey,
        transcript_hash: [u8; 32],
    ) -> Self {
        let SessionKeys {
            initiator_to_responder,
            responder_to_initiator,
            cipher,
        } = keys;
        let (send_key, recv_key) = match role {
            Role::Initiator => (initiator_to_responder, responder_to_initiator),
            Role::Responder => (responder_to_initiator, initiator_to_responder),
        };
        let library = Library::for_frames(cipher, config.packet_frames);
        let order = match config.receive_mode {
            ReceiveMode::Ordered => Order::Ordered { next_seq: 0 },
            ReceiveMode::Window => Order::Window(Box::default()),
        };
        Self {
            send: SendState {
                key: EpochKey::new(send_key, cipher, library),
                epoch: 0,
                next_seq: 0,
                frames_in_epoch: 0,
                epoch_started: None,
            },
            recv: RecvState {
                key: EpochKey::new(recv_key, cipher, library),
                epoch: 0,
                previous: None,
                order,
            },
            config,
            sas,
            traffic: None,
            remote_key,
            transcript_hash,
        }
    }

    /// A connected (initiator, responder) pair keyed from `secret`, for fuzz targets that
    /// need thousands of sessions per second. Not a secure session: no handshake ran.
    #[cfg(feature = "fuzzing")]
    #[doc(hidden)]
    pub fn pair_for_fuzzing(secret: [u8; 32], config: SessionConfig) -> (Session, Session) {
        let remote = ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key();
        let keys = || {
            let mut keys = SessionKeys::default();
            keys.initiator_to_responder.copy_from_slice(&secret);
            keys.responder_to_initiator.copy_from_slice(&secret);
            keys.responder_to_initiator[0] ^= 1;
            keys
        };
        let sas = Sas::from_hash(&[0; 32]);
        let a = Session::new(Role::Initiator, keys(), config.clone(), sas, remote, secret);
        let b = Session::new(Role::Responder, keys(), config, sas, remote, secret);
        (a, b)
    }

    /// Short authentication string both users compare out of band.
    pub fn sas(&self) -> &Sas {
        &self.sas
    }

    /// The remote's Ed25519 identity key, as verified by the handshake.
    pub fn remote_key(&self) -> &VerifyingKey {
        &self.remote_key
    }

    /// Hash of the whole handshake transcript; unique to this session.
    pub fn transcript_hash(&self) -> &[u8; 32] {
        &self.transcript_hash
    }

    /// The AEAD the handshake agreed on.
    pub fn cipher(&self) -> Cipher {
        self.send.key.cipher
    }

    /// Framing parameters in force.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Key epoch the next outgoing frame would use if no rekey were due.
    pub fn send_epoch(&self) -> u32 {
        self.send.epoch
    }

    /// Key epoch of the newest frame received.
    pub fn recv_epoch(&self) -> u32 {
        self.recv.epoch
    }

    /// Appends one sealed frame carrying `payload` to `out`. `now` is the caller's clock,
    /// used only for time-based rekeying. With `out` reused between calls this does not
    /// allocate: the payload is copied once and encrypted in place. To skip the copy, see
    /// [`seal_in_place`](Self::seal_in_place).
    pub fn seal(
        &mut self,
        payload: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        if payload.len() > self.config.max_payload_len {
            return Err(SealError::PayloadTooLarge {
                len: payload.len(),
                max: self.config.max_payload_len,
            });
        }
        let frame_start = out.len();
        out.reserve(HEADER_LEN + self.config.inner_len(payload.len()) + TAG_LEN);
        out.extend_from_slice(&[0; HEADER_LEN]);
        out.extend_from_slice(payload);
        self.seal_in_place(out, frame_start, now)
            .inspect_err(|_| out.truncate(frame_start))
    }

    /// Seals a payload the caller already wrote into `buf`, without copying it.
    ///
    /// `buf[frame_start..]` must be [`HEADER_LEN`] bytes of room for the header followed
    /// by the payload; bytes before `frame_start` (e.g. a length prefix) are left alone.
    /// On return `buf[frame_start..]` is the whole frame (padding and tag appended); after
    /// an error its contents are unspecified.
    pub fn seal_in_place(
        &mut self,
        buf: &mut Vec<u8>,
        frame_start: usize,
        now: Instant,
    ) -> Result<(), SealError> {
        self.seal_frame(buf, frame_start, now)?;
        if let Some(t) = &self.traffic {
            t.sealed(buf.len().saturating_sub(frame_start));
        }
        Ok(())
    }

    /// Counts what this session seals and opens from now on.
    pub fn set_traffic(&mut self, traffic: Arc<dyn Traffic>) {
        self.traffic = Some(traffic);
    }

    fn seal_frame(
        &mut self,
        buf: &mut Vec<u8>,
        frame_start: usize,
        now: Instant,
    ) -> Result<(), SealError> {
        let payload_start = frame_start
            .checked_add(HEADER_LEN)
            .filter(|&start| start <= buf.len())
            .ok_or(SealError::NoHeaderRoom)?;
        let payload_len = buf.len() - payload_start;
        if payload_len > self.config.max_payload_len {
            return Err(SealError::PayloadTooLarge {
                len: payload_len,
                max: self.config.max_payload_len,
            });
        }
        self.maybe_rekey(now)?;
        let send = &mut self.send;
        // The last sequence number is never used, so receivers can rely on seq + 1.
        if send.next_seq >= SEQ_LIMIT {
            return Err(SealError::Exhausted);
        }
        let padded = self.config.padding;
        let header = Header {
            flags: if padded { FLAG_PADDED } else { 0 },
            epoch: send.epoch,
            seq: send.next_seq,
        }
        .encode();
        buf[frame_start..payload_start].copy_from_slice(&header);
        if padded {
            let inner_len = self.config.inner_len(payload_len);
            let pad_len = inner_len - payload_len - PAD_TRAILER_LEN;
            buf.reserve(inner_len - payload_len + TAG_LEN);
            buf.resize(buf.len() + pad_len, 0);
            // pad_len < MAX_PAYLOAD_LEN + PAD_TRAILER_LEN, far below u32::MAX.
            buf.extend_from_slice(&(pad_len as u32).to_be_bytes());
        }
        let tag = send
            .key
            .seal(header, &mut buf[payload_start..])
            .ok_or(SealError::Encrypt)?;
        buf.extend_from_slice(&tag);
        send.next_seq += 1;
        send.frames_in_epoch += 1;
        Ok(())
    }

    fn maybe_rekey(&mut self, now: Instant) -> Result<(), SealError> {
        let send = &mut self.send;
        let started = *send.epoch_started.get_or_insert(now);
        let due = send.frames_in_epoch >= self.config.rekey_after_frames
            || now.saturating_duration_since(started) >= self.config.rekey_after;
        if due {
            send.epoch = send.epoch.checked_add(1).ok_or(SealError::Exhausted)?;
            send.key = send.key.next();
            send.frames_in_epoch = 0;
            send.epoch_started = Some(now);
            tracing::debug!(epoch = send.epoch, "secure session: send rekey");
        }
        Ok(())
    }

    /// Authenticates and decrypts one frame in place; returns the payload, a subslice of
    /// `frame`. A frame that fails authentication or the replay checks leaves the session
    /// unchanged: the window and keys move only after a frame authenticated.
    pub fn open<'a>(&mut self, frame: &'a mut [u8]) -> Result<&'a [u8], OpenError> {
        let len = frame.len();
        let opened = self.open_frame(frame);
        if let Some(t) = &self.traffic {
            match &opened {
                Ok(_) => t.opened(len),
                Err(_) => t.rejected(),
            }
        }
        opened
    }

    fn open_frame<'a>(&mut self, frame: &'a mut [u8]) -> Result<&'a [u8], OpenError> {
        let max = self.config.max_frame_len();
        if frame.len() > max {
            return Err(OpenError::TooLarge {
                len: frame.len(),
                max,
            });
        }
        let len = frame.len();
        let Some((header_bytes, rest)) = frame.split_first_chunk_mut::<HEADER_LEN>() else {
            return Err(OpenError::TooShort { len });
        };
        let Some((body, tag)) = rest.split_last_chunk_mut::<TAG_LEN>() else {
            return Err(OpenError::TooShort { len });
        };
        let header = Header::decode(header_bytes)?;

        // Replay and ordering checks before spending any work on decryption.
        match &self.recv.order {
            Order::Ordered { next_seq } if header.seq != *next_seq => {
                return Err(OpenError::OutOfOrder {
                    expected: *next_seq,
                    actual: header.seq,
                });
            }
            Order::Ordered { .. } => {}
            Order::Window(window) => window.check(header.seq)?,
        }

        let newer = self.newer_keys(header.epoch)?;
        let key = match (&newer, header.epoch) {
            (Some(chain), _) => chain.last(),
            (None, e) if e == self.recv.epoch => Some(&self.recv.key),
            (None, e) if e.checked_add(1) == Some(self.recv.epoch) => self.recv.previous.as_ref(),
            (None, _) => None,
        };
        let Some(key) = key else {
            return Err(OpenError::Epoch {
                current: self.recv.epoch,
                actual: header.epoch,
            });
        };
        if !key.open(*header_bytes, body, tag) {
            return Err(OpenError::Decrypt);
        }

        // Authenticated: now the state may move.
        if let Some(mut chain) = newer {
            let keep_previous = matches!(self.recv.order, Order::Window(_));
            if let Some(newest) = chain.pop() {
                let old = std::mem::replace(&mut self.recv.key, newest);
                // The key just before the new epoch: the last skipped one, or the old current.
                let before = chain.pop().unwrap_or(old);
                self.recv.previous = keep_previous.then_some(before);
                self.recv.epoch = header.epoch;
                tracing::debug!(epoch = header.epoch, "secure session: receive rekey");
            }
        }
        match &mut self.recv.order {
            Order::Ordered { next_seq } => *next_seq = header.seq.saturating_add(1),
            Order::Window(window) => window.mark(header.seq),
        }

        let body: &'a [u8] = body;
        let payload = if header.flags & FLAG_PADDED != 0 {
            unpad(body)?
        } else {
            body
        };
        if payload.len() > self.config.max_payload_len {
            return Err(OpenError::TooLarge {
                len: payload.len(),
                max: self.config.max_payload_len,
            });
        }
        Ok(payload)
    }

    /// For a frame of a later epoch, the keys of every epoch from the current one
    /// (exclusive) up to `epoch`; `None` for the current or an older epoch.
    fn newer_keys(&self, epoch: u32) -> Result<Option<Vec<EpochKey>>, OpenError> {
        let current = self.recv.epoch;
        if epoch <= current {
            return Ok(None);
        }
        let max_skip = match self.recv.order {
            // A stream delivers every frame, so the sender can be at most one epoch ahead.
            Order::Ordered { .. } => 1,
            Order::Window(_) => MAX_EPOCH_SKIP,
        };
        let ahead = epoch - current;
        if ahead > max_skip {
            return Err(OpenError::Epoch {
                current,
                actual: epoch,
            });
        }
        let mut chain: Vec<EpochKey> = Vec::with_capacity(ahead as usize);
        for _ in 0..ahead {
            let next = chain.last().unwrap_or(&self.recv.key).next();
            chain.push(next);
        }
        Ok(Some(chain))
    }
}

/// Strips the zero padding and its length trailer from an authenticated plaintext.
fn unpad(body: &[u8]) -> Result<&[u8], OpenError> {
    let (content, trailer) = body
        .split_last_chunk::<PAD_TRAILER_LEN>()
        .ok_or(OpenError::Padding)?;
    let pad_len = usize::try_from(u32::from_be_bytes(*trailer)).map_err(|_| OpenError::Padding)?;
    let keep = content
        .len()
        .checked_sub(pad_len)
        .ok_or(OpenError::Padding)?;
    Ok(&content[..keep])
}

#[cfg(test)]
mod tests;

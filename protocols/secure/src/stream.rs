//! Async wrappers: run the handshake and then exchange framed messages over any
//! `futures::io::{AsyncRead, AsyncWrite}` stream, such as a libp2p substream.
//!
//! Every message on the wire, handshake or frame, is a 4-byte big-endian length followed
//! by that many bytes. Lengths are checked against a cap before any buffer is allocated.
//!
//! Nothing here has a timeout: wrap the calls in the caller's runtime timer (e.g.
//! `tokio::time::timeout`) so a silent peer cannot hold a stream forever.

use std::io;
use std::time::Instant;

use ed25519_dalek::VerifyingKey;
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use rand_core::CryptoRngCore;

use crate::error::{HandshakeError, ReadError, StreamError};
use crate::handshake::{HandshakeConfig, Initiator, Responder};
use crate::sas::Sas;
use crate::session::Session;

/// Largest handshake message accepted (the largest real one, msg1, is 1314 bytes).
pub const MAX_HANDSHAKE_MESSAGE_LEN: usize = 4096;
/// Length of the length prefix before each message.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Reads one length-prefixed message of at most `max` bytes. A clean EOF before the
/// prefix is [`ReadError::Closed`]; EOF anywhere later is an I/O error.
pub async fn read_length_prefixed<R>(io: &mut R, max: usize) -> Result<Vec<u8>, ReadError>
where
    R: AsyncRead + Unpin,
{
    let len = read_prefix(io, max).await?;
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Reads a length prefix and checks it against `max`.
async fn read_prefix<R>(io: &mut R, max: usize) -> Result<usize, ReadError>
where
    R: AsyncRead + Unpin,
{
    let mut prefix = [0u8; LENGTH_PREFIX_LEN];
    let mut filled = 0;
    while filled < LENGTH_PREFIX_LEN {
        match io.read(&mut prefix[filled..]).await {
            Ok(0) if filled == 0 => return Err(ReadError::Closed),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    // A u32 always fits in usize on the 32- and 64-bit targets we build for; if it did
    // not, the length would be over any cap anyway.
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len > max {
        return Err(ReadError::TooLarge { len, max });
    }
    Ok(len)
}

/// Writes `data` with its length prefix and flushes.
pub async fn write_length_prefixed<W>(io: &mut W, data: &[u8]) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let len =
        u32::try_from(data.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(data).await?;
    io.flush().await
}

/// Reads one handshake message (at most [`MAX_HANDSHAKE_MESSAGE_LEN`] bytes). A responder
/// that bounds how long the first one may take reads it with this, then calls
/// [`respond_to`].
pub async fn read_handshake_message<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<Vec<u8>, HandshakeError> {
    read_length_prefixed(io, MAX_HANDSHAKE_MESSAGE_LEN)
        .await
        .map_err(|e| match e {
            ReadError::Closed => HandshakeError::Closed,
            ReadError::TooLarge { len, max } => HandshakeError::MessageTooLarge { len, max },
            ReadError::Io(e) => closed_or_io(e),
        })
}

/// A handshake's I/O error, with the stream closed or reset by the peer named as such:
/// a responder that refuses drops the stream, which the initiator sees as a write that
/// cannot go out or a read that was reset.
fn closed_or_io(e: io::Error) -> HandshakeError {
    use io::ErrorKind as K;
    match e.kind() {
        K::WriteZero | K::BrokenPipe | K::ConnectionReset | K::ConnectionAborted => {
            HandshakeError::Closed
        }
        _ => HandshakeError::Io(e),
    }
}

/// Writes one handshake message; a peer that dropped the stream shows as
/// [`HandshakeError::Closed`].
async fn write_handshake_message<W: AsyncWrite + Unpin>(
    io: &mut W,
    message: &[u8],
) -> Result<(), HandshakeError> {
    write_length_prefixed(io, message)
        .await
        .map_err(closed_or_io)
}

/// Runs the handshake as initiator (the side that opened the stream).
///
/// `rng` is only used before the first await; pass `rand::rngs::OsRng` to keep the
/// future `Send`.
pub async fn initiate<IO, R>(
    mut io: IO,
    config: HandshakeConfig,
    rng: &mut R,
) -> Result<SecureStream<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    R: CryptoRngCore,
{
    let (state, msg1) = Initiator::start(config, rng);
    write_handshake_message(&mut io, &msg1).await?;
    let msg2 = read_handshake_message(&mut io).await?;
    let (session, msg3) = state.finish(&msg2)?;
    write_handshake_message(&mut io, &msg3).await?;
    Ok(SecureStream::new(io, session))
}

/// Runs the handshake as responder (the side that accepted the stream).
pub async fn respond<IO, R>(
    mut io: IO,
    config: HandshakeConfig,
    rng: &mut R,
) -> Result<SecureStream<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    R: CryptoRngCore,
{
    let msg1 = read_handshake_message(&mut io).await?;
    respond_to(io, &msg1, config, rng).await
}

/// The responder's handshake after its first message, `msg1`, was read (with
/// [`read_handshake_message`]).
pub async fn respond_to<IO, R>(
    mut io: IO,
    msg1: &[u8],
    config: HandshakeConfig,
    rng: &mut R,
) -> Result<SecureStream<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    R: CryptoRngCore,
{
    let (state, msg2) = Responder::accept(config, msg1, rng)?;
    write_handshake_message(&mut io, &msg2).await?;
    let msg3 = read_handshake_message(&mut io).await?;
    let session = state.finish(&msg3)?;
    Ok(SecureStream::new(io, session))
}

/// Fed frames are written to the stream below once this many bytes gathered (one frame
/// more at most: the buffer stays under twice a frame's size).
pub const FEED_BATCH: usize = 64 * 1024;

/// A stream after a successful handshake: whole messages in, whole messages out.
///
/// Use it with the default [`ReceiveMode::Ordered`](crate::ReceiveMode::Ordered): a
/// reliable stream never reorders, so any gap is an attack and fails `recv`. After an
/// error from `recv`, drop the stream.
#[derive(Debug)]
pub struct SecureStream<IO> {
    io: IO,
    session: Session,
    write_buf: Vec<u8>,
    read_buf: Vec<u8>,
}

impl<IO> SecureStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn new(io: IO, session: Session) -> Self {
        Self {
            io,
            session,
            write_buf: Vec::new(),
            read_buf: Vec::new(),
        }
    }

    /// Seals and sends one message of at most the session's maximum payload length.
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), StreamError> {
        self.feed(payload).await?;
        self.flush().await
    }

    /// Seals one message without sending it yet: a sender of many messages in a row
    /// feeds them and flushes once. Fed frames gather in a buffer and go down in writes
    /// of about [`FEED_BATCH`] bytes, so a run of small messages (a file's header and a
    /// small file, say) costs one write to the stream below, not one each.
    /// [`flush`](Self::flush) sends what is gathered.
    pub async fn feed(&mut self, payload: &[u8]) -> Result<(), StreamError> {
        let start = self.write_buf.len();
        self.write_buf.extend_from_slice(&[0; LENGTH_PREFIX_LEN]);
        if let Err(e) = self
            .session
            .seal(payload, Instant::now(), &mut self.write_buf)
        {
            self.write_buf.truncate(start);
            return Err(e.into());
        }
        let frame_len = self.write_buf.len() - start - LENGTH_PREFIX_LEN;
        // Frames are bounded by MAX_PAYLOAD_LEN plus a few bytes, far below u32::MAX.
        let prefix =
            u32::try_from(frame_len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.write_buf[start..start + LENGTH_PREFIX_LEN].copy_from_slice(&prefix.to_be_bytes());
        if self.write_buf.len() >= FEED_BATCH {
            self.write_gathered().await?;
        }
        Ok(())
    }

    /// Sends what [`feed`](Self::feed) gathered, and flushes the stream below.
    pub async fn flush(&mut self) -> Result<(), StreamError> {
        self.write_gathered().await?;
        self.io.flush().await?;
        Ok(())
    }

    async fn write_gathered(&mut self) -> Result<(), StreamError> {
        if !self.write_buf.is_empty() {
            self.io.write_all(&self.write_buf).await?;
            self.write_buf.clear();
        }
        Ok(())
    }

    /// Receives one message. [`StreamError::Closed`] means the peer closed cleanly.
    pub async fn recv(&mut self) -> Result<Vec<u8>, StreamError> {
        let mut out = Vec::new();
        self.recv_into(&mut out).await?;
        Ok(out)
    }

    /// Receives one message and appends it to `out`: a reader of many large messages
    /// reuses its buffers instead of allocating one per message.
    pub async fn recv_into(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let max = self.session.config().max_frame_len();
        let len = read_prefix(&mut self.io, max).await.map_err(|e| match e {
            ReadError::Closed => StreamError::Closed,
            ReadError::TooLarge { len, max } => StreamError::FrameTooLarge { len, max },
            ReadError::Io(e) => StreamError::Io(e),
        })?;
        // The frame buffer only grows (to the largest frame seen, at most `max`), so it
        // is zeroed once, not per frame.
        if self.read_buf.len() < len {
            self.read_buf.resize(len, 0);
        }
        let frame = &mut self.read_buf[..len];
        self.io.read_exact(frame).await?;
        out.extend_from_slice(self.session.open(frame)?);
        Ok(())
    }

    /// Closes the write half of the underlying stream.
    pub async fn close(&mut self) -> Result<(), StreamError> {
        self.io.close().await?;
        Ok(())
    }

    /// The short authentication string to compare out of band.
    pub fn sas(&self) -> &Sas {
        self.session.sas()
    }

    /// The remote's verified Ed25519 identity key.
    pub fn remote_key(&self) -> &VerifyingKey {
        self.session.remote_key()
    }

    /// The underlying session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Counts what this stream seals and opens from now on (see [`crate::Traffic`]).
    pub fn set_traffic(&mut self, traffic: std::sync::Arc<dyn crate::Traffic>) {
        self.session.set_traffic(traffic);
    }

    /// Gives back the stream and session, e.g. to hand frames to another task. Messages
    /// fed and not flushed are dropped with the buffer: flush first.
    pub fn into_parts(self) -> (IO, Session) {
        debug_assert!(self.write_buf.is_empty(), "fed messages not flushed");
        (self.io, self.session)
    }
}

//! The simulated network: libp2p's in-process memory transport, with each connection's
//! writes held for the link's one-way latency, then Noise and yamux as on the node's own
//! memory transport.
//!
//! Latency is applied with `tokio::time`, so under a paused clock it costs no wall time:
//! the runtime jumps to the next delivery when every node waits. Both ends of a connection
//! need the same latency, so before anything else the dialer and the listener tell each
//! other their node index over the raw connection (four bytes each way, not delayed).
//!
//! A node may also have an [`Uplink`]: a rate its connections share, so bytes leave it one
//! after another at that rate before their latency starts (a seed serving fifty peers
//! serves each a fiftieth of its rate). Without one, a link is latency only.
//!
//! A thin wrapper around the muxer counts the Kademlia streams each node opens and accepts
//! (by their protocol name in the first bytes of the stream) and reads the target of each
//! FIND_NODE request a node sends, which is how the simulation counts the requests of each
//! lookup without reaching into the node (kad's `QueryStats` are not exposed by `Client`).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerBox, StreamMuxerEvent, SubstreamBox};
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade::Version;
use libp2p::{Transport, noise, yamux};
use p2pnode_node::swarm::TransportFactory;
use tokio::time::{Instant, Sleep};

use super::plan::LatencyTable;

/// The Kademlia protocol name as it appears on the wire in multistream-select (the node's
/// `KAD_PROTOCOL`; a test keeps them equal).
const KAD_NAME: &[u8] = b"/ipfs/kad/1.0.0";

/// How many of a stream's first bytes are searched: the multistream header (20 bytes), the
/// proposal (17) and a FIND_NODE request up to its key (about 45) fit.
const SNIFF_BYTES: usize = 160;

/// Kademlia's FIND_NODE message type.
const FIND_NODE: u64 = 4;

/// Per-node counters, shared by all of the node's connections.
#[derive(Debug, Default)]
pub struct NodeCounters {
    /// Kademlia streams this node opened (one per request it sent).
    pub kad_out: AtomicU64,
    /// Kademlia streams this node accepted (one per request it served).
    pub kad_in: AtomicU64,
    /// Bytes this node wrote to its links, all protocols, after encryption.
    pub bytes_out: AtomicU64,
    /// Connections this node dialled (each one a Noise handshake, an identify exchange).
    pub dialled: AtomicU64,
    /// FIND_NODE requests sent per watched key: `(watchers, requests)`. Only keys a lookup
    /// watches are counted, so the map holds at most the lookups in flight.
    find_node: Mutex<HashMap<Vec<u8>, (u32, u64)>>,
}

impl NodeCounters {
    /// Starts counting the FIND_NODE requests this node sends for `key`.
    pub fn watch(&self, key: &[u8]) {
        let mut map = self
            .find_node
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.entry(key.to_vec()).or_insert((0, 0)).0 += 1;
    }

    /// Stops counting for `key` and returns the requests counted since [`Self::watch`].
    pub fn unwatch(&self, key: &[u8]) -> u64 {
        let mut map = self
            .find_node
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = map.get_mut(key) else {
            return 0;
        };
        let count = entry.1;
        entry.0 -= 1;
        if entry.0 == 0 {
            map.remove(key);
        }
        count
    }

    fn sent_find_node(&self, key: &[u8]) {
        let mut map = self
            .find_node
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = map.get_mut(key) {
            entry.1 += 1;
        }
    }
}

/// A node's upload rate, shared by all its connections: each write is sent once the
/// bytes written before it (on any connection) are, at `bytes_per_sec`.
#[derive(Debug)]
pub struct Uplink {
    bytes_per_sec: f64,
    /// When the bytes written so far will have left.
    free_at: Mutex<Option<Instant>>,
}

impl Uplink {
    /// An uplink of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            free_at: Mutex::new(None),
        }
    }

    /// When `n` bytes written now have left the node.
    fn send(&self, n: usize) -> Instant {
        let now = Instant::now();
        let mut free = self.free_at.lock().unwrap_or_else(PoisonError::into_inner);
        let start = free.map_or(now, |f| f.max(now));
        let done = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
        *free = Some(done);
        done
    }
}

/// Builds node `me`'s transport: memory, delayed per link, Noise, yamux, counted.
pub(crate) fn transport_factory(
    me: usize,
    latency: Arc<LatencyTable>,
    counters: Arc<NodeCounters>,
    link_buffer: usize,
) -> TransportFactory {
    transport_factory_with_uplink(me, latency, counters, link_buffer, None)
}

/// [`transport_factory`], with the node's writes paced by `uplink`.
pub(crate) fn transport_factory_with_uplink(
    me: usize,
    latency: Arc<LatencyTable>,
    counters: Arc<NodeCounters>,
    link_buffer: usize,
    uplink: Option<Arc<Uplink>>,
) -> TransportFactory {
    Arc::new(move |key| {
        let latency = latency.clone();
        let uplink = uplink.clone();
        let link_counters = counters.clone();
        let muxer_counters = counters.clone();
        Ok(MemoryTransport::default()
            .and_then(move |mut conn, endpoint| async move {
                let peer = exchange_index(&mut conn, me, endpoint.is_dialer()).await?;
                if endpoint.is_dialer() {
                    link_counters.dialled.fetch_add(1, Ordering::Relaxed);
                }
                let mut io =
                    DelayedIo::new(conn, latency.between(me, peer), link_buffer, link_counters);
                io.uplink = uplink;
                Ok::<_, io::Error>(io)
            })
            // Lazy, as the node's real TCP transport negotiates (libp2p's builder).
            .upgrade(Version::V1Lazy)
            .authenticate(noise::Config::new(key)?)
            .multiplex(yamux::Config::default())
            .map(move |(peer, muxer), _| {
                let counted = CountingMuxer {
                    inner: StreamMuxerBox::new(muxer),
                    counters: muxer_counters.clone(),
                };
                (peer, StreamMuxerBox::new(counted))
            })
            .boxed())
    })
}

/// Tells the other end our node index and learns theirs. The dialer speaks first.
async fn exchange_index<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut S,
    me: usize,
    dialer: bool,
) -> io::Result<usize> {
    let mine = u32::try_from(me)
        .map_err(|_| io::Error::other("node index beyond u32"))?
        .to_le_bytes();
    let mut theirs = [0u8; 4];
    if dialer {
        conn.write_all(&mine).await?;
        conn.flush().await?;
        conn.read_exact(&mut theirs).await?;
    } else {
        conn.read_exact(&mut theirs).await?;
        conn.write_all(&mine).await?;
        conn.flush().await?;
    }
    Ok(u32::from_le_bytes(theirs) as usize)
}

/// A byte stream whose writes reach the other end `latency` after they are made.
///
/// Written bytes wait in a queue stamped with their due time; whichever of `poll_write`,
/// `poll_flush`, `poll_read` runs next delivers what is due and arms a timer for the rest,
/// so delivery happens on time even if the writer goes quiet (yamux always keeps a read
/// pending on its connection). `poll_flush` completes once everything is delivered. The
/// queue holds at most `limit` bytes; past that the writer waits, as on a full socket.
pub(crate) struct DelayedIo<S> {
    inner: S,
    latency: Duration,
    queue: VecDeque<(Instant, Vec<u8>)>,
    /// Bytes of the head chunk already handed to `inner`.
    head_written: usize,
    queued: usize,
    limit: usize,
    timer: Pin<Box<Sleep>>,
    timer_at: Option<Instant>,
    counters: Arc<NodeCounters>,
    uplink: Option<Arc<Uplink>>,
}

impl<S> DelayedIo<S> {
    pub(crate) fn new(
        inner: S,
        latency: Duration,
        limit: usize,
        counters: Arc<NodeCounters>,
    ) -> Self {
        Self {
            inner,
            latency,
            queue: VecDeque::new(),
            head_written: 0,
            queued: 0,
            limit,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            timer_at: None,
            counters,
            uplink: None,
        }
    }
}

impl<S: AsyncWrite + Unpin> DelayedIo<S> {
    /// Hands every due chunk to the inner stream. Ready once the queue is empty; otherwise
    /// Pending, with the task registered on the timer (next due chunk) or on `inner`.
    fn deliver(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((due, chunk)) = self.queue.front() {
            let due = *due;
            if due > Instant::now() {
                if self.timer_at != Some(due) {
                    self.timer.as_mut().reset(due);
                    self.timer_at = Some(due);
                }
                ready!(self.timer.as_mut().poll(cx));
                continue;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &chunk[self.head_written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.head_written += n;
            if self.head_written == chunk.len() {
                self.queued -= chunk.len();
                self.head_written = 0;
                self.queue.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Delivers what is due, keeping only an error (Pending just means more is in flight).
    fn deliver_some(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.deliver(cx) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for DelayedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.deliver_some(cx)?;
        let room = this.limit.saturating_sub(this.queued);
        if room == 0 {
            // The queue is not empty, so `deliver` registered us for its next progress.
            return Poll::Pending;
        }
        let n = buf.len().min(room);
        let sent = match &this.uplink {
            Some(up) => up.send(n),
            None => Instant::now(),
        };
        let due = sent + this.latency;
        // Writes made at the same instant travel together: fewer, larger chunks.
        match this.queue.back_mut() {
            Some((at, chunk)) if *at == due => chunk.extend_from_slice(&buf[..n]),
            _ => this.queue.push_back((due, buf[..n].to_vec())),
        }
        this.queued += n;
        this.counters
            .bytes_out
            .fetch_add(n as u64, Ordering::Relaxed);
        // Arm the timer for these bytes now, with this task's waker.
        this.deliver_some(cx)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.deliver(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.deliver(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for DelayedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Reads are polled all the time on a live connection: a good moment to deliver.
        this.deliver_some(cx)?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

/// A muxer that hands out [`Sniffed`] substreams.
struct CountingMuxer {
    inner: StreamMuxerBox,
    counters: Arc<NodeCounters>,
}

impl StreamMuxer for CountingMuxer {
    type Substream = Sniffed;
    type Error = io::Error;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        let s = ready!(Pin::new(&mut this.inner).poll_inbound(cx))?;
        Poll::Ready(Ok(Sniffed::new(s, false, this.counters.clone())))
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        let s = ready!(Pin::new(&mut this.inner).poll_outbound(cx))?;
        Poll::Ready(Ok(Sniffed::new(s, true, this.counters.clone())))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll(cx)
    }
}

/// A substream that looks for the Kademlia protocol name in its first bytes: in what we
/// write on streams we open (our proposal, then the request), in what we read on streams
/// we accept.
struct Sniffed {
    inner: SubstreamBox,
    outbound: bool,
    /// The first bytes seen; `None` once decided.
    seen: Option<Vec<u8>>,
    /// Whether the stream was counted as a Kademlia stream already.
    counted: bool,
    counters: Arc<NodeCounters>,
}

impl Sniffed {
    fn new(inner: SubstreamBox, outbound: bool, counters: Arc<NodeCounters>) -> Self {
        Self {
            inner,
            outbound,
            seen: Some(Vec::new()),
            counted: false,
            counters,
        }
    }

    fn sniff(&mut self, bytes: &[u8]) {
        let Some(seen) = &mut self.seen else {
            return;
        };
        let take = bytes.len().min(SNIFF_BYTES - seen.len());
        seen.extend_from_slice(&bytes[..take]);
        let name_end = seen
            .windows(KAD_NAME.len())
            .position(|w| w == KAD_NAME)
            .map(|p| p + KAD_NAME.len() + 1);
        match name_end {
            Some(end) => {
                if !self.counted {
                    self.counted = true;
                    let counter = if self.outbound {
                        &self.counters.kad_out
                    } else {
                        &self.counters.kad_in
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                if !self.outbound {
                    self.seen = None;
                    return;
                }
                match seen.get(end..).and_then(parse_request) {
                    Some(Some((kind, key))) => {
                        if kind == FIND_NODE {
                            self.counters.sent_find_node(key);
                        }
                        self.seen = None;
                    }
                    // Not all of the request is here yet.
                    Some(None) if seen.len() < SNIFF_BYTES => {}
                    _ => self.seen = None,
                }
            }
            None if seen.len() >= SNIFF_BYTES => self.seen = None,
            None => {}
        }
    }
}

/// Reads the type and key of a length-prefixed Kademlia request (protobuf fields 1 and 2,
/// which prost writes first and in order). `Some(None)`: more bytes needed; `None`: not a
/// request this parser understands.
fn parse_request(bytes: &[u8]) -> Option<Option<(u64, &[u8])>> {
    let mut at = 0;
    let Some(_frame_len) = varint(bytes, &mut at) else {
        return Some(None);
    };
    let mut kind = 0;
    loop {
        let Some(tag) = varint(bytes, &mut at) else {
            return Some(None);
        };
        match (tag >> 3, tag & 7) {
            (field, 0) => {
                let Some(v) = varint(bytes, &mut at) else {
                    return Some(None);
                };
                if field == 1 {
                    kind = v;
                }
            }
            (field, 2) => {
                let Some(len) = varint(bytes, &mut at) else {
                    return Some(None);
                };
                let end = at.checked_add(usize::try_from(len).ok()?)?;
                let Some(value) = bytes.get(at..end) else {
                    return Some(None);
                };
                if field == 2 {
                    return Some(Some((kind, value)));
                }
                at = end;
            }
            _ => return None,
        }
    }
}

/// An unsigned LEB128 varint at `*at`; `None` when the bytes end first.
fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    Some(value)
}

impl AsyncRead for Sniffed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if !this.outbound {
            this.sniff(&buf[..n]);
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Sniffed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        if this.outbound {
            this.sniff(&buf[..n]);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests;

//! One tunnel stream to one member of one network: its outgoing queue, the writer that
//! drains it and the reader that checks every packet before the TUN device sees it.
//!
//! Wire: after the secure handshake the opener sends one message naming the network (its
//! 32-byte id); from then on each message is one IP packet (a secure frame with its 4-byte
//! length prefix), so a packet is never split or merged with another. The reader and
//! writer reuse one buffer each: no allocation per packet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use p2pnode_secure::Session;
use p2pnode_secure::session::HEADER_LEN;
use p2pnode_secure::stream::LENGTH_PREFIX_LEN;
use tokio::sync::Notify;

use crate::device::PacketDevice;
use crate::queue::PacketQueue;

use super::path::SharedPath;

/// Packets waiting for one member's writer. Sized for a burst of a fast inner TCP flow
/// (256 x 1280 B = 320 KiB per member, allocated once when the first stream comes up).
pub(super) const QUEUE_PACKETS: usize = 256;
/// The most a packet may wait for a writer. Inner TCP retransmits after 200 ms at the
/// least (Linux's minimum RTO): a packet older than that is better dropped than sent,
/// since sending it only adds to the queue the inner flow is already backing off from.
pub(super) const MAX_QUEUE_AGE: Duration = Duration::from_millis(200);
/// Bytes of sealed frames the writer gathers before one write: fewer, larger writes on
/// the stream (each costs a muxer frame and a syscall below it).
const WRITE_BATCH: usize = 64 * 1024;

/// The queue in front of one member's writer, kept while the network is up so a
/// replaced stream picks up where the old one stopped.
pub(super) struct Outgoing {
    queue: Mutex<PacketQueue>,
    ready: Notify,
    /// The id of the stream writing this queue now; 0 when none (packets are then not
    /// queued but counted as unsent).
    link: AtomicU64,
    /// Streams that have written this queue (a relayed member gets a new one each time a
    /// relay circuit ends).
    streams: AtomicU64,
}

impl Outgoing {
    pub(super) fn new(mtu: u16, now: Instant) -> Self {
        Self {
            queue: Mutex::new(PacketQueue::new(
                QUEUE_PACKETS,
                usize::from(mtu),
                MAX_QUEUE_AGE,
                now,
            )),
            ready: Notify::new(),
            link: AtomicU64::new(0),
            streams: AtomicU64::new(0),
        }
    }

    /// Queues a copy of `packet` for the writer; `false` when no stream is up.
    pub(super) fn push(&self, packet: &[u8], now: Instant) -> bool {
        if self.link.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let pushed = match self.queue.lock() {
            Ok(mut q) => q.push(packet, now),
            Err(_) => false,
        };
        if pushed {
            self.ready.notify_one();
        }
        pushed
    }

    pub(super) fn set_link(&self, id: u64) {
        self.link.store(id, Ordering::Relaxed);
        self.streams.fetch_add(1, Ordering::Relaxed);
    }

    /// Streams that have written this queue so far.
    pub(super) fn streams(&self) -> u64 {
        self.streams.load(Ordering::Relaxed)
    }

    /// Marks the queue unwritten, if stream `id` is still the one writing it.
    pub(super) fn unset_link(&self, id: u64) {
        let _ = self
            .link
            .compare_exchange(id, 0, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Packets the queue dropped: (full, waited too long).
    pub(super) fn dropped(&self) -> (u64, u64) {
        self.queue
            .lock()
            .map(|q| (q.dropped_full(), q.dropped_stale()))
            .unwrap_or_default()
    }
}

/// Why a stream task ended.
pub(super) type Ended = String;

/// Drains `out` into the stream: each packet sealed as one frame, the frames of a burst
/// gathered into one write. Ends on the first error (the owner drops the link).
pub(super) async fn write_packets<W>(
    mut io: W,
    session: Arc<Mutex<Session>>,
    out: Arc<Outgoing>,
) -> Ended
where
    W: futures::AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BATCH + 2048);
    loop {
        out.ready.notified().await;
        loop {
            buf.clear();
            let now = Instant::now();
            while buf.len() < WRITE_BATCH {
                let start = buf.len();
                buf.resize(start + LENGTH_PREFIX_LEN + HEADER_LEN, 0);
                let popped = match out.queue.lock() {
                    Ok(mut q) => q.pop(now, |p| buf.extend_from_slice(p)),
                    Err(_) => return "queue lock poisoned".into(),
                };
                if popped.is_none() {
                    buf.truncate(start);
                    break;
                }
                let sealed = match session.lock() {
                    Ok(mut s) => s.seal_in_place(&mut buf, start + LENGTH_PREFIX_LEN, now),
                    Err(_) => return "session lock poisoned".into(),
                };
                if let Err(e) = sealed {
                    return format!("cannot seal: {e}");
                }
                // A frame is at most a packet plus the secure overhead: far below u32::MAX.
                let len = u32::try_from(buf.len() - start - LENGTH_PREFIX_LEN).unwrap_or(0);
                buf[start..start + LENGTH_PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
            }
            if buf.is_empty() {
                break;
            }
            if let Err(e) = io.write_all(&buf).await {
                return e.to_string();
            }
        }
        if let Err(e) = io.flush().await {
            return e.to_string();
        }
    }
}

/// Reads frames, opens them, and writes the packets the engine lets through into the TUN
/// device. Ends on the first error: a stream that fails once is not trusted again.
pub(super) async fn read_packets<R, D>(
    mut io: R,
    session: Arc<Mutex<Session>>,
    path: SharedPath,
    device: Arc<D>,
    member: crate::MemberId,
    mtu: u16,
) -> Ended
where
    R: futures::AsyncRead + Unpin,
    D: PacketDevice,
{
    let max = match session.lock() {
        Ok(s) => s.config().max_frame_len(),
        Err(_) => return "session lock poisoned".into(),
    };
    let sender = path.lock().engine.slot(&member);
    let mut buf: Vec<u8> = Vec::with_capacity(usize::from(mtu) + 64);
    loop {
        let mut prefix = [0u8; LENGTH_PREFIX_LEN];
        if let Err(e) = io.read_exact(&mut prefix).await {
            return e.to_string();
        }
        let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
        if len > max {
            return format!("frame of {len} bytes (at most {max})");
        }
        buf.resize(len, 0);
        if let Err(e) = io.read_exact(&mut buf).await {
            return e.to_string();
        }
        let packet = {
            let Ok(mut s) = session.lock() else {
                return "session lock poisoned".into();
            };
            match s.open(&mut buf) {
                Ok(p) => p,
                Err(e) => return format!("bad secure frame: {e}"),
            }
        };
        let pass = path.lock().on_peer_packet(sender, packet, mtu);
        if pass && let Err(e) = device.send(packet).await {
            tracing::debug!("tunnel: cannot write a packet into the TUN device: {e}");
        }
    }
}

/// Sends the hello naming the network on a stream we opened.
pub(super) async fn send_hello<IO>(
    stream: &mut p2pnode_secure::SecureStream<IO>,
    network: &[u8; 32],
) -> Result<(), String>
where
    IO: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    stream.send(network).await.map_err(|e| e.to_string())
}

/// Reads the hello of a stream a member opened: the network it is for.
pub(super) async fn read_hello<IO>(
    stream: &mut p2pnode_secure::SecureStream<IO>,
) -> Result<[u8; 32], String>
where
    IO: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    let hello = stream.recv().await.map_err(|e| e.to_string())?;
    <[u8; 32]>::try_from(hello.as_slice()).map_err(|_| "a hello that names no network".into())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::io;
    use std::net::IpAddr;

    use p2pnode_secure::{HandshakeConfig, SessionConfig, SigningKey, initiate, respond};
    use tokio_util::compat::TokioAsyncReadCompatExt;

    use super::*;
    use crate::packet::build_packet;
    use crate::service::path::DataPath;
    use crate::{Claim, Engine, MemberId};

    #[test]
    fn a_queue_without_a_stream_takes_nothing() {
        let now = Instant::now();
        let out = Outgoing::new(1280, now);
        assert!(!out.push(b"packet", now), "no stream: not queued");
        out.set_link(7);
        assert!(out.push(b"packet", now));
        // An old stream ending does not unset the new one.
        out.unset_link(6);
        assert!(out.push(b"packet", now));
        out.unset_link(7);
        assert!(!out.push(b"packet", now));
        assert_eq!(out.dropped(), (0, 0));
        assert_eq!(out.streams(), 1);
    }

    /// A stand-in TUN device that keeps what is written into it.
    #[derive(Default)]
    struct Sink {
        written: Mutex<Vec<Vec<u8>>>,
        wrote: Notify,
    }

    impl PacketDevice for Sink {
        async fn recv(&self, _buf: &mut [u8]) -> io::Result<usize> {
            std::future::pending().await
        }

        async fn send(&self, packet: &[u8]) -> io::Result<usize> {
            if let Ok(mut w) = self.written.lock() {
                w.push(packet.to_vec());
            }
            self.wrote.notify_one();
            Ok(packet.len())
        }
    }

    /// Packets cross a real secure stream one frame each, whatever their sizes, after the
    /// hello; the receiver's engine lets the sender's own packets into the device and
    /// drops the forged one, counting it.
    #[tokio::test]
    async fn packets_cross_whole_and_a_forged_one_stops_before_the_device() {
        let (alice, bob) = (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        );
        let label = crate::STREAM_PROTOCOL.as_bytes();
        let config = |me: &SigningKey, them: &SigningKey| {
            HandshakeConfig::new(me.clone(), them.verifying_key(), label)
                .with_session(SessionConfig::default())
        };
        let (a_io, b_io) = tokio::io::duplex(4096);
        let (mut ra, mut rb) = (rand::rngs::OsRng, rand::rngs::OsRng);
        let (a, b) = tokio::join!(
            initiate(a_io.compat(), config(&alice, &bob), &mut ra),
            respond(b_io.compat(), config(&bob, &alice), &mut rb),
        );
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        let net = [6; 32];
        let (sent, got) = tokio::join!(send_hello(&mut a, &net), read_hello(&mut b));
        sent.unwrap();
        assert_eq!(got.unwrap(), net);

        let (ma, mb) = (MemberId(b"alice".to_vec()), MemberId(b"bob".to_vec()));
        let claims = [ma.clone(), mb.clone()].map(|member| Claim {
            member,
            lease: None,
        });
        let engine = Engine::new(net, mb.clone(), 1280, &claims, BTreeSet::new()).unwrap();
        let (la, lb) = (
            engine.table().lease(&ma).unwrap(),
            engine.our_lease().unwrap(),
        );
        let path = DataPath::shared(engine);
        let sink = Arc::new(Sink::default());

        let now = Instant::now();
        let out = Arc::new(Outgoing::new(1280, now));
        out.set_link(1);
        let genuine: Vec<Vec<u8>> = [0usize, 1, 500, 1252]
            .iter()
            .map(|len| build_packet(IpAddr::V4(la.v4), IpAddr::V4(lb.v4), &vec![7; *len]))
            .collect();
        let forged = build_packet(IpAddr::from([100, 64, 9, 9]), IpAddr::V4(lb.v4), b"x");
        assert!(out.push(&genuine[0], now) && out.push(&forged, now));
        for p in &genuine[1..] {
            assert!(out.push(p, now));
        }

        let (a_io, a_session) = a.into_parts();
        let (b_io, b_session) = b.into_parts();
        let (_a_read, a_write) = a_io.split();
        let (b_read, _b_write) = b_io.split();
        let writer = tokio::spawn(write_packets(
            a_write,
            Arc::new(Mutex::new(a_session)),
            out.clone(),
        ));
        let reader = tokio::spawn(read_packets(
            b_read,
            Arc::new(Mutex::new(b_session)),
            path.clone(),
            sink.clone(),
            ma.clone(),
            1280,
        ));
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let n = sink.written.lock().map(|w| w.len()).unwrap_or(0);
                if n >= genuine.len() {
                    break;
                }
                sink.wrote.notified().await;
            }
        })
        .await
        .expect("the genuine packets reach the device");
        assert_eq!(*sink.written.lock().unwrap(), genuine, "whole, in order");
        let p = path.lock();
        assert_eq!(p.drops(Some(&ma)).get("spoofed_source"), Some(&1));
        assert_eq!(p.engine.counts(&ma).packets_in, genuine.len() as u64);
        writer.abort();
        reader.abort();
    }
}

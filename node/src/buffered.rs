//! Read and write buffers under a connection's TLS: fewer, larger socket calls.
//!
//! rustls reads at most 4 KiB per call into its record buffer and writes each record it
//! seals as soon as it has it; yamux hands it one frame (at most 16 KiB) per write. Unbuffered,
//! a bulk transfer made four reads per 16 KiB record and a write per frame, and the
//! extra wake-ups and syscalls cost more CPU than Noise's ChaCha20-Poly1305 that TLS with
//! AES-GCM saved (measured with `scripts/bench-files`: the sender's CPU per GiB rose).
//! Noise buffers its frames up to 64 KiB; this gives TLS the same.
//!
//! Both buffers grow only as traffic needs them, up to [`MAX`]: a connection that carries
//! only small messages keeps small buffers (Noise's grow the same way), so a relay's
//! hundreds of mostly idle connections do not each hold 128 KiB. Writes are held until the
//! buffer is full or the stream is flushed; every user of a stream (multistream-select,
//! rustls's handshake, yamux) flushes when it waits for an answer, as on any buffered
//! stream.
//!
//! yamux flushes after every frame it sends (16 KiB at most), even when the streams have
//! more frames queued, so a bulk transfer still made a socket write per frame. Once the
//! connection carries yamux ([`Batching::on`]), a flush that follows new bytes therefore
//! first yields: it wakes its task and returns `Pending`, yamux goes on to the frames
//! queued behind, and the flush it makes once none is left writes them all in one call.
//! What a flush waits for is one more poll of its task, not a timer. Not before: rustls's
//! handshake does not ask again after a flush that returned `Pending` (it waits to read
//! the answer to what it flushed), so its messages must go out at once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::{AsyncRead, AsyncWrite};

/// The largest buffer, each way: one socket call moves up to this much.
pub const MAX: usize = 64 * 1024;

/// A stream with growing read and write buffers; see the module's text.
#[derive(Debug)]
pub struct Buffered<T> {
    inner: T,
    /// Read ahead of the caller: `read[start..end]` is unread.
    read: Vec<u8>,
    start: usize,
    end: usize,
    /// Accepted and not yet written: `write[written..]`.
    write: Vec<u8>,
    written: usize,
    /// Bytes were accepted since the last flush (which then yields once first).
    fresh: bool,
    batching: Batching,
}

/// Turns on the yielding flush of one [`Buffered`] stream (see the module's text).
#[derive(Debug, Clone, Default)]
pub struct Batching(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Batching {
    /// From now on a flush after new bytes yields once before it writes.
    pub fn on(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn is_on(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<T> Buffered<T> {
    /// Wraps `inner`, with no buffer allocated yet.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            read: Vec::new(),
            start: 0,
            end: 0,
            write: Vec::new(),
            written: 0,
            fresh: false,
            batching: Batching::default(),
        }
    }

    /// The switch of this stream's batching flush, off until turned on.
    pub fn batching(&self) -> Batching {
        self.batching.clone()
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Bytes read ahead and not yet taken, and bytes accepted and not yet written.
    pub fn buffered(&self) -> (usize, usize) {
        (self.end - self.start, self.write.len() - self.written)
    }

    /// The read buffer's size (for tests: it grows only under sustained reads).
    pub fn read_capacity(&self) -> usize {
        self.read.len()
    }

    /// Doubles the read buffer (up to [`MAX`]) when the last socket read filled `filled`
    /// bytes of a `size`-byte space: the peer sends faster than we read, so read more per
    /// call.
    fn grow_read(&mut self, filled: usize, size: usize) {
        if filled == size && self.read.len() < MAX {
            let next = (self.read.len().max(size) * 2).clamp(4096, MAX);
            self.read.resize(next, 0);
        }
    }
}

impl<T: AsyncWrite + Unpin> Buffered<T> {
    /// Writes out everything accepted so far.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.write.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.write[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.write.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Buffered<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.start == this.end {
            // Nothing read ahead: a large read, or one while the buffer is small, goes
            // straight into the caller's memory.
            if out.len() >= this.read.len() {
                let n = ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
                this.grow_read(n, out.len());
                return Poll::Ready(Ok(n));
            }
            let n = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut this.read))?;
            let size = this.read.len();
            this.start = 0;
            this.end = n;
            this.grow_read(n, size);
        }
        let n = out.len().min(this.end - this.start);
        out[..n].copy_from_slice(&this.read[this.start..this.start + n]);
        this.start += n;
        if this.start == this.end {
            this.start = 0;
            this.end = 0;
        }
        Poll::Ready(Ok(n))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Buffered<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write.len() + buf.len() > MAX {
            ready!(this.poll_drain(cx))?;
        }
        if buf.len() >= MAX {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.write.extend_from_slice(buf);
        this.fresh = true;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if std::mem::take(&mut this.fresh) && this.batching.is_on() {
            // The caller may have more to write before it waits (see the module's text).
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;
    use futures::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A writer that counts its write calls and takes at most `chunk` bytes per call.
    #[derive(Default)]
    struct Counting {
        data: Vec<u8>,
        writes: usize,
        flushes: usize,
        chunk: usize,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = buf.len().min(this.chunk.max(1));
            this.data.extend_from_slice(&buf[..n]);
            this.writes += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn small_writes_are_held_until_full_or_flushed_and_arrive_in_order() {
        let mut s = Buffered::new(Counting {
            chunk: usize::MAX,
            ..Default::default()
        });
        let msgs: Vec<Vec<u8>> = (0..100u32)
            .map(|i| vec![i as u8; 1000 + i as usize])
            .collect();
        for m in &msgs {
            s.write_all(m).await.unwrap();
        }
        // 100 writes of about 1 KiB: a write call only each time 64 KiB filled up.
        assert!(s.inner.writes <= 2, "{} writes", s.inner.writes);
        assert!(s.buffered().1 > 0);
        s.flush().await.unwrap();
        assert_eq!(s.buffered().1, 0);
        assert_eq!(s.inner.flushes, 1);
        assert_eq!(s.inner.data, msgs.concat());
        // A write as large as the buffer goes straight through.
        let big = vec![7u8; MAX];
        s.write_all(&big).await.unwrap();
        assert_eq!(s.buffered().1, 0);
        assert_eq!(&s.inner.data[s.inner.data.len() - MAX..], &big[..]);
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn once_on_a_flush_after_new_bytes_yields_so_queued_frames_go_out_in_one_write() {
        let wakes = std::sync::Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut s = Buffered::new(Counting {
            chunk: usize::MAX,
            ..Default::default()
        });
        // Off (during the handshakes), a flush writes at once.
        let frame = vec![3u8; 16 * 1024 - 64];
        assert!(Pin::new(&mut s).poll_write(&mut cx, &frame).is_ready());
        assert!(Pin::new(&mut s).poll_flush(&mut cx).is_ready());
        assert_eq!((s.inner.writes, s.inner.flushes), (1, 1));
        s.batching().on();
        s.inner = Counting {
            chunk: usize::MAX,
            ..Default::default()
        };
        // As yamux sends: a frame, a flush, the next frame queued behind it, a flush...
        for n in 1..=3 {
            assert!(matches!(
                Pin::new(&mut s).poll_write(&mut cx, &frame),
                Poll::Ready(Ok(len)) if len == frame.len()
            ));
            assert!(Pin::new(&mut s).poll_flush(&mut cx).is_pending());
            // Each yield wakes the task, so the flush is asked again.
            assert_eq!(wakes.0.load(std::sync::atomic::Ordering::Relaxed), n);
            assert_eq!(s.inner.writes, 0);
        }
        // ...and once nothing new came, the flush writes the three frames in one call.
        assert!(matches!(
            Pin::new(&mut s).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!((s.inner.writes, s.inner.flushes), (1, 1));
        assert_eq!(s.inner.data.len(), 3 * frame.len());
        // With nothing buffered a flush goes straight through.
        assert!(Pin::new(&mut s).poll_flush(&mut cx).is_ready());
        assert_eq!(s.inner.flushes, 2);
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_socket_that_takes_little_per_call_still_gets_everything() {
        let mut s = Buffered::new(Counting {
            chunk: 1000,
            ..Default::default()
        });
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for part in data.chunks(3000) {
            s.write_all(part).await.unwrap();
        }
        s.close().await.unwrap();
        assert_eq!(s.inner.data, data);
    }

    #[tokio::test]
    async fn reads_come_in_order_and_the_buffer_grows_only_under_sustained_reads() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut s = Buffered::new(Cursor::new(data.clone()));
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, data);
        assert_eq!(s.read_capacity(), MAX);

        // A peer that sends little: the reads are short and no buffer is allocated.
        let mut s = Buffered::new(Cursor::new(vec![1u8; 100]));
        let mut buf = [0u8; 4096];
        assert_eq!(s.read(&mut buf).await.unwrap(), 100);
        assert_eq!(s.read_capacity(), 0);
    }
}

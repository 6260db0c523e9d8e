//! Test transports: one that holds back a dialled connection's writes, one that records
//! the addresses dialled.

use super::*;

/// Holds back writes on the connections a node dialled while set.
#[derive(Default)]
pub(super) struct Stall {
    on: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Stall {
    pub(super) fn set(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
        if !on {
            for w in self.wakers.lock().unwrap().drain(..) {
                w.wake();
            }
        }
    }
}

/// A connection whose writes wait while its [`Stall`] is set.
struct Stalled<S> {
    inner: S,
    stall: Option<Arc<Stall>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Stalled<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stalled<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(stall) = &this.stall
            && stall.on.load(Ordering::SeqCst)
        {
            stall.wakers.lock().unwrap().push(cx.waker().clone());
            // Still set after registering: the wake of `set(false)` may have passed.
            if stall.on.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

/// The memory transport, with writes on the connections this node dials held back while
/// `stall` is set.
pub(super) fn stalling_transport(stall: Arc<Stall>) -> TransportFactory {
    memory_wrapped(move |conn, endpoint| {
        let stall = endpoint.is_dialer().then(|| stall.clone());
        Ok(Stalled { inner: conn, stall })
    })
}

/// The memory transport, recording every address this node dials (before the dial is
/// tried, so addresses the memory transport cannot dial are recorded too).
pub(super) fn recording_transport(dialled: Arc<Mutex<Vec<Multiaddr>>>) -> TransportFactory {
    Arc::new(move |key| {
        Ok(Recording {
            inner: p2pnode_node::swarm::memory_transport(key)?,
            dialled: dialled.clone(),
        }
        .boxed())
    })
}

struct Recording {
    inner: Boxed<(p2pnode_node::PeerId, StreamMuxerBox)>,
    dialled: Arc<Mutex<Vec<Multiaddr>>>,
}

impl Transport for Recording {
    type Output = (p2pnode_node::PeerId, StreamMuxerBox);
    type Error = std::io::Error;
    type ListenerUpgrade =
        <Boxed<(p2pnode_node::PeerId, StreamMuxerBox)> as Transport>::ListenerUpgrade;
    type Dial = <Boxed<(p2pnode_node::PeerId, StreamMuxerBox)> as Transport>::Dial;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: libp2p::core::transport::DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        self.dialled.lock().unwrap().push(addr.clone());
        self.inner.dial(addr, opts)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

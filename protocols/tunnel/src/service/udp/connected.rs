//! A link's own socket, connected to the member's endpoint on the shared port, as
//! boringtun keeps one per peer.
//!
//! Why: the kernel looks up a route for every datagram an unconnected socket sends, and
//! for every datagram it receives. A connected socket keeps its route, and the receiver's
//! early demultiplexing finds a connected socket by its four-tuple and uses the route
//! cached on it. Counted with the kernel's `fib:fib_table_lookup` tracepoint between two
//! namespaces (1,000 datagrams each): 2,004 lookups with unconnected sockets, 5 with
//! connected ones sending with plain `send`, 1,005 when those sends carried a control
//! message (quinn-udp always adds the ECN one) or an address, either of which makes the
//! kernel route that datagram anew. So only a lone datagram goes out here, with a plain
//! `send`; GSO runs stay on the shared socket (one lookup per run).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};

use super::super::data::ReaderHandle;
use super::{Recv, Udp, UdpLink, UdpReader, grow_buffers};

/// Most connected sockets open at once, across networks. Each is a descriptor, and the
/// daemon runs under the usual limit of 1,024 (the tunnel takes up to 1,024 links): a
/// link past it sends from the shared socket, which costs a route lookup a datagram and
/// nothing else.
pub(super) const MAX_CONNECTED: usize = 128;

/// Counts the connected sockets open, against a bound.
pub(super) struct Slots {
    open: Arc<AtomicUsize>,
    max: usize,
}

impl Slots {
    pub(super) fn new(max: usize) -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A slot, if fewer than the bound are taken; it is given back when dropped.
    fn take(&self) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(self.open.clone()))
    }
}

struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The socket, and its reader on the data thread (dropped with it: the member's
/// datagrams then reach the shared socket again).
pub(super) struct Connected {
    socket: Arc<UdpSocket>,
    _reader: ReaderHandle,
    _slot: Slot,
}

impl Connected {
    /// A socket on `udp`'s port connected to `to`, read on the data thread like the shared
    /// one (the member's datagrams come to it from now on).
    pub(super) fn open(udp: &Arc<Udp>, link: &Arc<UdpLink>, to: SocketAddr) -> io::Result<Self> {
        if to.is_ipv6() && !udp.dual {
            return Err(io::Error::other("no IPv6 on this host's datagram socket"));
        }
        let slot = udp
            .slots
            .take()
            .ok_or_else(|| io::Error::other("as many connected sockets as allowed are open"))?;
        let socket = reuse_port_socket(to)?;
        if to.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        let any = SocketAddr::new(
            match to {
                SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            },
            udp.port,
        );
        socket.bind(&any.into())?;
        socket.connect(&to.into())?;
        socket.set_nonblocking(true)?;
        let socket: UdpSocket = socket.into();
        grow_buffers(&socket);
        // GRO, as on the shared socket: without it the kernel splits every GSO run the
        // member sends, and throughput halved when tried.
        setsockopt(&socket, sockopt::UdpGroSegment, &true)?;
        let socket = Arc::new(socket);
        let recv = Recv::Connected {
            peer: to,
            space: control_space(),
            link: Arc::downgrade(link),
        };
        let reader = UdpReader::of(udp.clone(), socket.clone(), recv);
        let reader = udp.spawner.add(Box::new(reader))?;
        Ok(Self {
            socket,
            _reader: reader,
            _slot: slot,
        })
    }

    pub(super) fn socket(&self) -> Arc<UdpSocket> {
        self.socket.clone()
    }
}

/// One read from a connected socket into `buf`: the bytes read, and the size of each
/// datagram in them when the kernel coalesced several (GRO), else 0.
///
/// Why not quinn-udp's receive, as on the shared socket: that one asks the kernel for the
/// sender's address and for the ECN and destination-address messages on every read, and
/// parses them; a connected socket's sender is known, and only GRO's segment size is
/// needed. Traced, quinn-udp's `recvmmsg` took 6 µs where boringtun's `recvfrom` took 4,
/// on the echo path whose round trip we race.
///
/// `space` is the control-message buffer, made once by [`control_space`]: not allocated
/// and zeroed per read (each read of an echo's datagram did, and so did the read that
/// finds the socket empty).
pub(super) fn recv(
    socket: &UdpSocket,
    buf: &mut [u8],
    space: &mut [u8],
) -> io::Result<(usize, usize)> {
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(space), MsgFlags::empty())?;
    let mut stride = 0;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::UdpGroSegments(size) = c {
            stride = usize::try_from(size).unwrap_or(0);
        }
    }
    Ok((msg.bytes, stride))
}

/// The buffer [`recv`] needs for GRO's segment size.
pub(super) fn control_space() -> Vec<u8> {
    nix::cmsg_space!(i32)
}

/// How long after a connected socket failed to open (the bound reached, say) the link
/// tries again for the same endpoint.
pub(super) const CONNECT_RETRY: Duration = Duration::from_secs(10);

/// A link's last try to open a connected socket.
pub(super) struct Tried {
    pub(super) to: SocketAddr,
    pub(super) socket: Option<Connected>,
    pub(super) at: Instant,
}

/// Whether to open a connected socket to `to` now: none was tried for it, or the last
/// try failed [`CONNECT_RETRY`] ago or more (a slot may have freed since).
pub(super) fn connect_due(
    last: Option<(SocketAddr, bool, Instant)>,
    to: SocketAddr,
    now: Instant,
) -> bool {
    match last {
        Some((at, opened, _)) if at == to && opened => false,
        Some((at, _, tried)) if at == to => now.saturating_duration_since(tried) >= CONNECT_RETRY,
        _ => true,
    }
}

impl UdpLink {
    /// Gives the link a socket connected to its usable endpoint, once per endpoint (one
    /// that failed to open is tried again after [`CONNECT_RETRY`]).
    pub(super) fn keep_connected(self: &Arc<Self>, udp: &Arc<Udp>, now: Instant) {
        let Some(to) = self.usable(now) else {
            return;
        };
        let due = {
            let c = self.connected.lock();
            let last = c.as_ref().map(|t| (t.to, t.socket.is_some(), t.at));
            connect_due(last, to, now)
        };
        if !due {
            return;
        }
        // Opened outside the lock: the data thread takes it for every lone datagram.
        let socket = Connected::open(udp, self, to)
            .inspect_err(|e| tracing::debug!(%to, "tunnel: no connected datagram socket: {e}"))
            .ok();
        *self.connected.lock() = Some(Tried {
            to,
            socket,
            at: now,
        });
    }

    /// The link's socket connected to `to`, if it has one.
    pub(super) fn connected_to(&self, to: SocketAddr) -> Option<Arc<UdpSocket>> {
        match &*self.connected.lock() {
            Some(Tried {
                to: at,
                socket: Some(c),
                ..
            }) if at == &to => Some(c.socket()),
            _ => None,
        }
    }
}

/// A UDP socket for `to`'s family that may join the shared socket's port (see
/// [`super::share_port`]), not bound yet.
fn reuse_port_socket(to: SocketAddr) -> io::Result<socket2::Socket> {
    use nix::sys::socket::{setsockopt, sockopt};
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(to), Type::DGRAM, Some(Protocol::UDP))?;
    setsockopt(&socket, sockopt::ReusePort, &true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::udp::{bind_dual_stack, send_waiting, share_port};

    fn reader(port: u16) -> UdpSocket {
        let s = UdpSocket::bind(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    #[test]
    fn the_member_reaches_the_connected_socket_and_everyone_else_the_shared_one() {
        let shared = bind_dual_stack(0).unwrap();
        share_port(&shared).unwrap();
        let port = shared.local_addr().unwrap().port();
        let (member, stranger) = (reader(0), reader(0));
        let to = member.local_addr().unwrap();
        let socket = reuse_port_socket(to).unwrap();
        socket
            .bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())
            .unwrap();
        socket.connect(&to.into()).unwrap();
        let connected: UdpSocket = socket.into();
        for s in [&shared, &connected] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }

        // Ours goes out from the shared port, with a plain send.
        assert!(send_waiting(&connected, || connected.send(b"lone")));
        let mut buf = [0u8; 16];
        let (n, from) = member.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from.port()), (&b"lone"[..], port));

        let at = SocketAddr::from(([127, 0, 0, 1], port));
        member.send_to(b"member", at).unwrap();
        stranger.send_to(b"stranger", at).unwrap();
        let n = connected.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"member");
        let (n, from) = shared.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"stranger");
        assert_eq!(from.port(), stranger.local_addr().unwrap().port());
        // Nothing else came to the connected socket.
        connected.set_nonblocking(true).unwrap();
        assert!(connected.recv(&mut buf).is_err());
    }

    #[test]
    fn another_node_cannot_take_the_shared_port() {
        let shared = bind_dual_stack(0).unwrap();
        share_port(&shared).unwrap();
        let port = shared.local_addr().unwrap().port();
        // Another node's shared socket: its bind comes before its option, so it fails.
        let err = bind_dual_stack(port).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn connected_sockets_are_bounded_and_a_closed_one_frees_its_slot() {
        let slots = Slots::new(3);
        let taken: Vec<Slot> = (0..3).map(|_| slots.take().unwrap()).collect();
        assert!(slots.take().is_none(), "a fourth socket past the bound");
        drop(taken);
        let again: Vec<Slot> = (0..3).map(|_| slots.take().unwrap()).collect();
        assert_eq!(again.len(), 3);
        assert!(slots.take().is_none());
    }

    #[test]
    fn a_connected_socket_that_failed_is_tried_again_later_and_one_that_opened_is_kept() {
        let (a, b): (SocketAddr, SocketAddr) = (
            "198.51.100.7:4000".parse().unwrap(),
            "198.51.100.8:4000".parse().unwrap(),
        );
        let t0 = Instant::now();
        assert!(connect_due(None, a, t0), "never tried");
        assert!(!connect_due(Some((a, true, t0)), a, t0 + CONNECT_RETRY * 5));
        assert!(
            connect_due(Some((a, true, t0)), b, t0),
            "the endpoint moved"
        );
        // Failed (the bound reached): not again at once, again once the retry time passed.
        assert!(!connect_due(
            Some((a, false, t0)),
            a,
            t0 + CONNECT_RETRY / 2
        ));
        assert!(connect_due(Some((a, false, t0)), a, t0 + CONNECT_RETRY));
        assert!(connect_due(Some((a, false, t0)), b, t0));
    }

    #[test]
    fn a_connected_socket_reads_a_coalesced_run_with_its_segment_size() {
        use nix::sys::socket::{ControlMessage, sendmsg};
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(sender.local_addr().unwrap()).unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        setsockopt(&socket, sockopt::UdpGroSegment, &true).unwrap();
        let to = nix::sys::socket::SockaddrIn::from(match socket.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!("bound to an IPv4 address"),
        });
        let mut buf = vec![0u8; 65_535];
        // One control buffer for every read, as a reader keeps it.
        let mut space = control_space();

        // Three datagrams of 100 bytes sent as one GSO run arrive as one read of 300.
        let run: Vec<u8> = (0..300).map(|i| (i / 100) as u8).collect();
        let segment = 100u16;
        let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
        let iov = [io::IoSlice::new(&run)];
        sendmsg(
            sender.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::empty(),
            Some(&to),
        )
        .unwrap();
        assert_eq!(recv(&socket, &mut buf, &mut space).unwrap(), (300, 100));
        assert_eq!(&buf[..300], &run[..]);

        // A lone datagram: no segment size.
        sender
            .send_to(b"lone", socket.local_addr().unwrap())
            .unwrap();
        assert_eq!(recv(&socket, &mut buf, &mut space).unwrap(), (4, 0));
        assert_eq!(&buf[..4], b"lone");
    }
}

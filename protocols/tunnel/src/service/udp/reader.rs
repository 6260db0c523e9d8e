//! The datagram sockets' reader on the data thread: each read's datagrams to their links,
//! the packets that pass into their devices, and a lone packet's hand-over to its device's
//! reader.

use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::{Arc, Weak};

use quinn_udp::{RecvMeta, UdpSocketState};

use crate::device::WriteBatch;

use super::super::data::{Done, Reader};
use super::{Opened, RECV_BUF, RECV_BURST, Udp, UdpLink, WRITE_BATCH, connected};

/// Reads a datagram socket on the data thread (the shared one, or a link's connected
/// one): each datagram (several per read, where the kernel coalesced them) to its link,
/// and the packets that pass into their device.
pub(in crate::service) struct UdpReader {
    udp: Arc<Udp>,
    socket: Arc<UdpSocket>,
    recv: Recv,
    buf: Vec<u8>,
    writes: WriteBatch,
    /// A lone packet's link and sender: the packet was written into the link's device and
    /// the thread handed to that device's reader ([`Done::Wrote`]) before the link heard
    /// of the sender, which the next call does first.
    handed: Option<(Arc<UdpLink>, SocketAddr)>,
}

/// What one read did.
enum Step {
    /// The socket had nothing more.
    Empty,
    /// Read and handled.
    More,
    /// One datagram, whose packet was written into its link's device; the link has not
    /// heard of the sender yet ([`UdpLink::heard`]).
    Lone(Arc<UdpLink>, SocketAddr),
}

/// How a reader reads its socket.
pub(super) enum Recv {
    /// The shared socket: quinn-udp's receive, which gives each read's sender.
    Shared(Arc<UdpSocketState>),
    /// A link's connected socket, whose every datagram is from this endpoint: a plain
    /// `recvmsg` asking only for GRO's segment size (see [`connected::recv`]).
    Connected {
        peer: SocketAddr,
        /// The control-message buffer.
        space: Vec<u8>,
        /// The link that opened the socket, whose datagrams come to it: found without the
        /// links' map (its lock, hash and table are cache misses on an idle echo's path).
        /// The member's links in other networks come over the same socket and are looked
        /// up as on the shared one.
        link: Weak<UdpLink>,
    },
}

impl UdpReader {
    /// The reader of the shared socket.
    pub(in crate::service) fn new(udp: Arc<Udp>) -> Self {
        let (socket, state) = (udp.socket.clone(), udp.state.clone());
        Self::of(udp, socket, Recv::Shared(state))
    }

    /// The reader of `socket`, whose datagrams go to `udp`'s links like the shared one's.
    pub(super) fn of(udp: Arc<Udp>, socket: Arc<UdpSocket>, recv: Recv) -> Self {
        Self {
            udp,
            socket,
            recv,
            buf: vec![0u8; RECV_BUF],
            writes: WriteBatch::new(WRITE_BATCH),
            handed: None,
        }
    }

    /// Reads into the buffer: the bytes read, the size of each datagram in them (where
    /// the kernel coalesced several), and their sender.
    fn recv(&mut self) -> std::io::Result<(usize, usize, SocketAddr)> {
        let (len, stride, from) = match &mut self.recv {
            Recv::Shared(state) => {
                let mut meta = [RecvMeta::default()];
                let mut iov = [IoSliceMut::new(&mut self.buf)];
                state.recv((&*self.socket).into(), &mut iov, &mut meta)?;
                let [m] = meta;
                // An IPv4 sender reaches the dual-stack socket as `::ffff:a.b.c.d`.
                let from = SocketAddr::new(m.addr.ip().to_canonical(), m.addr.port());
                (m.len, m.stride, from)
            }
            Recv::Connected { peer, space, .. } => {
                let (len, stride) = connected::recv(&self.socket, &mut self.buf, space)?;
                (len, stride, *peer)
            }
        };
        let len = len.min(self.buf.len());
        Ok((len, if stride == 0 { len } else { stride }, from))
    }

    /// One read.
    fn read_one(&mut self) -> Step {
        let (len, stride, from) = match self.recv() {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Step::Empty,
            Err(e) => {
                // An ICMP error from an earlier send, mostly: the socket still works.
                tracing::debug!("tunnel: UDP receive: {e}");
                return Step::More;
            }
        };
        let udp = &*self.udp;
        let likely = match &self.recv {
            Recv::Connected { link, .. } => Some(link),
            Recv::Shared(_) => None,
        };
        if len == 0 {
            return Step::More;
        }
        if len <= stride {
            // One datagram (an echo, a keystroke): its packet goes into the device as it
            // lies in the buffer, with no batch to copy it into and no coalescing to try,
            // the device's header written over the frame's (opened) header before it.
            // Where the packet lies in the buffer (it is borrowed from it).
            let base = self.buf.as_ptr() as usize;
            let Some(Opened { link, packet }) = udp.on_datagram(&mut self.buf[..len], from, likely)
            else {
                return Step::More;
            };
            let written = packet
                .map(|p| (p.as_ptr() as usize - base, p.len()))
                .map(|(at, n)| link.device.try_send_in_place(&mut self.buf[..at + n], at));
            match written {
                Some(Ok(_)) => return Step::Lone(link, from),
                Some(Err(e)) => {
                    tracing::debug!("tunnel: cannot write a packet into the TUN device: {e}")
                }
                None => {}
            }
            link.heard(from);
            return Step::More;
        }
        // The packets that pass go to their device in one batch (coalesced there with
        // offloads on); a packet for another device sends the batch first. Each link
        // hears of the sender once per read, after the writes.
        let mut to: Option<Arc<UdpLink>> = None;
        let mut heard: Option<Arc<UdpLink>> = None;
        for datagram in self.buf[..len].chunks_mut(stride) {
            let Some(Opened { link, packet }) = udp.on_datagram(datagram, from, likely) else {
                continue;
            };
            if let Some(h) = heard.as_ref().filter(|h| !Arc::ptr_eq(h, &link)) {
                h.heard(from);
            }
            heard = Some(link.clone());
            let Some(packet) = packet else {
                continue;
            };
            let other = to
                .as_ref()
                .is_some_and(|t| !Arc::ptr_eq(&t.device, &link.device));
            if (other || self.writes.is_full())
                && let Some(t) = &to
            {
                t.write(&mut self.writes);
            }
            self.writes.push(packet);
            to = Some(link);
        }
        if let Some(t) = &to {
            t.write(&mut self.writes);
        }
        if let Some(h) = heard {
            h.heard(from);
        }
        Step::More
    }
}

impl Reader for UdpReader {
    fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// A lone packet read first and written into its device hands the thread to the
    /// device's reader (see [`Done::Wrote`]); called again after it, this reader lets the
    /// link hear of the sender and stops. It does not read on: the wait is
    /// level-triggered and reports what is queued, and a read that finds the socket empty
    /// would keep the CPU from the other side, which the kernel may have woken onto it.
    fn on_readable(&mut self) -> Result<Done, String> {
        if let Some((link, from)) = self.handed.take() {
            link.heard(from);
            return Ok(Done::Read);
        }
        for read in 0..RECV_BURST {
            match self.read_one() {
                Step::Empty => break,
                Step::More => {}
                Step::Lone(link, from) if read == 0 => {
                    let device = link.device.fd().as_raw_fd();
                    self.handed = Some((link, from));
                    return Ok(Done::Wrote(device));
                }
                Step::Lone(link, from) => link.heard(from),
            }
        }
        Ok(Done::Read)
    }
}

//! The send side of the datagram socket: sealed datagrams gathered into GSO runs.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use p2pnode_secure::session::{HEADER_LEN, TAG_LEN};
use quinn_udp::{Transmit, UdpSocketState};

use crate::datagram::INDEX_LEN;

use super::{MAX_GSO_BYTES, RECV_BUF, UdpLink, on_wire, send_waiting};

/// Datagrams the TUN reader sealed and has not sent yet: a run to one address, all of one
/// size but the last, sent with one GSO call (one syscall and one trip down the kernel's
/// stack for the whole run). A run of one goes out on the link's connected socket where
/// it has one (see [`super::connected`]). The buffer is allocated once.
pub(in crate::service) struct Batch {
    socket: Arc<UdpSocket>,
    state: Arc<UdpSocketState>,
    buf: Vec<u8>,
    to: Option<SocketAddr>,
    /// The run's link's socket connected to `to`.
    connected: Option<Arc<UdpSocket>>,
    segment: usize,
    count: usize,
    /// The last datagram was shorter than the segment: the run cannot grow.
    closed: bool,
    max_segments: usize,
    /// Datagrams that failed (lost, as on any lossy link), counted for `vpn status`.
    failed: Arc<AtomicU64>,
    /// The socket is dual-stack (see [`on_wire`]).
    dual: bool,
}

impl Batch {
    pub(super) fn new(
        socket: Arc<UdpSocket>,
        state: Arc<UdpSocketState>,
        failed: Arc<AtomicU64>,
        dual: bool,
    ) -> Self {
        let max_segments = state.max_gso_segments().max(1);
        Self {
            socket,
            state,
            buf: Vec::with_capacity(MAX_GSO_BYTES + RECV_BUF),
            to: None,
            connected: None,
            segment: 0,
            count: 0,
            closed: false,
            max_segments,
            failed,
            dual,
        }
    }

    /// Seals `packet` for `link` at the end of the run, sending the run first when the
    /// datagram cannot join it.
    pub(in crate::service) fn push(
        &mut self,
        link: &UdpLink,
        to: SocketAddr,
        packet: &[u8],
        now: Instant,
    ) {
        let len = INDEX_LEN + HEADER_LEN + packet.len() + TAG_LEN;
        let joins = self.count > 0
            && self.to == Some(to)
            && !self.closed
            && len <= self.segment
            && self.count < self.max_segments
            && self.buf.len() + len <= MAX_GSO_BYTES;
        if self.count > 0 && !joins {
            self.flush();
        }
        let start = self.buf.len();
        if !link.seal_append(packet, &mut self.buf, now) {
            self.buf.truncate(start);
            self.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let sealed = self.buf.len() - start;
        if self.count == 0 {
            self.to = Some(to);
            self.connected = link.connected_to(to);
            self.segment = sealed;
        } else if sealed < self.segment {
            self.closed = true;
        }
        self.count += 1;
        // A size other than the one expected (padding, say) ends the run here.
        if sealed != len {
            self.closed = true;
        }
    }

    /// Sends the run, waiting a moment for room when the socket's buffer is full.
    pub(in crate::service) fn flush(&mut self) {
        let Some(to) = self.to.take() else {
            return;
        };
        let connected = self.connected.take();
        let sent = match (on_wire(to, self.dual), connected) {
            // A plain `send`: no address and no control message, so the kernel keeps the
            // connected socket's route.
            (Some(_), Some(socket)) if self.count == 1 => {
                send_waiting(&socket, || socket.send(&self.buf))
            }
            (Some(to), _) => {
                let transmit = Transmit {
                    destination: to,
                    ecn: None,
                    contents: &self.buf,
                    segment_size: (self.count > 1).then_some(self.segment),
                    src_ip: None,
                };
                send_waiting(&self.socket, || {
                    self.state.send((&*self.socket).into(), &transmit)
                })
            }
            (None, _) => false,
        };
        if !sent {
            self.failed.fetch_add(self.count as u64, Ordering::Relaxed);
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
    }
}

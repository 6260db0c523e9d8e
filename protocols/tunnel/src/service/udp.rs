//! The datagram path (see [`crate::datagram`] for the why and the wire): the service's
//! UDP socket, each member's datagram link, the socket's reader (on the data thread) and
//! the task that probes. The negotiation over a new tunnel stream is in `negotiate`, the
//! sending in GSO runs in `batch`, each link's own connected socket in `connected`, the
//! probing in `probe`, the sockets' reader in `reader`.
//!
//! One socket serves every network: the index in front of each frame finds the link,
//! and the link knows its network's data path and device. A stranger's datagram costs a
//! map lookup (an unknown index) or one failed AEAD open (a guessed index); nothing is
//! kept for it and nothing is sent back. Only an authenticated datagram moves a member's
//! endpoint or is answered, one probe for one probe.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Instant;

use p2pnode_secure::Session;
use p2pnode_secure::session::HEADER_LEN;
use parking_lot::Mutex;
use quinn_udp::UdpSocketState;

use crate::datagram::{self, INDEX_LEN, PathState, Payload};
use crate::device::{TunDevice, WriteBatch};
use crate::{MemberId, Slot};

use super::data::Spawner;
use super::path::SharedPath;

mod batch;
pub(super) use batch::Batch;
mod connected;
use connected::{MAX_CONNECTED, Slots, Tried};
mod negotiate;
mod probe;
mod reader;
pub(super) use negotiate::{Local, Negotiated, answer, offer, push_ips};
use reader::Recv;
pub(super) use reader::UdpReader;

/// The datagram session's handshake label: not the stream's, so no message of one
/// handshake can stand in for the other's.
const LABEL: &[u8] = b"/p2pnode/tunnel/1/datagram";
/// The receive buffer: one GRO read (the kernel coalesces at most 64 KiB), or one
/// datagram of any size.
const RECV_BUF: usize = 65_535;
/// Most packets written into a device at once (a GRO read holds at most 64 datagrams).
const WRITE_BATCH: usize = 64;
/// How long a send waits for room in a full socket buffer before its datagrams count as
/// lost: the data thread's back-pressure, as a blocking socket would give.
const SEND_WAIT_MS: u16 = 100;
/// Most socket reads at one readiness (the rest is read at the next).
const RECV_BURST: usize = 64;
/// The datagram socket's receive and send buffers (the kernel doubles what it is given).
const SOCKET_BUFFER: usize = 4 << 20;
/// The most bytes one GSO send carries (the kernel's limit is 64 KiB of payload).
const MAX_GSO_BYTES: usize = 60 * 1024;

/// The service's UDP socket and the datagram links by our index. The socket is
/// non-blocking and registered with no async runtime: the data thread waits on it (see
/// [`super::data`]), and probes are sent without waiting.
pub(super) struct Udp {
    socket: Arc<UdpSocket>,
    /// Batched IO on the socket: GSO for sends, GRO for receives, where the kernel has them.
    state: Arc<UdpSocketState>,
    port: u16,
    /// Bound on `[::]` for IPv6 and IPv4 both (else on `0.0.0.0`, IPv4 only).
    dual: bool,
    links: RwLock<HashMap<u32, Arc<UdpLink>>>,
    /// Datagrams for no link of ours (unknown index, or too short to have one).
    unknown: AtomicU64,
    /// Datagrams of the TUN readers' batches that could not be sealed or sent.
    send_failed: Arc<AtomicU64>,
    /// Adds the readers of the links' connected sockets to the data thread.
    spawner: Spawner,
    /// The links' connected sockets open, against their bound.
    slots: Slots,
}

impl Udp {
    /// Binds the socket on every address, IPv6 and IPv4 (IPv4 only where the host has no
    /// IPv6), on `port` (0: any free one). The links' connected sockets share the port
    /// (see [`share_port`]) and readers on `spawner`'s thread.
    pub(super) fn bind(port: u16, spawner: Spawner) -> std::io::Result<Arc<Self>> {
        let (socket, dual) = match bind_dual_stack(port) {
            Ok(socket) => (socket, true),
            Err(e) => {
                tracing::debug!("tunnel: no IPv6 datagram socket, IPv4 only: {e}");
                let v4 = std::net::UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port)))?;
                (v4, false)
            }
        };
        share_port(&socket)?;
        socket.set_nonblocking(true)?;
        let port = socket.local_addr()?.port();
        grow_buffers(&socket);
        let state = UdpSocketState::new((&socket).into())?;
        tracing::debug!(
            gso_segments = state.max_gso_segments(),
            gro_segments = state.gro_segments(),
            "tunnel: datagram socket offloads"
        );
        Ok(Arc::new(Self {
            socket: Arc::new(socket),
            state: Arc::new(state),
            port,
            dual,
            links: RwLock::new(HashMap::new()),
            unknown: AtomicU64::new(0),
            send_failed: Arc::new(AtomicU64::new(0)),
            spawner,
            slots: Slots::new(MAX_CONNECTED),
        }))
    }

    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// Registers `link` under its index; `false` when the index is taken (then the member
    /// stays on the stream).
    fn register(&self, link: Arc<UdpLink>) -> bool {
        let Ok(mut links) = self.links.write() else {
            return false;
        };
        if links.contains_key(&link.index) {
            return false;
        }
        links.insert(link.index, link);
        true
    }

    fn forget(&self, link: &Arc<UdpLink>) {
        if let Ok(mut links) = self.links.write()
            && links.get(&link.index).is_some_and(|l| Arc::ptr_eq(l, link))
        {
            links.remove(&link.index);
        }
    }

    fn link(&self, index: u32) -> Option<Arc<UdpLink>> {
        self.links.read().ok()?.get(&index).cloned()
    }

    /// A batch for the TUN reader's datagrams.
    pub(super) fn batch(&self) -> Batch {
        Batch::new(
            self.socket.clone(),
            self.state.clone(),
            self.send_failed.clone(),
            self.dual,
        )
    }

    /// One datagram: its link and its packet, if it opened and carried one.
    fn on_datagram<'a>(
        &self,
        datagram: &'a mut [u8],
        from: SocketAddr,
        likely: Option<&Weak<UdpLink>>,
    ) -> Option<Opened<'a>> {
        let Some((index, frame)) = datagram::split(datagram) else {
            self.unknown.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let likely = likely.and_then(Weak::upgrade).filter(|l| l.index == index);
        let Some(link) = likely.or_else(|| self.link(index)) else {
            self.unknown.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let packet = link.receive(frame, from)?;
        Some(Opened { link, packet })
    }

    /// (datagrams that named no link of ours, datagrams the batches failed to send).
    pub(super) fn drops(&self) -> (u64, u64) {
        (
            self.unknown.load(Ordering::Relaxed),
            self.send_failed.load(Ordering::Relaxed),
        )
    }
}

/// A datagram that opened and carried a packet. The caller writes the packet into the
/// device (if it passed the checks), and only then tells the link it heard the sender
/// ([`UdpLink::heard`]): that reads the clock, which a lone echo's datagram found cold
/// (traced, about 3 µs of its receive's user time), so it runs after the write, off the
/// round trip's path.
struct Opened<'a> {
    link: Arc<UdpLink>,
    /// The packet, if it passed the checks.
    packet: Option<&'a [u8]>,
}

/// Socket buffers for bursts at link speed: the default (about 200 KiB, much of it
/// per-datagram overhead) drops a burst of a few hundred datagrams while the reader is
/// busy. Forced past the sysctl limit where we may (CAP_NET_ADMIN), else as large as the
/// limit allows.
fn grow_buffers(socket: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err()
        && let Err(e) = setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER)
    {
        tracing::debug!("tunnel: cannot grow the datagram socket's receive buffer: {e}");
    }
    if setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err()
        && let Err(e) = setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER)
    {
        tracing::debug!("tunnel: cannot grow the datagram socket's send buffer: {e}");
    }
}

/// A UDP socket on `[::]:port` that IPv4 reaches too (`IPV6_V6ONLY` off, whatever the
/// system's default), for members whose direct path is IPv6.
fn bind_dual_stack(port: u16) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_only_v6(false)?;
    socket.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
    Ok(socket.into())
}

/// Opens the bound shared socket's port to the links' connected sockets (`SO_REUSEPORT`,
/// set on them before their bind). The kernel hands a datagram to the socket connected to
/// its sender, if any, else to the one unconnected socket of the port: connected sockets
/// never take another sender's datagrams, and only sockets of our own user may join.
/// Set after the bind, not before: a port-0 bind with the option may be given the port of
/// another socket of ours that has it (another node's on this host), and share its
/// datagrams.
fn share_port(socket: &UdpSocket) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(socket, sockopt::ReusePort, &true)?;
    Ok(())
}

/// Runs `send` on `socket`, and once more when its buffer was full, after waiting up to
/// [`SEND_WAIT_MS`] for room (the data thread's back-pressure, as a blocking socket would
/// give); whether it went. A datagram that did not is lost, as on any lossy link.
fn send_waiting<T>(socket: &UdpSocket, send: impl Fn() -> std::io::Result<T>) -> bool {
    match send() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            super::data::wait_writable(socket.as_fd(), SEND_WAIT_MS) && send().is_ok()
        }
        sent => sent.is_ok(),
    }
}

/// `to` as the socket takes it: an IPv4 address mapped into IPv6 on a dual-stack socket;
/// `None` for an IPv6 address on an IPv4-only one (it cannot be reached from there).
fn on_wire(to: SocketAddr, dual: bool) -> Option<SocketAddr> {
    match (to.ip(), dual) {
        (IpAddr::V4(v4), true) => Some(SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), to.port())),
        (IpAddr::V6(_), false) => None,
        _ => Some(to),
    }
}

/// One member's datagram link in one network.
pub(super) struct UdpLink {
    /// Our index: the member puts it in front of every frame to us.
    index: u32,
    /// The member's index, in front of every frame to it.
    peer_index: u32,
    /// The member's UDP port, for addresses found later.
    peer_port: u16,
    /// The member's slot in the data path's engine.
    slot: Slot,
    socket: Arc<UdpSocket>,
    /// The socket is dual-stack (see [`on_wire`]).
    dual: bool,
    session: Mutex<Session>,
    state: Mutex<PathState>,
    path: SharedPath,
    device: Arc<TunDevice>,
    mtu: u16,
    /// Frames that failed to open, payloads of no known kind, and sends that failed.
    rejected: AtomicU64,
    send_failed: AtomicU64,
    /// The socket connected to the endpoint last seen usable (see [`connected`]), or the
    /// endpoint that could not have one and when that was tried.
    connected: Mutex<Option<Tried>>,
    /// Wakes the probe task when the data thread sees the path change.
    wake: tokio::sync::Notify,
}

/// A member's datagram link while its stream lives: registered with the socket and the
/// data path, and its probe task; dropping it undoes all three.
pub(super) struct Attached {
    udp: Arc<Udp>,
    pub(super) link: Arc<UdpLink>,
    prober: tokio::task::JoinHandle<()>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.prober.abort();
        // Its reader leaves the data thread; the member's datagrams reach the shared
        // socket again.
        self.link.connected.lock().take();
        self.udp.forget(&self.link);
        self.link.path.lock().unset_udp(self.link.slot, &self.link);
    }
}

/// Starts the datagram link `n` agreed for `member`: `None` if its index is taken.
pub(super) fn attach(
    udp: &Arc<Udp>,
    n: Negotiated,
    member: MemberId,
    path: SharedPath,
    device: Arc<TunDevice>,
    mtu: u16,
) -> Option<Attached> {
    let slot = path.lock().engine.slot(&member);
    let link = Arc::new(UdpLink {
        index: n.index,
        peer_index: n.peer_index,
        peer_port: n.peer_port,
        slot,
        socket: udp.socket.clone(),
        dual: udp.dual,
        session: Mutex::new(n.session),
        state: Mutex::new(PathState::new(n.candidates, Instant::now())),
        path: path.clone(),
        device,
        mtu,
        rejected: AtomicU64::new(0),
        send_failed: AtomicU64::new(0),
        connected: Mutex::new(None),
        wake: tokio::sync::Notify::new(),
    });
    if !udp.register(link.clone()) {
        return None;
    }
    path.lock().set_udp(slot, link.clone());
    let prober = super::spawn(probe::run(link.clone(), udp.clone()));
    Some(Attached {
        udp: udp.clone(),
        link,
        prober,
    })
}

impl UdpLink {
    /// Where packets to the member go now, if the datagram path is up.
    pub(super) fn usable(&self, now: Instant) -> Option<SocketAddr> {
        self.state.lock().usable(now)
    }

    /// The candidates tried.
    pub(super) fn candidates(&self) -> Vec<SocketAddr> {
        self.state.lock().candidates().to_vec()
    }

    /// The endpoint that last answered.
    pub(super) fn endpoint(&self) -> Option<SocketAddr> {
        self.state.lock().endpoint()
    }

    /// (frames refused, sends failed).
    pub(super) fn errors(&self) -> (u64, u64) {
        (
            self.rejected.load(Ordering::Relaxed),
            self.send_failed.load(Ordering::Relaxed),
        )
    }

    /// Appends `payload` to `buf`, sealed as a datagram for the member.
    fn seal_append(&self, payload: &[u8], buf: &mut Vec<u8>, now: Instant) -> bool {
        let start = buf.len();
        buf.extend_from_slice(&self.peer_index.to_be_bytes());
        buf.resize(start + INDEX_LEN + HEADER_LEN, 0);
        buf.extend_from_slice(payload);
        self.session
            .lock()
            .seal_in_place(buf, start + INDEX_LEN, now)
            .is_ok()
    }

    /// An authenticated datagram with a packet came from `from`: the path's state learns
    /// it (the sender hears us, its endpoint), at the time of this call.
    fn heard(&self, from: SocketAddr) {
        let now = Instant::now();
        self.update_path(now, |s| s.on_datagram(from, now));
    }

    /// Writes `batch` into this link's device.
    fn write(&self, batch: &mut WriteBatch) {
        if let Err(e) = self.device.send_batch(batch) {
            tracing::debug!("tunnel: cannot write packets into the TUN device: {e}");
        }
    }

    /// One datagram for this link: opened, then a probe answered (`None`), or a packet
    /// checked by the engine: `Some` with the packet if it passed, else with none. For a
    /// packet the caller then calls [`UdpLink::heard`].
    fn receive<'a>(&self, frame: &'a mut [u8], from: SocketAddr) -> Option<Option<&'a [u8]>> {
        let Ok(payload) = self.session.lock().open(frame) else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        match datagram::classify(payload) {
            Payload::Probe { hears_you } => {
                let now = Instant::now();
                let answer = self.update_path(now, |s| s.on_probe(from, hears_you, now));
                if answer {
                    self.send_probe(from, true, now);
                }
                None
            }
            Payload::Packet(packet) => {
                let pass = self.path.lock().on_peer_packet(self.slot, packet, self.mtu);
                Some(pass.then_some(packet))
            }
            Payload::Unknown => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;

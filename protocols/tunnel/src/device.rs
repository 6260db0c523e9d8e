//! The TUN device of one network (feature `device`): created with the member's settled
//! addresses and the network's prefixes, brought up, and read and written a packet at a
//! time. The engine never sees it: the service moves packets between the two, so the core
//! is tested without one.

use std::io;

use crate::addr::{Prefixes, V4_PREFIX_LEN, V6_PREFIX_LEN};
use crate::lease::Lease;

/// Errors creating or using the device, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Creating a TUN device needs CAP_NET_ADMIN.
    #[error(
        "creating TUN device {name} needs the CAP_NET_ADMIN capability: run as root, or give \
         the binary the capability (`sudo setcap cap_net_admin+ep $(which p2pnode)`)"
    )]
    Permission {
        /// The device.
        name: String,
    },
    /// The kernel has no TUN support here.
    #[error("no TUN support: /dev/net/tun is missing (load the module: `sudo modprobe tun`)")]
    NoTun,
    /// Anything else.
    #[error("TUN device {name}: {source}")]
    Io {
        /// The device.
        name: String,
        /// What failed.
        source: io::Error,
    },
}

/// Where packets come from and go to: the TUN device, or a test's stand-in. Its futures
/// are `Send`, so a service can run them on any worker thread.
pub trait PacketDevice {
    /// Reads one packet into `buf`, returning its length.
    fn recv(&self, buf: &mut [u8]) -> impl std::future::Future<Output = io::Result<usize>> + Send;
    /// Writes one packet.
    fn send(&self, packet: &[u8]) -> impl std::future::Future<Output = io::Result<usize>> + Send;
    /// Reads one packet if one is waiting, without waiting (`WouldBlock` when none): the
    /// reader drains a burst this way and sends it as one batch.
    fn try_recv(&self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

/// A network's TUN device. Its descriptor is non-blocking and registered with no async
/// runtime: the service's data thread waits on it (see [`TunDevice::fd`]), and other
/// writers write without waiting (a TUN device takes a write or drops it, it does not
/// fill up).
pub struct TunDevice {
    name: String,
    device: tun_rs::SyncDevice,
    /// Offloads on: every read and write carries a virtio-net header, and a read may be
    /// a TCP super-packet of up to 64 KiB that [`TunDevice::try_recv_batch`] splits.
    offload: bool,
}

impl std::fmt::Debug for TunDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunDevice")
            .field("name", &self.name)
            .finish()
    }
}

/// The zero virtio-net header in front of a single packet written with offloads on: no
/// segmentation, no checksum to fill in.
const PLAIN_HEADER: [u8; tun_rs::VIRTIO_NET_HDR_LEN] = [0; tun_rs::VIRTIO_NET_HDR_LEN];

/// What one write buffer must hold for the coalescing to use it: the largest IP packet,
/// with the header room the coalescing asks for on both sides of it.
const SUPER_PACKET_ROOM: usize = u16::MAX as usize + 2 * tun_rs::VIRTIO_NET_HDR_LEN;

/// Most segments of one super-packet a read splits (the buffers a [`ReadBatch`] holds).
/// The device is told to build none larger (`gso_max_segs`, see the service): a read the
/// split refuses is lost whole, and a TCP flow with a tiny MSS (48 bytes is allowed)
/// would otherwise make super-packets of over a thousand segments.
pub const MAX_SEGMENTS: usize = tun_rs::IDEAL_BATCH_SIZE;

/// Buffers for reading a batch: the raw read (a super-packet with its header) and the
/// packets it splits into. Allocated once per reader.
pub struct ReadBatch {
    raw: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
}

impl ReadBatch {
    /// Room for the segments of one super-packet, each at most `mtu` bytes.
    pub fn new(mtu: u16) -> Self {
        let packet = usize::from(mtu).max(1500) + 64;
        Self {
            raw: vec![0; tun_rs::VIRTIO_NET_HDR_LEN + 65_535],
            bufs: vec![vec![0; packet]; MAX_SEGMENTS],
            sizes: vec![0; MAX_SEGMENTS],
        }
    }

    /// Packet `i` of the last read.
    pub fn packet(&self, i: usize) -> &[u8] {
        &self.bufs[i][..self.sizes[i]]
    }
}

/// Packets gathered for one write into the device: with offloads on, consecutive
/// segments of one TCP flow are coalesced into one super-packet (the kernel's GRO, done
/// here), so the inner TCP stack takes one large segment instead of dozens.
pub struct WriteBatch {
    gro: tun_rs::GROTable,
    bufs: Vec<Vec<u8>>,
    len: usize,
}

impl WriteBatch {
    /// Room for `capacity` packets. Each buffer is reserved at the size of the largest
    /// super-packet: the coalescing appends a flow's later segments to its first buffer
    /// and skips any buffer that would have to grow (so buffers sized to one packet
    /// coalesce nothing). Pages are touched only as packets fill them.
    pub fn new(capacity: usize) -> Self {
        Self {
            gro: tun_rs::GROTable::default(),
            bufs: (0..capacity.max(1))
                .map(|_| Vec::with_capacity(SUPER_PACKET_ROOM))
                .collect(),
            len: 0,
        }
    }

    /// Whether no more packets fit.
    pub fn is_full(&self) -> bool {
        self.len == self.bufs.len()
    }

    /// Adds a copy of `packet`.
    pub fn push(&mut self, packet: &[u8]) {
        let Some(buf) = self.bufs.get_mut(self.len) else {
            return;
        };
        buf.clear();
        buf.extend_from_slice(&PLAIN_HEADER);
        buf.extend_from_slice(packet);
        self.len += 1;
    }
}

impl TunDevice {
    /// Creates device `name` with our `lease` on the network's `prefixes` (so the kernel
    /// routes the whole network into it), MTU `mtu`, and brings it up; offloads off.
    pub fn create(
        name: &str,
        lease: Lease,
        prefixes: &Prefixes,
        mtu: u16,
    ) -> Result<Self, DeviceError> {
        Self::create_with(name, lease, prefixes, mtu, false)
    }

    /// [`TunDevice::create`], with the kernel's TCP segmentation and receive offloads
    /// (`IFF_VNET_HDR`) on when `offload` is set and the kernel has them.
    pub fn create_with(
        name: &str,
        lease: Lease,
        prefixes: &Prefixes,
        mtu: u16,
        offload: bool,
    ) -> Result<Self, DeviceError> {
        debug_assert!(prefixes.contains_v4(lease.v4) && prefixes.contains_v6(lease.v6));
        let device = tun_rs::DeviceBuilder::new()
            .name(name)
            .ipv4(lease.v4, V4_PREFIX_LEN, None)
            .ipv6(lease.v6, V6_PREFIX_LEN)
            .mtu(mtu)
            .offload(offload)
            .enable(true)
            .build_sync()
            .and_then(|d| d.set_nonblocking(true).map(|()| d))
            .map_err(|source| match source.kind() {
                io::ErrorKind::PermissionDenied => DeviceError::Permission { name: name.into() },
                io::ErrorKind::NotFound => DeviceError::NoTun,
                _ => DeviceError::Io {
                    name: name.into(),
                    source,
                },
            })?;
        let offload = device.tcp_gso();
        Ok(Self {
            name: name.into(),
            device,
            offload,
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether offloads are on.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// The descriptor to wait on for reads.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.device.as_fd()
    }

    /// Reads one packet, or the segments of one super-packet, into `batch` without
    /// waiting; returns how many (`WouldBlock` when nothing is pending).
    pub fn try_recv_batch(&self, batch: &mut ReadBatch) -> io::Result<usize> {
        let ReadBatch { raw, bufs, sizes } = batch;
        self.device.recv_multiple(raw, bufs, sizes, 0)
    }

    /// Writes the packets of `batch` (coalesced where offloads allow) and empties it.
    pub fn send_batch(&self, batch: &mut WriteBatch) -> io::Result<()> {
        let n = std::mem::take(&mut batch.len);
        if n == 0 {
            return Ok(());
        }
        let bufs = &mut batch.bufs[..n];
        if self.offload {
            self.device
                .send_multiple(&mut batch.gro, bufs, tun_rs::VIRTIO_NET_HDR_LEN)?;
        } else {
            for b in bufs.iter() {
                self.device.send(&b[tun_rs::VIRTIO_NET_HDR_LEN..])?;
            }
        }
        Ok(())
    }

    /// Writes one packet without waiting.
    pub fn try_send(&self, packet: &[u8]) -> io::Result<usize> {
        if !self.offload {
            return self.device.send(packet);
        }
        let parts = [io::IoSlice::new(&PLAIN_HEADER), io::IoSlice::new(packet)];
        let n = self.device.send_vectored(&parts)?;
        Ok(n.saturating_sub(PLAIN_HEADER.len()))
    }

    /// Writes the packet `buf[at..]` without waiting, as [`TunDevice::try_send`] does, but
    /// with offloads on the header goes into the bytes before it (at least
    /// [`tun_rs::VIRTIO_NET_HDR_LEN`] of them, which are overwritten): one buffer in one
    /// plain write, where `try_send` gathers two (and tun-rs allocates to gather them).
    pub fn try_send_in_place(&self, buf: &mut [u8], at: usize) -> io::Result<usize> {
        let header = PLAIN_HEADER.len();
        let Some(packet) = buf.get(at..) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the packet starts past the buffer's end",
            ));
        };
        if !self.offload || at < header {
            return self.try_send(packet);
        }
        let framed = &mut buf[at - header..];
        framed[..header].copy_from_slice(&PLAIN_HEADER);
        let n = self.device.send(framed)?;
        Ok(n.saturating_sub(header))
    }

    /// Waits (at most 100 ms) until the device has a packet to read. The wait polls a
    /// copy of the descriptor on a blocking thread: the device is never registered with
    /// a runtime, which would then hear every packet (see the struct). Only the rare
    /// caller that reads one packet at a time waits this way, never the data path.
    async fn readable(&self) -> io::Result<()> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let fd = self.fd().try_clone_to_owned()?;
        tokio::task::spawn_blocking(move || {
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(100u16)).map_err(io::Error::from)
        })
        .await
        .map_err(io::Error::other)??;
        Ok(())
    }
}

impl PacketDevice for TunDevice {
    /// One packet. With offloads on, a read may be a super-packet that only
    /// [`TunDevice::try_recv_batch`] can split: this refuses such a device.
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.try_recv(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable().await?,
                other => return other,
            }
        }
    }

    /// Without waiting: a TUN device takes a write or drops it.
    async fn send(&self, packet: &[u8]) -> io::Result<usize> {
        self.try_send(packet)
    }

    fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        if self.offload {
            return Err(io::Error::other(
                "offloads are on: read with try_recv_batch",
            ));
        }
        self.device.recv(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::icmp::checksum;

    /// Segment `i` of one TCP flow over IPv4: `len` bytes of payload, checksums valid.
    fn segment(i: u32, len: usize) -> Vec<u8> {
        let (src, dst) = ([10, 77, 0, 1], [10, 77, 0, 2]);
        let total = 40 + len;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40; // don't fragment
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let ip = checksum(&p[..20], 0);
        p[10..12].copy_from_slice(&ip.to_be_bytes());
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&(1000 + i * len as u32).to_be_bytes());
        t[8..12].copy_from_slice(&7u32.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = 0x10; // ACK
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        for (k, b) in t[20..].iter_mut().enumerate() {
            *b = (k as u32 + i) as u8;
        }
        // The pseudo-header: addresses, protocol, TCP length.
        let mut pseudo = 0u32;
        for w in [&src[..], &dst[..]] {
            pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
            pseudo += u32::from(u16::from_be_bytes([w[2], w[3]]));
        }
        pseudo += 6 + (20 + len) as u32;
        let tcp = checksum(&p[20..], pseudo);
        p[36..38].copy_from_slice(&tcp.to_be_bytes());
        p
    }

    #[test]
    fn a_batch_of_one_flow_coalesces_into_one_super_packet() {
        let mut batch = WriteBatch::new(64);
        let n = 40;
        for i in 0..n {
            batch.push(&segment(i, 1380));
        }
        // What `send_multiple` does before it writes: the segments that follow the
        // first are appended to it, and only the buffers left over are written.
        let mut to_write = Vec::new();
        tun_rs::handle_gro(
            &mut batch.bufs[..n as usize],
            tun_rs::VIRTIO_NET_HDR_LEN,
            &mut Default::default(),
            &mut Default::default(),
            false,
            &mut to_write,
        )
        .unwrap();
        assert_eq!(to_write, vec![0], "one write for the whole flow");
        let first = &batch.bufs[0][tun_rs::VIRTIO_NET_HDR_LEN..];
        assert_eq!(first.len(), 40 + n as usize * 1380);
    }
}

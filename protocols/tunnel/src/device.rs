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
}

/// A network's TUN device.
pub struct TunDevice {
    name: String,
    device: tun_rs::AsyncDevice,
}

impl std::fmt::Debug for TunDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunDevice")
            .field("name", &self.name)
            .finish()
    }
}

impl TunDevice {
    /// Creates device `name` with our `lease` on the network's `prefixes` (so the kernel
    /// routes the whole network into it), MTU `mtu`, and brings it up.
    pub fn create(
        name: &str,
        lease: Lease,
        prefixes: &Prefixes,
        mtu: u16,
    ) -> Result<Self, DeviceError> {
        debug_assert!(prefixes.contains_v4(lease.v4) && prefixes.contains_v6(lease.v6));
        let device = tun_rs::DeviceBuilder::new()
            .name(name)
            .ipv4(lease.v4, V4_PREFIX_LEN, None)
            .ipv6(lease.v6, V6_PREFIX_LEN)
            .mtu(mtu)
            .enable(true)
            .build_async()
            .map_err(|source| match source.kind() {
                io::ErrorKind::PermissionDenied => DeviceError::Permission { name: name.into() },
                io::ErrorKind::NotFound => DeviceError::NoTun,
                _ => DeviceError::Io {
                    name: name.into(),
                    source,
                },
            })?;
        Ok(Self {
            name: name.into(),
            device,
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl PacketDevice for TunDevice {
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.device.recv(buf).await
    }

    async fn send(&self, packet: &[u8]) -> io::Result<usize> {
        self.device.send(packet).await
    }
}

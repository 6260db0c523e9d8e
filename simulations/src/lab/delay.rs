//! The delay link: adds a fixed delay to every packet a router forwards.
//!
//! The kernel here has no `netem`, so delay comes from user space. Inside a router's
//! namespace the lab makes a TUN device `dly` and policy routing that sends every packet
//! arriving on `lan` or `wan` into it (`ip rule iif lan|wan lookup 100`, table 100 holding
//! only `default dev dly`; the `local` rule moves behind these so even replies to the WAN
//! address take the detour). This process, `p2pnode-sim delay-link`, reads each packet
//! from the TUN device, holds it for the delay and writes it back unchanged. The kernel
//! then receives it as input on `dly`, where no detour rule matches, and routes it on
//! through the usual tables: NAT, filtering and forwarding happen on this second pass.
//! The first pass is `notrack`ed in nftables so conntrack sees each packet once.
//!
//! The delay is constant, so a FIFO keeps packets in order: a reader task stamps each
//! packet with its due time and puts it in a bounded channel; a writer task sleeps until
//! the head is due (a timer, no polling) and writes it. When the channel is full the
//! packet is dropped, as a router with a full queue would.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// Largest packet read from the TUN device (its MTU is 1500; room for more is harmless).
const MAX_PACKET: usize = 65_536;

/// What can stop the delay link.
#[derive(Debug, thiserror::Error)]
pub enum DelayLinkError {
    /// The TUN device could not be opened (missing, or not allowed).
    #[error("could not open TUN device {name}: {source}")]
    Open {
        /// The device name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading from or writing to the device failed.
    #[error("TUN device io: {0}")]
    Io(#[from] std::io::Error),
}

/// Settings of one delay link.
#[derive(Debug, Clone)]
pub struct DelayLinkConfig {
    /// The TUN device to attach to (it exists already; the lab made it).
    pub tun: String,
    /// Delay added to each packet.
    pub delay: Duration,
    /// Packets held at most; more are dropped.
    pub queue_packets: usize,
}

/// Counters, logged when the link stops.
#[derive(Debug, Default, Clone, Copy)]
pub struct DelayLinkStats {
    /// Packets written back.
    pub forwarded: u64,
    /// Packets dropped because the queue was full.
    pub dropped: u64,
}

/// An open delay link; [`DelayLink::run`] moves packets until an IO error.
pub struct DelayLink {
    device: Arc<tun_rs::AsyncDevice>,
    config: DelayLinkConfig,
}

impl std::fmt::Debug for DelayLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayLink")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl DelayLink {
    /// Attaches to the TUN device. Once this returns, packets routed into the device
    /// are queued by the kernel for this process rather than dropped.
    pub fn open(config: DelayLinkConfig) -> Result<Self, DelayLinkError> {
        let device = tun_rs::DeviceBuilder::new()
            .name(config.tun.clone())
            .build_async()
            .map_err(|source| DelayLinkError::Open {
                name: config.tun.clone(),
                source,
            })?;
        Ok(Self {
            device: Arc::new(device),
            config,
        })
    }

    /// Moves packets through the delay until the device fails. Runs forever otherwise;
    /// the lab stops it with SIGKILL when it deletes the namespace.
    pub async fn run(self) -> Result<DelayLinkStats, DelayLinkError> {
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>(self.config.queue_packets.max(1));
        let writer = tokio::spawn(write_when_due(Arc::clone(&self.device), rx));
        let read_result = read_and_stamp(&self.device, self.config.delay, tx).await;
        // The reader only returns on an error; the writer then drains and ends because
        // the sender is gone.
        let forwarded = writer.await.map_err(std::io::Error::other)??;
        let dropped = read_result?;
        Ok(DelayLinkStats { forwarded, dropped })
    }
}

/// Reads packets, stamps each with its due time and queues it. Returns the count of
/// packets dropped for a full queue when reading fails.
async fn read_and_stamp(
    device: &tun_rs::AsyncDevice,
    delay: Duration,
    tx: mpsc::Sender<(Instant, Vec<u8>)>,
) -> Result<u64, DelayLinkError> {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut dropped = 0u64;
    loop {
        let n = device.recv(&mut buf).await?;
        let due = Instant::now() + delay;
        match tx.try_send((due, buf[..n].to_vec())) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                dropped += 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "delay queue full, dropping packets");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(DelayLinkError::Io(std::io::Error::other(
                    "writer task stopped",
                )));
            }
        }
    }
}

/// Writes each queued packet back into the device once it is due.
async fn write_when_due(
    device: Arc<tun_rs::AsyncDevice>,
    mut rx: mpsc::Receiver<(Instant, Vec<u8>)>,
) -> Result<u64, DelayLinkError> {
    let mut forwarded = 0u64;
    while let Some((due, packet)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        match device.send(&packet).await {
            Ok(_) => forwarded += 1,
            // EINVAL: the kernel refused a malformed packet; a wire would lose it too,
            // so the link goes on.
            Err(err) if err.kind() == std::io::ErrorKind::InvalidInput => {
                tracing::debug!(%err, len = packet.len(), "packet not accepted by the kernel");
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(forwarded)
}

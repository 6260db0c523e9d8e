//! The tunnel's clap types: `p2pnode vpn ...`.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum VpnCommand {
    /// Bring a network's tunnel up: a TUN device with this node's addresses in the
    /// network (an IPv4 address in 100.64.0.0/10 and an IPv6 ULA), routing the network's
    /// prefixes to its members. Needs CAP_NET_ADMIN (root, or `setcap cap_net_admin+ep`).
    Up {
        /// The network (see `p2pnode net list`).
        network: String,
        /// The device's MTU.
        #[arg(long, default_value_t = 1280, value_parser = clap::value_parser!(u16).range(1280..))]
        mtu: u16,
        /// Turn the TUN device's offloads off (TCP segmentation and receive coalescing:
        /// fewer, larger packets between the kernel and the node). On by default where
        /// the kernel has them; off mainly to compare.
        #[arg(long)]
        no_offload: bool,
    },
    /// Take a network's tunnel down: its streams closed and its device removed.
    Down {
        /// The network.
        network: String,
    },
    /// Show each network whose tunnel is up: addresses, members with their addresses,
    /// path, bytes each way and dropped packets by reason.
    Status,
}

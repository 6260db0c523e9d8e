//! Why a tunnel command failed, as one line a user can act on, and its kind and status
//! on the control socket.

use p2pnode_node::networks::NetError;

use crate::LeaseError;
use crate::device::DeviceError;

/// Why a tunnel command failed. Each prints as one line a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The node is not a current member of the network.
    #[error("this node is not a member of network `{0}` (see `p2pnode net list`)")]
    NotMember(String),
    /// The network's tunnel is not up.
    #[error("the tunnel of network `{0}` is not up (see `p2pnode vpn status`)")]
    NotUp(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// A route on this host overlaps the network's prefix.
    #[error(
        "network `{network}`'s prefix {prefix} collides with the route {route} on {interface}: \
         remove that route or interface, or use another network"
    )]
    Collision {
        /// The network.
        network: String,
        /// Its prefix.
        prefix: String,
        /// The route in the way.
        route: String,
        /// The route's interface.
        interface: String,
    },
    /// An interface of the device's name exists.
    #[error(
        "a network interface named {0} already exists (another tunnel, or a leftover: \
         `ip link del {0}`)"
    )]
    InterfaceExists(String),
    /// The TUN device could not be made (no CAP_NET_ADMIN, no TUN support, ...).
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The network's addresses could not be settled.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The thread that carries the packets could not be started.
    #[error("cannot start the tunnel's data thread: {0}")]
    DataThread(String),
    /// The node's networks refused (unknown network, storage).
    #[error(transparent)]
    Net(#[from] NetError),
    /// The service stopped (the node is shutting down).
    #[error("the tunnel service has stopped")]
    Stopped,
}

impl TunnelError {
    /// The stable kind for the control socket.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotMember(_) => "not_member",
            Self::NotUp(_) => "not_up",
            Self::Invalid(_) => "invalid_input",
            Self::Collision { .. } => "prefix_collision",
            Self::InterfaceExists(_) => "interface_exists",
            Self::Device(DeviceError::Permission { .. }) => "permission",
            Self::Device(_) => "device",
            Self::Lease(_) => "lease",
            Self::DataThread(_) => "data_thread",
            Self::Net(e) => e.kind(),
            Self::Stopped => "stopped",
        }
    }
}

impl p2pnode_node::control::ApiError for TunnelError {
    fn kind(&self) -> &str {
        TunnelError::kind(self)
    }

    fn status(&self) -> u16 {
        match self {
            Self::NotMember(_) | Self::NotUp(_) => 404,
            Self::Invalid(_) => 400,
            Self::Collision { .. } | Self::InterfaceExists(_) => 409,
            Self::Device(DeviceError::Permission { .. }) => 403,
            Self::Stopped => 503,
            Self::Net(e) => p2pnode_node::control::ApiError::status(e),
            _ => 500,
        }
    }
}

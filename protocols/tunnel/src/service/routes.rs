//! The tunnel's control routes (`/v1/vpn/...`), served on the node's control socket.

use p2pnode_node::control::{ControlReply, ControlRequest, Method};

use super::{TunnelError, TunnelHandle};
use crate::api::{DownRequest, UpRequest, routes};

/// Serves one request under the tunnel's prefix.
pub(super) async fn serve(vpn: &TunnelHandle, req: ControlRequest) -> ControlReply {
    match route(vpn, &req).await {
        Ok(reply) => reply,
        Err(e) => ControlReply::error(&e),
    }
}

fn body<T: serde::de::DeserializeOwned>(req: &ControlRequest) -> Result<T, TunnelError> {
    req.json::<T>()
        .map_err(|e| TunnelError::Invalid(e.to_string()))
}

async fn route(vpn: &TunnelHandle, req: &ControlRequest) -> Result<ControlReply, TunnelError> {
    Ok(match (req.method(), req.route()) {
        (Method::Post, routes::UP) => {
            let r: UpRequest = body(req)?;
            ControlReply::ok(&vpn.up(&r.network, r.mtu, r.offload).await?)
        }
        (Method::Post, routes::DOWN) => {
            let r: DownRequest = body(req)?;
            ControlReply::ok(&vpn.down(&r.network).await?)
        }
        (Method::Get, routes::STATUS) => ControlReply::ok(&vpn.status().await?),
        (_, route) => ControlReply::unknown(route),
    })
}

//! `p2pnode ping <peer-id>`.

use anyhow::{Result, bail};
use p2pnode_node::api::{PingRequest, Pinged};
use p2pnode_node::control::{ControlClient, MAX_PING_COUNT};

use crate::output;

pub(crate) async fn run(
    control: &ControlClient,
    peer_id: &str,
    count: u32,
    json: bool,
) -> Result<()> {
    if count == 0 || count > MAX_PING_COUNT {
        bail!("--count must be 1 to {MAX_PING_COUNT}");
    }
    let peer_id = super::resolve_peer(control, peer_id).await?;
    let p: Pinged = control
        .post(
            "ping",
            &PingRequest {
                peer_id: peer_id.clone(),
                count,
            },
        )
        .await?;
    output::show(json, &p, |p| {
        for (i, r) in p.rtt_ms.iter().enumerate() {
            println!(
                "echo {} from {}: {r:.2} ms ({:?})",
                i + 1,
                p.peer_id,
                p.path
            );
        }
    });
    Ok(())
}

//! `p2pnode find <peer-id>`.

use anyhow::Result;
use p2pnode_node::api::{Found, PeerRequest};
use p2pnode_node::control::ControlClient;

use crate::output;

pub(crate) async fn run(control: &ControlClient, peer_id: &str, json: bool) -> Result<()> {
    let peer_id = super::resolve_peer(control, peer_id).await?;
    let f: Found = control
        .post(
            "find",
            &PeerRequest {
                peer_id: peer_id.clone(),
            },
        )
        .await?;
    output::show(json, &f, |f| {
        println!("{}:", f.peer_id);
        for a in &f.addresses {
            println!("  {a}");
        }
    });
    Ok(())
}

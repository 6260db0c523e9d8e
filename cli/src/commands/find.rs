//! `p2pnode find <peer-id>`.

use anyhow::Result;
use p2pnode_node::api::{Found, PeerRequest};
use p2pnode_node::control::ControlClient;

use crate::output;

pub(crate) async fn run(control: &ControlClient, peer_id: &str, json: bool) -> Result<()> {
    p2pnode_node::parse_peer_id(peer_id)?;
    let f: Found = control
        .post(
            "find",
            &PeerRequest {
                peer_id: peer_id.to_string(),
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

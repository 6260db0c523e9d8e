//! `p2pnode id`: the peer id, straight from the identity file (no daemon needed).

use std::path::Path;

use anyhow::Result;

use crate::output;

pub(crate) fn run(data_dir: &Path, json: bool) -> Result<()> {
    let key = p2pnode_node::identity::load_or_create(data_dir)?;
    let peer_id = key.public().to_peer_id().to_string();
    output::show(json, &serde_json::json!({ "peer_id": peer_id }), |_| {
        println!("{peer_id}")
    });
    Ok(())
}

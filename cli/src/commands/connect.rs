//! `p2pnode connect <multiaddr | peer-id | name>`.

use anyhow::Result;
use p2pnode_node::api::{ConnectRequest, Connected};
use p2pnode_node::control::ControlClient;

use crate::output;

pub(crate) async fn run(control: &ControlClient, target: &str, json: bool) -> Result<()> {
    // Validate here too, so a typo fails fast and the same way with or without a daemon.
    let target = super::contacts::resolve_target(control, target).await?;
    let c: Connected = control
        .post(
            "connect",
            &ConnectRequest {
                target: target.clone(),
            },
        )
        .await?;
    let book = super::Book::load(control).await;
    output::show(json, &c, |c| {
        println!(
            "connected to {} ({:?}, via {})",
            book.label(&c.peer_id),
            c.path,
            c.address
        )
    });
    Ok(())
}

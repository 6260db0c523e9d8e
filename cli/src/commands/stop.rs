//! `p2pnode stop`: asks the daemon to shut down cleanly.

use anyhow::Result;
use p2pnode_node::control::ControlClient;

use crate::output;

pub(crate) async fn run(control: &ControlClient, json: bool) -> Result<()> {
    let v: serde_json::Value = control.post("shutdown", &serde_json::json!({})).await?;
    output::show(json, &v, |_| println!("stopping"));
    Ok(())
}

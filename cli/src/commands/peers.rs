//! `p2pnode peers`.

use anyhow::Result;
use p2pnode_node::api::PeerInfo;
use p2pnode_node::control::ControlClient;

use crate::output;

pub(crate) async fn run(control: &ControlClient, json: bool) -> Result<()> {
    let peers: Vec<PeerInfo> = control.get("peers").await?;
    let book = super::Book::load(control).await;
    let named: Vec<_> = peers.iter().map(|p| book.named(&p.peer_id, p)).collect();
    output::show(json, &named, |_| {
        if peers.is_empty() {
            println!("no connected peers");
        }
        for p in &peers {
            let rtt = p
                .rtt_ms
                .map_or_else(|| "-".to_string(), |r| format!("{r:.1} ms"));
            println!(
                "{}  {:?}  {}  rtt {}  ({} connection{})",
                book.label(&p.peer_id),
                p.path,
                p.transport,
                rtt,
                p.connections.len(),
                if p.connections.len() == 1 { "" } else { "s" }
            );
        }
    });
    Ok(())
}

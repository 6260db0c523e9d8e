//! `p2pnode trust list | allow | revoke`.

use anyhow::Result;
use p2pnode_node::api::{AllowRequest, PeerRequest, TrustInfo};
use p2pnode_node::control::ControlClient;

use crate::args::TrustCommand;
use crate::output;

pub(crate) async fn run(control: &ControlClient, cmd: TrustCommand, json: bool) -> Result<()> {
    match cmd {
        TrustCommand::List => {
            let list: Vec<TrustInfo> = control.get("trust").await?;
            let book = super::Book::load(control).await;
            let named: Vec<_> = list.iter().map(|t| book.named(&t.peer_id, t)).collect();
            output::show(json, &named, |_| {
                if list.is_empty() {
                    println!("the trust store is empty");
                }
                for t in &list {
                    print_entry(&book, t);
                }
            });
        }
        TrustCommand::Allow { peer_id, protocols } => {
            let peer_id = super::resolve_peer(control, &peer_id).await?;
            let t: TrustInfo = control
                .post("trust/allow", &AllowRequest { peer_id, protocols })
                .await?;
            let book = super::Book::load(control).await;
            output::show(json, &t, |t| print_entry(&book, t));
        }
        TrustCommand::Revoke { peer_id } => {
            let peer_id = super::resolve_peer(control, &peer_id).await?;
            let t: TrustInfo = control
                .post("trust/revoke", &PeerRequest { peer_id })
                .await?;
            let book = super::Book::load(control).await;
            output::show(json, &t, |t| print_entry(&book, t));
        }
    }
    Ok(())
}

fn print_entry(book: &super::Book, t: &TrustInfo) {
    let state = if t.revoked {
        "REVOKED"
    } else if t.verified {
        "verified"
    } else {
        "unverified"
    };
    let protocols = if t.allowed_protocols.is_empty() {
        "none".to_string()
    } else {
        t.allowed_protocols.join(",")
    };
    println!(
        "{}  {state}  protocols: {protocols}",
        book.label(&t.peer_id)
    );
}

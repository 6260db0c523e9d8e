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
            output::show(json, &list, |list| {
                if list.is_empty() {
                    println!("the trust store is empty");
                }
                for t in list {
                    print_entry(t);
                }
            });
        }
        TrustCommand::Allow { peer_id, protocols } => {
            p2pnode_node::parse_peer_id(&peer_id)?;
            let t: TrustInfo = control
                .post("trust/allow", &AllowRequest { peer_id, protocols })
                .await?;
            output::show(json, &t, print_entry);
        }
        TrustCommand::Revoke { peer_id } => {
            p2pnode_node::parse_peer_id(&peer_id)?;
            let t: TrustInfo = control
                .post("trust/revoke", &PeerRequest { peer_id })
                .await?;
            output::show(json, &t, print_entry);
        }
    }
    Ok(())
}

fn print_entry(t: &TrustInfo) {
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
    println!("{}  {state}  protocols: {protocols}", t.peer_id);
}

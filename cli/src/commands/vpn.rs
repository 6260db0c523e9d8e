//! `p2pnode vpn ...`: a network's tunnel, through the daemon's `vpn` routes.

use std::collections::BTreeMap;

use anyhow::Result;
use p2pnode_node::control::ControlClient;
use p2pnode_node::networks::check_name;
use p2pnode_tunnel::api::{Down, DownRequest, NetStatus, UpRequest, routes};

use crate::args::VpnCommand;
use crate::output;

/// `reason=count` pairs, or `-` for none.
fn drops(d: &BTreeMap<String, u64>) -> String {
    if d.is_empty() {
        return "-".into();
    }
    d.iter()
        .map(|(r, n)| format!("{r}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn print_status(n: &NetStatus) {
    println!(
        "{}  {}  {} / {}  (prefixes {} {}, mtu {})",
        n.network, n.interface, n.ipv4, n.ipv6, n.prefix_v4, n.prefix_v6, n.mtu
    );
    for m in &n.members {
        let name = m.name.as_deref().unwrap_or("-");
        let path = match (&m.path, m.linked) {
            (Some(p), true) => match &m.transport {
                Some(t) => format!("{p}, {t}"),
                None => p.clone(),
            },
            (Some(p), false) => format!("{p}, no stream"),
            (None, _) => "not connected".into(),
        };
        let rtt = m.rtt_ms.map(|r| format!(" {r:.1} ms")).unwrap_or_default();
        println!(
            "  {name}  {}  {} {}  [{path}{rtt}]  out {} B / {} pkts  in {} B / {} pkts  drops {}",
            m.peer_id,
            m.ipv4,
            m.ipv6,
            m.bytes_out,
            m.packets_out,
            m.bytes_in,
            m.packets_in,
            drops(&m.drops)
        );
    }
    println!("  drops in all: {}", drops(&n.drops));
    match &n.dns {
        Some(addr) => println!(
            "  names: <name>.p2p answered on {addr}:53; to use them here: {}",
            n.resolver
        ),
        None => println!(
            "  names: no DNS responder (port 53 on {} was taken)",
            n.ipv4
        ),
    }
}

pub(crate) async fn run(control: &ControlClient, cmd: VpnCommand, json: bool) -> Result<()> {
    match cmd {
        VpnCommand::Up {
            network,
            mtu,
            no_offload,
        } => {
            check_name(&network)?;
            let body = UpRequest {
                network,
                mtu: Some(mtu),
                offload: Some(!no_offload),
            };
            let n: NetStatus = control.post(routes::UP, &body).await?;
            output::show(json, &n, print_status);
        }
        VpnCommand::Down { network } => {
            check_name(&network)?;
            let d: Down = control.post(routes::DOWN, &DownRequest { network }).await?;
            output::show(json, &d, |d| {
                println!("tunnel of {} down ({} removed)", d.network, d.interface)
            });
        }
        VpnCommand::Status => {
            let list: Vec<NetStatus> = control.get(routes::STATUS).await?;
            output::show(json, &list, |list| {
                if list.is_empty() {
                    println!("no tunnel is up (start one with `p2pnode vpn up <network>`)");
                }
                for n in list {
                    print_status(n);
                }
            });
        }
    }
    Ok(())
}

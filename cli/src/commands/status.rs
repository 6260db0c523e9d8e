//! `p2pnode status`.

use anyhow::Result;
use p2pnode_node::api::Status;
use p2pnode_node::control::ControlClient;

use crate::output;

pub(crate) async fn run(control: &ControlClient, json: bool) -> Result<()> {
    let s: Status = control.get("status").await?;
    output::show(json, &s, |s| {
        println!("peer id:     {}", s.peer_id);
        println!("NAT status:  {}", s.nat_status);
        println!("peers:       {}", s.connected_peers);
        println!(
            "DHT:         {} peers in the routing table, {} queries running, {} keys provided",
            s.dht_peers, s.dht_queries, s.provided_keys
        );
        println!(
            "relay server: {}",
            if s.relay_server { "on" } else { "off" }
        );
        print_list("listening", &s.listen_addrs);
        print_list("external", &s.external_addrs);
        print_list("reservations", &s.reservations);
    });
    Ok(())
}

fn print_list(title: &str, items: &[String]) {
    if items.is_empty() {
        println!("{title}: none");
    } else {
        println!("{title}:");
        for i in items {
            println!("  {i}");
        }
    }
}

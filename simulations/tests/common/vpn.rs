//! What the tunnel's lab tests share: daemons on the lab's public segment, a network
//! formed among them, `vpn status --json` read back, and pings through a tunnel.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use p2pnode_sim::lab::poll::{Poll, wait_for};
use p2pnode_sim::lab::{Lab, LabBuilder, Node, NodeSpec};
use serde_json::Value;

const SIM_BIN: &str = env!("CARGO_BIN_EXE_p2pnode-sim");
/// The port every daemon of these tests listens on.
const PORT: u16 = 4001;

/// A lab with `hosts` on its public segment.
pub async fn public_lab(hosts: &[&str]) -> Lab {
    let mut builder = LabBuilder::new();
    for h in hosts {
        builder = builder.public_host(h);
    }
    builder
        .sim_binary(SIM_BIN)
        .build()
        .await
        .expect("lab builds")
}

/// The multiaddr `node` listens on (started by [`start_member`]), with its peer id.
pub fn member_addr(lab: &Lab, node: &Node) -> String {
    let ip = lab.host(node.host()).expect("the node's host").ip;
    node.addr_with_id(&format!("/ip4/{ip}/tcp/{PORT}"))
}

/// Starts a daemon called `host` on `host`, listening on its public address.
pub async fn start_member(lab: &Lab, host: &str) -> Node {
    let ip = lab.host(host).expect("the host").ip;
    let spec = NodeSpec {
        listen: vec![format!("/ip4/{ip}/tcp/{PORT}")],
        ..NodeSpec::default()
    };
    lab.start_node(host, host, spec)
        .await
        .unwrap_or_else(|e| panic!("{host} starts: {e}"))
}

/// A lab of two hosts `a` and `b` on the public segment, a member started on each and the
/// two connected.
pub async fn connected_pair(a: &str, b: &str) -> (Lab, Node, Node) {
    let lab = public_lab(&[a, b]).await;
    let (na, nb) = tokio::join!(start_member(&lab, a), start_member(&lab, b));
    connect_all(&lab, &[&na, &nb]).await;
    (lab, na, nb)
}

/// Connects each of `nodes` to every other.
pub async fn connect_all(lab: &Lab, nodes: &[&Node]) {
    for (i, node) in nodes.iter().enumerate() {
        for other in &nodes[i + 1..] {
            node.connect(&member_addr(lab, other))
                .await
                .unwrap_or_else(|e| panic!("{} connects to {}: {e}", node.name(), other.name()));
        }
    }
}

/// `admin` creates network `net` and each of `joiners` joins it (see [`join_network`]).
pub async fn form_network(net: &str, admin: &Node, joiners: &[(&Node, Option<&str>)]) {
    admin.client_text(&["net", "create", net]).await.unwrap();
    join_network(net, admin, joiners).await;
}

/// Each of `joiners` joins `admin`'s network `net` with an invite of its own (under the
/// name given, if any); returns when every one of them counts them all as members.
pub async fn join_network(net: &str, admin: &Node, joiners: &[(&Node, Option<&str>)]) {
    for (node, name) in joiners {
        let invite: Value = admin.client_json(&["net", "invite", net]).await.unwrap();
        let ticket = invite["ticket"].as_str().unwrap().to_string();
        let mut args = vec!["net", "join", ticket.as_str()];
        if let Some(name) = name {
            args.extend(["--name", *name]);
        }
        node.client_text(&args)
            .await
            .unwrap_or_else(|e| panic!("{} joins {net}: {e}", node.name()));
    }
    let all = joiners.len() as u64 + 1;
    for node in std::iter::once(admin).chain(joiners.iter().map(|(n, _)| *n)) {
        wait_for(
            &format!("{} to know every member of {net}", node.name()),
            Duration::from_secs(20),
            Duration::from_millis(100),
            || async {
                let members = network(node, net).await["members"].as_u64().unwrap_or(0);
                if members == all {
                    Poll::Ready(())
                } else {
                    Poll::seen(format!("{members} members"))
                }
            },
        )
        .await
        .unwrap();
    }
}

/// `net list --json` of `node`: network `net`'s entry (`Null` if it holds none).
pub async fn network(node: &Node, net: &str) -> Value {
    let list: Value = node.client_json(&["net", "list"]).await.unwrap();
    list.as_array()
        .and_then(|l| l.iter().find(|n| n["name"] == net))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Network `net`'s id, as `node` holds it.
pub async fn network_id(node: &Node, net: &str) -> [u8; 32] {
    let entry = network(node, net).await;
    let hex = entry["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id: {entry}"));
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("a hex id"))
        .collect();
    bytes.try_into().expect("a 32-byte id")
}

/// `vpn status --json` of `node`: network `net`'s entry, if its tunnel is up.
pub async fn try_status(node: &Node, net: &str) -> Option<Value> {
    let list: Value = node.client_json(&["vpn", "status"]).await.unwrap();
    list.as_array()
        .and_then(|l| l.iter().find(|n| n["network"] == net))
        .cloned()
}

/// `vpn status --json` of `node`: network `net`'s entry.
pub async fn status(node: &Node, net: &str) -> Value {
    try_status(node, net)
        .await
        .unwrap_or_else(|| panic!("{} has no tunnel of {net} up", node.name()))
}

/// What a tunnel status says about `peer`.
pub fn member<'a>(status: &'a Value, peer: &Node) -> &'a Value {
    status["members"]
        .as_array()
        .and_then(|l| l.iter().find(|m| m["peer_id"] == peer.peer_id()))
        .unwrap_or_else(|| panic!("no member {} in {status}", peer.name()))
}

/// A count in a status entry (0 when absent).
pub fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// Pings `to` from `host` until one echo comes back, for at most `within`.
pub async fn first_echo(lab: &Lab, host: &str, to: &str, within: Duration) {
    wait_for(
        &format!("a first ping from {host} to {to}"),
        within,
        Duration::from_millis(100),
        || async {
            let out = lab
                .exec_output(host, "ping", &["-c", "1", "-W", "1", to])
                .await
                .unwrap();
            if out.status.success() {
                Poll::Ready(())
            } else {
                Poll::seen(String::from_utf8_lossy(&out.stdout).into_owned())
            }
        },
    )
    .await
    .unwrap();
}

/// Pings `to` from `host` until one echo comes back (the streams come up within seconds),
/// then `count` more, all of which must come back.
pub async fn ping_through(lab: &Lab, host: &str, to: &str, count: u32) {
    first_echo(lab, host, to, Duration::from_secs(30)).await;
    let n = count.to_string();
    let out = lab
        .exec(host, "ping", &["-c", &n, "-i", "0.2", "-W", "2", to])
        .await
        .unwrap_or_else(|e| panic!("ping {to} from {host}: {e}"));
    assert!(
        out.contains(&format!("{count} received")),
        "every echo comes back: {out}"
    );
}

/// iperf3 TCP (one stream, `secs` seconds, `extra` arguments such as a rate) from `host`
/// to the iperf3 server it starts on `server` at tunnel address `to`; retried until the
/// tunnel carries it. Returns the rate in Mbit/s and iperf3's JSON.
/// Starts a one-test iperf3 server on `host`, bound to `to`, and waits until it listens
/// (`-D` returns before the daemon has bound its port).
pub async fn iperf3_server(lab: &Lab, host: &str, to: &str) {
    lab.exec(host, "iperf3", &["-s", "-1", "-D", "-B", to])
        .await
        .unwrap();
    wait_for(
        "the iperf3 server listening",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            let out = lab
                .exec_output(host, "ss", &["-Hltn", "sport", "=", ":5201"])
                .await
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains(to) {
                Poll::Ready(())
            } else {
                Poll::seen(String::from_utf8_lossy(&out.stdout).into_owned())
            }
        },
    )
    .await
    .unwrap();
}

pub async fn iperf3_through(
    lab: &Lab,
    host: &str,
    server: &str,
    to: &str,
    secs: &str,
    extra: &[&str],
) -> (f64, Value) {
    iperf3_server(lab, server, to).await;
    let iperf = wait_for(
        "iperf3 through the tunnel",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let out = lab
                .exec_output(
                    host,
                    "iperf3",
                    &[&["-c", to, "-t", secs, "-J"], extra].concat(),
                )
                .await
                .unwrap();
            match serde_json::from_slice::<Value>(&out.stdout) {
                Ok(v) if out.status.success() => Poll::Ready(v),
                _ => Poll::seen(String::from_utf8_lossy(&out.stdout).into_owned()),
            }
        },
    )
    .await
    .unwrap();
    let mbit_s = iperf["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e6;
    assert!(mbit_s > 0.0, "{iperf}");
    (mbit_s, iperf)
}

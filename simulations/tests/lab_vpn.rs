//! The tunnel between real daemons in the lab (issue #21), members on the lab's public
//! segment.
//!
//! Three members of one network, each runs `vpn up`:
//! - `ping` from one host's namespace to another member's tunnel address (IPv4 and IPv6)
//!   gets its replies, and `vpn status --json` counts the bytes both ways;
//! - a member that sends packets with a forged source (a second address on its own TUN
//!   device, used with `ping -I`) has none reach the receiver's device: the receiver
//!   counts every one under `spoofed_source` and its `packets_in` from that member stays;
//! - a member revoked by the admin is dropped from another member's tunnel within 2 s,
//!   and its pings get no reply;
//! - `vpn up` refuses, in one line, a network the node is not in and a prefix that an
//!   existing route covers;
//! - iperf3 TCP through the tunnel (one stream, a few seconds), reported, not judged.
//!   On 2026-12-04 here: 720 to 980 Mbit/s with a release binary (`P2PNODE_BIN`; the
//!   sender's queue drops when the stream lags, about 20,000 packets a run), 20 to
//!   40 Mbit/s with the debug one, over the node's streams (the datagram path is later
//!   work).
//!
//! And, each with a lab of its own:
//! - two networks on one node, each with its own device and prefix: within each, pings
//!   pass; a packet from one network addressed into the other never arrives;
//! - a forced address collision (two members whose identities derive the same IPv4
//!   address): every member settles the same table, the lower peer id keeping the address
//!   and the other taking the next free one;
//! - `vpn up` at start for the networks the config file's `[vpn] up` names;
//! - `vpn up` on a daemon without CAP_NET_ADMIN: one line naming the capability;
//! - two members whose only connection is over IPv6 (ULA addresses on the segment): the
//!   datagram path comes up to the other's IPv6 address.
//!
//! Needs root and the `p2pnode` binary: without them the tests fail (they never skip).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use common::vpn::{
    connect_all, count, form_network, iperf3_through, join_network, member, network, network_id,
    ping_through, public_lab, start_member, status, try_status,
};
use common::{MACHINE, init_tracing, report, require_nat_lab};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use p2pnode_sim::lab::poll::{Poll, wait_for};
use p2pnode_sim::lab::{Lab, Node, NodeSpec};
use p2pnode_tunnel::{MemberId, Prefixes};
use serde_json::{Value, json};

const HOSTS: [&str; 3] = ["v1", "v2", "v3"];
const NET: &str = "lab";
/// Echo requests sent with a forged source.
const FORGED: u64 = 5;
const IPERF_SECS: &str = "5";
/// Datagrams of random bytes a stranger sends at a member's datagram port, per round.
const JUNK: u64 = 50;
const JUNK_ROUNDS: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_ping_through_the_tunnel_and_forged_sources_are_dropped() {
    init_tracing();
    require_nat_lab("tunnel");
    let _machine = MACHINE.write().await;
    let lab = public_lab(&HOSTS).await;
    let mut nodes = Vec::new();
    for h in HOSTS {
        nodes.push(start_member(&lab, h).await);
    }
    connect_all(&lab, &nodes.iter().collect::<Vec<_>>()).await;

    // A network the node is not in: one clear line.
    let out = nodes[0]
        .client_output(&["vpn", "up", NET], Duration::from_secs(10))
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a member of network `lab`"),
        "{err}"
    );

    let names = ["member1", "member2"];
    let joiners: Vec<(&Node, Option<&str>)> = nodes[1..]
        .iter()
        .zip(names)
        .map(|(n, name)| (n, Some(name)))
        .collect();
    form_network(NET, &nodes[0], &joiners).await;

    let up: Value = nodes[0].client_json(&["vpn", "up", NET]).await.unwrap();
    // A route over the network's prefix on v3: refused, naming the route; then it goes.
    let prefix = up["prefix_v4"].as_str().unwrap().to_string();
    lab.exec("v3", "ip", &["route", "add", "blackhole", &prefix])
        .await
        .unwrap();
    let out = nodes[2]
        .client_output(&["vpn", "up", NET], Duration::from_secs(10))
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("collides with the route") && err.contains(&prefix),
        "{err}"
    );
    lab.exec("v3", "ip", &["route", "del", "blackhole", &prefix])
        .await
        .unwrap();
    let mut ups = vec![up];
    for node in &nodes[1..] {
        ups.push(node.client_json(&["vpn", "up", NET]).await.unwrap());
    }
    let v4 = |i: usize| ups[i]["ipv4"].as_str().unwrap().to_string();
    let v6 = |i: usize| ups[i]["ipv6"].as_str().unwrap().to_string();
    assert_eq!(ups[1]["mtu"], 1280);
    // Every member settles the same addresses.
    for (i, node) in nodes.iter().enumerate() {
        let s = status(node, NET).await;
        for (j, other) in nodes.iter().enumerate() {
            if i != j {
                assert_eq!(member(&s, other)["ipv4"].as_str().unwrap(), v4(j));
            }
        }
    }

    ping_through(&lab, "v1", &v4(1), 5).await;
    ping_through(&lab, "v2", &v4(2), 5).await;
    ping_through(&lab, "v3", &v4(0), 5).await;
    ping_through(&lab, "v1", &v6(2), 5).await;

    let s2 = status(&nodes[1], NET).await;
    let from_v1 = member(&s2, &nodes[0]);
    assert!(
        count(from_v1, "bytes_in") > 0 && count(from_v1, "bytes_out") > 0,
        "{s2}"
    );
    assert_eq!(
        from_v1["transport"], "udp",
        "direct members carry packets as datagrams: {from_v1}"
    );
    // A stranger's datagrams at v2's datagram port (v3 is not yet revoked, but it does
    // not know any index v2 gave out): each counted as naming no link, nothing answered,
    // and the tunnel carries on.
    let v2_endpoint = member(&status(&nodes[0], NET).await, &nodes[1])["endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let (v2_ip, v2_port) = v2_endpoint.rsplit_once(':').unwrap();
    // In rounds, each waited for, so the kernel's socket buffer never overflows. Counted
    // from what v2 had already counted: a member's datagram for an index v2 has just
    // replaced (a link renegotiated) names no link either.
    let before = count(&status(&nodes[1], NET).await["drops"], "udp_unknown");
    let mut unknown = 0;
    for round in 1..=JUNK_ROUNDS {
        let junk = format!(
            "import os, socket\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             for n in range({JUNK}):\n    s.sendto(os.urandom(1 + n * 7 % 1400), ('{v2_ip}', {v2_port}))\n"
        );
        lab.exec("v3", "python3", &["-c", &junk]).await.unwrap();
        unknown = wait_for(
            "v2 to count the stranger's datagrams",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async {
                let s = status(&nodes[1], NET).await;
                let n = count(&s["drops"], "udp_unknown").saturating_sub(before);
                if n >= JUNK * round {
                    Poll::Ready(n)
                } else {
                    Poll::seen(s["drops"].to_string())
                }
            },
        )
        .await
        .unwrap();
    }
    // Each junk datagram counted once (twice would be 400); a stray member datagram may
    // land in the same window.
    assert!(
        (JUNK * JUNK_ROUNDS..=JUNK * JUNK_ROUNDS + 2).contains(&unknown),
        "every junk datagram counted once: {unknown}"
    );
    ping_through(&lab, "v1", &v4(1), 3).await;
    let s2 = status(&nodes[1], NET).await;
    let from_v1 = member(&s2, &nodes[0]);
    assert_eq!(from_v1["transport"], "udp", "{from_v1}");
    let in_before = count(from_v1, "packets_in");

    // v1 forges: a second address on its TUN device, not its lease, as ping's source.
    let iface = ups[0]["interface"].as_str().unwrap().to_string();
    let [a, b, _, _] = v4(0).parse::<std::net::Ipv4Addr>().unwrap().octets();
    let forged = (1..=250u8)
        .map(|h| format!("{a}.{b}.250.{h}"))
        .find(|ip| (0..3).all(|i| v4(i) != *ip))
        .unwrap();
    lab.exec(
        "v1",
        "ip",
        &["addr", "add", &format!("{forged}/32"), "dev", &iface],
    )
    .await
    .unwrap();
    let n = FORGED.to_string();
    let out = lab
        .exec_output(
            "v1",
            "ping",
            &["-c", &n, "-i", "0.2", "-W", "1", "-I", &forged, &v4(1)],
        )
        .await
        .unwrap();
    assert!(!out.status.success(), "no reply to a forged source");
    let spoofed = wait_spoofed(&nodes[1], NET, &nodes[0], "v2 to count the forged packets").await;
    assert_eq!(spoofed["drops"]["spoofed_source"], FORGED, "{spoofed}");
    assert_eq!(
        count(&spoofed, "packets_in"),
        in_before,
        "no forged packet reached v2's TUN device"
    );

    // v1 (the admin) revokes v3: v2 learns it by the network's push and its tunnel stops
    // taking v3's packets at once; measured from the revoke command's return.
    ping_through(&lab, "v3", &v4(1), 1).await;
    nodes[0]
        .client_text(&["net", "revoke", NET, nodes[2].peer_id()])
        .await
        .unwrap();
    let revoked_at = tokio::time::Instant::now();
    wait_for(
        "v2's tunnel to drop the revoked v3",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            let s = status(&nodes[1], NET).await;
            let listed = s["members"]
                .as_array()
                .is_some_and(|l| l.iter().any(|m| m["peer_id"] == nodes[2].peer_id()));
            if listed {
                Poll::seen(format!("v3 still a member: {s}"))
            } else {
                Poll::Ready(())
            }
        },
    )
    .await
    .unwrap();
    let revoked_ms = revoked_at.elapsed().as_millis();
    assert!(
        revoked_ms < 2000,
        "revocation acted on after {revoked_ms} ms"
    );
    let out = lab
        .exec_output("v3", "ping", &["-c", "3", "-i", "0.2", "-W", "1", &v4(1)])
        .await
        .unwrap();
    assert!(!out.status.success(), "a revoked member's pings go nowhere");
    // The revoked member learns nothing more of the network (the record goes to current
    // members only), but the others closed its streams and refuse new ones.
    wait_for(
        "v3 to have no tunnel stream left",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let s = status(&nodes[2], NET).await;
            let linked = s["members"]
                .as_array()
                .is_some_and(|l| l.iter().any(|m| m["linked"] == true));
            if linked {
                Poll::seen(s.to_string())
            } else {
                Poll::Ready(())
            }
        },
    )
    .await
    .unwrap();

    // iperf3 TCP, v1 -> v2, through the tunnel, over datagrams with offloads on: v2's
    // device takes a flow's segments coalesced into super-packets (about 800 packets a
    // MB when each segment goes in alone, about 30 coalesced).
    let iface2 = ups[1]["interface"].as_str().unwrap().to_string();
    assert_eq!(ups[1]["offload"], true, "{}", ups[1]);
    let into_v2 = || device_rx_packets(&lab, "v2", &iface2);
    let packets_before = into_v2().await;
    let (mbit_s, iperf) = iperf3_through(&lab, "v1", "v2", &v4(1), IPERF_SECS, &[]).await;
    let retransmits = iperf["end"]["sum_sent"]["retransmits"].as_u64();
    let received_mb = iperf["end"]["sum_received"]["bytes"].as_f64().unwrap() / 1e6;
    let packets_per_mb = (into_v2().await - packets_before) as f64 / received_mb;
    assert!(
        packets_per_mb < 200.0,
        "v2's device took {packets_per_mb:.0} packets per MB: the segments were not coalesced"
    );

    // A flow with a tiny MSS (88 bytes; the kernel allows 48) makes super-packets of many
    // segments. The device is told to build none larger than a read splits, so the tunnel
    // carries the flow and stays up: before, one such read ended the device's reader and
    // the network's tunnel with it.
    let segs = lab
        .exec_output("v1", "ip", &["-d", "link", "show", &iface])
        .await
        .unwrap();
    // 128: the tunnel's `device::MAX_SEGMENTS`, the buffers a read splits into.
    assert!(
        String::from_utf8_lossy(&segs.stdout).contains("gso_max_segs 128"),
        "{}",
        String::from_utf8_lossy(&segs.stdout)
    );
    let (tiny_mss_mbit_s, _) = iperf3_through(&lab, "v1", "v2", &v4(1), "2", &["-M", "88"]).await;
    ping_through(&lab, "v1", &v4(1), 3).await;

    let s1 = status(&nodes[0], NET).await;
    let s2 = status(&nodes[1], NET).await;
    for node in &nodes {
        let d: Value = node.client_json(&["vpn", "down", NET]).await.unwrap();
        assert_eq!(d["network"], NET);
    }
    let gone = lab
        .exec_output("v1", "ip", &["link", "show", &iface])
        .await
        .unwrap();
    assert!(
        !gone.status.success(),
        "the device is removed on `vpn down`"
    );
    report(&json!({
        "test": "lab_vpn",
        "iperf3_tcp_mbit_s": mbit_s,
        "iperf3_retransmits": retransmits,
        "iperf3_tiny_mss_mbit_s": tiny_mss_mbit_s,
        "device_packets_per_mb": packets_per_mb,
        "forged_dropped": spoofed["drops"]["spoofed_source"],
        "revocation_acted_on_ms": revoked_ms,
        "v2_from_v1": member(&s2, &nodes[0]),
        "v2_drops": s2["drops"],
        "v1_drops": s1["drops"],
    }));
}

/// Packets the device `iface` on `host` took from its program so far.
async fn device_rx_packets(lab: &Lab, host: &str, iface: &str) -> u64 {
    let path = format!("/sys/class/net/{iface}/statistics/rx_packets");
    let out = lab.exec_output(host, "cat", &[&path]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The network w1 and w2 share in the two-network test.
const RED: &str = "red";

/// `vpn up net` on `node`: its status.
/// Waits until `node`'s tunnel in `net` has counted [`FORGED`] packets from `from` as
/// `spoofed_source`; returns `from`'s row of its status.
async fn wait_spoofed(node: &Node, net: &str, from: &Node, what: &str) -> Value {
    wait_for(
        what,
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let m = member(&status(node, net).await, from).clone();
            let n = m["drops"]["spoofed_source"].as_u64().unwrap_or(0);
            if n >= FORGED {
                Poll::Ready(m)
            } else {
                Poll::seen(format!("{n} counted: {m}"))
            }
        },
    )
    .await
    .unwrap()
}

async fn vpn_up(node: &Node, net: &str) -> Value {
    node.client_json(&["vpn", "up", net])
        .await
        .unwrap_or_else(|e| panic!("{} brings {net} up: {e}", node.name()))
}

/// Creates, on `admin`, a network whose IPv4 prefix differs from `other`'s and returns its
/// name. Prefixes are /16s drawn from 64 by the network id, so one pair of networks in
/// 64 shares one, and a node in both can bring up only one of them (`vpn up` refuses the
/// other's route as a collision): the test needs two, so it draws again.
async fn network_beside(admin: &Node, other: &str) -> String {
    let taken = Prefixes::of(&network_id(admin, other).await).v4;
    for i in 0..8 {
        let name = format!("blue{i}");
        admin.client_text(&["net", "create", &name]).await.unwrap();
        if Prefixes::of(&network_id(admin, &name).await).v4 != taken {
            return name;
        }
    }
    panic!("eight networks in a row share {other}'s prefix {taken}");
}

/// Makes `from` (a member of one network only, whose tunnel status `from_up` is) send
/// [`FORGED`] pings to `to`, an address in another network's `prefix`, through its own
/// device (a route it adds for that prefix); checks none comes back and its tunnel drops
/// each as having no route, then removes the route. Returns the drops it counted.
async fn pings_into_another_network(
    lab: &Lab,
    from: &Node,
    from_up: &Value,
    prefix: &str,
    to: &str,
) -> u64 {
    let net = from_up["network"].as_str().unwrap();
    let iface = from_up["interface"].as_str().unwrap();
    let before = status(from, net).await["drops"]["no_route"]
        .as_u64()
        .unwrap_or(0);
    lab.exec(from.host(), "ip", &["route", "add", prefix, "dev", iface])
        .await
        .unwrap();
    let n = FORGED.to_string();
    let out = lab
        .exec_output(from.host(), "ping", &["-c", &n, "-i", "0.2", "-W", "1", to])
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && stdout.contains(" 0 received"),
        "{to} is not reachable from {} through {net}: {stdout}",
        from.name()
    );
    // At least ours: the kernel's own IPv6 multicast (router and neighbour solicitations)
    // has no holder either and counts alike.
    let dropped = wait_for(
        &format!("{} to count its pings into another network", from.name()),
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let s = status(from, net).await;
            let n = s["drops"]["no_route"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(before);
            if n >= FORGED {
                Poll::Ready(n)
            } else {
                Poll::seen(format!("{n} counted: {}", s["drops"]))
            }
        },
    )
    .await
    .unwrap();
    lab.exec(from.host(), "ip", &["route", "del", prefix, "dev", iface])
        .await
        .unwrap();
    dropped
}

/// w1 is in two networks, `red` and `blue*`, each with its own TUN device and prefix; w2
/// is in `red` only and w3 in `blue*` only. Within each network pings pass both ways.
/// Across them none does:
/// - w2 routes blue's prefix into its red device and pings w1's blue address: its tunnel
///   drops every packet (`no_route`: no red member holds it) and w1's red tunnel gets
///   nothing from w2 meanwhile; the same for w3 into red;
/// - w1 itself pings w3's blue address from its red address (`ping -I`): its blue device
///   carries the packets to w3, whose tunnel drops every one as `spoofed_source` (the
///   source is no blue member's lease) and none reaches w3's device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_networks_on_one_node_and_no_packet_crosses() {
    init_tracing();
    require_nat_lab("tunnel");
    let _machine = MACHINE.write().await;
    let lab = public_lab(&["w1", "w2", "w3"]).await;
    let (w1, w2, w3) = tokio::join!(
        start_member(&lab, "w1"),
        start_member(&lab, "w2"),
        start_member(&lab, "w3")
    );
    connect_all(&lab, &[&w1, &w2, &w3]).await;
    w1.client_text(&["net", "create", RED]).await.unwrap();
    let blue = network_beside(&w1, RED).await;
    join_network(RED, &w1, &[(&w2, None)]).await;
    join_network(&blue, &w1, &[(&w3, None)]).await;

    let w1_red = vpn_up(&w1, RED).await;
    let w1_blue = vpn_up(&w1, &blue).await;
    let w2_red = vpn_up(&w2, RED).await;
    let w3_blue = vpn_up(&w3, &blue).await;
    assert_ne!(
        w1_red["interface"], w1_blue["interface"],
        "{w1_red} {w1_blue}"
    );
    assert_ne!(
        w1_red["prefix_v4"], w1_blue["prefix_v4"],
        "{w1_red} {w1_blue}"
    );
    assert_ne!(
        w1_red["prefix_v6"], w1_blue["prefix_v6"],
        "{w1_red} {w1_blue}"
    );
    let ip = |v: &Value| v["ipv4"].as_str().unwrap().to_string();
    // Each of w1's tunnels knows its own network's member only.
    let peers = |s: &Value| -> Vec<String> {
        let list = s["members"].as_array().cloned().unwrap_or_default();
        list.iter()
            .map(|m| m["peer_id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(peers(&status(&w1, RED).await), [w2.peer_id()]);
    assert_eq!(peers(&status(&w1, &blue).await), [w3.peer_id()]);

    ping_through(&lab, "w2", &ip(&w1_red), 3).await;
    ping_through(&lab, "w1", &ip(&w2_red), 3).await;
    ping_through(&lab, "w3", &ip(&w1_blue), 3).await;
    ping_through(&lab, "w1", &ip(&w3_blue), 3).await;

    // From a member of one network into the other: dropped where it is sent.
    let w1_from_w2 = count(member(&status(&w1, RED).await, &w2), "packets_in");
    let blue_prefix = w1_blue["prefix_v4"].as_str().unwrap();
    let red_prefix = w1_red["prefix_v4"].as_str().unwrap();
    let w2_dropped =
        pings_into_another_network(&lab, &w2, &w2_red, blue_prefix, &ip(&w1_blue)).await;
    let w3_dropped =
        pings_into_another_network(&lab, &w3, &w3_blue, red_prefix, &ip(&w1_red)).await;
    assert_eq!(
        count(member(&status(&w1, RED).await, &w2), "packets_in"),
        w1_from_w2,
        "nothing of w2's pings into blue reached w1"
    );

    // From the node in both, with red's source into blue: dropped where it arrives.
    let w3_from_w1 = count(member(&status(&w3, &blue).await, &w1), "packets_in");
    let n = FORGED.to_string();
    let out = lab
        .exec_output(
            "w1",
            "ping",
            &[
                "-c",
                &n,
                "-i",
                "0.2",
                "-W",
                "1",
                "-I",
                &ip(&w1_red),
                &ip(&w3_blue),
            ],
        )
        .await
        .unwrap();
    assert!(!out.status.success(), "no reply to red's address from blue");
    let from_w1 = wait_spoofed(
        &w3,
        &blue,
        &w1,
        "w3 to count w1's packets with a red source",
    )
    .await;
    assert_eq!(from_w1["drops"]["spoofed_source"], FORGED, "{from_w1}");
    assert_eq!(
        count(&from_w1, "packets_in"),
        w3_from_w1,
        "no packet with a red source reached w3's device"
    );
    // Within each network the tunnels still carry.
    ping_through(&lab, "w2", &ip(&w1_red), 1).await;
    ping_through(&lab, "w3", &ip(&w1_blue), 1).await;

    for (node, net) in [(&w1, RED), (&w1, &blue), (&w2, RED), (&w3, &blue)] {
        node.client_text(&["vpn", "down", net]).await.unwrap();
    }
    report(&json!({
        "test": "lab_vpn_two_networks",
        "prefixes": [red_prefix, blue_prefix],
        "w2_into_blue_dropped": w2_dropped,
        "w3_into_red_dropped": w3_dropped,
        "w3_dropped_red_source": from_w1["drops"]["spoofed_source"],
    }));
}

/// The IPv4 address a member derives in network `id` (its first choice).
fn derived_v4(id: &[u8; 32], peer: &PeerId) -> Ipv4Addr {
    Prefixes::of(id).derive(id, &MemberId(peer.to_bytes())).0
}

/// Two new identities that derive the same IPv4 address in network `id`, other than
/// `avoid`. The /16 holds 65,534 addresses, so a few hundred keys hold such a pair (the
/// birthday bound): the search takes well under a second.
fn colliding_keys(id: &[u8; 32], avoid: Ipv4Addr) -> (Keypair, Keypair) {
    let mut seen: HashMap<Ipv4Addr, Keypair> = HashMap::new();
    for _ in 0..100_000 {
        let key = Keypair::generate_ed25519();
        let v4 = derived_v4(id, &key.public().to_peer_id());
        if v4 == avoid {
            continue;
        }
        if let Some(first) = seen.remove(&v4) {
            return (first, key);
        }
        seen.insert(v4, key);
    }
    panic!("no two of 100,000 keys derive the same address");
}

/// Puts `key` where a daemon with data directory `dir` finds its identity, as the node
/// writes one (directory 0700, file 0600).
fn write_identity(dir: &Path, key: &Keypair) {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(p2pnode_node::identity::IDENTITY_FILE))
        .unwrap();
    file.write_all(&key.to_protobuf_encoding().unwrap())
        .unwrap();
}

/// The next usable address after `ip` in its /16 that none of `held` is.
fn next_free(ip: Ipv4Addr, held: &[Ipv4Addr]) -> Ipv4Addr {
    let [a, b, c, d] = ip.octets();
    let mut host = u16::from_be_bytes([c, d]);
    loop {
        host = host.wrapping_add(1);
        let [c, d] = host.to_be_bytes();
        let next = Ipv4Addr::new(a, b, c, d);
        if host != 0 && host != u16::MAX && !held.contains(&next) {
            return next;
        }
    }
}

/// The address table `node`'s tunnel shows: peer id to IPv4 address, itself included.
async fn table(node: &Node) -> BTreeMap<String, String> {
    let s = status(node, NET).await;
    let mut t = BTreeMap::from([(
        node.peer_id().to_string(),
        s["ipv4"].as_str().unwrap_or_default().to_string(),
    )]);
    for m in s["members"].as_array().into_iter().flatten() {
        t.insert(
            m["peer_id"].as_str().unwrap_or_default().to_string(),
            m["ipv4"].as_str().unwrap_or_default().to_string(),
        );
    }
    t
}

/// k2 and k3 start with identities made to derive the same IPv4 address in k1's network
/// (no knob in the node: the keys are searched for). All three join, then run `vpn up`:
/// every member's `vpn status` shows the same table, in which the member with the lower
/// peer id keeps the address and the other took the next free one; pings reach both
/// addresses, each at the member the table names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_address_collision_is_settled_alike_on_every_member() {
    init_tracing();
    require_nat_lab("tunnel");
    let _machine = MACHINE.write().await;
    let lab = public_lab(&["k1", "k2", "k3"]).await;
    let k1 = start_member(&lab, "k1").await;
    k1.client_text(&["net", "create", NET]).await.unwrap();
    let id = network_id(&k1, NET).await;
    let k1_v4 = derived_v4(&id, &k1.peer_id().parse().unwrap());
    let (key2, key3) = colliding_keys(&id, k1_v4);
    write_identity(&lab.node_data_dir("k2"), &key2);
    write_identity(&lab.node_data_dir("k3"), &key3);
    let (k2, k3) = tokio::join!(start_member(&lab, "k2"), start_member(&lab, "k3"));
    assert_eq!(k2.peer_id(), key2.public().to_peer_id().to_string());
    assert_eq!(k3.peer_id(), key3.public().to_peer_id().to_string());
    let claimed = derived_v4(&id, &key2.public().to_peer_id());
    assert_eq!(claimed, derived_v4(&id, &key3.public().to_peer_id()));
    connect_all(&lab, &[&k1, &k2, &k3]).await;
    join_network(NET, &k1, &[(&k2, None), (&k3, None)]).await;

    let (winner, loser) =
        if key2.public().to_peer_id().to_bytes() < key3.public().to_peer_id().to_bytes() {
            (&k2, &k3)
        } else {
            (&k3, &k2)
        };
    let moved = next_free(claimed, &[k1_v4, claimed]);
    let expected = BTreeMap::from([
        (k1.peer_id().to_string(), k1_v4.to_string()),
        (winner.peer_id().to_string(), claimed.to_string()),
        (loser.peer_id().to_string(), moved.to_string()),
    ]);
    let mut ups = BTreeMap::new();
    for node in [&k1, &k2, &k3] {
        ups.insert(
            node.name().to_string(),
            vpn_up(node, NET).await["ipv4"].clone(),
        );
    }
    assert_eq!(ups[winner.name()], claimed.to_string(), "{ups:?}");
    assert_eq!(ups[loser.name()], moved.to_string(), "{ups:?}");
    for node in [&k1, &k2, &k3] {
        wait_for(
            &format!("{}'s table to settle", node.name()),
            Duration::from_secs(20),
            Duration::from_millis(100),
            || async {
                let t = table(node).await;
                if t == expected {
                    Poll::Ready(())
                } else {
                    Poll::seen(format!("{t:?}"))
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}; expected {expected:?}"));
    }
    // The table is what the data path uses: each address reaches the member it names.
    ping_through(&lab, winner.host(), &moved.to_string(), 3).await;
    ping_through(&lab, loser.host(), &claimed.to_string(), 3).await;
    ping_through(&lab, "k1", &moved.to_string(), 3).await;
    ping_through(&lab, "k1", &claimed.to_string(), 3).await;
    for node in [&k1, &k2, &k3] {
        node.client_text(&["vpn", "down", NET]).await.unwrap();
    }
    report(&json!({
        "test": "lab_vpn_collision",
        "claimed": claimed.to_string(),
        "winner": winner.peer_id(),
        "loser_moved_to": moved.to_string(),
    }));
}

/// Three members in the lab for the lease tests: k1 (the admin, network made, tunnel up),
/// k2 (a member) and k3 (not yet), k2 and k3 with identities made to derive the same IPv4
/// address, ordered (higher id, lower id). Returns the nodes, k1's address and the
/// contested one.
async fn contested(lab: &Lab) -> (Node, Node, Node, Ipv4Addr, Ipv4Addr) {
    let k1 = start_member(lab, "k1").await;
    k1.client_text(&["net", "create", NET]).await.unwrap();
    let id = network_id(&k1, NET).await;
    let k1_v4 = derived_v4(&id, &k1.peer_id().parse().unwrap());
    let (a, b) = colliding_keys(&id, k1_v4);
    let (high, low) = if a.public().to_peer_id().to_bytes() > b.public().to_peer_id().to_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    write_identity(&lab.node_data_dir("k2"), &high);
    write_identity(&lab.node_data_dir("k3"), &low);
    let (k2, k3) = tokio::join!(start_member(lab, "k2"), start_member(lab, "k3"));
    connect_all(lab, &[&k1, &k2, &k3]).await;
    let claimed = derived_v4(&id, &high.public().to_peer_id());
    // k2 joins first, and the admin's tunnel comes up; k3 joins in the test.
    join_network(NET, &k1, &[(&k2, None)]).await;
    vpn_up(&k1, NET).await;
    (k1, k2, k3, k1_v4, claimed)
}

/// `node` joins `admin`'s network `net`, where it makes `total` members; returns when the
/// two count them all (others may be cut off and not know yet).
async fn join_later(net: &str, admin: &Node, node: &Node, total: u64) {
    let invite: Value = admin.client_json(&["net", "invite", net]).await.unwrap();
    let ticket = invite["ticket"].as_str().unwrap().to_string();
    node.client_text(&["net", "join", &ticket]).await.unwrap();
    for n in [admin, node] {
        wait_for(
            &format!("{} to count {total} members", n.name()),
            Duration::from_secs(20),
            Duration::from_millis(100),
            || async {
                let members = network(n, net).await["members"].as_u64().unwrap_or(0);
                if members == total {
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

/// Waits until every one of `nodes` shows `expected` as its table.
async fn tables_settle(nodes: &[&Node], expected: &BTreeMap<String, String>) {
    for node in nodes {
        wait_for(
            &format!("{}'s table to settle", node.name()),
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async {
                let t = table(node).await;
                if t == *expected {
                    Poll::Ready(())
                } else {
                    Poll::seen(format!("{t:?}"))
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}; expected {expected:?}"));
    }
}

/// A running member keeps its address: k2 (the higher id) joins and comes up first, so it
/// records the contested address; k3 (the lower id) joins later and derives the same one,
/// and it is k3 that takes the next free address. k2's address never changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_member_keeps_its_address_when_a_lower_id_joins_with_it() {
    init_tracing();
    require_nat_lab("tunnel");
    let _machine = MACHINE.write().await;
    let lab = public_lab(&["k1", "k2", "k3"]).await;
    let (k1, k2, k3, k1_v4, claimed) = contested(&lab).await;
    assert_eq!(vpn_up(&k2, NET).await["ipv4"], claimed.to_string());
    join_later(NET, &k1, &k3, 3).await;
    let moved = next_free(claimed, &[k1_v4, claimed]);
    assert_eq!(vpn_up(&k3, NET).await["ipv4"], moved.to_string());
    let expected = BTreeMap::from([
        (k1.peer_id().to_string(), k1_v4.to_string()),
        (k2.peer_id().to_string(), claimed.to_string()),
        (k3.peer_id().to_string(), moved.to_string()),
    ]);
    tables_settle(&[&k1, &k2, &k3], &expected).await;
    ping_through(&lab, "k1", &claimed.to_string(), 3).await;
    ping_through(&lab, "k1", &moved.to_string(), 3).await;
    report(&json!({
        "test": "lab_vpn_recorded_lease_stays",
        "kept": claimed.to_string(),
        "later_joiner_moved_to": moved.to_string(),
    }));
}

/// Two members record one address at once: k2 is cut off (nftables drops all it sends
/// and receives) while k3 joins, and both bring their tunnels up, each recording the
/// contested address. When the cut heals the records meet: the lower id (k3) keeps it,
/// and k2's running tunnel moves to the next free address (device re-addressed, status
/// and every table alike), where pings reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_claim_moves_the_running_loser_to_a_new_address() {
    init_tracing();
    require_nat_lab("tunnel");
    let _machine = MACHINE.write().await;
    let lab = public_lab(&["k1", "k2", "k3"]).await;
    let (k1, k2, k3, k1_v4, claimed) = contested(&lab).await;
    let cut = [
        "add table inet cut",
        "add chain inet cut in { type filter hook input priority -1 ; policy drop ; }",
        "add chain inet cut out { type filter hook output priority -1 ; policy drop ; }",
        "add rule inet cut in iifname lo accept",
        "add rule inet cut out oifname lo accept",
    ];
    for rule in cut {
        let args: Vec<&str> = rule.split_whitespace().collect();
        lab.exec("k2", "nft", &args).await.unwrap();
    }
    join_later(NET, &k1, &k3, 3).await;
    let up2 = vpn_up(&k2, NET).await;
    assert_eq!(up2["ipv4"], claimed.to_string(), "k2 knows no k3 yet");
    let iface = up2["interface"].as_str().unwrap().to_string();
    assert_eq!(vpn_up(&k3, NET).await["ipv4"], claimed.to_string());
    lab.exec("k2", "nft", &["delete", "table", "inet", "cut"])
        .await
        .unwrap();
    let healed = tokio::time::Instant::now();
    let moved = next_free(claimed, &[k1_v4, claimed]);
    let expected = BTreeMap::from([
        (k1.peer_id().to_string(), k1_v4.to_string()),
        (k2.peer_id().to_string(), moved.to_string()),
        (k3.peer_id().to_string(), claimed.to_string()),
    ]);
    tables_settle(&[&k1, &k2, &k3], &expected).await;
    let settled_ms = healed.elapsed().as_millis();
    let addrs = lab
        .exec_output("k2", "ip", &["-4", "-o", "addr", "show", "dev", &iface])
        .await
        .unwrap();
    let addrs = format!(
        "{}{}",
        String::from_utf8_lossy(&addrs.stdout),
        String::from_utf8_lossy(&addrs.stderr)
    );
    assert!(
        addrs.contains(&format!("{moved}/")) && !addrs.contains(&format!("{claimed}/")),
        "k2's device moved: {addrs}"
    );
    ping_through(&lab, "k1", &moved.to_string(), 3).await;
    ping_through(&lab, "k1", &claimed.to_string(), 3).await;
    ping_through(&lab, "k2", &claimed.to_string(), 3).await;
    report(&json!({
        "test": "lab_vpn_concurrent_claim",
        "winner_kept": claimed.to_string(),
        "running_loser_moved_to": moved.to_string(),
        "settled_after_heal_ms": settled_ms,
    }));
}

/// A network the config file's `[vpn] up` names comes up when the daemon starts; one it
/// names that the node is not in is one logged line, and the daemon runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_named_in_the_config_come_up_at_start() {
    init_tracing();
    require_nat_lab("tunnel");
    let _machine = MACHINE.write().await;
    let lab = public_lab(&["s1", "s2"]).await;
    let (s1, s2) = tokio::join!(start_member(&lab, "s1"), start_member(&lab, "s2"));
    connect_all(&lab, &[&s1, &s2]).await;
    form_network(NET, &s1, &[(&s2, None)]).await;
    let up1 = vpn_up(&s1, NET).await;
    assert!(try_status(&s2, NET).await.is_none());

    s2.kill().await.unwrap();
    std::fs::write(
        s2.data_dir().join(p2pnode_node::config::CONFIG_FILE),
        format!("[vpn]\nup = [\"{NET}\", \"elsewhere\"]\n"),
    )
    .unwrap();
    s2.start().await.unwrap();
    let up2 = wait_for(
        "s2's tunnel to come up at start",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            match try_status(&s2, NET).await {
                Some(s) => Poll::Ready(s),
                None => Poll::seen("not up"),
            }
        },
    )
    .await
    .unwrap();
    let line = wait_for(
        "s2 to log the network it is not in",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let log = s2.log_tail(20_000);
            let line = log
                .lines()
                .find(|l| l.contains("vpn up at start") && l.contains("elsewhere"))
                .map(str::to_string);
            match line {
                Some(l) => Poll::Ready(l),
                None => Poll::seen("no line yet"),
            }
        },
    )
    .await
    .unwrap();
    assert!(
        line.contains("not a member of network `elsewhere`"),
        "{line}"
    );
    s2.check_running().unwrap();
    let list: Value = s2.client_json(&["vpn", "status"]).await.unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

    s2.connect(&common::vpn::member_addr(&lab, &s1))
        .await
        .unwrap();
    let ip = |v: &Value| v["ipv4"].as_str().unwrap().to_string();
    ping_through(&lab, "s2", &ip(&up1), 3).await;
    ping_through(&lab, "s1", &ip(&up2), 3).await;
    for node in [&s1, &s2] {
        node.client_text(&["vpn", "down", NET]).await.unwrap();
    }
    report(&json!({
        "test": "lab_vpn_up_at_start",
        "up": up2["interface"],
        "logged": line,
    }));
}

/// CAP_NET_ADMIN's bit in a capability set.
const CAP_NET_ADMIN: u32 = 12;

/// A daemon without CAP_NET_ADMIN: started as root through `setpriv`, which takes the
/// capability out of its bounding and inheritable sets, so the daemon never holds it.
/// `vpn up` fails with one line that names the capability, and no tunnel is left up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpn_up_without_cap_net_admin_names_the_capability() {
    init_tracing();
    require_nat_lab("tunnel");
    let _machine = MACHINE.read().await;
    let lab = public_lab(&["c1"]).await;
    let ip = lab.host("c1").unwrap().ip;
    let spec = NodeSpec {
        listen: vec![format!("/ip4/{ip}/tcp/4001")],
        wrapper: [
            "setpriv",
            "--inh-caps=-net_admin",
            "--bounding-set=-net_admin",
            "--",
        ]
        .map(String::from)
        .to_vec(),
        ..NodeSpec::default()
    };
    let c1 = lab
        .start_node("c1", "c1", spec)
        .await
        .expect("the daemon starts through setpriv (util-linux)");
    // The set-up itself: the daemon holds no CAP_NET_ADMIN.
    let proc_status =
        std::fs::read_to_string(format!("/proc/{}/status", c1.pid().unwrap())).unwrap();
    let effective = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(
        effective & (1 << CAP_NET_ADMIN),
        0,
        "the daemon holds CAP_NET_ADMIN: {effective:x}"
    );

    c1.client_text(&["net", "create", NET]).await.unwrap();
    let out = c1
        .client_output(&["vpn", "up", NET], Duration::from_secs(10))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains("CAP_NET_ADMIN"), "{stderr}");
    let list: Value = c1.client_json(&["vpn", "status"]).await.unwrap();
    assert_eq!(list, json!([]), "no tunnel is up");
    c1.check_running().unwrap();
    report(&json!({"test": "lab_vpn_no_cap_net_admin", "error": lines[0]}));
}

/// ULA addresses the IPv6 test gives its two hosts on the public segment.
const V6_HOSTS: [(&str, &str); 2] = [("w1", "fd00:7e57::1"), ("w2", "fd00:7e57::2")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_connected_over_ipv6_only_carry_packets_as_ipv6_datagrams() {
    init_tracing();
    require_nat_lab("tunnel");
    let _machine = MACHINE.write().await;
    let lab = public_lab(&V6_HOSTS.map(|(h, _)| h)).await;
    let mut nodes = Vec::new();
    for (host, ip) in V6_HOSTS {
        // `nodad`: usable at once, without waiting out duplicate address detection.
        let cidr = format!("{ip}/64");
        lab.exec(
            host,
            "ip",
            &["-6", "addr", "add", &cidr, "dev", "eth0", "nodad"],
        )
        .await
        .unwrap();
        // The daemon knows, and so offers, only its IPv6 address.
        let spec = NodeSpec {
            listen: vec![format!("/ip6/{ip}/tcp/4001")],
            ..NodeSpec::default()
        };
        nodes.push(lab.start_node(host, host, spec).await.unwrap());
    }
    let (w1, w2) = (&nodes[0], &nodes[1]);
    w1.connect(&w2.addr_with_id(&format!("/ip6/{}/tcp/4001", V6_HOSTS[1].1)))
        .await
        .unwrap();
    form_network(NET, w1, &[(w2, None)]).await;
    w1.client_json::<Value>(&["vpn", "up", NET]).await.unwrap();
    let up: Value = w2.client_json(&["vpn", "up", NET]).await.unwrap();
    let to = up["ipv4"].as_str().unwrap().to_string();
    ping_through(&lab, "w1", &to, 5).await;

    // The datagram path comes up over IPv6: w1 sends to w2's IPv6 address.
    let want = format!("[{}]:", V6_HOSTS[1].1);
    let seen = wait_for(
        "w1 to carry packets to w2 as IPv6 datagrams",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            let s = status(w1, NET).await;
            let m = member(&s, w2).clone();
            let endpoint = m["endpoint"].as_str().unwrap_or_default();
            if m["transport"] == "udp" && endpoint.starts_with(&want) {
                Poll::Ready(m)
            } else {
                Poll::seen(m.to_string())
            }
        },
    )
    .await
    .unwrap();
    ping_through(&lab, "w1", &to, 5).await;
    report(&json!({
        "test": "ipv6-datagrams",
        "endpoint": seen["endpoint"],
        "candidates": seen["candidates"],
    }));
}

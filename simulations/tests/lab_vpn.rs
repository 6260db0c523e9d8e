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
//! - two members that share two networks: both networks' datagrams come from one endpoint
//!   to one of two connected sockets, and pings pass in both;
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

#[path = "lab_vpn/collision.rs"]
mod collision;
mod common;
#[path = "lab_vpn/start.rs"]
mod start;

use std::time::Duration;

use common::vpn::{
    connect_all, connected_pair, count, form_network, iperf3_through, join_network, member,
    network_id, ping_through, public_lab, start_member, status,
};
use common::{MACHINE, init_tracing, report, require_nat_lab};
use p2pnode_sim::lab::poll::{Poll, wait_for};
use p2pnode_sim::lab::{Lab, Node};
use p2pnode_tunnel::Prefixes;
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

/// Two members that share two networks: each link has a socket connected to the other
/// member's one datagram endpoint, and the kernel hands that endpoint's datagrams to one of
/// the two sockets whatever network they are for. The reader of that socket knows its own
/// link and finds the other network's by its index; pings pass in both networks, both
/// ways, over datagrams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_in_two_networks_share_one_datagram_endpoint() {
    init_tracing();
    require_nat_lab("tunnel");
    let _machine = MACHINE.write().await;
    let (lab, s1, s2) = connected_pair("s1", "s2").await;
    s1.client_text(&["net", "create", RED]).await.unwrap();
    let blue = network_beside(&s1, RED).await;
    join_network(RED, &s1, &[(&s2, None)]).await;
    join_network(&blue, &s1, &[(&s2, None)]).await;
    for (node, net) in [(&s1, RED), (&s1, &blue), (&s2, RED), (&s2, &blue)] {
        vpn_up(node, net).await;
    }
    // Both links of each side on datagrams, each with its connected socket: two sockets on
    // s2 connected to s1's one endpoint.
    for (node, other) in [(&s1, &s2), (&s2, &s1)] {
        for net in [RED, blue.as_str()] {
            wait_for(
                "the datagram path in both networks",
                Duration::from_secs(30),
                Duration::from_millis(100),
                || async {
                    let s = status(node, net).await;
                    let m = member(&s, other);
                    if m["transport"] == "udp" {
                        Poll::Ready(())
                    } else {
                        Poll::seen(m.to_string())
                    }
                },
            )
            .await
            .unwrap();
        }
    }
    let s1_endpoint = member(&status(&s2, RED).await, &s1)["endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        member(&status(&s2, &blue).await, &s1)["endpoint"],
        s1_endpoint.as_str(),
        "one endpoint of s1's for both networks"
    );
    let connected = wait_for(
        "s2's two sockets connected to s1's endpoint",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let out = lab
                .exec_output("s2", "ss", &["-u", "-n", "-H", "state", "established"])
                .await
                .unwrap();
            let listing = String::from_utf8_lossy(&out.stdout).to_string();
            let n = listing
                .lines()
                .filter(|l| l.split_whitespace().last() == Some(s1_endpoint.as_str()))
                .count();
            if n >= 2 {
                Poll::Ready(n)
            } else {
                Poll::seen(listing)
            }
        },
    )
    .await
    .unwrap();

    let before: Vec<u64> = packets_in_from(&s2, &s1, &[RED, &blue]).await;
    for net in [RED, blue.as_str()] {
        // Each member's tunnel address, as the other's status lists it.
        let s2_ip = member(&status(&s1, net).await, &s2)["ipv4"]
            .as_str()
            .unwrap()
            .to_string();
        let s1_ip = member(&status(&s2, net).await, &s1)["ipv4"]
            .as_str()
            .unwrap()
            .to_string();
        ping_through(&lab, "s1", &s2_ip, 3).await;
        ping_through(&lab, "s2", &s1_ip, 3).await;
    }
    let after = packets_in_from(&s2, &s1, &[RED, &blue]).await;
    for (i, net) in [RED, blue.as_str()].into_iter().enumerate() {
        assert!(
            after[i] >= before[i] + 6,
            "{net}: s2 took s1's packets: {before:?} {after:?}"
        );
        let m = member(&status(&s2, net).await, &s1).clone();
        assert_eq!(m["transport"], "udp", "{net}: {m}");
    }
    for (node, net) in [(&s1, RED), (&s1, &blue), (&s2, RED), (&s2, &blue)] {
        node.client_text(&["vpn", "down", net]).await.unwrap();
    }
    report(&json!({
        "test": "lab_vpn_two_networks_one_endpoint",
        "s2_sockets_connected_to_s1": connected,
        "s2_packets_in_from_s1": after,
    }));
}

/// `node`'s count of packets in from `from`, per network of `nets`.
async fn packets_in_from(node: &Node, from: &Node, nets: &[&str]) -> Vec<u64> {
    let mut out = Vec::new();
    for net in nets {
        out.push(count(member(&status(node, net).await, from), "packets_in"));
    }
    out
}

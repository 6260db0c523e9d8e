//! The tunnel across the NAT lab (issue #21): A and B behind two NAT routers know only
//! the relay. A creates a network, B joins it with A's invite, both run `vpn up`, and each
//! pings the other's tunnel address: behind two cone NATs once hole punching made the
//! connection direct, behind two symmetric NATs over the relay. `vpn status --json` must
//! name the path the member's connection takes (`direct` or `relayed`).
//!
//! The relay of this lab limits each circuit to [`CIRCUIT_SECS`] seconds and
//! [`CIRCUIT_BYTES`] bytes (both ways together; a relay's defaults are 600 s and 64 MiB).
//! When a circuit ends, the relayed connection and the tunnel stream on it end with it;
//! the tunnel opens a new stream (over a new circuit) and the pings go on. Over the relay
//! the test pings for longer than a circuit lives and requires the pings after the
//! circuit's end to come back, and a slow inner TCP flow (iperf3) to outlive the circuit
//! without a reset.
//!
//! Names: neither sets one, so `vpn up` names each after the host (the lab's hosts share
//! one host name, so the member with the larger peer id takes the name and four
//! characters of its id); each resolves the other's `<name>.p2p` through its own DNS
//! responder and through the other's, across the tunnel, to the addresses `vpn up`
//! gave, and an unknown name is NXDOMAIN.
//!
//! Needs root and the `p2pnode` binary: without them the tests fail (they never skip).
//! Each test prints its outcome as one JSON line on stdout (the ping round trip in ms).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::vpn::{first_echo, form_network, iperf3_server, iperf3_through};
use common::{
    KeepLogsOnPanic, MACHINE, config, init_tracing, machine_for, nat_pair, report, require_nat_lab,
};
use p2pnode_sim::lab::node::PathKind;
use p2pnode_sim::lab::poll::{Poll, wait_for};
use p2pnode_sim::lab::scenarios::{self, CircuitLimits};
use p2pnode_sim::lab::{Lab, NatKind, Node};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Longer than DCUtR's attempts, so a relayed outcome is settled by its "giving up" line.
const SIM_BIN: &str = env!("CARGO_BIN_EXE_p2pnode-sim");
const DCUTR_WINDOW: Duration = Duration::from_secs(45);
const NET: &str = "lab";
/// How long one relayed circuit may live in this lab.
const CIRCUIT_SECS: u64 = 20;
/// How many bytes one relayed circuit may carry in this lab.
const CIRCUIT_BYTES: u64 = 16 << 20;
/// Echo requests of the round-trip measurement.
const PINGS: u32 = 20;

/// `vpn status --json` of `node`: the one network's entry.
async fn status(node: &Node) -> Value {
    let list: Value = node.client_json(&["vpn", "status"]).await.unwrap();
    list.as_array()
        .and_then(|l| l.iter().find(|n| n["network"] == NET))
        .cloned()
        .unwrap_or_else(|| panic!("{} has no tunnel up: {list}", node.name()))
}

/// What `node`'s status says about `peer`.
fn member(status: &Value, peer: &Node) -> Value {
    status["members"]
        .as_array()
        .and_then(|l| l.iter().find(|m| m["peer_id"] == peer.peer_id()))
        .cloned()
        .unwrap_or_else(|| panic!("no member {} in {status}", peer.name()))
}

/// Waits until `node`'s tunnel has a stream to `peer` and returns the member's status.
async fn wait_linked(node: &Node, peer: &Node) -> Value {
    wait_for(
        &format!("{} to link to {}", node.name(), peer.name()),
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let m = member(&status(node).await, peer);
            if m["linked"] == true {
                Poll::Ready(m)
            } else {
                Poll::seen(m.to_string())
            }
        },
    )
    .await
    .unwrap()
}

/// Asks the DNS responder at `server` (port 53) from `host` for `name` of type `qtype`.
async fn resolve(lab: &Lab, host: &str, server: &str, name: &str, qtype: &str) -> Value {
    let server = format!("{server}:53");
    let args = [
        "dns-query",
        "--server",
        &server,
        "--name",
        name,
        "--type",
        qtype,
    ];
    let out = lab.exec(host, SIM_BIN, &args).await.unwrap();
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Waits until `node`'s status names `peer`; the name.
async fn wait_named(node: &Node, peer: &Node) -> String {
    wait_for(
        &format!("{} to know {}'s name", node.name(), peer.name()),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let m = member(&status(node).await, peer);
            match m["name"].as_str() {
                Some(n) => Poll::Ready(n.to_string()),
                None => Poll::seen(m.to_string()),
            }
        },
    )
    .await
    .unwrap()
}

/// `ping`'s summary: (received, average round trip in ms).
fn summary(out: &str) -> (u32, Option<f64>) {
    let received = out
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(" transmitted, ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0);
    let avg = out.lines().find_map(|l| {
        let (_, figures) = l.split_once(" = ")?;
        figures.split('/').nth(1)?.parse().ok()
    });
    (received, avg)
}

/// `count` echoes from `host` to `to`, `interval` apart: (received, average ms).
async fn ping(lab: &Lab, host: &str, to: &str, count: u32, interval: &str) -> (u32, Option<f64>) {
    let n = count.to_string();
    let out = lab
        .exec_output(host, "ping", &["-c", &n, "-i", interval, "-W", "2", to])
        .await
        .unwrap();
    summary(&String::from_utf8_lossy(&out.stdout))
}

/// Waits until `node`'s tunnel carries `peer`'s packets on `transport` (and, if given,
/// over a connection of `path`); fails the test after `within`.
async fn wait_transport(
    node: &Node,
    peer: &Node,
    transport: &str,
    path: Option<&str>,
    within: Duration,
) {
    let carried = wait_for(
        "the tunnel's transport",
        within,
        Duration::from_millis(100),
        || async {
            let m = member(&status(node).await, peer);
            if m["transport"] == transport && path.is_none_or(|p| m["path"] == p) {
                Poll::Ready(m)
            } else {
                Poll::seen(m.to_string())
            }
        },
    )
    .await;
    assert!(
        carried.is_ok(),
        "{} to {}: {carried:?}",
        node.name(),
        peer.name()
    );
}

async fn tunnel_across(nat: NatKind, expected: PathKind) {
    init_tracing();
    require_nat_lab("tunnel");
    let _machine = machine_for(expected).await;
    let cfg = scenarios::ScenarioConfig {
        direct_window: DCUTR_WINDOW,
        relay_circuit: Some(CircuitLimits {
            secs: CIRCUIT_SECS,
            bytes: CIRCUIT_BYTES,
        }),
        ..config()
    };
    let (hp, a, b) = nat_pair(nat, expected, &cfg).await;
    let lab = &hp.0.lab;
    let path = expected;
    let path_name = match expected {
        PathKind::Direct => "direct",
        _ => "relayed",
    };

    // The network: A creates it, B joins with A's ticket over the path just made.
    a.client_text(&["net", "create", NET]).await.unwrap();
    let invite: Value = a.client_json(&["net", "invite", NET]).await.unwrap();
    let ticket = invite["ticket"].as_str().unwrap();
    b.client_text(&["net", "join", ticket]).await.unwrap();
    wait_for(
        "A to know B as a member",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let list: Value = a.client_json(&["net", "list"]).await.unwrap();
            let members = list[0]["members"].as_u64().unwrap_or(0);
            if members == 2 {
                Poll::Ready(())
            } else {
                Poll::seen(format!("{members} members"))
            }
        },
    )
    .await
    .unwrap();

    let up_a: Value = a.client_json(&["vpn", "up", NET]).await.unwrap();
    let up_b: Value = b.client_json(&["vpn", "up", NET]).await.unwrap();
    let (ip_a, ip_b) = (
        up_a["ipv4"].as_str().unwrap().to_string(),
        up_b["ipv4"].as_str().unwrap().to_string(),
    );
    let v6_b = up_b["ipv6"].as_str().unwrap().to_string();
    let linked_at = Instant::now();
    let (from_a, from_b) = tokio::join!(wait_linked(&a, &b), wait_linked(&b, &a));
    let linked_ms = linked_at.elapsed().as_millis();
    assert_eq!(from_a["ipv4"], ip_b.as_str(), "{from_a}");
    assert_eq!(from_b["ipv4"], ip_a.as_str(), "{from_b}");

    first_echo(lab, "a", &ip_b, Duration::from_secs(60)).await;
    first_echo(lab, "b", &ip_a, Duration::from_secs(60)).await;
    let (got, rtt_ms) = ping(lab, "a", &ip_b, PINGS, "0.2").await;
    assert_eq!(got, PINGS, "every echo A -> B comes back");
    let (got, _) = ping(lab, "b", &ip_a, 5, "0.2").await;
    assert_eq!(got, 5, "every echo B -> A comes back");
    let (got, rtt6_ms) = ping(lab, "a", &v6_b, 5, "0.2").await;
    assert_eq!(got, 5, "every IPv6 echo A -> B comes back");

    // Names: each took the host name (one with a suffix), and resolves the other's.
    let (name_b, name_a) = tokio::join!(wait_named(&a, &b), wait_named(&b, &a));
    let name_b = wait_for(
        "the two names to differ",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let (nb, na) = (wait_named(&a, &b).await, wait_named(&b, &a).await);
            if nb != na && wait_named(&a, &b).await == nb {
                Poll::Ready(nb)
            } else {
                Poll::seen(format!("{na} and {nb}"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e} (first seen: {name_a}, {name_b})"));
    let name_a = wait_named(&b, &a).await;
    let fqdn_a = format!("{name_a}.p2p");
    let fqdn_b = format!("{name_b}.p2p");
    let asked = Instant::now();
    let got = resolve(lab, "a", &ip_a, &fqdn_b, "A").await;
    let resolve_ms = asked.elapsed().as_millis();
    assert_eq!(
        got,
        json!({"rcode": "NoError", "addrs": [ip_b]}),
        "{fqdn_b} at A"
    );
    let got = resolve(lab, "a", &ip_a, &fqdn_b, "AAAA").await;
    assert_eq!(
        got,
        json!({"rcode": "NoError", "addrs": [v6_b]}),
        "{fqdn_b} AAAA at A"
    );
    // B asks A's responder, across the tunnel, for A's own name.
    let got = resolve(lab, "b", &ip_a, &fqdn_a, "A").await;
    assert_eq!(
        got,
        json!({"rcode": "NoError", "addrs": [ip_a]}),
        "{fqdn_a} at A from B"
    );
    let got = resolve(lab, "b", &ip_b, "nobody.p2p", "A").await;
    assert_eq!(got["rcode"], "NxDomain", "{got}");
    // The address the answer gave is the one that pings.
    let (got, _) = ping(lab, "b", &ip_a, 3, "0.2").await;
    assert_eq!(got, 3);
    let s_b = status(&b).await;
    assert_eq!(s_b["dns"], ip_b.as_str(), "{s_b}");
    let resolver = s_b["resolver"].as_str().unwrap();
    assert!(
        resolver.contains(&format!(
            "resolvectl dns {} {ip_b}",
            s_b["interface"].as_str().unwrap()
        )) && resolver.contains("~p2p"),
        "{resolver}"
    );

    // `vpn status` names the path, on both sides.
    for (node, peer) in [(&a, &b), (&b, &a)] {
        let m = member(&status(node).await, peer);
        assert_eq!(
            m["path"],
            path_name,
            "{} sees {}: {m}",
            node.name(),
            peer.name()
        );
    }

    // What carries the packets: datagrams on the hole-punched path (both sides' probes
    // meet through the cone NATs), the stream over the relay (symmetric NATs map each
    // destination to a new port, so the probes never meet).
    let transport = match expected {
        PathKind::Direct => "udp",
        _ => "stream",
    };
    for (node, peer) in [(&a, &b), (&b, &a)] {
        wait_transport(node, peer, transport, None, Duration::from_secs(15)).await;
    }
    // iperf3 TCP between the tunnel addresses, on the hole-punched datagram path.
    let mut direct_iperf = Value::Null;
    if expected == PathKind::Direct {
        let (got, _) = ping(lab, "a", &ip_b, 5, "0.2").await;
        assert_eq!(
            got, 5,
            "every echo A -> B comes back over the datagram path"
        );
        let (mbit_s, iperf) = iperf3_through(lab, "a", "b", &ip_b, "3", &[]).await;
        let m = member(&status(&a).await, &b);
        assert_eq!(m["transport"], "udp", "the flow stayed on datagrams: {m}");
        direct_iperf = json!({
            "mbit_s": mbit_s,
            "retransmits": iperf["end"]["sum_sent"]["retransmits"],
        });
    }

    // Over the relay: the tunnel outlives the circuit. Pings span more than a circuit's
    // life, and a slow inner TCP flow runs across the circuit's end.
    let mut outlived = Value::Null;
    if expected == PathKind::Relayed {
        let streams_before = member(&status(&a).await, &b)["streams"].as_u64().unwrap();
        iperf3_server(lab, "b", &ip_b).await;
        let secs = (CIRCUIT_SECS + 10).to_string();
        let count = u32::try_from(CIRCUIT_SECS + 10).unwrap() * 5;
        let iperf_args = ["-c", ip_b.as_str(), "-t", secs.as_str(), "-b", "200K", "-J"];
        let started = Instant::now();
        let (pings, iperf) = tokio::join!(
            ping(lab, "a", &ip_b, count, "0.2"),
            lab.exec_output("a", "iperf3", &iperf_args)
        );
        let (got, _) = pings;
        let iperf = iperf.unwrap();
        let iperf_json: Value = serde_json::from_slice(&iperf.stdout).unwrap_or(Value::Null);
        assert!(
            iperf.status.success(),
            "the inner TCP flow outlives the circuit: {}",
            String::from_utf8_lossy(&iperf.stdout)
        );
        let lost = count - got;
        // A circuit's end costs the echoes of the gap until the new stream carries them:
        // the tunnel reopens within a second or two, so at most a few go missing.
        assert!(
            lost <= 15,
            "{lost} of {count} echoes lost over {:?}",
            started.elapsed()
        );
        let (got, _) = ping(lab, "a", &ip_b, 5, "0.2").await;
        assert_eq!(got, 5, "echoes pass after the circuit ended");
        let m = member(&status(&a).await, &b);
        assert_eq!(m["path"], path_name, "{m}");
        let streams = m["streams"].as_u64().unwrap();
        assert!(
            streams > streams_before,
            "a circuit ended during the pings and the tunnel opened a new stream: {m}"
        );
        outlived = json!({
            "streams_before": streams_before,
            "streams_after": streams,
            "pings": count,
            "lost": lost,
            "iperf3_kbit_s": iperf_json["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or(0.0) / 1e3,
            "iperf3_retransmits": iperf_json["end"]["sum_sent"]["retransmits"],
        });
    }

    let s = status(&a).await;
    let m = member(&s, &b);
    // The connection the two hold afterwards is still of the kind asked for.
    let peer = b.peer(a.peer_id()).await.unwrap().unwrap();
    if expected == PathKind::Relayed {
        assert!(
            peer.connections.iter().all(|c| c.path == PathKind::Relayed),
            "a direct connection appeared behind symmetric NATs: {:?}",
            peer.connections
        );
    }
    for node in [&a, &b] {
        node.client_text(&["vpn", "down", NET]).await.unwrap();
    }
    report(&json!({
        "test": "lab_vpn_nat",
        "nat": nat.to_string(),
        "path": path,
        "linked_ms": linked_ms,
        "ping_rtt_ms": rtt_ms,
        "ping6_rtt_ms": rtt6_ms,
        "names": [name_a, name_b],
        "resolve_ms": resolve_ms,
        "circuit": { "secs": CIRCUIT_SECS, "bytes": CIRCUIT_BYTES },
        "outlived_circuit": outlived,
        "direct_iperf3": direct_iperf,
        "a_to_b": m,
        "a_drops": s["drops"],
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_crosses_two_cone_nats_directly_through_the_tunnel() {
    tunnel_across(NatKind::Cone, PathKind::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_crosses_two_symmetric_nats_over_the_relay_through_the_tunnel() {
    tunnel_across(NatKind::Symmetric, PathKind::Relayed).await;
}

/// Three members, each behind a cone NAT of its own, knowing only the relay: every pair
/// hole-punches a direct connection, the tunnel's datagram path opens between every pair
/// (both ways), pings pass between all of them, a name resolves, and iperf3 runs on the
/// datagram path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_behind_cone_nats_mesh_over_datagrams() {
    three_members(NatKind::Cone).await;
}

/// The same three behind symmetric NATs: no pair gets a direct connection, every pair's
/// packets ride the tunnel stream over the relay, pings pass between all of them, a name
/// resolves, and a slow iperf3 flow runs through the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_behind_symmetric_nats_mesh_over_the_relay() {
    three_members(NatKind::Symmetric).await;
}

async fn three_members(nat: NatKind) {
    init_tracing();
    require_nat_lab("tunnel");
    // The machine to itself: three hole punches at once beside other labs' traffic
    // missed the punch window once in five runs here.
    let _machine = MACHINE.write().await;
    let direct = nat == NatKind::Cone;
    // Over the relay, circuits that outlast the test: the circuit's end is
    // `tunnel_across`'s subject, not this one's.
    let cfg = scenarios::ScenarioConfig {
        direct_window: DCUTR_WINDOW,
        relay_circuit: (!direct).then_some(CircuitLimits {
            secs: 600,
            bytes: 256 << 20,
        }),
        ..config()
    };
    let t = scenarios::Transport::Tcp;
    let hp = KeepLogsOnPanic(
        scenarios::HolePunchLab::with_third(nat, nat, t, cfg.clone())
            .await
            .expect("the NAT lab builds"),
    );
    let lab = &hp.0.lab;
    let options = scenarios::PeerOptions {
        transport: t,
        port: scenarios::PEER_PORT,
        mdns: false,
        listen_any: false,
        hole_punch: Default::default(),
        metrics: false,
    };
    let relay = &hp.0.relay;
    let (a, b, c) = tokio::try_join!(
        scenarios::start_peer(lab, "a", "a", relay, options),
        scenarios::start_peer(lab, "b", "b", relay, options),
        scenarios::start_peer(lab, "c", "c", relay, options)
    )
    .expect("peers start");
    for n in [&a, &b, &c] {
        scenarios::wait_reservation(n, cfg.setup_timeout)
            .await
            .expect("a reservation");
    }
    // Behind symmetric NATs the hole punch fails: a short wait shows it, the relayed
    // connection stays.
    let window = if direct {
        cfg.direct_window
    } else {
        Duration::from_secs(5)
    };
    // Which pairs got a direct connection: behind cone NATs, every pair. (The third
    // pair's punch used to give up in 2-4 runs of 10: its lookup dialled the first
    // member at the address the second had punched, which Kademlia handed out, and that
    // dial took the port pair the punch needed. Punched addresses are kept out of the
    // DHT now: 17 runs in 17 with all three pairs direct.)
    let mut punched = std::collections::BTreeSet::new();
    for (from, to) in [(&b, &a), (&c, &a), (&c, &b)] {
        from.connect(to.peer_id())
            .await
            .expect("connects by peer id");
        let got = scenarios::wait_direct(from, to, t, window, cfg.poll_interval)
            .await
            .expect("the path settles");
        if !direct {
            assert!(
                got.is_none(),
                "{} to {}: direct behind symmetric NATs",
                from.name(),
                to.name()
            );
        }
        if direct {
            assert!(
                got.is_some(),
                "{} to {}: no direct connection behind cone NATs",
                from.name(),
                to.name()
            );
        }
        if got.is_some() {
            punched.insert((to.name().to_string(), from.name().to_string()));
        }
    }
    form_network(NET, &a, &[(&b, None), (&c, None)]).await;
    let mut ip = std::collections::BTreeMap::new();
    for n in [&a, &b, &c] {
        let up: Value = n.client_json(&["vpn", "up", NET]).await.unwrap();
        ip.insert(
            n.name().to_string(),
            up["ipv4"].as_str().unwrap().to_string(),
        );
    }
    let pairs = [(&a, &b), (&a, &c), (&b, &c)];
    let linked_at = Instant::now();
    for (x, y) in pairs {
        let (transport, path) = if punched.contains(&(x.name().to_string(), y.name().to_string())) {
            ("udp", "direct")
        } else {
            ("stream", "relayed")
        };
        for (node, peer) in [(x, y), (y, x)] {
            wait_transport(node, peer, transport, Some(path), Duration::from_secs(30)).await;
        }
    }
    let settled_ms = linked_at.elapsed().as_millis();
    let mut rtts = serde_json::Map::new();
    for (x, y) in pairs {
        first_echo(lab, x.host(), &ip[y.name()], Duration::from_secs(30)).await;
        let (got, rtt) = ping(lab, x.host(), &ip[y.name()], 5, "0.2").await;
        assert_eq!(got, 5, "every echo {} -> {} comes back", x.name(), y.name());
        let (got, _) = ping(lab, y.host(), &ip[x.name()], 5, "0.2").await;
        assert_eq!(got, 5, "every echo {} -> {} comes back", y.name(), x.name());
        rtts.insert(format!("{}-{}", x.name(), y.name()), json!(rtt));
    }
    // Names: C's name, asked of A's responder, is C's address.
    let name_c = wait_named(&a, &c).await;
    let got = resolve(lab, "a", &ip["a"], &format!("{name_c}.p2p"), "A").await;
    assert_eq!(
        got,
        json!({"rcode": "NoError", "addrs": [ip["c"]]}),
        "{name_c}.p2p"
    );
    // Over the relay a slow flow, well inside the circuit's byte limit.
    let mbit_s = if punched.contains(&("a".to_string(), "c".to_string())) {
        iperf3_through(lab, "c", "a", &ip["a"], "3", &[]).await.0
    } else {
        iperf3_through(lab, "c", "a", &ip["a"], "3", &["-b", "500K"])
            .await
            .0
    };
    assert!(mbit_s > 0.0);
    for n in [&a, &b, &c] {
        n.client_text(&["vpn", "down", NET]).await.unwrap();
    }
    report(&json!({
        "test": "lab_vpn_nat_three",
        "nat": nat.to_string(),
        "direct_pairs": punched.len(),
        "settled_ms": settled_ms,
        "ping_rtt_ms": rtts,
        "iperf3_c_to_a_mbit_s": mbit_s,
    }));
}

#[test]
fn ping_summaries_are_read() {
    let out = "5 packets transmitted, 4 received, 20% packet loss, time 801ms\n\
               rtt min/avg/max/mdev = 0.045/0.057/0.071/0.010 ms\n";
    assert_eq!(summary(out), (4, Some(0.057)));
    assert_eq!(summary("3 packets transmitted, 0 received"), (0, None));
}

//! How `vpn up` starts: from the config at start, without CAP_NET_ADMIN, and between
//! two members connected over IPv6 alone.

use p2pnode_sim::lab::NodeSpec;

use super::common::vpn::try_status;
use super::*;

/// A network the config file's `[vpn] up` names comes up when the daemon starts; one it
/// names that the node is not in is one logged line, and the daemon runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_named_in_the_config_come_up_at_start() {
    init_tracing();
    require_nat_lab("tunnel");
    let _machine = MACHINE.write().await;
    let (lab, s1, s2) = connected_pair("s1", "s2").await;
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

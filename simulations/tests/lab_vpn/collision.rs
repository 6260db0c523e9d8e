//! Address collisions in the lab: a forced collision settled alike on every member, a
//! running member keeping its address, a concurrent claim moving the loser.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;

use libp2p::PeerId;
use libp2p::identity::Keypair;
use p2pnode_tunnel::MemberId;

use super::common::vpn::network;
use super::*;

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

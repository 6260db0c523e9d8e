//! Documents converge between five real daemons in the lab while the network is split and
//! healed, with 5 % of packets lost (issue #20).
//!
//! Five hosts on the public segment, each a member of one network; every host drops 5 %
//! of the packets it receives (nftables `numgen random`). In each phase the network is
//! split at random (into halves, or one node cut off, again with nftables) while the nodes
//! take writes through their control sockets: puts of fresh keys, and deletes of keys the
//! same node wrote. Then the split is healed. Within 10 s of the last heal every node must
//! hold the same heads and the same JSON, and every acknowledged put that was not deleted
//! must be there with its value.
//!
//! Operations: 10,000 in all, as the issue asks (env `P2PNODE_SYNC_OPS` for another
//! figure, and `P2PNODE_SYNC_CONVERGE_SECS` for another bound than 10 s). Seen on
//! 2026-12-04, debug build: 5.5, 7.6 and 7.4 s after the last heal. Before automerge's
//! info-level spans were quieted (they formatted the whole change graph on every received
//! batch) the same run took 35 s.
//!
//! Every host also has the lab's delay link: 25 ms per host and direction (50 ms round
//! trips; env `P2PNODE_SYNC_DELAY_MS` for another figure, 0 for none). With it, runs used
//! to converge 4.5 to 16 s after the last heal: a connection that carried data while the
//! network was split moved again only at TCP's next retransmission, backed off during the
//! split (`ss -ti` at the heal showed retransmission timeouts up to 33 s, back-off 7). The
//! node now closes such a connection after 5 s of unacknowledged data (TCP's user timeout)
//! and the side that dialled it redials every 2 s, so links are back within about a second
//! of the heal. Seen on 2026-12-04 (debug build, machine shared with other builds, load
//! about 10 on 2 cores): 3.7, 4.7, 6.4, 7.7, 6.7, 5.8 and 5.3 s after the last heal; in the
//! same session with the user timeout off (env `P2PNODE_SYNC_NODE_CONFIG` =
//! `tcp_user_timeout_secs = 0`, a `config.toml` for every node) 10.4 and 16.3 s. What is
//! left after the links are back is the sync work itself.
//!
//! Env `P2PNODE_LAB_KEEP` keeps the lab's logs and prints where.
//!
//! Needs root; without it the test fails when env CI is set and otherwise says why and
//! returns.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::sync::{state, wait_same};
use common::{MACHINE, init_tracing, lab_allowed};
use p2pnode_node::control::ControlClient;
use p2pnode_sim::lab::poll::{Poll, wait_for};
use p2pnode_sim::lab::{Lab, LabBuilder, Node, NodeSpec};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const SIM_BIN: &str = env!("CARGO_BIN_EXE_p2pnode-sim");
const HOSTS: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];
const DOC: &str = "shared";
const LOSS_PERCENT: u8 = 5;
const PHASES: usize = 10;
/// What each host's delay link adds to every packet it receives: 25 ms (50 ms round
/// trips), or env `P2PNODE_SYNC_DELAY_MS`.
fn delay() -> Duration {
    Duration::from_millis(
        std::env::var("P2PNODE_SYNC_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(25),
    )
}

/// Runs one nft command (its words as arguments) in `host`'s namespace.
async fn nft(lab: &Lab, host: &str, script: &str) {
    let args: Vec<&str> = script.split_whitespace().collect();
    lab.exec(host, "nft", &args)
        .await
        .unwrap_or_else(|e| panic!("nft {script} on {host}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_converge_after_splits_and_loss_with_every_acknowledged_write() {
    if !lab_allowed() {
        return;
    }
    let _machine = MACHINE.write().await;
    init_tracing();
    let ops: usize = std::env::var("P2PNODE_SYNC_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut builder = LabBuilder::new();
    for h in HOSTS {
        builder = builder.public_host(h);
    }
    let mut lab = builder
        .sim_binary(SIM_BIN)
        .build()
        .await
        .expect("lab builds");
    let delay = delay();
    if !delay.is_zero() {
        for h in HOSTS {
            lab.delay_host(h, delay).await.expect("delay link");
        }
    }
    let mut nodes = Vec::new();
    for h in HOSTS {
        let ip = lab.host(h).unwrap().ip;
        let spec = NodeSpec {
            listen: vec![format!("/ip4/{ip}/tcp/4001")],
            config_toml: std::env::var("P2PNODE_SYNC_NODE_CONFIG").ok(),
            ..NodeSpec::default()
        };
        nodes.push(lab.start_node(h, h, spec).await.expect("node starts"));
    }
    let addr = |i: usize| {
        let ip = lab.host(HOSTS[i]).unwrap().ip;
        nodes[i].addr_with_id(&format!("/ip4/{ip}/tcp/4001"))
    };
    // A full mesh, then the network: n1 creates it and admits the others.
    for (i, node) in nodes.iter().enumerate() {
        for j in i + 1..HOSTS.len() {
            node.connect(&addr(j)).await.expect("connect");
        }
    }
    nodes[0]
        .client_text(&["net", "create", "lab"])
        .await
        .expect("net create");
    for node in &nodes[1..] {
        let invite: Value = nodes[0]
            .client_json(&["net", "invite", "lab"])
            .await
            .expect("invite");
        let ticket = invite["ticket"].as_str().unwrap().to_string();
        node.client_text(&["net", "join", &ticket])
            .await
            .expect("join");
    }
    nodes[0]
        .client_text(&["db", "create", DOC, "--network", "lab"])
        .await
        .expect("db create");
    wait_for(
        "the document on every node",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            for n in &nodes {
                if state(n, DOC).await.is_none() {
                    return Poll::seen(format!("{} lacks it", n.name()));
                }
            }
            Poll::Ready(())
        },
    )
    .await
    .expect("the document reaches every member");

    // 5 % loss on every host, from now to the end.
    for h in HOSTS {
        nft(&lab, h, "add table inet lossy").await;
        nft(
            &lab,
            h,
            "add chain inet lossy in { type filter hook input priority 0 ; policy accept ; }",
        )
        .await;
        nft(
            &lab,
            h,
            &format!("add rule inet lossy in numgen random mod 100 < {LOSS_PERCENT} drop"),
        )
        .await;
        nft(
            &lab,
            h,
            "add chain inet lossy split { type filter hook input priority -1 ; policy accept ; }",
        )
        .await;
    }

    let mut rng = StdRng::seed_from_u64(20);
    // What each acknowledged put wrote, and which keys were deleted after it.
    let mut expected: BTreeMap<String, Value> = BTreeMap::new();
    let mut written_by: Vec<Vec<String>> = vec![Vec::new(); HOSTS.len()];
    let mut acknowledged = 0usize;
    // How long each split lasted, for the report.
    let mut split_ms = Vec::new();
    for phase in 0..PHASES {
        let split_at = tokio::time::Instant::now();
        // Split: halves, or one node alone.
        let mut order: Vec<usize> = (0..HOSTS.len()).collect();
        order.shuffle(&mut rng);
        let cut = if phase % 2 == 0 { 2 } else { 1 };
        let (side_a, side_b) = order.split_at(cut);
        for (mine, theirs) in [(side_a, side_b), (side_b, side_a)] {
            for &i in mine {
                for &j in theirs {
                    let ip = lab.host(HOSTS[j]).unwrap().ip;
                    nft(
                        &lab,
                        HOSTS[i],
                        &format!("add rule inet lossy split ip saddr {ip} drop"),
                    )
                    .await;
                }
            }
        }
        // This phase's writes, spread over the nodes, each node's in order.
        let per_phase = ops / PHASES;
        let mut batches: Vec<Vec<(String, Option<Value>)>> = vec![Vec::new(); HOSTS.len()];
        for k in 0..per_phase {
            let i = rng.gen_range(0..HOSTS.len());
            let delete = !written_by[i].is_empty() && rng.gen_ratio(1, 10);
            if delete {
                let at = rng.gen_range(0..written_by[i].len());
                let key = written_by[i].swap_remove(at);
                batches[i].push((key, None));
            } else {
                let key = format!("{}_{phase}_{k}", HOSTS[i]);
                written_by[i].push(key.clone());
                batches[i].push((key, Some(json!({ "by": HOSTS[i], "phase": phase, "k": k }))));
            }
        }
        let tasks: Vec<_> = batches
            .into_iter()
            .enumerate()
            .map(|(i, batch)| {
                let control = ControlClient::new(nodes[i].data_dir());
                tokio::spawn(async move {
                    let mut done = Vec::new();
                    for (key, value) in batch {
                        let result: Result<Value, _> = match &value {
                            Some(v) => {
                                control
                                    .post("db/put", &json!({ "doc": DOC, "path": key, "value": v }))
                                    .await
                            }
                            None => {
                                control
                                    .post("db/delete", &json!({ "doc": DOC, "path": key }))
                                    .await
                            }
                        };
                        result.unwrap_or_else(|e| panic!("write {key}: {e}"));
                        done.push((key, value));
                    }
                    done
                })
            })
            .collect();
        for task in tasks {
            for (key, value) in task.await.expect("writer") {
                acknowledged += 1;
                match value {
                    Some(v) => {
                        expected.insert(key, v);
                    }
                    None => {
                        expected.remove(&key);
                    }
                }
            }
        }
        // Heal.
        for h in HOSTS {
            nft(&lab, h, "flush chain inet lossy split").await;
        }
        split_ms.push(split_at.elapsed().as_millis());
    }
    assert_eq!(acknowledged, ops / PHASES * PHASES);

    let healed = tokio::time::Instant::now();
    tracing::info!("last heal");
    if std::env::var_os("P2PNODE_LAB_KEEP").is_some() {
        eprintln!("lab kept in {}", lab.keep_workdir().display());
    }
    let converge = Duration::from_secs(
        std::env::var("P2PNODE_SYNC_CONVERGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    );
    let all: Vec<&Node> = nodes.iter().collect();
    let (heads, value) = wait_same(&all, DOC, converge).await.unwrap_or_else(|e| {
        let logs: Vec<String> = nodes.iter().map(|n| n.log_tail(2000)).collect();
        panic!("{e}\n{}", logs.join("\n----\n"))
    });
    let converged_ms = healed.elapsed().as_millis();
    for (key, v) in &expected {
        assert_eq!(&value[key], v, "acknowledged write {key} lost");
    }
    let object = value.as_object().expect("a JSON object");
    assert_eq!(object.len(), expected.len(), "deleted keys stay deleted");
    common::report(&json!({
        "ops": acknowledged,
        "keys": expected.len(),
        "phases": PHASES,
        "loss_percent": LOSS_PERCENT,
        "delay_ms_per_host": delay.as_millis(),
        "heads": heads.len(),
        "converged_ms_after_last_heal": converged_ms,
        "split_ms": split_ms,
    }));
}

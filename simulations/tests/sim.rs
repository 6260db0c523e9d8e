//! In-process simulations (`p2pnode_sim::sim`): the node's own stack on the memory
//! transport with link latency, in virtual time. A small network must find every peer it
//! looks for, a seed must fix what a run does, churn and gossip must run end to end, and
//! every scenario file must parse. No sleeps: the simulations run on a paused clock.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use p2pnode_sim::sim::scenario::{Churn, Gossip, Lookups};
use p2pnode_sim::sim::{self, Plan, Report, Scenario};

/// The simulation tests take turns: libp2p times a peer's answer on the wall clock, and
/// three debug-build simulations on a 2-core CI machine starve each other of it.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn scenarios_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// The failed lookups' virtual and wall times and errors: a lookup that waited on one of
/// libp2p's wall-clock timers shows a long wall time.
fn failed_lookups(r: &Report) -> Vec<(f64, f64, Option<String>)> {
    r.lookups
        .iter()
        .flat_map(|l| &l.records)
        .filter(|rec| !rec.ok)
        .map(|rec| (rec.latency_ms, rec.wall_ms, rec.error.clone()))
        .collect()
}

fn lookup_pairs(r: &Report) -> Vec<(usize, usize, usize)> {
    let mut v: Vec<_> = r
        .lookups
        .as_ref()
        .unwrap()
        .records
        .iter()
        .map(|l| (l.index, l.origin, l.target))
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn small_network_finds_every_peer_and_the_seed_fixes_the_run() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let scenario = Scenario::load(&scenarios_dir().join("dht-30.toml")).unwrap();
    // Two runs of one file, side by side (each simulation has a thread and clock of its own).
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| sim::run(&scenario).unwrap());
        let b = s.spawn(|| sim::run(&scenario).unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    for r in [&a, &b] {
        assert_eq!(
            r.formation.nodes_started, 30,
            "{:?}",
            r.formation.join_failures
        );
        // Every join reached the network.
        assert_eq!(r.formation.self_lookup_failures, 0);
        let l = r.lookups.as_ref().unwrap();
        assert_eq!(l.planned, 50);
        // At most one miss. The misses seen under load came from the 10 s wall-clock
        // idle timeout racing requests on the simulated links (see dht-30.toml), which
        // this scenario no longer uses; 2 or 3 misses in half the runs then, none in five
        // since. The 500-node scenario measures the rate properly.
        assert!(
            l.succeeded >= 49,
            "failures: {:?}; failed (virtual ms, wall ms, error): {:?}",
            l.failures,
            failed_lookups(r)
        );
        // Latency is simulated: a lookup costs at least one round trip on a link of at
        // least 10 ms each way.
        let latency = l.latency_ms.unwrap();
        assert!(latency.min >= 20.0, "{latency:?}");
        assert!(latency.max < 10_000.0, "{latency:?}");
        // Requests are counted on the links. A lookup can also end with none: when the
        // target is in the origin's table, dialling it to ask it answers the lookup before
        // the request is written.
        let requests = l.requests.unwrap();
        assert!(requests.max >= 1.0, "{requests:?}");
        // Each lookup also says how long it took on the wall clock (kad's peer timeout
        // runs on it), which the paused clock does not stop.
        assert!(l.records.iter().all(|rec| rec.wall_ms > 0.0));
        assert!(r.traffic.kad_requests > 0);
        // Every node but the first dialled its way in.
        assert!(
            r.traffic.connections_opened >= r.nodes as u64 - 1,
            "{:?}",
            r.traffic
        );
        assert!(r.memory.peak_rss_bytes.unwrap() > 0);
    }
    // Same seed: same nodes, same lookups.
    assert_eq!(a.plan_fingerprint, b.plan_fingerprint);
    assert_eq!(a.peers, b.peers);
    assert_eq!(lookup_pairs(&a), lookup_pairs(&b));
    // Another seed: other nodes and lookups.
    let other = Plan::new(&Scenario {
        seed: scenario.seed + 1,
        ..scenario.clone()
    })
    .unwrap();
    assert_ne!(other.fingerprint(), a.plan_fingerprint);
    assert_ne!(other.peers[0].to_string(), a.peers[0]);

    // The reports are written and the HTML carries the plots.
    let out = tempfile::tempdir().unwrap();
    let (json, html) = a.write(out.path()).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(
        parsed["lookups"]["succeeded"],
        a.lookups.as_ref().unwrap().succeeded
    );
    let html = std::fs::read_to_string(html).unwrap();
    assert!(html.contains("<svg") && html.contains("Lookup latency, CDF"));
    assert!(html.contains("never reached the network"));
}

#[test]
fn churn_and_gossip_run_end_to_end() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let mut scenario = Scenario::small_dht("churn-gossip-30", 40, 30, 60);
    // The node's own idle timeout, as dht-30.toml has it: the simulator's 10 s runs on the
    // wall clock, and a peer that closed an idle connection while a request was crossing
    // its link left the lookup waiting out its 45 s (seen: 2 of 60 in one CI run).
    scenario.limits.idle_timeout_secs = 0;
    scenario.lookups = Some(Lookups {
        count: 60,
        rate_per_sec: 5.0,
        joined_for_secs: 3.0,
        stays_for_secs: 3.0,
        ..Lookups::default()
    });
    scenario.churn = Some(Churn {
        leave_fraction: 0.2,
        rejoin_after_secs: Some(2.0),
        join_fraction: 0.1,
    });
    scenario.gossip = Some(Gossip {
        message_bytes: 64,
        messages: 2,
    });
    let r = sim::run(&scenario).unwrap();

    let churn = r.churn.as_ref().unwrap();
    assert_eq!(churn.leaves, 6);
    assert_eq!(churn.rejoins, 6, "{:?}", churn.failed_joins);
    assert_eq!(churn.joins, 3, "{:?}", churn.failed_joins);
    let l = r.lookups.as_ref().unwrap();
    assert_eq!(l.completed, 60);
    // Lookups only involve nodes that are up, so churn should cost nothing here; allow one
    // miss so a rare unlucky routing table does not fail CI.
    assert!(
        l.succeeded >= 59,
        "failures: {:?}; failed (virtual ms, wall ms, error): {:?}",
        l.failures,
        failed_lookups(&r)
    );

    // Every running node is in the room, and the messages reach all of them over the
    // node's gossipsub; the first hop alone costs a link's latency (at least 10 ms).
    let g = r.gossip.as_ref().unwrap();
    assert_eq!(g.members, r.memory.nodes_after_lookups);
    assert!(g.warmed_up);
    assert_eq!(g.messages.len(), 2);
    for m in &g.messages {
        assert_eq!(m.reached, m.of, "{m:?}");
        assert!(m.spread_ms.unwrap() >= 10.0, "{m:?}");
    }
}

#[test]
fn every_scenario_file_parses_and_plans() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(scenarios_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let scenario = Scenario::load(&path).unwrap();
            let plan = Plan::new(&scenario).unwrap();
            assert_eq!(plan.initial, scenario.nodes);
            if let Some(l) = &scenario.lookups {
                assert_eq!(plan.lookups.len(), l.count, "{}", path.display());
            }
            names.push(scenario.name);
        }
    }
    names.sort();
    for required in ["dht-1000", "dht-500", "dht-churn", "gossip-200"] {
        assert!(names.iter().any(|n| n == required), "missing {required}");
    }
}

#[test]
fn bad_scenarios_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "name = \"x\"\nseed = 1\nnodes = 1\n").unwrap();
    let err = Scenario::load(&path).unwrap_err().to_string();
    assert!(err.contains("nodes must be at least 2"), "{err}");
    std::fs::write(&path, "name = \"x\"\nseed = 1\nnodes = 5\ncolour = 3\n").unwrap();
    let err = Scenario::load(&path).unwrap_err().to_string();
    assert!(err.contains("bad.toml") && err.contains("colour"), "{err}");
}

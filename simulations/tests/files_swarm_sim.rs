//! The files swarm scenario, small enough for CI: a seed and 10 fetchers of one file, once
//! with serve-while-fetching and once with the seed serving all alone.

#![allow(clippy::unwrap_used)]

use p2pnode_sim::sim::swarm::{Settings, run};

#[test]
fn every_fetcher_gets_the_file_and_the_seed_serves_less_when_fetchers_serve() {
    let settings = Settings {
        fetchers: 10,
        size: 1 << 20,
        // 2 MiB/s each: the seed alone needs 5 s of uplink for ten copies.
        uplink_bytes_per_sec: 2 << 20,
        ..Settings::default()
    };
    let r = run(&settings).unwrap();
    for m in [&r.seed_only, &r.swarm] {
        assert!(m.failed.is_empty(), "{m:?}");
        assert_eq!(m.identical, settings.fetchers, "{m:?}");
        assert_eq!(m.done_ms.len(), settings.fetchers);
        assert!(m.all_done_ms.is_some());
    }
    // Alone, the seed served every copy (duplicates of the endgame aside); fetchers none.
    assert!(r.seed_only.seed_groups >= r.groups * settings.fetchers as u64);
    assert_eq!(r.seed_only.fetcher_groups, 0);
    // Serving while fetching, the fetchers served each other and spared the seed.
    assert!(r.swarm.fetcher_groups > 0, "{:?}", r.swarm);
    assert!(
        r.swarm.seed_groups < r.seed_only.seed_groups,
        "seed served {} with the swarm, {} alone",
        r.swarm.seed_groups,
        r.seed_only.seed_groups
    );
    println!(
        "all done: {:?} ms alone, {:?} ms swarm; seed groups {} alone, {} swarm",
        r.seed_only.all_done_ms, r.swarm.all_done_ms, r.seed_only.seed_groups, r.swarm.seed_groups
    );

    let out = tempfile::tempdir().unwrap();
    let (json, html) = r.write(out.path()).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(parsed["swarm"]["identical"], settings.fetchers);
    let html = std::fs::read_to_string(html).unwrap();
    assert!(html.contains("<svg") && html.contains("fetchers done"));
}

/// Thirty strangers at once are more than the seed's handshake gate lets in (8 pending).
/// Those it turns away come back by themselves after a pause (looking for providers again
/// meanwhile): every `get` completes, and none has to be run again by its user.
#[test]
fn a_burst_of_strangers_turned_away_by_the_gate_comes_back() {
    let settings = Settings {
        fetchers: 30,
        size: 256 << 10,
        ..Settings::default()
    };
    let r = run(&settings).unwrap();
    for m in [&r.seed_only, &r.swarm] {
        assert!(m.failed.is_empty(), "{m:?}");
        assert_eq!(m.identical, settings.fetchers, "{m:?}");
        assert_eq!(m.retries, 0, "gets run again: {m:?}");
    }
}

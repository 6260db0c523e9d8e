//! The document-convergence simulation: members edit in bursts while some are offline;
//! after each burst every member holds the same heads, the seed fixes the plan, and the
//! report carries its plots.

#![allow(clippy::unwrap_used)]

use p2pnode_sim::sim::convergence::{Settings, run};

#[test]
fn members_converge_after_every_burst_and_the_seed_fixes_the_plan() {
    let settings = Settings {
        members: 12,
        bursts: 3,
        churn: 0.25,
        editors: 12,
        edits_per_member: 2,
        ..Settings::default()
    };
    let a = run(&settings).unwrap();
    assert_eq!(a.bursts.len(), 3);
    for b in &a.bursts {
        assert!(b.same_heads);
        assert_eq!(b.offline, 3);
        assert_eq!(b.member_ms.len(), 12);
        // The returning members had missed edits: someone waited at least one link's
        // latency for them.
        assert!(b.converged_ms >= settings.latency_ms.0, "{b:?}");
        assert!(b.messages > 0 && b.bytes > 0);
    }
    let b = run(&settings).unwrap();
    // Who leaves when, and the links: the plan. (Message counts vary a little between
    // runs: automerge's actor ids carry a random session tag.)
    let key = |r: &p2pnode_sim::sim::convergence::ConvergenceReport| {
        let leavers: Vec<_> = r.bursts.iter().map(|b| b.leavers.clone()).collect();
        (leavers, r.links)
    };
    assert_eq!(key(&a), key(&b), "same seed, same plan");
    let other = run(&Settings {
        seed: settings.seed + 1,
        ..settings.clone()
    })
    .unwrap();
    assert_ne!(key(&a), key(&other));

    let out = tempfile::tempdir().unwrap();
    let (json, html) = a.write(out.path()).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(parsed["bursts"][0]["same_heads"], true);
    let html = std::fs::read_to_string(html).unwrap();
    assert!(html.contains("<svg") && html.contains("same heads"));
}

#[test]
fn bad_settings_are_refused() {
    for s in [
        Settings {
            members: 1,
            ..Settings::default()
        },
        Settings {
            churn: 1.0,
            ..Settings::default()
        },
    ] {
        assert!(run(&s).is_err());
    }
}

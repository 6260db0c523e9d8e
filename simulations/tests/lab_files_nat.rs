//! A file across the NAT lab: A and B behind two NAT routers know only the relay. B
//! fetches what A shares by content id and A's peer id: behind two cone NATs once hole
//! punching made the connection direct, behind two symmetric NATs over the relay, whose
//! circuits here carry 4 MiB each: the 8 MiB file crosses several, each ending at the
//! relay's limit and a new stream taking over. Either way the file must arrive
//! byte-identical, and the relayed transfer says it went over a relay.
//!
//! Needs root and the `p2pnode` binary: without them the tests fail (they never skip).
//! Each test prints its outcome as one JSON line on stdout.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{config, init_tracing, machine_for, nat_pair, report, require_nat_lab};
use p2pnode_sim::lab::NatKind;
use p2pnode_sim::lab::node::PathKind;
use p2pnode_sim::lab::scenarios::{self, CircuitLimits};
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

/// Longer than DCUtR's attempts, so a relayed outcome is settled by its "giving up" line.
const DCUTR_WINDOW: Duration = Duration::from_secs(45);
/// The file.
const SIZE: usize = 8 << 20;
/// The relay's limits on each circuit in the relayed test: half the file.
const CIRCUIT: CircuitLimits = CircuitLimits {
    secs: 600,
    bytes: 4 << 20,
};
const GET_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Serialize)]
struct NatOutcome {
    nat: String,
    path: PathKind,
    bytes: usize,
    seconds: f64,
    mib_per_s: f64,
    /// Times the provider's stream was opened again (a new relay circuit).
    reopened: u64,
}

async fn transfer(nat: NatKind, expected: PathKind) {
    init_tracing();
    require_nat_lab("files");
    let _machine = machine_for(expected).await;
    let cfg = scenarios::ScenarioConfig {
        direct_window: DCUTR_WINDOW,
        relay_circuit: (expected == PathKind::Relayed).then_some(CIRCUIT),
        ..config()
    };
    let (_lab, a, b) = nat_pair(nat, expected, &cfg).await;
    {
        let path = expected;

        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let mut bytes = vec![0u8; SIZE];
        rand::Rng::fill(&mut rand::thread_rng(), &mut bytes[..]);
        std::fs::write(src.join("data.bin"), &bytes).unwrap();
        let shared: Value = a
            .client_json(&["share", src.to_str().unwrap()])
            .await
            .unwrap();
        let id = shared["content_id"].as_str().unwrap();
        let to = work.path().join("out");
        let start = Instant::now();
        let out = b
            .client_output(
                &[
                    "get",
                    id,
                    "--to",
                    to.to_str().unwrap(),
                    "--from",
                    a.peer_id(),
                ],
                GET_TIMEOUT,
            )
            .await
            .unwrap();
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "get failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            std::fs::read(to.join("src/data.bin")).unwrap() == bytes,
            "the file arrived different"
        );
        // The connection B holds to A afterwards is still of the kind asked for.
        let peer = b.peer(a.peer_id()).await.unwrap().unwrap();
        let transfers: Value = b.client_json(&["transfers"]).await.unwrap();
        let t = transfers
            .as_array()
            .and_then(|l| l.iter().find(|t| t["content_id"] == id))
            .unwrap_or_else(|| panic!("no transfer of {id}: {transfers}"));
        let provider = &t["providers"][0];
        let reopened = provider["reopened"].as_u64().unwrap_or(0);
        if expected == PathKind::Relayed {
            assert!(
                peer.connections.iter().all(|c| c.path == PathKind::Relayed),
                "a direct connection appeared behind symmetric NATs: {:?}",
                peer.connections
            );
            assert_eq!(provider["relayed"], true, "the transfer says relayed: {t}");
            // 8 MiB and more over circuits of 4 MiB: at least one new stream.
            assert!(reopened >= 1, "the file crossed one circuit only: {t}");
        }
        report(&NatOutcome {
            nat: nat.to_string(),
            path,
            bytes: SIZE,
            seconds: took.as_secs_f64(),
            mib_per_s: SIZE as f64 / (1 << 20) as f64 / took.as_secs_f64(),
            reopened,
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_crosses_two_cone_nats_directly() {
    transfer(NatKind::Cone, PathKind::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_crosses_two_symmetric_nats_over_the_relay() {
    transfer(NatKind::Symmetric, PathKind::Relayed).await;
}

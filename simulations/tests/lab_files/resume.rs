//! SIGKILL of either side in the middle of a transfer, then the same `get` again: it
//! resumes from the verified groups on disk, and the bytes sent in all stay in budget.

use super::*;

/// Which daemon a kill test kills.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
enum Victim {
    Sender,
    Receiver,
}

#[derive(Debug, Serialize)]
struct KillOutcome {
    victim: Victim,
    bytes: u64,
    /// The share of the content verified when the daemon was killed.
    killed_at: f64,
    /// Groups the rerun found already verified on disk.
    groups_resumed: u64,
    groups_total: u64,
    /// Bytes the sender's interface sent over both runs, over the content's bytes.
    wire_ratio: f64,
}

/// Kills `victim` with SIGKILL at a random point of a `get`, starts it again, reruns the
/// same `get` and checks the result and the bytes the sender sent in all.
async fn kill_and_resume(victim: Victim) {
    let _machine = MACHINE.write().await;
    let f = Files::start(&["a", "b"]).await;
    let (a, b) = (f.node("a"), f.node("b"));
    let src = f.path("src/data.bin");
    random_file(&src, MEDIUM);
    let id = share(a, src.parent().unwrap()).await;
    let to = f.path("out");
    // The sender's link at 100 Mbit/s: the transfer takes seconds, so the kill lands
    // where it is aimed (unlimited, 64 MiB can pass between two polls of the progress).
    // The qdisc goes with the host's namespace.
    f.lab
        .exec(
            "a",
            "tc",
            &[
                "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "100mbit", "burst", "256kb",
                "latency", "100ms",
            ],
        )
        .await
        .unwrap();
    let sent_before = f.tx_bytes("a").await;

    let fraction = rand::thread_rng().gen_range(0.2..0.8);
    let args = [
        "get",
        id.as_str(),
        "--to",
        to.to_str().unwrap(),
        "--from",
        a.peer_id(),
    ];
    let mut first = b.spawn_client(&args).unwrap();
    wait_progress(b, (MEDIUM as f64 * fraction) as u64).await;
    let killed = match victim {
        Victim::Sender => a,
        Victim::Receiver => b,
    };
    killed.kill().await.unwrap();
    // The first `get` ends: its daemon is gone, or it lost its only provider.
    let status = tokio::time::timeout(GET_TIMEOUT, first.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success(), "the interrupted get reported success");
    killed.start().await.unwrap();

    let out = get(b, &id, &to, &[a]).await;
    assert_ok("the resumed get", &out);
    assert_same(src.parent().unwrap(), &to.join("src"));
    let sent = f.tx_bytes("a").await - sent_before;
    let list: Vec<Value> = b.client_json(&["transfers"]).await.unwrap();
    let last = list
        .iter()
        .rev()
        .find(|t| t["status"] == "done")
        .unwrap()
        .clone();
    let outcome = KillOutcome {
        victim,
        bytes: MEDIUM,
        killed_at: (fraction * 100.0).round() / 100.0,
        groups_resumed: last["groups_resumed"].as_u64().unwrap(),
        groups_total: last["groups_total"].as_u64().unwrap(),
        wire_ratio: sent as f64 / MEDIUM as f64,
    };
    report(&outcome);
    assert!(
        outcome.groups_resumed > 0,
        "nothing was resumed: {outcome:?}"
    );
    assert!(
        outcome.wire_ratio <= 1.1,
        "the sender sent more than 1.1x the content: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_receiver_then_the_same_get_resumes_within_budget() {
    kill_and_resume(Victim::Receiver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_sender_then_the_same_get_resumes_within_budget() {
    kill_and_resume(Victim::Sender).await;
}

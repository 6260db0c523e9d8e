//! Chat between real `p2pnode` processes on loopback: bulk exchange, offline delivery
//! across SIGKILL, a five-member room, and clear errors for bad input.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{BIN, Daemon, LOOPBACK, json, run, wait_for};
use serde_json::Value;

/// Bulk transfers and restarts get longer than the default wait.
const LONG: Duration = Duration::from_secs(240);

/// `p2pnode chat ...` with piped stdin and stdout; stdout lines arrive on the channel.
fn chat(dir: &Path, args: &[&str]) -> (Child, mpsc::Receiver<Value>) {
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .arg("chat")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Keep draining after the receiver is gone: a closed pipe would fail the CLI.
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    (child, rx)
}

/// Writes `lines` to the child's stdin on a thread (a full pipe must not block the test),
/// closing stdin at the end when `close` is set.
fn feed(child: &mut Child, lines: Vec<String>, close: bool) {
    let mut stdin = child.stdin.take().unwrap();
    let handle = std::thread::spawn(move || {
        for l in lines {
            if writeln!(stdin, "{l}").is_err() {
                return None;
            }
        }
        (!close).then_some(stdin)
    });
    if !close {
        child.stdin = handle.join().unwrap();
    }
}

fn wait_exit(child: &mut Child, what: &str) {
    let deadline = Instant::now() + LONG;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            assert!(status.success(), "{what} failed ({status}): {err}");
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn history(dir: &Path, peer: &str) -> Vec<Value> {
    json(dir, &["chat", "history", peer, "--limit", "100000"])
        .as_array()
        .unwrap()
        .clone()
}

fn bodies(history: &[Value], outgoing: bool) -> Vec<String> {
    history
        .iter()
        .filter(|m| m["outgoing"] == outgoing)
        .map(|m| m["body"].as_str().unwrap().to_string())
        .collect()
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// A TCP port free right now on loopback, so a restarted daemon comes back on the same
/// address its peers know.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_thousand_messages_each_way_arrive_once_and_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start(&tmp.path().join("a"), &LOOPBACK);
    let a_addr = a.tcp_addr();
    let b = Daemon::start(
        &tmp.path().join("b"),
        &[&LOOPBACK[..], &["--bootstrap", &a_addr]].concat(),
    );
    wait_for("B connected to A", || {
        a.is_connected_to(&b.peer_id).then_some(())
    });

    let n = 1000;
    let (mut ca, rx_a) = chat(&a.dir, &[&b.peer_id, "--line", "--wait-delivered"]);
    let (mut cb, _rx_b) = chat(&b.dir, &[&a.peer_id, "--line", "--wait-delivered"]);
    feed(&mut ca, lines("a", n), true);
    feed(&mut cb, lines("b", n), true);
    wait_exit(&mut ca, "A's chat");
    wait_exit(&mut cb, "B's chat");

    // A's line output: one `sent` per line, in order, and receipts up to the last.
    let out: Vec<Value> = rx_a.try_iter().collect();
    let sent: Vec<u64> = out
        .iter()
        .filter(|v| v["type"] == "sent")
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(sent, (1..=n as u64).collect::<Vec<_>>());

    // Both histories: the peer's messages exactly once and in order, ours all delivered.
    let expect_a = lines("a", n);
    let expect_b = lines("b", n);
    let hist_b = wait_for("B's history to hold A's 1000 messages", || {
        let h = history(&b.dir, &a.peer_id);
        (bodies(&h, false).len() >= n).then_some(h)
    });
    let hist_a = wait_for("A's history to hold B's 1000 messages", || {
        let h = history(&a.dir, &b.peer_id);
        (bodies(&h, false).len() >= n).then_some(h)
    });
    assert_eq!(bodies(&hist_b, false), expect_a);
    assert_eq!(bodies(&hist_a, false), expect_b);
    assert_eq!(bodies(&hist_a, true), expect_a);
    assert_eq!(bodies(&hist_b, true), expect_b);
    for h in [&hist_a, &hist_b] {
        assert!(
            h.iter()
                .filter(|m| m["outgoing"] == true)
                .all(|m| m["delivered"] == true)
        );
    }
}

#[test]
fn queued_messages_survive_sigkill_of_both_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let a_listen = format!("/ip4/127.0.0.1/tcp/{pa}");
    let b_listen = format!("/ip4/127.0.0.1/tcp/{pb}");
    let a_args = ["--listen", a_listen.as_str()];
    let a = Daemon::start(&tmp.path().join("a"), &a_args);
    let a_addr = format!("{a_listen}/p2p/{}", a.peer_id);
    let b_args = [
        "--listen",
        b_listen.as_str(),
        "--bootstrap",
        a_addr.as_str(),
    ];
    let b = Daemon::start(&tmp.path().join("b"), &b_args);
    wait_for("B connected to A", || {
        a.is_connected_to(&b.peer_id).then_some(())
    });
    let (mut hello, _) = chat(&a.dir, &[&b.peer_id, "--line", "--wait-delivered"]);
    feed(&mut hello, vec!["hello".to_string()], true);
    wait_exit(&mut hello, "A's first message");
    // A is not in B's trust store: its hello arrived as a message request, listed for B
    // to answer. B accepts it, so what A queues next is not held to a stranger's quota.
    let requests = json(&b.dir, &["chat", "requests"]);
    assert!(
        requests
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["peer_id"] == a.peer_id.as_str() && r["verified"] == false)
    );
    json(&b.dir, &["chat", "accept", &a.peer_id]);
    let b_id = b.peer_id.clone();
    let b_dir = b.dir.clone();
    // B is killed: no goodbye, no flush.
    drop(b);

    let n = 50;
    let (mut ca, _) = chat(&a.dir, &[&b_id, "--line"]);
    feed(&mut ca, lines("queued", n), true);
    wait_exit(&mut ca, "A's chat while B is down");
    let queued = history(&a.dir, &b_id);
    let mut expect = vec!["hello".to_string()];
    expect.extend(lines("queued", n));
    assert_eq!(bodies(&queued, true), expect);
    assert!(queued[1..].iter().all(|m| m["delivered"] == false));

    // A is killed too, right after acknowledging: the queue must be on disk.
    let a_dir = a.dir.clone();
    drop(a);
    let a = Daemon::start(&a_dir, &a_args);
    let b = Daemon::start(&b_dir, &b_args);

    let got = wait_for("B to receive the queued messages", || {
        let h = history(&b.dir, &a.peer_id);
        (bodies(&h, false).len() > n).then_some(h)
    });
    assert_eq!(bodies(&got, false), expect, "lost, duplicated or reordered");
    wait_for("A to see them delivered", || {
        history(&a.dir, &b_id)
            .iter()
            .all(|m| m["delivered"] == true)
            .then_some(())
    });
    // Restarting B again re-delivers nothing.
    let b_dir = b.dir.clone();
    b.stop();
    let b = Daemon::start(&b_dir, &b_args);
    wait_for("B reconnected", || {
        b.is_connected_to(&a.peer_id).then_some(())
    });
    let (mut cb, _) = chat(&b.dir, &[&a.peer_id, "--line", "--wait-delivered"]);
    feed(&mut cb, vec!["reply".to_string()], true);
    wait_exit(&mut cb, "B's reply");
    assert_eq!(bodies(&history(&b.dir, &a.peer_id), false), expect);
    assert_eq!(
        bodies(&history(&a.dir, &b_id), false),
        vec!["reply".to_string()]
    );
}

#[test]
fn a_room_of_five_delivers_every_message_to_every_member() {
    let tmp = tempfile::tempdir().unwrap();
    let first = Daemon::start(&tmp.path().join("n0"), &LOOPBACK);
    let boot = first.tcp_addr();
    let mut nodes = vec![first];
    for i in 1..5 {
        nodes.push(Daemon::start(
            &tmp.path().join(format!("n{i}")),
            &[&LOOPBACK[..], &["--bootstrap", &boot]].concat(),
        ));
    }
    let created = json(&nodes[0].dir, &["room", "create", "team", "--ttl", "1h"]);
    let code = created["code"].as_str().unwrap().to_string();
    let mut chats: Vec<(Child, mpsc::Receiver<Value>)> = nodes
        .iter()
        .map(|n| chat(&n.dir, &["--room", &code, "--line"]))
        .collect();
    for n in &nodes {
        wait_for("every member listed everywhere", || {
            let info = json(&n.dir, &["room", "members", &code]);
            (info["members"].as_array()?.len() == 5).then_some(())
        });
    }
    let per_node = 3;
    for (i, (child, _)) in chats.iter_mut().enumerate() {
        feed(child, lines(&format!("n{i}"), per_node), false);
    }
    for (i, (_, rx)) in chats.iter().enumerate() {
        let mut got: Vec<String> = Vec::new();
        let deadline = Instant::now() + LONG;
        while got.len() < 4 * per_node {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("node {i} got only {got:?}"));
            if v["type"] == "room_message" {
                got.push(v["body"].as_str().unwrap().to_string());
            }
        }
        got.sort();
        let mut expect: Vec<String> = (0..5)
            .filter(|&j| j != i)
            .flat_map(|j| lines(&format!("n{j}"), per_node))
            .collect();
        expect.sort();
        assert_eq!(got, expect, "node {i}");
    }
    for (mut child, _) in chats {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn bad_input_gets_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start(&tmp.path().join("a"), &LOOPBACK);
    let b = Daemon::start(
        &tmp.path().join("b"),
        &[&LOOPBACK[..], &["--bootstrap", &a.tcp_addr()]].concat(),
    );
    let err = |out: std::process::Output| {
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = err(run(&a.dir, &["chat", "12D3KooWnope", "--line"]));
    assert!(e.contains("invalid peer id"), "{e}");
    let e = err(run(
        &a.dir,
        &["chat", "--room", "p2pchat1-garbage", "--line"],
    ));
    assert!(e.contains("invalid invite code"), "{e}");
    let e = err(run(&a.dir, &["room", "create", "x", "--ttl", "1y"]));
    assert!(e.contains("invalid duration"), "{e}");
    // A well-formed id that nobody has: looked up, not found, said so.
    let stranger = json(&tmp.path().join("nobody"), &["id"]);
    let stranger = stranger["peer_id"].as_str().unwrap_or_default().to_string();
    let e = err(run(&a.dir, &["chat", &stranger, "--line"]));
    assert!(e.contains("cannot chat with"), "{e}");

    // B dials A at start; the oversized message needs that connection (on a loaded
    // machine the commands above can finish before it is up).
    wait_for("B connected to A", || {
        a.is_connected_to(&b.peer_id).then_some(())
    });
    let (mut c, _) = chat(&a.dir, &[&b.peer_id, "--line"]);
    feed(&mut c, vec!["x".repeat(20_000)], true);
    let status = wait_for("the oversized send to fail", || c.try_wait().unwrap());
    assert!(!status.success());
    let mut e = String::new();
    std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut e).unwrap();
    assert!(e.contains("limit is 16384 bytes"), "{e}");
}

//! Bad input gets one clear line on stderr and a non-zero exit, never a panic.

#![allow(clippy::unwrap_used)]

use std::process::Output;

use crate::common::{Daemon, LOOPBACK, run, run_with};

fn assert_fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The daemon may have logged before failing; the error itself is one last line.
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().last(),
        Some(errors[0]),
        "{stderr}"
    );
    assert!(
        errors[0].to_lowercase().contains(&needle.to_lowercase()),
        "expected {needle:?} in: {stderr}"
    );
}

#[test]
fn malformed_multiaddr() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(tmp.path(), &["connect", "/ip4/999.0.0.1/tcp/1"]);
    assert_fails_with(&out, "invalid multiaddr");
}

#[test]
fn malformed_peer_id() {
    let tmp = tempfile::tempdir().unwrap();
    // The last one is valid base58 but too short to hold a public key.
    for args in [
        &["find", "12D3KooW0OIl"][..],
        &["find", "12D3KooWnope"],
        &["ping", "bad name!"],
    ] {
        assert_fails_with(&run(tmp.path(), args), "invalid peer id");
    }
    // A word could be a contact's name, which only the daemon knows.
    for args in [&["connect", "bob"][..], &["ping", "xyz"]] {
        assert_fails_with(&run(tmp.path(), args), "is not a peer id");
        assert_fails_with(&run(tmp.path(), args), "no p2pnode daemon is running");
    }
}

#[test]
fn bad_worker_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["", "abc", "0", "-1"] {
        let out = run_with(tmp.path(), &["id"], &[("TOKIO_WORKER_THREADS", bad)]);
        assert_fails_with(&out, "is not a thread count");
    }
    // A good one is taken.
    let out = run_with(tmp.path(), &["id"], &[("TOKIO_WORKER_THREADS", "3")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_daemon_running() {
    let tmp = tempfile::tempdir().unwrap();
    assert_fails_with(
        &run(tmp.path(), &["status"]),
        "no p2pnode daemon is running",
    );
    // Scripts get the same error as JSON on stdout.
    let out = run(tmp.path(), &["peers", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "no_daemon");
}

#[test]
fn data_dir_that_cannot_be_written() {
    let tmp = tempfile::tempdir().unwrap();
    // A path below a regular file cannot be a directory, even for root.
    let file = tmp.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let dir = file.join("node");
    assert_fails_with(&run(&dir, &["start", "--no-mdns"]), "cannot write");
    assert_fails_with(&run(&dir, &["id"]), "cannot write");
}

#[test]
fn port_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let out = run(tmp.path(), &["start", "--no-mdns", "--listen", &listen]);
    assert_fails_with(&out, "already in use");
}

#[test]
fn default_port_in_use_falls_back_to_a_free_port() {
    let tmp = tempfile::tempdir().unwrap();
    // Whether or not something else holds 4701 now, holding it ourselves makes the test
    // deterministic: the node must still start, on another port.
    let _holder = std::net::TcpListener::bind(("0.0.0.0", p2pnode_node::config::DEFAULT_PORT));
    let d = Daemon::start(&tmp.path().join("n"), &[]);
    let status = crate::common::json(&d.dir, &["status"]);
    let tcp: Vec<&str> = status["listen_addrs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .filter(|a| a.starts_with("/ip4/") && a.contains("/tcp/"))
        .collect();
    assert!(!tcp.is_empty());
    assert!(tcp.iter().all(|a| !a.ends_with("/tcp/4701")), "{tcp:?}");
}

#[test]
fn unreachable_and_unknown_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("n"), &LOOPBACK);
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stranger = p2pnode_node::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string();
    let addr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{stranger}");
    assert_fails_with(&run(&d.dir, &["connect", &addr]), "cannot reach");
    // With no peers to ask, a lookup says how to fix it.
    assert_fails_with(&run(&d.dir, &["connect", &stranger]), "--bootstrap");
    assert_fails_with(&run(&d.dir, &["find", &stranger]), "--bootstrap");
}

#[test]
fn second_daemon_on_the_same_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("n"), &LOOPBACK);
    let out = run(
        &d.dir,
        &["start", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"],
    );
    assert_fails_with(&out, "already running");
    // The first daemon is unharmed.
    assert!(run(&d.dir, &["status"]).status.success());
}

#[test]
fn bad_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.toml"), "relay = \"yes\"\n").unwrap();
    assert_fails_with(
        &run(tmp.path(), &["start", "--no-mdns"]),
        "invalid config file",
    );
}

#[test]
fn a_config_file_that_is_missing_or_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("relay.toml");
    let missing = path.to_string_lossy().into_owned();
    assert_fails_with(
        &run(tmp.path(), &["start", "--config", &missing]),
        "cannot read config file",
    );
    std::fs::write(&path, "relay = \"yes\"\n").unwrap();
    assert_fails_with(
        &run(tmp.path(), &["start", "--config", &missing]),
        "invalid config file",
    );
}

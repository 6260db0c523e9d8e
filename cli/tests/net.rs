//! Networks between real daemons on loopback: create, invite, join, members, a document
//! of the network reaching a member, revoke by a contact's name, and bad tickets refused
//! with one line and nothing stored.

#![allow(clippy::unwrap_used)]

use std::process::Output;

use crate::common::{Daemon, LOOPBACK, json, run, wait_for};
use serde_json::Value;

fn fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    assert!(
        errors[0].contains(needle),
        "expected {needle:?} in: {stderr}"
    );
}

fn member<'a>(members: &'a Value, peer: &str) -> Option<&'a Value> {
    members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["peer_id"] == peer)
}

#[test]
fn create_invite_join_revoke_and_refuse_bad_tickets() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start(&tmp.path().join("a"), &LOOPBACK);
    let b = Daemon::start(&tmp.path().join("b"), &LOOPBACK);
    let c = Daemon::start(&tmp.path().join("c"), &LOOPBACK);

    let created = json(&a.dir, &["net", "create", "home"]);
    assert_eq!(created["role"], "admin");
    fails_with(&run(&a.dir, &["net", "create", "home"]), "already here");
    let invite = json(&a.dir, &["net", "invite", "home", "--expires", "10m"]);
    let ticket = invite["ticket"].as_str().unwrap().to_string();
    assert_eq!(invite["uses"], 1);

    let joined = json(&b.dir, &["net", "join", &ticket, "--name", "bee"]);
    assert_eq!(
        (&joined["name"], &joined["role"]),
        (&Value::from("home"), &Value::from("member"))
    );
    let members = json(&a.dir, &["net", "members", "home"]);
    let entry = member(&members, &b.peer_id).unwrap();
    assert_eq!(entry["name"], "bee");
    assert_eq!(entry["added_by"], a.peer_id.as_str());
    assert_eq!(entry["revoked"], false);

    // Bad tickets: one line each, nothing stored.
    fails_with(&run(&c.dir, &["net", "join", &ticket]), "invite used up");
    fails_with(
        &run(&c.dir, &["net", "join", "p2pnet1garbage"]),
        "invalid invite",
    );
    assert_eq!(json(&c.dir, &["net", "list"]), Value::Array(vec![]));

    // A document of the network reaches the member.
    json(&a.dir, &["db", "create", "todo", "--network", "home"]);
    fails_with(
        &run(&c.dir, &["db", "create", "todo", "--network", "home"]),
        "not a member of network `home`",
    );
    json(&a.dir, &["db", "put", "todo", "x", "1"]);
    wait_for("the document at b", || {
        let out = run(&b.dir, &["db", "get", "todo", "x", "--json"]);
        (out.status.success() && out.stdout.starts_with(b"1")).then_some(())
    });

    // A new ticket also names B, the member A is connected to, so that it admits
    // joiners while A is offline.
    let invite = json(&a.dir, &["net", "invite", "home"]);
    let (_, addrs) =
        p2pnode_node::networks::parse_ticket(invite["ticket"].as_str().unwrap()).unwrap();
    let suffix = format!("/p2p/{}", b.peer_id);
    assert!(
        addrs.iter().any(|x| x.to_string().ends_with(&suffix)),
        "the ticket names no other member: {addrs:?}"
    );

    // Revoke by contact name. (The revoked peer is not told: it is no member any more,
    // and members show nothing of the record to non-members.)
    json(&a.dir, &["contacts", "add", "bob", &b.peer_id]);
    let revoked = json(&a.dir, &["net", "revoke", "home", "bob"]);
    assert_eq!(revoked["revoked"], true);
    assert_eq!(revoked["revoked_by"], a.peer_id.as_str());
    fails_with(
        &run(&b.dir, &["net", "revoke", "home", &a.peer_id]),
        "not authorised",
    );
    let text = String::from_utf8(run(&a.dir, &["net", "members", "home"]).stdout).unwrap();
    assert!(text.contains("REVOKED by"), "{text}");
    a.stop();
    b.stop();
    c.stop();
}

//! Contacts: a name works wherever a peer id does, shows beside the peer id, and the
//! address book's rules are enforced with one clear line.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};

use crate::common::{BIN, Daemon, LOOPBACK, json, run, wait_for};
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

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn a_contact_name_works_wherever_a_peer_id_does() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start(&tmp.path().join("a"), &LOOPBACK);
    let b = Daemon::start(&tmp.path().join("b"), &LOOPBACK);

    // The address book's rules, each refused with one line.
    let stranger = p2pnode_node::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string();
    for (name, needle) in [
        ("al ice", "use only a-z"),
        (
            "a-name-that-is-far-too-long-for-a-contact",
            "1 to 32 characters",
        ),
        ("..", "needs a letter"),
        ("12D3KooWFoo", "looks like) a peer id"),
    ] {
        fails_with(&run(&a.dir, &["contacts", "add", name, &b.peer_id]), needle);
    }
    fails_with(
        &run(&a.dir, &["contacts", "add", "bob", "12D3KooWnope"]),
        "invalid peer id",
    );
    let added = json(&a.dir, &["contacts", "add", "Bob", &b.peer_id]);
    assert_eq!(added["name"], "bob", "case-folded");
    assert_eq!(added["peer_id"], b.peer_id.as_str());
    assert_eq!(added["verified"], false);
    fails_with(
        &run(&a.dir, &["contacts", "add", "BOB", &stranger]),
        "a contact named bob already exists",
    );
    fails_with(
        &run(&a.dir, &["contacts", "add", "bobby", &b.peer_id]),
        "is already a contact, named bob",
    );
    fails_with(
        &run(&a.dir, &["ping", "carol"]),
        "no contact named carol (see `p2pnode contacts list`)",
    );

    // connect, ping and peers by name.
    json(&a.dir, &["connect", &b.tcp_addr()]);
    let connected = json(&a.dir, &["connect", "bob"]);
    assert_eq!(connected["peer_id"], b.peer_id.as_str());
    let pinged = json(&a.dir, &["ping", "bob", "--count", "1"]);
    assert_eq!(pinged["peer_id"], b.peer_id.as_str());
    let peers = json(&a.dir, &["peers"]);
    let entry = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == b.peer_id.as_str())
        .unwrap();
    assert_eq!(entry["contact"], "bob");
    let text = stdout(&run(&a.dir, &["peers"]));
    assert!(text.contains(&format!("{} (bob)", b.peer_id)), "{text}");

    // Chat by name in line mode: the state line names the contact.
    let mut chat = Command::new(BIN)
        .arg("--data-dir")
        .arg(&a.dir)
        .args(["chat", "bob", "--line"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(chat.stdin.take().unwrap(), "hello bob").unwrap();
    let out = chat.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: Value = BufReader::new(out.stdout.as_slice())
        .lines()
        .next()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .unwrap();
    assert_eq!(first["type"], "state");
    assert_eq!(first["contact"], "bob");
    assert_eq!(first["state"]["peer_id"], b.peer_id.as_str());

    // On b's side a is a stranger's request until b names a's very peer id.
    let request = |dir| {
        wait_for("the message request", || {
            json(dir, &["chat", "requests"])
                .as_array()
                .unwrap()
                .first()
                .cloned()
        })
    };
    let r = request(&b.dir);
    assert_eq!(r["peer_id"], a.peer_id.as_str());
    assert!(r.get("contact").is_none(), "{r}");
    let text = stdout(&run(&b.dir, &["chat", "requests"]));
    assert!(text.contains("NOT one of your contacts"), "{text}");
    json(&b.dir, &["contacts", "add", "alice", &a.peer_id]);
    assert_eq!(request(&b.dir)["contact"], "alice");
    let text = stdout(&run(&b.dir, &["chat", "requests"]));
    assert!(text.contains(&format!("{} (alice)", a.peer_id)), "{text}");
    assert!(text.contains("p2pnode verify alice"), "{text}");
    let history = json(&b.dir, &["chat", "history", "alice"]);
    assert_eq!(history[0]["body"], "hello bob");

    // verify by name: a "no" is refused and names the peer id the name stands for.
    let mut verify = Command::new(BIN)
        .arg("--data-dir")
        .arg(&a.dir)
        .args(["verify", "bob"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    verify.stdin.take().unwrap().write_all(b"n\n").unwrap();
    let out = verify.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{} (bob)", b.peer_id)), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT verified"));
    // Confirmed, the contact shows as verified.
    json(&a.dir, &["verify", "bob", "--confirm"]);
    let list = json(&a.dir, &["contacts", "list"]);
    assert_eq!(list[0]["name"], "bob");
    assert_eq!(list[0]["verified"], true);
    let text = stdout(&run(&a.dir, &["contacts", "list"]));
    assert!(text.contains("bob") && text.contains("verified"), "{text}");

    // A file offer by name, shown under the contact's name on both sides (b knows a as
    // alice, and lets alice offer files).
    json(&b.dir, &["trust", "allow", "alice", "--protocols", "files"]);
    let file = tmp.path().join("notes.txt");
    std::fs::write(&file, b"for bob").unwrap();
    let file = file.to_str().unwrap();
    let text = stdout(&run(&a.dir, &["send", "bob", file]));
    assert!(text.contains(&format!("to {} (bob)", b.peer_id)), "{text}");
    let inbox = json(&b.dir, &["inbox"]);
    assert_eq!(inbox[0]["contact"], "alice", "{inbox}");
    let text = stdout(&run(&b.dir, &["inbox"]));
    assert!(
        text.contains(&format!("from {} (alice)", a.peer_id)),
        "{text}"
    );

    // Rename keeps the peer id; the old name is gone; remove empties the book.
    let renamed = json(&a.dir, &["contacts", "rename", "bob", "robert"]);
    assert_eq!(renamed["peer_id"], b.peer_id.as_str());
    assert_eq!(
        json(&a.dir, &["find", "robert"])["peer_id"],
        b.peer_id.as_str()
    );
    fails_with(&run(&a.dir, &["ping", "bob"]), "no contact named bob");
    json(&a.dir, &["contacts", "remove", "robert"]);
    assert_eq!(json(&a.dir, &["contacts", "list"]), serde_json::json!([]));
    fails_with(
        &run(&a.dir, &["contacts", "remove", "robert"]),
        "no contact named robert",
    );
}

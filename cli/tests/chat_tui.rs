//! The chat terminal UI in a real terminal (tmux): A types a message in the UI, B answers
//! in line mode, and both show up on A's screen.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{BIN, Daemon, LOOPBACK, json, wait_for};

/// How long the screen may take to show something.
const SCREEN_WAIT: Duration = Duration::from_secs(30);

/// A tmux session, killed on drop (also when the test fails).
struct Tmux(String);

impl Tmux {
    fn tmux(args: &[&str]) -> std::process::Output {
        Command::new("tmux").args(args).output().unwrap()
    }

    fn start(name: &str, cmd: &str) -> Tmux {
        let out = Self::tmux(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "120",
            "-y",
            "30",
            cmd,
        ]);
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmux(name.to_string())
    }

    fn send_keys(&self, keys: &[&str]) {
        let out = Self::tmux(&[&["send-keys", "-t", &self.0][..], keys].concat());
        assert!(out.status.success(), "tmux send-keys failed");
    }

    fn screen(&self) -> String {
        let out = Self::tmux(&["capture-pane", "-p", "-t", &self.0]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls the screen every 100 ms until `done` holds, failing after [`SCREEN_WAIT`].
    fn wait_screen(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SCREEN_WAIT;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Self::tmux(&["kill-session", "-t", &self.0]);
    }
}

fn have_tmux() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Quotes `s` for the shell tmux runs the command with.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn history_bodies(dir: &Path, peer: &str, outgoing: bool) -> Vec<String> {
    json(dir, &["chat", "history", peer])
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["outgoing"] == outgoing)
        .map(|m| m["body"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_terminal_ui_sends_and_shows_messages() {
    if !have_tmux() {
        assert!(
            std::env::var_os("CI").is_none(),
            "tmux is missing but CI is set: .ci/run should have installed it"
        );
        eprintln!("skipping: tmux is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start(&tmp.path().join("a"), &LOOPBACK);
    let b = Daemon::start(&tmp.path().join("b"), &LOOPBACK);
    json(&a.dir, &["connect", &b.tcp_addr()]);
    wait_for("A connected to B", || {
        a.is_connected_to(&b.peer_id).then_some(())
    });

    let session = format!(
        "p2pnode-chat-tui-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let cmd = format!(
        "env -u RUST_LOG {} --data-dir {} chat {}",
        sh_quote(BIN),
        sh_quote(a.dir.to_str().unwrap()),
        b.peer_id
    );
    let tmux = Tmux::start(&session, &cmd);
    let b_short = &b.peer_id[b.peer_id.len() - 8..];
    tmux.wait_screen("the UI's header", |s| {
        s.contains("chat with") && s.contains(&b.peer_id)
    });

    tmux.send_keys(&["hello from a", "Enter"]);
    let screen = tmux.wait_screen("the sent message", |s| s.contains("me: hello from a"));
    // Each message shows when it was written: "HH:MM" first on its line.
    let line = screen
        .lines()
        .find(|l| l.contains("me: hello from a"))
        .unwrap();
    let time: Vec<char> = line.trim_start().chars().take(5).collect();
    assert!(
        time.len() == 5 && time[2] == ':' && [0, 1, 3, 4].iter().all(|&i| time[i].is_ascii_digit()),
        "a time before the message: {line:?}"
    );

    // B answers in line mode, one line on stdin.
    let mut reply = Command::new(BIN)
        .arg("--data-dir")
        .arg(&b.dir)
        .args(["chat", &a.peer_id, "--line"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = reply.stdin.take().unwrap();
        writeln!(stdin, "hello from b").unwrap();
    }
    let out = reply.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "B's chat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    tmux.wait_screen("both messages, ours received, B online", |s| {
        s.contains("✓ me: hello from a")
            && s.contains(&format!("{b_short}: hello from b"))
            && s.contains("(online, direct")
    });
    assert_eq!(
        history_bodies(&b.dir, &a.peer_id, false),
        vec!["hello from a".to_string()]
    );

    // Esc quits and gives the terminal back (the session's only command ends).
    tmux.send_keys(&["Escape"]);
    wait_for("the UI to exit", || {
        (!Tmux::tmux(&["has-session", "-t", &session])
            .status
            .success())
        .then_some(())
    });
}

#[test]
fn the_terminal_ui_names_a_contact_and_says_it_is_not_verified() {
    if !have_tmux() {
        assert!(
            std::env::var_os("CI").is_none(),
            "tmux is missing but CI is set"
        );
        eprintln!("skipping: tmux is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start(&tmp.path().join("a"), &LOOPBACK);
    let b = Daemon::start(&tmp.path().join("b"), &LOOPBACK);
    json(&a.dir, &["connect", &b.tcp_addr()]);
    json(&a.dir, &["contacts", "add", "bob", &b.peer_id]);

    let session = format!("p2pnode-chat-tui-contact-{}", std::process::id());
    let cmd = format!(
        "env -u RUST_LOG {} --data-dir {} chat bob",
        sh_quote(BIN),
        sh_quote(a.dir.to_str().unwrap()),
    );
    let tmux = Tmux::start(&session, &cmd);
    tmux.wait_screen("the header with the contact's name", |s| {
        s.contains(&format!("chat with bob ({})", b.peer_id)) && s.contains("not verified")
    });

    let mut reply = Command::new(BIN)
        .arg("--data-dir")
        .arg(&b.dir)
        .args(["chat", &a.peer_id, "--line"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(reply.stdin.take().unwrap(), "hello from b").unwrap();
    assert!(reply.wait().unwrap().success());
    // A never wrote to B, so B's first message is a request; it still carries the name.
    tmux.wait_screen("B's message under its name", |s| {
        s.contains("bob (unverified) (request): hello from b")
    });
    tmux.send_keys(&["Escape"]);
    wait_for("the UI to exit", || {
        (!Tmux::tmux(&["has-session", "-t", &session])
            .status
            .success())
        .then_some(())
    });
}

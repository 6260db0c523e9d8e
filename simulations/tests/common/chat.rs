//! Line-mode chats (`p2pnode chat <peer> --line`) driven from lab tests: lines in, JSON
//! events out, read until a condition holds.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use p2pnode_sim::lab::Node;
use p2pnode_sim::lab::poll::{Poll, wait_for};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::time::Instant;

/// Longest wait for one step of a conversation (a chat opening, a request, a burst).
pub const STEP: Duration = Duration::from_secs(60);

/// A `p2pnode chat <peer> --line` process in a node's namespace: lines written to its
/// stdin are sent, its stdout's JSON events are kept in order.
pub struct LineChat {
    who: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    events: Vec<Value>,
}

impl LineChat {
    pub fn start(node: &Node, peer: &str) -> Self {
        let mut child = node.spawn_client(&["chat", peer, "--line"]).unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            who: format!("{}'s chat", node.name()),
            child,
            stdin,
            stdout,
            events: Vec::new(),
        }
    }

    pub async fn send(&mut self, lines: &[String]) {
        let stdin = self.stdin.as_mut().unwrap();
        for line in lines {
            stdin
                .write_all(format!("{line}\n").as_bytes())
                .await
                .unwrap();
        }
        stdin.flush().await.unwrap();
    }

    /// Reads events until `done` holds for all of them so far, for at most [`STEP`].
    pub async fn read_until(&mut self, what: &str, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + STEP;
        while !done(&self.events) {
            let line = match tokio::time::timeout_at(deadline, self.stdout.next_line()).await {
                Ok(line) => line.unwrap(),
                Err(_) => panic!("{} timed out waiting for {what}", self.describe()),
            };
            let Some(line) = line else {
                panic!("{} ended before {what}", self.describe());
            };
            self.events.push(serde_json::from_str(&line).unwrap());
        }
    }

    /// The events read so far, in order.
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// Closes stdin and waits for a clean exit; returns every event.
    pub async fn finish(mut self) -> Vec<Value> {
        drop(self.stdin.take());
        let deadline = Instant::now() + STEP;
        while let Some(line) = tokio::time::timeout_at(deadline, self.stdout.next_line())
            .await
            .unwrap()
            .unwrap()
        {
            self.events.push(serde_json::from_str(&line).unwrap());
        }
        let status = tokio::time::timeout_at(deadline, self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{} exited with {status}", self.who);
        self.events
    }

    pub fn describe(&self) -> String {
        let last = &self.events[self.events.len().saturating_sub(3)..];
        format!(
            "{} ({} events, the last {last:?})",
            self.who,
            self.events.len()
        )
    }
}

pub fn of_type<'a>(events: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
    events.iter().filter(move |e| e["type"] == kind)
}

pub fn bodies<'a>(messages: impl Iterator<Item = &'a Value>) -> Vec<String> {
    messages
        .map(|m| m["body"].as_str().unwrap().to_string())
        .collect()
}

/// Whether a line-mode chat printed `incoming` messages, stored `outgoing` and got the
/// receipt for the last of them.
pub fn caught_up(events: &[Value], incoming: usize, outgoing: usize) -> bool {
    let last_sent = of_type(events, "sent")
        .filter_map(|e| e["seq"].as_u64())
        .max();
    let delivered = of_type(events, "delivered")
        .filter_map(|e| e["up_to_seq"].as_u64())
        .max();
    of_type(events, "message").count() >= incoming
        && of_type(events, "sent").count() == outgoing
        && last_sent.is_some_and(|last| delivered >= Some(last))
}

pub fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Waits until `node` lists a message request from `from` (a peer not in its trust
/// store whose first message arrived), polling every `interval` for at most [`STEP`].
pub async fn wait_request(node: &Node, from: &str, interval: Duration) {
    let what = format!("{} to list {from}'s message request", node.name());
    wait_for(&what, STEP, interval, || async {
        match node.client_json::<Vec<Value>>(&["chat", "requests"]).await {
            Ok(list) if list.iter().any(|r| r["peer_id"] == from) => Poll::Ready(()),
            Ok(list) => Poll::seen(format!("{list:?}")),
            Err(err) => Poll::seen(err),
        }
    })
    .await
    .unwrap();
}

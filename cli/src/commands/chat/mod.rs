//! `p2pnode chat <peer-id | name>`, `p2pnode chat --room <code>`, and the request commands.
//! A contact's name stands in for its peer id everywhere, and is shown beside it.
//!
//! Without `--line`, on a terminal, the chat is a terminal UI (see `ui`).
//!
//! Line mode: every stdin line is one message, sent in order, each acknowledged by the
//! daemon once stored; incoming messages and delivery receipts are printed as they come
//! (JSON lines with `--line` or `--json`, text otherwise). At the end of stdin it exits
//! once everything was stored, or with `--wait-delivered` once the peer has it all.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use p2pnode_chat::api::{
    ChatEvent, ChatMessage, ChatPeerState, ChatRequest, ChatRequestAction, ChatSendRequest,
    RoomInfo, RoomJoinRequest, RoomMessageInfo, RoomSendRequest, routes,
};
use p2pnode_node::api::PeerRequest;
use p2pnode_node::control::{ControlClient, Lines};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::args::{ChatArgs, ChatCommand};
use crate::commands::{Book, resolve_peer};
use crate::output;

// Chat's commands live under this one module: the terminal UI and `p2pnode room`.
mod room;
mod ui;

pub(crate) use room::run as room_command;

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Lines read ahead of sending.
const STDIN_QUEUE: usize = 256;
/// How often `--wait-delivered` re-checks the queue when no receipt event came.
const DELIVERY_POLL: Duration = Duration::from_millis(500);

pub(crate) async fn run(control: &ControlClient, args: ChatArgs, json: bool) -> Result<()> {
    match (args.command, args.peer_id, args.room) {
        (Some(cmd), _, _) => requests(control, cmd, json).await,
        (None, _, Some(code)) => room(control, &code, args.line || json).await,
        (None, Some(peer), None) => {
            direct(control, &peer, args.line || json, args.wait_delivered).await
        }
        (None, None, None) => {
            bail!("name a peer (`p2pnode chat <peer-id>`) or a room (`--room <code>`)")
        }
    }
}

async fn requests(control: &ControlClient, cmd: ChatCommand, json: bool) -> Result<()> {
    let act = |peer_id: String, action: &str| ChatRequestAction {
        peer_id,
        action: action.to_string(),
    };
    match cmd {
        ChatCommand::Requests => {
            let list: Vec<ChatRequest> = control.get(routes::REQUESTS).await?;
            let book = Book::load(control).await;
            let named: Vec<_> = list.iter().map(|r| book.named(&r.peer_id, r)).collect();
            output::show(json, &named, |_| {
                if list.is_empty() {
                    println!("no message requests");
                }
                for r in &list {
                    println!("{}", request_text(r, &book));
                }
            });
        }
        ChatCommand::Accept { peer_id } => {
            let peer_id = resolve_peer(control, &peer_id).await?;
            let s: ChatPeerState = control
                .post(routes::REQUESTS, &act(peer_id, "accept"))
                .await?;
            output::show(json, &s, |s| println!("accepted {}", s.peer_id));
        }
        ChatCommand::Block { peer_id } => {
            let peer_id = resolve_peer(control, &peer_id).await?;
            let s: ChatPeerState = control
                .post(routes::REQUESTS, &act(peer_id, "block"))
                .await?;
            output::show(json, &s, |s| println!("blocked {}", s.peer_id));
        }
        ChatCommand::History { peer_id, limit } => {
            let peer_id = resolve_peer(control, &peer_id).await?;
            let list: Vec<ChatMessage> = control.get(&routes::history(&peer_id, limit)).await?;
            let book = Book::load(control).await;
            output::show(json, &list, |list| {
                for m in list {
                    print_message(&book, m);
                }
            });
        }
    }
    Ok(())
}

/// A message request as listed: the peer (with its contact name when this very peer id
/// is a contact's), who it is (a stranger unless this peer id's key was verified: a
/// contact who comes back with a new id is a new peer id, so no name and no verification),
/// and how to answer it.
fn request_text(r: &ChatRequest, book: &Book) -> String {
    let name = book.name(&r.peer_id);
    let who = match (name, r.verified) {
        (Some(name), true) => format!("your contact {name}, verified key; not yet allowed to chat"),
        (Some(name), false) => format!(
            "your contact {name}, but this key was never verified: compare the code with \
             `p2pnode verify {name}`"
        ),
        (None, true) => "verified key, not yet allowed to chat".to_string(),
        (None, false) => format!(
            "NOT one of your contacts and not a verified contact: if you expect someone you \
             know under a new peer id, compare the code with `p2pnode verify {}` first",
            r.peer_id
        ),
    };
    // The answer names the peer the way the user would type it.
    let arg = name.unwrap_or(&r.peer_id);
    format!(
        "{}\n  {who}\n  accept: p2pnode chat accept {arg}; block: p2pnode chat block {arg}",
        book.label(&r.peer_id)
    )
}

fn print_message(book: &Book, m: &ChatMessage) {
    if m.outgoing {
        let mark = if m.delivered { "✓" } else { " " };
        println!("{mark} me: {}", m.body);
    } else {
        let from = book.short(&m.peer_id);
        let req = if m.request { " (request)" } else { "" };
        println!("  {from}{req}: {}", m.body);
    }
}

/// The daemon's next chat event; lines of event kinds this CLI does not know are skipped.
/// Cancel-safe, as `tokio::select!` needs: only the line reader holds partial input.
pub(crate) async fn next_event(events: &mut Lines) -> Result<ChatEvent> {
    loop {
        let Some(line) = events.next_line().await? else {
            bail!("the daemon closed the event stream (stopped?)");
        };
        if let Ok(event) = serde_json::from_str::<ChatEvent>(&line) {
            return Ok(event);
        }
    }
}

fn print_json<T: Serialize>(value: &T) {
    use std::io::Write;
    match serde_json::to_string(value) {
        // A reader that went away (closed pipe) is not worth a panic; the next read of
        // stdin or events ends the session anyway.
        Ok(s) => {
            let _ = writeln!(std::io::stdout().lock(), "{s}");
        }
        Err(e) => eprintln!("error: cannot encode output: {e}"),
    }
}

/// Reads stdin lines on a thread (stdin is blocking) into a bounded channel; the channel
/// closes at end of input.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(STDIN_QUEUE);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Sends stdin lines one by one (in order) with `send`, passing each result on.
fn sender<T: Send + 'static>(
    mut lines: mpsc::Receiver<String>,
    send: impl Fn(String) -> BoxFuture<Result<T>> + Send + 'static,
) -> mpsc::Receiver<Result<T>> {
    let (tx, rx) = mpsc::channel(STDIN_QUEUE);
    tokio::spawn(async move {
        while let Some(line) = lines.recv().await {
            let r = send(line).await;
            let failed = r.is_err();
            if tx.send(r).await.is_err() || failed {
                break;
            }
        }
    });
    rx
}

async fn direct(
    control: &ControlClient,
    peer: &str,
    line_mode: bool,
    wait_delivered: bool,
) -> Result<()> {
    let peer = resolve_peer(control, peer).await?;
    let book = Book::load(control).await;
    // Subscribe before anything is sent, so no receipt can slip by.
    let mut events = control.lines(routes::EVENTS).await?;
    let state: ChatPeerState = control
        .post(
            routes::OPEN,
            &PeerRequest {
                peer_id: peer.clone(),
            },
        )
        .await
        .with_context(|| format!("cannot chat with {}", book.label(&peer)))?;
    if !line_mode && std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        return ui::run(control, &peer, book.name(&peer), state, events).await;
    }
    if line_mode {
        // The contact's name rides beside the state; absent for a peer without one.
        print_json(&serde_json::json!({
            "type": "state",
            "state": state,
            "contact": book.name(&peer),
        }));
    } else {
        let path = state.path.map_or("not connected".to_string(), |p| {
            format!("{p:?}").to_lowercase()
        });
        let verified = if state.verified {
            "verified"
        } else {
            "not verified"
        };
        eprintln!(
            "chat with {} ({path}, {verified}); type lines, Ctrl-D to end",
            book.label(&peer)
        );
        if let Ok(history) = control
            .get::<Vec<ChatMessage>>(&routes::history(&peer, 50))
            .await
        {
            history.iter().for_each(|m| print_message(&book, m));
        }
    }

    let send_control = control.clone();
    let send_peer = peer.clone();
    let mut results = sender(stdin_lines(), move |body| {
        let control = send_control.clone();
        let peer_id = send_peer.clone();
        Box::pin(async move {
            let m: ChatMessage = control
                .post(routes::SEND, &ChatSendRequest { peer_id, body })
                .await?;
            Ok(m)
        })
    });
    let mut last_sent: u64 = 0;
    let mut delivered_up_to: u64 = 0;
    let mut input_done = false;
    let mut poll = tokio::time::interval(DELIVERY_POLL);
    loop {
        if input_done && (!wait_delivered || delivered_up_to >= last_sent) {
            return Ok(());
        }
        tokio::select! {
            r = results.recv(), if !input_done => match r {
                Some(Ok(m)) => {
                    last_sent = last_sent.max(m.seq);
                    if line_mode {
                        print_json(&ChatEvent::Sent(m));
                    }
                }
                Some(Err(e)) => return Err(e),
                None => input_done = true,
            },
            event = next_event(&mut events) => {
                let event = event?;
                match &event {
                    ChatEvent::Message(m) if m.peer_id == peer => {
                        if line_mode { print_json(&event) } else { print_message(&book, m) }
                    }
                    ChatEvent::Delivered { peer_id, up_to_seq, .. } if *peer_id == peer => {
                        delivered_up_to = delivered_up_to.max(*up_to_seq);
                        if line_mode { print_json(&event) }
                    }
                    ChatEvent::PeerState { peer_id, online } if *peer_id == peer => {
                        if line_mode {
                            print_json(&event)
                        } else {
                            eprintln!("-- {} is {}", book.short(peer_id), if *online { "online" } else { "offline" });
                        }
                    }
                    ChatEvent::Lagged { .. } if line_mode => print_json(&event),
                    _ => {}
                }
            }
            _ = poll.tick(), if input_done => {
                // Receipts may have been missed (a lagged subscriber); the queue is the truth.
                let s: ChatPeerState = control.post(routes::STATE, &PeerRequest { peer_id: peer.clone() }).await?;
                if s.queued == 0 {
                    delivered_up_to = delivered_up_to.max(last_sent);
                }
            }
        }
    }
}

async fn room(control: &ControlClient, code: &str, line_mode: bool) -> Result<()> {
    let book = Book::load(control).await;
    let mut events = control.lines(routes::EVENTS).await?;
    let info: RoomInfo = control
        .post(
            routes::ROOM_JOIN,
            &RoomJoinRequest {
                code: code.trim().to_string(),
            },
        )
        .await?;
    if line_mode {
        print_json(&serde_json::json!({ "type": "joined", "room": info }));
    } else {
        eprintln!(
            "room {} ({} members); type lines, Ctrl-D to end",
            info.name,
            info.members.len()
        );
    }
    let room_id = info.room_id.clone();
    let send_control = control.clone();
    let send_room = room_id.clone();
    let mut results = sender(stdin_lines(), move |body| {
        let control = send_control.clone();
        let code = send_room.clone();
        Box::pin(async move {
            let m: RoomMessageInfo = control
                .post(routes::ROOM_SEND, &RoomSendRequest { code, body })
                .await?;
            Ok(m)
        })
    });
    loop {
        tokio::select! {
            r = results.recv() => match r {
                Some(Ok(m)) => if line_mode {
                    print_json(&serde_json::json!({ "type": "room_sent", "id": m.id, "body": m.body }));
                },
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
            event = next_event(&mut events) => {
                let event = event?;
                let ours = match &event {
                    ChatEvent::RoomMessage(m) => m.room_id == room_id,
                    ChatEvent::MemberJoined { room_id: r, .. }
                    | ChatEvent::MemberLeft { room_id: r, .. }
                    | ChatEvent::RoomExpired { room_id: r } => *r == room_id,
                    _ => false,
                };
                if !ours {
                    continue;
                }
                if line_mode {
                    print_json(&event);
                } else {
                    match &event {
                        ChatEvent::RoomMessage(m) => println!("  {}: {}", book.short(&m.sender), m.body),
                        ChatEvent::MemberJoined { member, .. } => eprintln!("-- {} joined", book.short(member)),
                        ChatEvent::MemberLeft { member, .. } => eprintln!("-- {} left", book.short(member)),
                        _ => eprintln!("-- the room expired"),
                    }
                }
                if matches!(event, ChatEvent::RoomExpired { .. }) {
                    bail!("the room expired");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_from_an_unverified_peer_says_so() {
        let mut r = ChatRequest {
            peer_id: "12D3KooWStranger".into(),
            first_at: 1,
            verified: false,
        };
        let nobody = Book::default();
        let text = request_text(&r, &nobody);
        assert!(text.contains("not a verified contact"), "{text}");
        assert!(text.contains("NOT one of your contacts"), "{text}");
        assert!(text.contains("p2pnode verify 12D3KooWStranger"), "{text}");
        r.verified = true;
        assert!(!request_text(&r, &nobody).contains("not a verified contact"));
        // A daemon from before the field reports no verification: a stranger.
        let old: ChatRequest =
            serde_json::from_str(r#"{"peer_id":"12D3KooWStranger","first_at":1}"#).unwrap();
        assert!(!old.verified);
    }

    #[test]
    fn a_request_names_the_contact_of_this_very_peer_id_only() {
        let contact = |name: &str, peer_id: &str| p2pnode_node::contacts::Contact {
            name: name.into(),
            peer_id: peer_id.into(),
            added_at: 0,
            verified: false,
        };
        let book = Book::of(vec![contact("alice", "12D3KooWAlice")]);
        let mut r = ChatRequest {
            peer_id: "12D3KooWAlice".into(),
            first_at: 1,
            verified: false,
        };
        let text = request_text(&r, &book);
        assert!(text.starts_with("12D3KooWAlice (alice)\n"), "{text}");
        assert!(text.contains("never verified"), "{text}");
        assert!(text.contains("p2pnode verify alice"), "{text}");
        assert!(text.contains("p2pnode chat accept alice"), "{text}");
        r.verified = true;
        assert!(request_text(&r, &book).contains("your contact alice, verified key"));
        // Alice under a new peer id is a stranger: no name, and said so.
        let stranger = ChatRequest {
            peer_id: "12D3KooWNewAlice".into(),
            first_at: 1,
            verified: false,
        };
        let text = request_text(&stranger, &book);
        assert!(!text.contains("alice"), "{text}");
        assert!(text.contains("NOT one of your contacts"), "{text}");
    }
}

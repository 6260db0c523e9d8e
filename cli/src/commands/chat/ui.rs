//! The terminal UI of `p2pnode chat <peer-id | name>` (without `--line`): a header with
//! the peer's contact name and state, the conversation as scrollback (✓ on what the peer has received), and an
//! input line (Enter sends, Esc or Ctrl-C quits, PageUp/PageDown scroll).
//!
//! One `tokio::select!` loop drives it, over terminal events and the daemon's chat events.
//! The terminal is restored on every way out (a guard's `Drop`, so errors and panics too).

use std::io::Stdout;

use anyhow::Result;
use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use futures::StreamExt;
use p2pnode_chat::api::{ChatEvent, ChatMessage, ChatPeerState, ChatSendRequest, routes};
use p2pnode_node::api::PeerRequest;
use p2pnode_node::control::{ControlClient, Lines};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};

/// Messages loaded from the history at start.
const HISTORY: usize = 500;

/// Puts the terminal into raw mode on the alternate screen; undoes it when dropped.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> Result<TerminalGuard> {
        enable_raw_mode()?;
        let guard = TerminalGuard;
        execute!(std::io::stdout(), EnterAlternateScreen)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = execute!(
            std::io::stdout(),
            LeaveAlternateScreen,
            crossterm::cursor::Show
        );
        let _ = disable_raw_mode();
    }
}

struct App {
    peer: String,
    /// The contact's name for this very peer id, if it has one.
    name: Option<String>,
    state: ChatPeerState,
    messages: Vec<ChatMessage>,
    input: String,
    /// Lines scrolled up from the bottom.
    scroll: usize,
    /// The last error worth showing (a failed send).
    status: Option<String>,
    /// The highest of our sequence numbers the peer has received.
    delivered_up_to: u64,
}

impl App {
    fn add(&mut self, mut m: ChatMessage) {
        if m.outgoing && m.seq <= self.delivered_up_to {
            m.delivered = true;
        }
        if !self.messages.iter().any(|x| x.id == m.id) {
            self.messages.push(m);
        }
    }

    fn delivered(&mut self, up_to_seq: u64, ids: &[String]) {
        self.delivered_up_to = self.delivered_up_to.max(up_to_seq);
        for m in self.messages.iter_mut().filter(|m| m.outgoing) {
            if m.seq <= up_to_seq || ids.contains(&m.id) {
                m.delivered = true;
            }
        }
    }

    fn header(&self) -> String {
        let online = if self.state.online {
            "online"
        } else {
            "offline"
        };
        let path = self.state.path.map_or("not connected".to_string(), |p| {
            format!("{p:?}").to_lowercase()
        });
        let verified = if self.state.verified {
            "verified"
        } else {
            "not verified"
        };
        let who = match &self.name {
            Some(name) => format!("{name} ({})", self.peer),
            None => self.peer.clone(),
        };
        format!(" chat with {who} ({online}, {path}, {verified}) ")
    }

    /// Who wrote an incoming message: the contact's name, else the end of the peer id. A
    /// name whose peer id is not verified says so on every line: the name is ours, the
    /// peer id could be anyone's until the codes were compared.
    fn who(&self) -> String {
        match &self.name {
            Some(name) if self.state.verified => name.clone(),
            Some(name) => format!("{name} (unverified)"),
            None => self.peer[self.peer.len().saturating_sub(8)..].to_string(),
        }
    }

    fn draw(&self, frame: &mut ratatui::Frame<'_>) {
        let [header, body, input] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(1),
            Constraint::Length(3),
        ])
        .areas(frame.area());

        // Red until verified, as Signal marks an unverified safety number.
        let header_style = if self.state.verified {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default().fg(Color::White).bg(Color::Red)
        };
        frame.render_widget(Paragraph::new(self.header()).style(header_style), header);

        let who = self.who();
        let lines: Vec<Line<'_>> = self
            .messages
            .iter()
            .map(|m| message_line(m, &who))
            .collect();
        let height = body.height.saturating_sub(1) as usize;
        let end = lines.len().saturating_sub(self.scroll.min(lines.len()));
        let start = end.saturating_sub(height);
        let title = if self.scroll > 0 {
            format!(" history (scrolled up {}) ", self.scroll)
        } else {
            " history ".to_string()
        };
        frame.render_widget(
            Paragraph::new(lines[start..end].to_vec())
                .block(Block::default().borders(Borders::TOP).title(title)),
            body,
        );

        let title = match &self.status {
            Some(e) => format!(" error: {e} "),
            None => " Enter sends, Esc quits ".to_string(),
        };
        frame.render_widget(
            Paragraph::new(self.input.as_str())
                .block(Block::default().borders(Borders::ALL).title(title)),
            input,
        );
        let x =
            input.x + 1 + (self.input.chars().count() as u16).min(input.width.saturating_sub(3));
        frame.set_cursor_position((x, input.y + 1));
    }
}

/// When a message was written, in local time: `HH:MM` today, `Mon DD HH:MM` before.
fn time_label(sent_at_ms: u64, today: chrono::NaiveDate) -> String {
    let Some(at) = i64::try_from(sent_at_ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
    else {
        return "--:--".into();
    };
    let local = at.with_timezone(&chrono::Local);
    if local.date_naive() == today {
        local.format("%H:%M").to_string()
    } else {
        local.format("%b %d %H:%M").to_string()
    }
}

fn message_line<'a>(m: &'a ChatMessage, who: &str) -> Line<'a> {
    let time = Span::styled(
        format!(
            "{} ",
            time_label(m.sent_at, chrono::Local::now().date_naive())
        ),
        Style::default().fg(Color::DarkGray),
    );
    if m.outgoing {
        let mark = if m.delivered { "✓ " } else { "  " };
        Line::from(vec![
            time,
            Span::styled(mark, Style::default().fg(Color::Green)),
            Span::styled("me: ", Style::default().fg(Color::Cyan)),
            Span::raw(m.body.as_str()),
        ])
    } else {
        let req = if m.request { " (request)" } else { "" };
        Line::from(vec![
            time,
            Span::raw("  "),
            Span::styled(format!("{who}{req}: "), Style::default().fg(Color::Yellow)),
            Span::raw(m.body.as_str()),
        ])
    }
}

/// Runs the UI until the user quits; `events` must be subscribed before `chat/open`.
pub(crate) async fn run(
    control: &ControlClient,
    peer: &str,
    name: Option<&str>,
    state: ChatPeerState,
    events: Lines,
) -> Result<()> {
    let history = control
        .get::<Vec<ChatMessage>>(&routes::history(peer, HISTORY))
        .await
        .unwrap_or_default();
    let mut app = App {
        peer: peer.to_string(),
        name: name.map(str::to_string),
        state,
        messages: Vec::new(),
        input: String::new(),
        scroll: 0,
        status: None,
        delivered_up_to: 0,
    };
    history.into_iter().for_each(|m| app.add(m));

    let _guard = TerminalGuard::enter()?;
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    terminal.clear()?;
    event_loop(control, &mut app, &mut terminal, events).await
}

async fn event_loop(
    control: &ControlClient,
    app: &mut App,
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    mut events: Lines,
) -> Result<()> {
    let mut keys = EventStream::new();
    loop {
        terminal.draw(|f| app.draw(f))?;
        tokio::select! {
            key = keys.next() => match key {
                Some(Ok(Event::Key(key))) if key.kind != KeyEventKind::Release => {
                    if !on_key(control, app, key).await {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            event = crate::commands::chat::next_event(&mut events) => {
                let event = event?;
                match event {
                    ChatEvent::Message(m) | ChatEvent::Sent(m) if m.peer_id == app.peer => {
                        app.add(m)
                    }
                    ChatEvent::Delivered { peer_id, up_to_seq, ids } if peer_id == app.peer => {
                        app.delivered(up_to_seq, &ids)
                    }
                    ChatEvent::PeerState { peer_id, online } if peer_id == app.peer => {
                        app.state.online = online;
                        // The path and verification may have changed with the connection.
                        if let Ok(s) = control
                            .post::<ChatPeerState, _>(routes::STATE, &PeerRequest { peer_id })
                            .await
                        {
                            app.state = ChatPeerState { online, ..s };
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Handles a key press; false to quit.
async fn on_key(control: &ControlClient, app: &mut App, key: KeyEvent) -> bool {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    match key.code {
        KeyCode::Esc => return false,
        KeyCode::Char('c' | 'd') if ctrl => return false,
        KeyCode::Char('u') if ctrl => app.input.clear(),
        KeyCode::Char(c) if !ctrl => app.input.push(c),
        KeyCode::Backspace => {
            app.input.pop();
        }
        KeyCode::PageUp => app.scroll = (app.scroll + 10).min(app.messages.len()),
        KeyCode::PageDown => app.scroll = app.scroll.saturating_sub(10),
        KeyCode::Enter if !app.input.trim().is_empty() => {
            let body = std::mem::take(&mut app.input);
            let req = ChatSendRequest {
                peer_id: app.peer.clone(),
                body,
            };
            match control.post::<ChatMessage, _>(routes::SEND, &req).await {
                Ok(m) => {
                    app.status = None;
                    app.scroll = 0;
                    app.add(m);
                }
                Err(e) => {
                    app.status = Some(e.to_string());
                    app.input = req.body;
                }
            }
        }
        _ => {}
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_local_and_dated_before_today() {
        let now = chrono::Local::now();
        let ms = u64::try_from(now.timestamp_millis()).unwrap();
        assert_eq!(
            time_label(ms, now.date_naive()),
            now.format("%H:%M").to_string()
        );
        let tomorrow = now.date_naive().succ_opt().unwrap();
        let label = time_label(ms, tomorrow);
        assert!(label.ends_with(&now.format("%H:%M").to_string()), "{label}");
        assert!(label.len() > 5, "{label}");
        assert_eq!(time_label(u64::MAX, now.date_naive()), "--:--");
    }
}

//! `p2pnode share`, `unshare`, `shares`, `get`, `send`, `inbox`, `accept`, `reject` and
//! `transfers`: the files protocol's commands, all through the daemon's control socket.
//!
//! `get` and `accept` follow their transfer until it ends: a progress bar (bytes, rate,
//! time left, files, providers) on a terminal, else a progress line a second on stderr;
//! with `--json`, each progress snapshot is a JSON line on stdout, the last one final.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use p2pnode_files::api::{
    AcceptRequest, ContentRequest, GetRequest, OfferInfo, OfferRequest, SendInfo, SendRequest,
    ShareInfo, ShareRequest, TransferInfo, TransferStatus, routes,
};
use p2pnode_node::control::ControlClient;

use crate::args::{AcceptArgs, GetArgs, SendArgs, ShareArgs};
use crate::output;

/// Longest wait for a followed transfer's progress.
const PROGRESS_WAIT: Duration = Duration::from_millis(250);
/// Least time between two progress lines.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// An absolute path as the daemon sees it (it has its own working directory). The path
/// must exist.
fn existing(path: &Path) -> Result<String> {
    let abs =
        std::fs::canonicalize(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(abs.display().to_string())
}

/// The target directory, absolute; it may not exist yet.
fn target(to: Option<PathBuf>) -> Result<String> {
    let dir = match to {
        Some(d) => d,
        None => std::env::current_dir().context("no current directory")?,
    };
    Ok(std::path::absolute(&dir)
        .with_context(|| format!("bad target {}", dir.display()))?
        .display()
        .to_string())
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn share_line(s: &ShareInfo) -> String {
    let files = if s.files == 1 { "file" } else { "files" };
    let scope = if s.announced { "" } else { " (offered only)" };
    format!(
        "{}  {} {files}, {}  {}{scope}",
        s.content_id,
        s.files,
        size(s.size),
        s.name
    )
}

pub(crate) async fn share(control: &ControlClient, args: ShareArgs, json: bool) -> Result<()> {
    let paths = args
        .paths
        .iter()
        .map(|p| existing(p))
        .collect::<Result<Vec<_>>>()?;
    let info: ShareInfo = control.post(routes::SHARE, &ShareRequest { paths }).await?;
    output::show(json, &info, |s| {
        println!("{}", s.content_id);
        eprintln!("sharing {}", share_line(s));
        eprintln!("fetch it with: p2pnode get {}", s.content_id);
    });
    Ok(())
}

pub(crate) async fn unshare(control: &ControlClient, content_id: String, json: bool) -> Result<()> {
    let info: ShareInfo = control
        .post(routes::UNSHARE, &ContentRequest { content_id })
        .await?;
    output::show(json, &info, |s| {
        println!("no longer sharing {}", s.content_id)
    });
    Ok(())
}

pub(crate) async fn shares(control: &ControlClient, json: bool) -> Result<()> {
    let list: Vec<ShareInfo> = control.get(routes::SHARES).await?;
    output::show(json, &list, |list| {
        if list.is_empty() {
            println!("nothing shared");
        }
        for s in list {
            println!("{}", share_line(s));
        }
    });
    Ok(())
}

pub(crate) async fn get(control: &ControlClient, args: GetArgs, json: bool) -> Result<()> {
    let mut from = Vec::with_capacity(args.from.len());
    for p in &args.from {
        from.push(super::resolve_peer(control, p).await?);
    }
    let request = GetRequest {
        content_id: args.content_id,
        to: target(args.to)?,
        from,
    };
    let t: TransferInfo = control.post(routes::GET, &request).await?;
    follow(control, t, args.no_wait, json).await
}

pub(crate) async fn accept(control: &ControlClient, args: AcceptArgs, json: bool) -> Result<()> {
    let request = AcceptRequest {
        offer: args.offer,
        to: target(args.to)?,
    };
    let t: TransferInfo = control.post(routes::ACCEPT, &request).await?;
    follow(control, t, args.no_wait, json).await
}

fn progress_line(t: &TransferInfo, rate: Option<f64>) -> String {
    let pct = if t.size == 0 {
        0.0
    } else {
        t.bytes_done as f64 * 100.0 / t.size as f64
    };
    let rate = rate.map_or_else(String::new, |r| format!(", {}/s", size(r as u64)));
    format!(
        "transfer {}: {} of {} ({pct:.0} %{rate}), {}/{} groups, {}",
        t.id,
        size(t.bytes_done),
        size(t.size),
        t.groups_resumed + t.groups_fetched,
        t.groups_total,
        providers(t),
    )
}

/// "2 provider(s)", and how many of them over a relay and on how many new streams: a
/// relayed transfer says so, and that it went on across the relay's circuit limits.
fn providers(t: &TransferInfo) -> String {
    let serving: Vec<_> = t.providers.iter().filter(|p| !p.dropped).collect();
    let mut s = format!("{} provider(s)", serving.len());
    let relayed = serving.iter().filter(|p| p.relayed).count();
    if relayed > 0 {
        s.push_str(&format!(", {relayed} over a relay"));
    }
    let reopened: u32 = serving.iter().map(|p| p.reopened).sum();
    if reopened > 0 {
        s.push_str(&format!(", {reopened} stream(s) reopened"));
    }
    s
}

/// The progress bar's layout.
const BAR_TEMPLATE: &str =
    "{spinner} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}";

/// How a followed transfer shows its progress: a bar on a terminal, a line a second
/// elsewhere (logs, pipes), a JSON line per snapshot with `--json`.
enum Progress {
    Json,
    Bar(indicatif::ProgressBar),
    Lines {
        last_line: Instant,
        /// Bytes done and when, at the first snapshot with a size: the rate counts from
        /// there, in bytes and time alike.
        first: Option<(u64, Instant)>,
    },
}

impl Progress {
    fn new(json: bool) -> Self {
        if json {
            return Self::Json;
        }
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return Self::Lines {
                last_line: Instant::now(),
                first: None,
            };
        }
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(BAR_TEMPLATE) {
            bar.set_style(style.progress_chars("=> "));
        }
        Self::Bar(bar)
    }

    fn update(&mut self, t: &TransferInfo) {
        match self {
            Self::Json => output::show(true, t, |_| {}),
            Self::Bar(bar) => {
                if t.size > 0 {
                    bar.set_length(t.size);
                    bar.set_position(t.bytes_done);
                }
                bar.set_message(format!("{} file(s), {}", t.files, providers(t)));
            }
            Self::Lines { last_line, first } => {
                if t.size > 0 && first.is_none() {
                    *first = Some((t.bytes_done, Instant::now()));
                }
                if let Some((base, since)) = *first
                    && last_line.elapsed() >= PROGRESS_EVERY
                {
                    let secs = since.elapsed().as_secs_f64();
                    let rate =
                        (secs > 0.0).then(|| t.bytes_done.saturating_sub(base) as f64 / secs);
                    eprintln!("{}", progress_line(t, rate));
                    *last_line = Instant::now();
                }
            }
        }
    }

    fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Follows a transfer to its end (unless `no_wait`), showing progress.
async fn follow(
    control: &ControlClient,
    mut t: TransferInfo,
    no_wait: bool,
    json: bool,
) -> Result<()> {
    if no_wait {
        output::show(json, &t, |t| {
            println!("transfer {} started into {}", t.id, t.target)
        });
        return Ok(());
    }
    let mut progress = Progress::new(json);
    while t.status == TransferStatus::Running {
        // The daemon answers as soon as the transfer ends, or with its progress after
        // this long: the end is seen at once, and the bar moves often enough.
        t = control
            .get(&routes::transfer_wait(
                t.id,
                PROGRESS_WAIT.as_millis() as u64,
            ))
            .await?;
        progress.update(&t);
    }
    progress.finish();
    match t.status {
        TransferStatus::Done => {
            if !json {
                println!(
                    "received {} ({} files, {}) into {}",
                    t.content_id,
                    t.files,
                    size(t.size),
                    t.target
                );
                if t.groups_resumed > 0 {
                    eprintln!(
                        "resumed: {} of {} groups were already verified on disk",
                        t.groups_resumed, t.groups_total
                    );
                }
            }
            Ok(())
        }
        _ => bail!(
            "transfer {} failed: {}",
            t.id,
            t.error.as_deref().unwrap_or("unknown error")
        ),
    }
}

pub(crate) async fn send(control: &ControlClient, args: SendArgs, json: bool) -> Result<()> {
    // A contact's name works as well as a peer id.
    let peer_id = super::resolve_peer(control, &args.peer_id).await?;
    let paths = args
        .paths
        .iter()
        .map(|p| existing(p))
        .collect::<Result<Vec<_>>>()?;
    let request = SendRequest { peer_id, paths };
    let info: SendInfo = control.post(routes::SEND, &request).await?;
    let book = super::Book::load(control).await;
    output::show(json, &info, |s| {
        println!(
            "offered {} ({} files, {}) to {}; it fetches once they accept",
            s.content_id,
            s.files,
            size(s.size),
            book.label(&s.peer_id)
        );
    });
    Ok(())
}

fn offer_line(o: &OfferInfo, book: &super::Book) -> String {
    format!(
        "{}  from {}: {} ({} files, {})  {}",
        o.id,
        book.label(&o.peer_id),
        o.name,
        o.files,
        size(o.size),
        o.content_id
    )
}

pub(crate) async fn inbox(control: &ControlClient, json: bool) -> Result<()> {
    let list: Vec<OfferInfo> = control.get(routes::INBOX).await?;
    let book = super::Book::load(control).await;
    let named: Vec<_> = list.iter().map(|o| book.named(&o.peer_id, o)).collect();
    output::show(json, &named, |_| {
        if list.is_empty() {
            println!("no offers");
        }
        for o in &list {
            println!("{}", offer_line(o, &book));
        }
    });
    Ok(())
}

pub(crate) async fn reject(control: &ControlClient, offer: u64, json: bool) -> Result<()> {
    let o: OfferInfo = control
        .post(routes::REJECT, &OfferRequest { offer })
        .await?;
    let book = super::Book::load(control).await;
    output::show(json, &o, |o| {
        println!("rejected offer {} from {}", o.id, book.label(&o.peer_id))
    });
    Ok(())
}

pub(crate) async fn transfers(control: &ControlClient, json: bool) -> Result<()> {
    let list: Vec<TransferInfo> = control.get(routes::TRANSFERS).await?;
    let book = super::Book::load(control).await;
    output::show(json, &list, |list| {
        if list.is_empty() {
            println!("no transfers");
        }
        for t in list {
            let status = match t.status {
                TransferStatus::Running => "running",
                TransferStatus::Done => "done",
                TransferStatus::Failed => "failed",
            };
            println!("{status:<8} {}  -> {}", t.content_id, t.target);
            if !t.providers.is_empty() {
                let from: Vec<String> = t
                    .providers
                    .iter()
                    .map(|p| {
                        let name = book.short(&p.peer_id);
                        if p.relayed {
                            format!("{name} (over a relay)")
                        } else {
                            name.to_string()
                        }
                    })
                    .collect();
                println!("         from {}", from.join(", "));
            }
            println!("         {}", progress_line(t, None));
            if let Some(e) = &t.error {
                println!("         error: {e}");
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_template_parses() {
        // A template indicatif refuses would leave the bar unstyled without a word.
        assert!(indicatif::ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
    }
}

//! `p2pnode db ...`: JSON documents synced between peers, through the daemon's `db` routes.

use anyhow::{Context, Result, bail};
use p2pnode_node::control::ControlClient;
use p2pnode_sync::api::{
    ConflictInfo, CreateRequest, DocInfo, DocRequest, Export, HistoryItem, ImportRequest,
    KeepChoice, PathRequest, PutRequest, ResolveRequest, WatchEvent, Written, routes,
};
use serde_json::Value;

use crate::args::DbCommand;
use crate::output;

/// Largest file `db import` reads.
const MAX_IMPORT_BYTES: u64 = 64 << 20;

fn parse_json(text: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| {
        format!("invalid JSON `{text}` (quote strings inside single quotes: '\"text\"')")
    })
}

fn written(json: bool, w: &Written) {
    output::show(json, w, |w| match &w.change {
        Some(c) => println!("saved {} ({c})", w.doc),
        None => println!("{}: nothing to change", w.doc),
    });
}

fn pretty(json: bool, value: &Value) {
    output::show(json, value, |v| {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    });
}

pub(crate) async fn run(control: &ControlClient, cmd: DbCommand, json: bool) -> Result<()> {
    let doc_req = |doc: String| DocRequest { doc, limit: None };
    match cmd {
        DbCommand::Create { doc, network } => {
            let info: DocInfo = control
                .post(routes::CREATE, &CreateRequest { doc, network })
                .await?;
            output::show(json, &info, |i| {
                println!("created {} in network {}", i.doc, i.network);
            });
        }
        DbCommand::Put { doc, path, value } => {
            let value = parse_json(&value)?;
            let w: Written = control
                .post(routes::PUT, &PutRequest { doc, path, value })
                .await?;
            written(json, &w);
        }
        DbCommand::Get { doc, path } => {
            let v: Value = control
                .post(routes::GET, &PathRequest { doc, path })
                .await?;
            pretty(json, &v);
        }
        DbCommand::Delete { doc, path } => {
            let w: Written = control
                .post(
                    routes::DELETE,
                    &PathRequest {
                        doc,
                        path: Some(path),
                    },
                )
                .await?;
            written(json, &w);
        }
        DbCommand::List => {
            let list: Vec<DocInfo> = control.get(routes::LIST).await?;
            output::show(json, &list, |list| {
                if list.is_empty() {
                    println!("no documents");
                }
                for d in list {
                    println!("{}  network {}  {} changes", d.doc, d.network, d.changes);
                }
            });
        }
        DbCommand::Watch { doc } => {
            let mut lines = control.lines(&routes::watch(&doc)).await?;
            while let Some(line) = lines.next_line().await? {
                if json {
                    println!("{line}");
                    continue;
                }
                match serde_json::from_str::<WatchEvent>(&line) {
                    Ok(WatchEvent::Changed {
                        source, changes, ..
                    }) => println!("{doc}: {changes} change(s) from {source}"),
                    Ok(WatchEvent::Lagged { missed }) => {
                        println!("{doc}: missed {missed} events; read it again with `db get`")
                    }
                    // Kinds this CLI does not know yet.
                    Err(_) => {}
                }
            }
        }
        DbCommand::History { doc, limit } => {
            let list: Vec<HistoryItem> = control
                .post(
                    routes::HISTORY,
                    &DocRequest {
                        doc,
                        limit: Some(limit),
                    },
                )
                .await?;
            output::show(json, &list, |list| {
                for h in list {
                    let short = h.hash.get(..12).unwrap_or(&h.hash);
                    let message = h.message.as_deref().unwrap_or("");
                    println!("{short}  {}  {}  {message}", h.time_ms, h.author);
                }
            });
        }
        DbCommand::Conflicts { doc } => {
            let list: Vec<ConflictInfo> = control.post(routes::CONFLICTS, &doc_req(doc)).await?;
            output::show(json, &list, |list| {
                if list.is_empty() {
                    println!("no conflicts");
                }
                for c in list {
                    println!("{}:", c.path);
                    for (i, k) in c.candidates.iter().enumerate() {
                        let who = if k.local { "local" } else { "remote" };
                        let pick = if c.pick == Some(i) { " (read)" } else { "" };
                        println!("  {who} {}: {}{pick}", k.author, k.value);
                    }
                }
            });
        }
        DbCommand::Resolve { doc, path, keep } => {
            let keep = match keep.as_str() {
                "local" => KeepChoice::Local,
                "remote" => KeepChoice::Remote,
                other => KeepChoice::Value(
                    parse_json(other).context("--keep takes local, remote or a JSON value")?,
                ),
            };
            let w: Written = control
                .post(routes::RESOLVE, &ResolveRequest { doc, path, keep })
                .await?;
            written(json, &w);
        }
        DbCommand::Export { doc } => {
            let e: Export = control.post(routes::EXPORT, &doc_req(doc)).await?;
            // Always JSON: it is what `db import` reads back.
            if json {
                println!("{}", serde_json::to_string(&e)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&e)?);
            }
        }
        DbCommand::Import { doc, file, network } => {
            let len = std::fs::metadata(&file)
                .with_context(|| format!("cannot read {}", file.display()))?
                .len();
            if len > MAX_IMPORT_BYTES {
                bail!(
                    "{} is {len} bytes, more than {MAX_IMPORT_BYTES}",
                    file.display()
                );
            }
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let parsed: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", file.display()))?;
            // A `db export` carries its network and value; anything else is the value.
            let (value, network) = match serde_json::from_value::<Export>(parsed.clone()) {
                Ok(e) => (e.value, network.or(Some(e.network))),
                Err(_) => (parsed, network),
            };
            let w: Written = control
                .post(
                    routes::IMPORT,
                    &ImportRequest {
                        doc,
                        network,
                        value,
                    },
                )
                .await?;
            written(json, &w);
        }
    }
    Ok(())
}

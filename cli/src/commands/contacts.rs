//! `p2pnode contacts add | list | rename | remove`, and contact names everywhere else:
//! [`resolve_peer`] turns a name into its peer id (one `GET /v1/contacts/<name>`),
//! [`Book`] puts names beside peer ids in listings.

use std::collections::HashMap;

use anyhow::{Context, Result};
use p2pnode_node::contacts::{AddContact, Contact, NameRequest, RenameContact, parse_name, routes};
use p2pnode_node::control::{ControlClient, ControlError};
use serde::Serialize;

use crate::args::ContactsCommand;
use crate::output;

pub(crate) async fn run(control: &ControlClient, cmd: ContactsCommand, json: bool) -> Result<()> {
    match cmd {
        ContactsCommand::Add { name, peer_id } => {
            // Checked here too, so a bad argument fails the same way with or without a daemon.
            parse_name(&name)?;
            p2pnode_node::parse_peer_id(&peer_id)?;
            let c: Contact = control
                .post(routes::ADD, &AddContact { name, peer_id })
                .await?;
            output::show(json, &c, |c| {
                println!("added {} ({})", c.name, c.peer_id);
                if !c.verified {
                    println!(
                        "not verified yet: compare codes with `p2pnode verify {}`",
                        c.name
                    );
                }
            });
        }
        ContactsCommand::List => {
            let list: Vec<Contact> = control.get(routes::LIST).await?;
            output::show(json, &list, |list| {
                if list.is_empty() {
                    println!("no contacts (add one with `p2pnode contacts add <name> <peer-id>`)");
                }
                let width = list.iter().map(|c| c.name.len()).max().unwrap_or(0);
                for c in list {
                    println!("{:width$}  {}  {}", c.name, c.peer_id, verified(c.verified));
                }
            });
        }
        ContactsCommand::Rename { old, new } => {
            parse_name(&old)?;
            parse_name(&new)?;
            let c: Contact = control
                .post(
                    routes::RENAME,
                    &RenameContact {
                        name: old.clone(),
                        new_name: new,
                    },
                )
                .await?;
            output::show(json, &c, |c| {
                println!(
                    "renamed {} to {} ({})",
                    old.to_ascii_lowercase(),
                    c.name,
                    c.peer_id
                )
            });
        }
        ContactsCommand::Remove { name } => {
            parse_name(&name)?;
            let c: Contact = control.post(routes::REMOVE, &NameRequest { name }).await?;
            output::show(json, &c, |c| println!("removed {} ({})", c.name, c.peer_id));
        }
    }
    Ok(())
}

fn verified(v: bool) -> &'static str {
    if v { "verified" } else { "unverified" }
}

/// The peer id `arg` stands for: `arg` itself when it is a peer id, else the peer id of
/// the contact so named (asked of the daemon). Neither gives one clear error.
pub(crate) async fn resolve_peer(control: &ControlClient, arg: &str) -> Result<String> {
    let peer_error = match p2pnode_node::parse_peer_id(arg) {
        Ok(peer) => return Ok(peer.to_string()),
        Err(e) => e,
    };
    // Names never look like peer ids, so what is no name was a peer id mistyped.
    let Ok(name) = parse_name(arg) else {
        return Err(peer_error.into());
    };
    match control.get::<Contact>(&routes::get(&name)).await {
        Ok(c) => Ok(c.peer_id),
        Err(e @ ControlError::NoDaemon { .. }) => Err(e).with_context(|| {
            format!("{arg:?} is not a peer id, and contact names are looked up by the daemon")
        }),
        Err(e) => Err(e.into()),
    }
}

/// What `p2pnode connect` takes: a multiaddr as it is, else a peer id or a contact name.
pub(crate) async fn resolve_target(control: &ControlClient, arg: &str) -> Result<String> {
    if arg.trim().starts_with('/') {
        p2pnode_node::parse_target(arg)?;
        return Ok(arg.trim().to_string());
    }
    resolve_peer(control, arg).await
}

/// The contacts by peer id, to show names beside peer ids. Empty when the daemon cannot
/// say (a listing is still worth printing without names).
#[derive(Debug, Default, Clone)]
pub(crate) struct Book(HashMap<String, Contact>);

impl Book {
    pub(crate) async fn load(control: &ControlClient) -> Book {
        match control.get::<Vec<Contact>>(routes::LIST).await {
            Ok(list) => Book(list.into_iter().map(|c| (c.peer_id.clone(), c)).collect()),
            Err(e) => {
                tracing::debug!("no contact names: {e}");
                Book::default()
            }
        }
    }

    /// A book of these contacts (tests).
    #[cfg(test)]
    pub(crate) fn of(list: Vec<Contact>) -> Book {
        Book(list.into_iter().map(|c| (c.peer_id.clone(), c)).collect())
    }

    /// The contact whose peer id is `peer_id`.
    pub(crate) fn get(&self, peer_id: &str) -> Option<&Contact> {
        self.0.get(peer_id)
    }

    /// The contact's name for `peer_id`.
    pub(crate) fn name(&self, peer_id: &str) -> Option<&str> {
        self.get(peer_id).map(|c| c.name.as_str())
    }

    /// `peer_id (name)`, or the peer id alone.
    pub(crate) fn label(&self, peer_id: &str) -> String {
        match self.name(peer_id) {
            Some(name) => format!("{peer_id} ({name})"),
            None => peer_id.to_string(),
        }
    }

    /// The name, else the end of the peer id: who said what, in a conversation.
    pub(crate) fn short<'a>(&'a self, peer_id: &'a str) -> &'a str {
        self.name(peer_id)
            .unwrap_or_else(|| &peer_id[peer_id.len().saturating_sub(8)..])
    }

    /// `value` with a `"contact": name` field beside its own, for `--json` listings.
    pub(crate) fn named<'a, T: Serialize>(&'a self, peer_id: &str, value: &'a T) -> Named<'a, T> {
        Named {
            value,
            contact: self.name(peer_id).map(str::to_string),
        }
    }
}

/// A reported value with its contact name, for JSON output.
#[derive(Debug, Serialize)]
pub(crate) struct Named<'a, T> {
    #[serde(flatten)]
    value: &'a T,
    #[serde(skip_serializing_if = "Option::is_none")]
    contact: Option<String>,
}

//! `p2pnode net ...`: networks and their members, through the daemon's `/v1/net` routes.

use anyhow::Result;
use p2pnode_node::control::ControlClient;
use p2pnode_node::networks::routes::{
    self, InviteRequest, JoinRequestBody, MemberRequest, NetworkRequest,
};
use p2pnode_node::networks::{InviteInfo, MemberInfo, NetInfo, check_name};

use crate::args::NetCommand;
use crate::commands::{Book, resolve_peer};
use crate::output;

/// Milliseconds since the Unix epoch as UTC text, to the second.
fn when(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The calendar date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn network_req(name: String) -> Result<NetworkRequest> {
    check_name(&name)?;
    Ok(NetworkRequest { network: name })
}

pub(crate) async fn run(control: &ControlClient, cmd: NetCommand, json: bool) -> Result<()> {
    match cmd {
        NetCommand::Create { name } => {
            let n: NetInfo = control.post(routes::CREATE, &network_req(name)?).await?;
            output::show(json, &n, |n| {
                println!("created network {} (you are its admin)", n.name);
                println!("invite members with `p2pnode net invite {}`", n.name);
            });
        }
        NetCommand::Invite {
            name,
            expires,
            uses,
            admin,
        } => {
            check_name(&name)?;
            let body = InviteRequest {
                network: name,
                expires_secs: expires.as_secs(),
                uses,
                admin,
            };
            let i: InviteInfo = control.post(routes::INVITE, &body).await?;
            output::show(json, &i, |i| {
                println!("{}", i.ticket);
                eprintln!(
                    "invite to {} as {}: {} use(s), valid until {}; join with `p2pnode net join <ticket>`",
                    i.network,
                    i.role,
                    i.uses,
                    when(i.expires_at_ms)
                );
            });
        }
        NetCommand::Join { ticket, name } => {
            let body = JoinRequestBody { ticket, name };
            let n: NetInfo = control.post(routes::JOIN, &body).await?;
            output::show(json, &n, |n| {
                println!(
                    "joined network {} as {} ({} members)",
                    n.name, n.role, n.members
                )
            });
        }
        NetCommand::Members { name } => {
            let list: Vec<MemberInfo> = control.post(routes::MEMBERS, &network_req(name)?).await?;
            let book = Book::load(control).await;
            output::show(json, &list, |list| {
                for m in list {
                    let name = m.name.as_deref().or(book.name(&m.peer_id)).unwrap_or("-");
                    let added = match (&m.added_by, m.added_at_ms) {
                        (Some(by), Some(at)) => {
                            format!("added {} by {}", when(at), book.short(by))
                        }
                        _ => "creator".to_string(),
                    };
                    let revoked = match &m.revoked_by {
                        Some(by) => format!("  REVOKED by {}", book.short(by)),
                        None => String::new(),
                    };
                    println!("{}  {name}  {}  {added}{revoked}", m.peer_id, m.role);
                }
            });
        }
        NetCommand::Revoke { name, peer } => {
            check_name(&name)?;
            let peer_id = resolve_peer(control, &peer).await?;
            let m: MemberInfo = control
                .post(
                    routes::REVOKE,
                    &MemberRequest {
                        network: name.clone(),
                        peer_id,
                    },
                )
                .await?;
            output::show(json, &m, |m| println!("revoked {} from {name}", m.peer_id));
        }
        NetCommand::Promote { name, peer } => {
            check_name(&name)?;
            let peer_id = resolve_peer(control, &peer).await?;
            let m: MemberInfo = control
                .post(
                    routes::PROMOTE,
                    &MemberRequest {
                        network: name.clone(),
                        peer_id,
                    },
                )
                .await?;
            output::show(json, &m, |m| {
                println!("{} is now an admin of {name}", m.peer_id)
            });
        }
        NetCommand::Leave { name } => {
            let n: NetInfo = control.post(routes::LEAVE, &network_req(name)?).await?;
            output::show(json, &n, |n| println!("left network {}", n.name));
        }
        NetCommand::List => {
            let list: Vec<NetInfo> = control.get(routes::LIST).await?;
            output::show(json, &list, |list| {
                if list.is_empty() {
                    println!("in no network (create one with `p2pnode net create <name>`)");
                }
                for n in list {
                    println!("{}  {}  {} members  {}", n.name, n.role, n.members, n.id);
                }
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(when(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(when(1_796_380_496_000), "2026-12-04 10:34:56 UTC");
    }
}

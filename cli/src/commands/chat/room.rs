//! `p2pnode room create | join | members | leave`.

use anyhow::{Result, bail};
use p2pnode_chat::api::{RoomCreateRequest, RoomInfo, RoomJoinRequest, routes};
use p2pnode_node::control::ControlClient;

use crate::args::RoomCommand;
use crate::output;

pub(crate) async fn run(control: &ControlClient, cmd: RoomCommand, json: bool) -> Result<()> {
    let info: RoomInfo = match cmd {
        RoomCommand::Create { name, ttl } => {
            let ttl_secs = ttl.as_deref().map(parse_duration).transpose()?;
            let info: RoomInfo = control
                .post(routes::ROOM_CREATE, &RoomCreateRequest { name, ttl_secs })
                .await?;
            output::show(json, &info, |i| println!("{}", i.code));
            return Ok(());
        }
        RoomCommand::Join { code } => {
            control
                .post(routes::ROOM_JOIN, &RoomJoinRequest { code })
                .await?
        }
        RoomCommand::Members { code } => {
            control
                .post(routes::ROOM_MEMBERS, &RoomJoinRequest { code })
                .await?
        }
        RoomCommand::Leave { code } => {
            let _: serde_json::Value = control
                .post(routes::ROOM_LEAVE, &RoomJoinRequest { code })
                .await?;
            return Ok(());
        }
    };
    let book = crate::commands::Book::load(control).await;
    output::show(json, &info, |i| {
        println!("room {} ({})", i.name, i.room_id);
        for m in &i.members {
            println!("  {}", book.label(m));
        }
    });
    Ok(())
}

/// `90s`, `30m`, `1h`, `2d`, or plain seconds.
fn parse_duration(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let Ok(n) = num.parse::<u64>() else {
        bail!("invalid duration {s:?} (use e.g. 90s, 30m, 1h, 2d)");
    };
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("invalid duration unit in {s:?} (use s, m, h or d)"),
    };
    match n.checked_mul(mult) {
        Some(0) | None => bail!("invalid duration {s:?}: must be positive"),
        Some(v) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h").ok(), Some(3600));
        assert_eq!(parse_duration("90s").ok(), Some(90));
        assert_eq!(parse_duration("45").ok(), Some(45));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("0m").is_err());
        assert!(parse_duration("h").is_err());
    }
}

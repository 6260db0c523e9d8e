//! Networks' clap types: `p2pnode net ...`.

use std::time::Duration;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum NetCommand {
    /// Create a network; you are its first admin. Documents (`db create --network`) and
    /// other members-only protocols are shared with its members only.
    Create {
        /// Its name (1 to 64 of A-Z a-z 0-9 . _ -), unique on this node.
        name: String,
    },
    /// Print an invite ticket for a network (admins only). Give it to the joiner by a
    /// channel you trust: whoever holds it can join until it expires or is used up.
    ///
    /// The ticket carries this node's peer id and addresses, so the joiner can reach it.
    Invite {
        /// The network.
        name: String,
        /// How long the ticket stays valid: 30s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_expiry)]
        expires: Duration,
        /// How many peers may join with it.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        uses: u32,
        /// Make the joiners admins (they may invite, revoke and promote).
        #[arg(long)]
        admin: bool,
    },
    /// Join a network with a ticket from `net invite`: reaches the member that issued it
    /// (by its addresses, else through the DHT) and receives the membership record.
    Join {
        /// The ticket.
        ticket: String,
        /// The name to be known by in the network.
        #[arg(long)]
        name: Option<String>,
    },
    /// List a network's members: peer id, name, role, added when and by whom, revoked.
    Members {
        /// The network.
        name: String,
    },
    /// Revoke a member for good (admins only): every member it is connected to closes its
    /// streams of the network's protocols at once and refuses new ones. To come back it
    /// needs a new identity.
    Revoke {
        /// The network.
        name: String,
        /// The member's peer id, or a contact's name.
        #[arg(value_name = "PEER")]
        peer: String,
    },
    /// Make a member an admin (admins only).
    Promote {
        /// The network.
        name: String,
        /// The member's peer id, or a contact's name.
        #[arg(value_name = "PEER")]
        peer: String,
    },
    /// Leave a network: revokes yourself (the connected members learn it at once) and
    /// forgets the network. Its creator cannot leave.
    Leave {
        /// The network.
        name: String,
    },
    /// List the networks this node is in, with your role in each.
    List,
}

/// Reads `30s`, `15m`, `1h`, `7d` (a number alone is seconds).
fn parse_expiry(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as 30s, 15m, 1h or 7d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit `{unit}`: use s, m, h or d")),
    };
    let total = n.saturating_mul(secs);
    if total == 0 {
        return Err("an invite must stay valid for at least a second".into());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_read_as_durations() {
        assert_eq!(parse_expiry("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_expiry("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_expiry("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_expiry("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_expiry("0s").is_err());
        assert!(parse_expiry("1w").is_err());
        assert!(parse_expiry("soon").is_err());
    }
}

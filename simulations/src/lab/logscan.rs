//! Reading timings out of daemon logs.
//!
//! The control API has no timestamps, and polling `peers` through a process spawn every
//! few milliseconds both blurs and disturbs a hole punch that takes a few round trips.
//! The daemon logs every new connection (`connected peer=<id> address=<addr>`) with a
//! microsecond timestamp, so the precise relayed-to-direct time comes from there. Only
//! timings are read this way; every verdict (direct or not, traffic flows or not) comes
//! from the JSON API.

/// A connection to some peer, as the daemon logged it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedConnection {
    /// Seconds since the Unix epoch.
    pub at: f64,
    /// The remote address logged.
    pub address: String,
    /// Whether it went through a relay.
    pub relayed: bool,
}

/// Connections to `peer` in `log`, in log order.
pub fn connections_to(log: &str, peer: &str) -> Vec<LoggedConnection> {
    let peer_field = format!("peer={peer}");
    log.lines()
        .map(strip_ansi)
        .filter(|line| line.contains(" connected ") && line.contains(&peer_field))
        .filter_map(|line| {
            let at = parse_timestamp(line.split_whitespace().next()?)?;
            let address = field(&line, "address")?.to_string();
            // An inbound relayed connection is logged with the bare `/p2p/<id>` the relay
            // transport reports as its remote address.
            let relayed = address.contains("/p2p-circuit") || address.starts_with("/p2p/");
            Some(LoggedConnection {
                at,
                address,
                relayed,
            })
        })
        .collect()
}

/// Time of the first line containing all of `needles`, seconds since the epoch.
pub fn first_line_with(log: &str, needles: &[&str]) -> Option<f64> {
    log.lines()
        .map(strip_ansi)
        .find(|line| needles.iter().all(|n| line.contains(n)))
        .and_then(|line| parse_timestamp(line.split_whitespace().next()?))
}

/// The relayed-to-direct time in `log` for `peer`: from the first relayed connection to
/// the first direct one, in ms; 0 when the direct connection came first (a relay's
/// introduction can make it so: the direct dial then leaves before the circuit's
/// handshake is done).
pub fn relayed_to_direct_ms(log: &str, peer: &str) -> Option<f64> {
    let connections = connections_to(log, peer);
    let relayed = connections.iter().find(|c| c.relayed)?;
    let direct = connections.iter().find(|c| !c.relayed)?;
    Some(((direct.at - relayed.at) * 1000.0).max(0.0))
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key.as_str()))
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI sequence: ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses an RFC 3339 UTC timestamp as tracing prints it (`2026-11-23T05:25:04.681773Z`)
/// into seconds since the Unix epoch.
pub fn parse_timestamp(text: &str) -> Option<f64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let hour: i64 = t.next()?.parse().ok()?;
    let minute: i64 = t.next()?.parse().ok()?;
    let second: f64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((days * 86_400 + hour * 3600 + minute * 60) as f64 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-11-23T05:25:04.187156Z  INFO node{peer=ZKPpJNSh}: p2pnode_node::event_loop: connected peer=RELAY address=/ip4/198.51.100.2/tcp/4001/p2p/RELAY path=Direct
2026-11-23T05:25:04.682666Z  INFO node{peer=ZKPpJNSh}: p2pnode_node::event_loop: connected peer=BBB address=/p2p/BBB path=Direct
2026-11-23T05:25:04.689745Z DEBUG node{peer=ZKPpJNSh}: libp2p_dcutr::behaviour: Attempting to hole-punch as listener target=BBB
2026-11-23T05:25:04.701583Z  INFO node{peer=ZKPpJNSh}: p2pnode_node::event_loop: connected peer=BBB address=/ip4/198.51.100.12/tcp/4001/p2p/BBB path=Direct
";

    #[test]
    fn timestamps_are_seconds_since_the_epoch() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(
            parse_timestamp("2000-03-01T00:00:01.5Z"),
            Some(951_868_801.5)
        );
        assert_eq!(parse_timestamp("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_timestamp("INFO"), None);
    }

    #[test]
    fn finds_relayed_then_direct_connections() {
        let conns = connections_to(LOG, "BBB");
        assert_eq!(conns.len(), 2);
        assert!(
            conns[0].relayed,
            "inbound relayed connection logged as /p2p/<id>"
        );
        assert!(!conns[1].relayed);
        let ms = relayed_to_direct_ms(LOG, "BBB").expect("both present");
        assert!((ms - 18.917).abs() < 0.01, "{ms}");
        assert_eq!(relayed_to_direct_ms(LOG, "RELAY"), None);
    }

    #[test]
    fn a_direct_connection_before_the_relayed_one_counts_as_zero() {
        let log = "\
2026-11-23T05:25:04.600000Z  INFO x: connected peer=BBB address=/ip4/198.51.100.12/tcp/4001/p2p/BBB path=Direct
2026-11-23T05:25:04.682666Z  INFO x: connected peer=BBB address=/p2p/BBB path=Relayed
";
        assert_eq!(relayed_to_direct_ms(log, "BBB"), Some(0.0));
    }

    #[test]
    fn ansi_colours_are_ignored() {
        let coloured = "\u{1b}[2m2026-11-23T05:25:04.682666Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x: connected peer=BBB address=/p2p/BBB path=Direct";
        assert_eq!(connections_to(coloured, "BBB").len(), 1);
        assert!(first_line_with(coloured, &["connected", "BBB"]).is_some());
    }
}

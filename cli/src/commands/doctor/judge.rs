//! The verdicts of `doctor`: a pure function of the facts gathered, so every verdict is
//! tested without a network.

use std::path::Path;

use p2pnode_node::api::{Diagnostics, PunchRecord, Status};
use p2pnode_node::diagnostics::DirProblem;

use super::nat::{NatBehaviour, nat_behaviour};
use super::{Check, DaemonFacts, Facts, Level, Report, SocketFacts};

/// A peer's clock this far off ours is worth a warning (invites expire, history is
/// ordered by time) ...
const CLOCK_WARN_MS: f64 = 2_000.0;
/// ... and this far a failure.
const CLOCK_FAIL_MS: f64 = 60_000.0;

/// Judges the facts. Pure: everything it needs is passed in.
pub(crate) fn judge(
    data_dir: &Path,
    uid: u32,
    dir_problems: &[DirProblem],
    socket: &SocketFacts,
    daemon: Option<&DaemonFacts>,
) -> Report {
    let mut checks = vec![data_dir_check(data_dir, dir_problems)];
    checks.push(daemon_check(data_dir, uid, socket, daemon));
    let nat_behaviour = daemon.map_or(NatBehaviour::Unknown, |d| {
        nat_behaviour(&d.status.listen_addrs, &d.diagnostics.observed)
    });
    let mut facts = Facts {
        daemon_running: daemon.is_some(),
        nat_status: None,
        nat_behaviour,
        reservations: Vec::new(),
        relay_server: false,
        relay_only: false,
        connected_peers: 0,
        punch_successes: 0,
        punch_failures: 0,
        clock_offset_ms: None,
    };
    match daemon {
        None => {
            for name in [
                "database",
                "peers",
                "reachability",
                "nat",
                "relays",
                "hole_punching",
                "clock",
            ] {
                checks.push(Check {
                    name,
                    level: Level::Skipped,
                    summary: "needs the running daemon".into(),
                    advice: None,
                });
            }
        }
        Some(d) => {
            let (s, diag) = (&d.status, &d.diagnostics);
            facts.nat_status = Some(s.nat_status.clone());
            facts.reservations = s.reservations.clone();
            facts.relay_server = s.relay_server;
            facts.relay_only = diag.relay_only;
            facts.connected_peers = s.connected_peers;
            facts.punch_successes = count(&diag.punches, "success");
            facts.punch_failures = diag.punches.len() - facts.punch_successes;
            facts.clock_offset_ms = median(diag.clock.iter().map(|c| c.offset_ms).collect());
            checks.push(database_check(diag));
            checks.push(peers_check(s));
            checks.push(reachability_check(s, diag));
            checks.push(nat_check(nat_behaviour, diag));
            checks.push(relays_check(s, diag));
            checks.push(punch_check(s, diag, nat_behaviour));
            checks.push(clock_check(diag, facts.clock_offset_ms));
        }
    }
    Report {
        ok: checks.iter().all(|c| c.level != Level::Fail),
        checks,
        facts,
    }
}

fn check(name: &'static str, level: Level, summary: impl Into<String>) -> Check {
    Check {
        name,
        level,
        summary: summary.into(),
        advice: None,
    }
}

fn advise(mut c: Check, advice: impl Into<String>) -> Check {
    c.advice = Some(advice.into());
    c
}

fn data_dir_check(data_dir: &Path, problems: &[DirProblem]) -> Check {
    match problems {
        [] => check(
            "data_dir",
            Level::Ok,
            format!("{} is ours and private", data_dir.display()),
        ),
        _ => {
            let what: Vec<String> = problems
                .iter()
                .map(|p| format!("{} {}", p.path, p.problem))
                .collect();
            let fixes: Vec<&str> = problems.iter().map(|p| p.fix.as_str()).collect();
            advise(
                check("data_dir", Level::Fail, what.join("; ")),
                fixes.join("; "),
            )
        }
    }
}

fn daemon_check(
    data_dir: &Path,
    uid: u32,
    socket: &SocketFacts,
    daemon: Option<&DaemonFacts>,
) -> Check {
    if !socket.exists {
        return advise(
            check(
                "daemon",
                Level::Fail,
                "no daemon runs for this data directory",
            ),
            "start one with `p2pnode start` (or `systemctl --user start p2pnode`)",
        );
    }
    let Some((server_uid, server_pid)) = socket.server else {
        let why = socket.error.as_deref().unwrap_or("nobody answers");
        return advise(
            check(
                "daemon",
                Level::Fail,
                format!("the control socket is there but {why}: a daemon that died?"),
            ),
            "start the daemon again with `p2pnode start`; it replaces the stale socket",
        );
    };
    if server_uid != uid && server_uid != 0 {
        return advise(
            check(
                "daemon",
                Level::Fail,
                format!("the control socket is answered by uid {server_uid}, not by us ({uid})"),
            ),
            "stop that process: it is not this user's p2pnode daemon",
        );
    }
    if socket.owner.is_some_and(|o| o != uid) || socket.mode.is_some_and(|m| m & 0o077 != 0) {
        return advise(
            check(
                "daemon",
                Level::Fail,
                "the control socket may be used by other users",
            ),
            "restart the daemon: it creates the socket with mode 600",
        );
    }
    let Some(d) = daemon else {
        return advise(
            check(
                "daemon",
                Level::Fail,
                "something answers on the control socket but not as a p2pnode daemon",
            ),
            "stop it, then `p2pnode start`",
        );
    };
    let ours = canonical(data_dir);
    let theirs = canonical(Path::new(&d.diagnostics.data_dir));
    if ours != theirs {
        return advise(
            check(
                "daemon",
                Level::Fail,
                format!(
                    "the daemon on this socket keeps its data in {}, not here",
                    d.diagnostics.data_dir
                ),
            ),
            "start this data directory's own daemon",
        );
    }
    if server_pid.is_some_and(|p| u32::try_from(p).ok() != Some(d.diagnostics.pid)) {
        return advise(
            check(
                "daemon",
                Level::Fail,
                format!(
                    "the process on the socket (pid {}) is not the daemon that answered (pid {})",
                    server_pid.unwrap_or_default(),
                    d.diagnostics.pid
                ),
            ),
            "stop the process holding the socket, then `p2pnode start`",
        );
    }
    check(
        "daemon",
        Level::Ok,
        format!(
            "the daemon (pid {}) answers on the control socket, which is ours alone",
            d.diagnostics.pid
        ),
    )
}

fn canonical(p: &Path) -> std::path::PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn database_check(diag: &Diagnostics) -> Check {
    let db = &diag.database;
    if db.ok {
        check(
            "database",
            Level::Ok,
            format!(
                "{} tables, {} entries, {} KiB, all readable",
                db.tables,
                db.entries,
                db.bytes / 1024
            ),
        )
    } else {
        advise(
            check(
                "database",
                Level::Fail,
                format!(
                    "reading it failed: {}",
                    db.error.as_deref().unwrap_or("unknown error")
                ),
            ),
            "stop the daemon and keep a copy of node.redb; redb repairs it when it next opens",
        )
    }
}

fn peers_check(s: &Status) -> Check {
    if s.connected_peers > 0 {
        check(
            "peers",
            Level::Ok,
            format!(
                "connected to {} peer(s); {} in the DHT routing table",
                s.connected_peers, s.dht_peers
            ),
        )
    } else {
        advise(
            check("peers", Level::Fail, "connected to no peer"),
            "give a bootstrap node: `p2pnode start --bootstrap /ip4/<ip>/tcp/4701/p2p/<id>`",
        )
    }
}

fn reachability_check(s: &Status, diag: &Diagnostics) -> Check {
    if diag.relay_only {
        return check(
            "reachability",
            Level::Info,
            "relay-only mode: no direct connections, peers see only the relay's address",
        );
    }
    match s.nat_status.as_str() {
        "public" => check(
            "reachability",
            Level::Ok,
            format!("reachable from outside at {}", s.external_addrs.join(", ")),
        ),
        "private" => check(
            "reachability",
            Level::Info,
            "behind NAT: peers reach this node through a relay until hole punching connects them",
        ),
        "off" => check("reachability", Level::Info, "AutoNAT is off"),
        _ => advise(
            check(
                "reachability",
                Level::Warn,
                "not known yet: AutoNAT has not had enough peers dial back",
            ),
            "wait a minute with peers connected, or check that a bootstrap relay is reachable",
        ),
    }
}

fn nat_check(behaviour: NatBehaviour, diag: &Diagnostics) -> Check {
    // Every connection goes through the relay, dialled from whatever port: what the relay
    // sees says nothing that matters.
    if diag.relay_only {
        return check(
            "nat",
            Level::Info,
            "does not matter in relay-only mode: every connection goes through the relay",
        );
    }
    let seen = diag.observed.len();
    let (level, summary) = match behaviour {
        NatBehaviour::Unknown => (
            Level::Info,
            "no peer has reported how it sees us over a direct connection yet".to_string(),
        ),
        NatBehaviour::NoNat => (
            Level::Ok,
            "no NAT: peers see this machine's own address".into(),
        ),
        NatBehaviour::PortPreserving => (
            Level::Ok,
            format!("the NAT keeps our port ({seen} peer(s) agree): hole punching works well"),
        ),
        NatBehaviour::PortTranslating => (
            Level::Ok,
            format!("the NAT changes our port but shows every peer the same one ({seen} peers)"),
        ),
        NatBehaviour::PortChanging => (
            Level::Warn,
            "the NAT changes our port; with one observer we cannot tell whether each peer sees another (symmetric NAT)".into(),
        ),
        NatBehaviour::Symmetric => (
            Level::Warn,
            format!("symmetric NAT: {seen} peers see different ports, so hole punching rarely works and connections stay relayed"),
        ),
    };
    let c = check("nat", level, summary);
    match behaviour {
        NatBehaviour::Symmetric | NatBehaviour::PortChanging => advise(
            c,
            "if you control the router, turn on endpoint-independent mapping or forward a port and pass --external-address",
        ),
        _ => c,
    }
}

fn relays_check(s: &Status, diag: &Diagnostics) -> Check {
    if s.relay_server {
        return check(
            "relays",
            Level::Info,
            "this node is a relay: it serves reservations and holds none",
        );
    }
    if !s.reservations.is_empty() {
        return check(
            "relays",
            Level::Ok,
            format!("reservation held: {}", s.reservations.join(", ")),
        );
    }
    let needs_one = diag.relay_only || s.nat_status == "private";
    if needs_one {
        advise(
            check(
                "relays",
                Level::Fail,
                "no relay reservation: peers cannot reach this node",
            ),
            "start with --bootstrap <relay multiaddr>; README: Running a relay",
        )
    } else if s.nat_status == "public" {
        check(
            "relays",
            Level::Ok,
            "no reservation, none needed: reachable directly",
        )
    } else {
        advise(
            check("relays", Level::Warn, "no relay reservation yet"),
            "a node behind NAT needs one: check the --bootstrap relay",
        )
    }
}

fn count(punches: &[PunchRecord], outcome: &str) -> usize {
    punches.iter().filter(|p| p.outcome == outcome).count()
}

fn punch_check(s: &Status, diag: &Diagnostics, nat: NatBehaviour) -> Check {
    if diag.hole_punch == "off" {
        let why = if diag.relay_only {
            "relay-only mode"
        } else {
            "--hole-punch off"
        };
        return check("hole_punching", Level::Info, format!("off ({why})"));
    }
    let ok = count(&diag.punches, "success");
    let failed = diag.punches.len() - ok;
    let methods = |outcome: &str| {
        let mut m: Vec<&str> = diag
            .punches
            .iter()
            .filter(|p| p.outcome == outcome)
            .map(|p| p.method.as_str())
            .collect();
        m.sort_unstable();
        m.dedup();
        m.join(", ")
    };
    match (ok, failed) {
        (0, 0) if s.relay_server => check(
            "hole_punching",
            Level::Info,
            "a relay introduces others; it punches no holes itself",
        ),
        (0, 0) => check("hole_punching", Level::Info, "no hole punch yet"),
        (0, f) => {
            let c = check(
                "hole_punching",
                Level::Warn,
                format!(
                    "{f} recent hole punch(es) failed ({}), none succeeded",
                    methods("failure")
                ),
            );
            if matches!(nat, NatBehaviour::Symmetric | NatBehaviour::PortChanging) {
                advise(
                    c,
                    "expected behind a symmetric NAT: connections stay relayed",
                )
            } else {
                c
            }
        }
        (o, f) => check(
            "hole_punching",
            Level::Ok,
            format!(
                "{o} recent hole punch(es) succeeded ({}), {f} failed",
                methods("success")
            ),
        ),
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn clock_check(diag: &Diagnostics, offset: Option<f64>) -> Check {
    let Some(offset) = offset else {
        return check(
            "clock",
            Level::Info,
            "no connected peer to compare clocks with",
        );
    };
    let n = diag.clock.len();
    let summary = format!(
        "peers' clocks differ from ours by {:+.0} ms (median of {n})",
        offset
    );
    if offset.abs() >= CLOCK_FAIL_MS {
        advise(
            check("clock", Level::Fail, summary),
            "set the clock: enable NTP (`timedatectl set-ntp true`)",
        )
    } else if offset.abs() >= CLOCK_WARN_MS {
        advise(
            check("clock", Level::Warn, summary),
            "invites expire and history is ordered by time: enable NTP",
        )
    } else {
        check("clock", Level::Ok, summary)
    }
}

#[cfg(test)]
mod tests;

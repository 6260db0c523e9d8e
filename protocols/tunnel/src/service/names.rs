//! Members' names: the default name `vpn up` records (the host name), the table of names
//! to leases the DNS responder reads, and the responder itself: one UDP socket per
//! network that is up, on our tunnel IPv4 address, port 53, answering with [`crate::dns`].
//! Where systemd-resolved runs, the interface is pointed at it for `~p2p`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use p2pnode_node::networks::Roster;
use tokio::net::UdpSocket;

use crate::dns::{self, MAX_MESSAGE};
use crate::{AddressTable, Lease, MemberId};

/// Names (DNS labels) to leases, as the responder answers them.
pub(super) type Names = Arc<Mutex<BTreeMap<String, Lease>>>;

/// The name `vpn up` records for us when we have none: the host name as a DNS label; if
/// another current member holds that, the label and the last four characters of our
/// peer id. `None` when the host name gives no label.
pub(super) fn default_name(roster: &Roster, me: &PeerId) -> Option<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let label = dns::label_of(host.trim())?;
    let taken = roster.members.iter().any(|m| {
        m.peer != *me
            && !m.revoked()
            && m.name.as_deref().and_then(dns::label_of) == Some(label.clone())
    });
    if !taken {
        return Some(label);
    }
    let id = me.to_string().to_ascii_lowercase();
    let tail = &id[id.len().saturating_sub(4)..];
    let short: String = label.chars().take(dns::MAX_LABEL - 5).collect();
    Some(format!("{short}-{tail}"))
}

/// Whether we should take another name: ours is the default (the host name's label) and
/// a current member with a smaller peer id holds it too (two members that came up at
/// once both took the host name; the one [`table_of`] passes over moves).
pub(super) fn must_rename(roster: &Roster, me: &PeerId) -> bool {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let Some(default) = host.as_deref().and_then(|h| dns::label_of(h.trim())) else {
        return false;
    };
    if own_name(roster, me).as_deref() != Some(default.as_str()) {
        return false;
    }
    let mine = me.to_bytes();
    roster.members.iter().any(|m| {
        m.peer != *me
            && !m.revoked()
            && m.peer.to_bytes() < mine
            && m.name.as_deref().and_then(dns::label_of).as_deref() == Some(default.as_str())
    })
}

/// Our name in `roster`, if we have one.
pub(super) fn own_name(roster: &Roster, me: &PeerId) -> Option<String> {
    roster
        .members
        .iter()
        .find(|m| m.peer == *me)
        .and_then(|m| m.name.clone())
}

/// The names of `roster`'s current members (us too) with their leases in `table`. Two
/// members of one name: the smaller peer id keeps it, as every member decides alike.
pub(super) fn table_of(roster: &Roster, table: &AddressTable) -> BTreeMap<String, Lease> {
    let mut members: Vec<_> = roster.members.iter().filter(|m| !m.revoked()).collect();
    members.sort_by_key(|m| m.peer.to_bytes());
    let mut names = BTreeMap::new();
    for m in members {
        let Some(label) = m.name.as_deref().and_then(dns::label_of) else {
            continue;
        };
        if let Some(lease) = table.lease(&MemberId(m.peer.to_bytes())) {
            names.entry(label).or_insert(lease);
        }
    }
    names
}

/// Binds the responder's socket on `addr`, port 53.
pub(super) async fn bind(addr: Ipv4Addr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(SocketAddr::from((addr, 53))).await
}

/// Answers queries on `socket` from `names` until the task is aborted. One query at a
/// time, one buffer each way; a datagram over [`MAX_MESSAGE`] bytes is ignored.
pub(super) async fn serve(socket: UdpSocket, names: Names) {
    let mut query = [0u8; MAX_MESSAGE + 1];
    let mut reply = [0u8; MAX_MESSAGE];
    loop {
        let (n, from) = match socket.recv_from(&mut query).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("tunnel dns: {e}");
                continue;
            }
        };
        let len = {
            let Ok(table) = names.lock() else {
                return;
            };
            dns::answer(&query[..n], |name| table.get(name).copied(), &mut reply)
        };
        if let Some(len) = len
            && let Err(e) = socket.send_to(&reply[..len], from).await
        {
            tracing::debug!(%from, "tunnel dns: cannot answer: {e}");
        }
    }
}

/// The commands that point a resolver at the responder for `~p2p`.
pub(super) fn resolver_line(interface: &str, addr: Ipv4Addr) -> String {
    format!(
        "resolvectl dns {interface} {addr}; resolvectl domain {interface} ~{}",
        dns::DOMAIN
    )
}

/// Runs [`resolver_line`]'s commands where systemd-resolved runs and `resolvectl` exists,
/// and only from the host's own network namespace (resolved applies them by interface
/// index, which names another interface in another namespace). `Ok(false)` when it was
/// not the place to; the error of a command that failed.
pub(super) fn configure_resolver(interface: &str, addr: Ipv4Addr) -> Result<bool, String> {
    let resolved = std::path::Path::new("/run/systemd/resolve/io.systemd.Resolve").exists();
    let host_netns = match (
        std::fs::read_link("/proc/self/ns/net"),
        std::fs::read_link("/proc/1/ns/net"),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !resolved || !host_netns {
        return Ok(false);
    }
    let domain = format!("~{}", dns::DOMAIN);
    let addr = addr.to_string();
    for args in [["dns", interface, &addr], ["domain", interface, &domain]] {
        match std::process::Command::new("resolvectl").args(args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
            }
            // No resolvectl: not the place to.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(true)
}

//! One network that is up: its device, data path and streams, and how the node's
//! membership record becomes the engine's input.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use libp2p::PeerId;
use p2pnode_node::networks::Roster;
use p2pnode_node::open_schedule::OpenSchedule;
use tokio::task::JoinHandle;

use crate::api::{MemberStatus, NetStatus};
use crate::device::TunDevice;
use crate::{Claim, Lease, MemberId};

use super::link::Outgoing;
use super::names::{self, Names};
use super::path::SharedPath;

/// The engine's input from a roster: every current member's claim, the revoked ones, and
/// the names of the members other than us.
pub(super) struct View {
    pub(super) claims: Vec<Claim>,
    pub(super) revoked: BTreeSet<MemberId>,
    pub(super) names: BTreeMap<PeerId, Option<String>>,
}

impl View {
    pub(super) fn of(roster: &Roster, me: &PeerId) -> Self {
        let mut claims = Vec::new();
        let mut revoked = BTreeSet::new();
        let mut names = BTreeMap::new();
        for m in &roster.members {
            let id = MemberId(m.peer.to_bytes());
            if m.revoked() {
                revoked.insert(id);
                continue;
            }
            claims.push(Claim {
                member: id,
                lease: m
                    .lease
                    .as_ref()
                    .and_then(|l| Lease::from_bytes(l.as_bytes())),
            });
            if m.peer != *me {
                names.insert(m.peer, m.name.clone());
            }
        }
        Self {
            claims,
            revoked,
            names,
        }
    }
}

/// A live stream to one member.
pub(super) struct Link {
    pub(super) id: u64,
    /// Whether the smaller peer id opened it (the one both ends keep when both opened).
    pub(super) preferred: bool,
    pub(super) since: Instant,
    /// The member's queue, which this stream's writer drains.
    pub(super) out: Arc<Outgoing>,
    /// The writer and the reader.
    pub(super) tasks: [JoinHandle<()>; 2],
    /// The member's datagram link, when both sides have a socket.
    pub(super) udp: Option<super::udp::Attached>,
}

impl Drop for Link {
    fn drop(&mut self) {
        // Packets for the member are counted as unsent until another stream comes up.
        self.out.unset_link(self.id);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A network whose tunnel is up.
pub(super) struct NetTunnel {
    pub(super) id: [u8; 32],
    pub(super) interface: String,
    pub(super) mtu: u16,
    pub(super) lease: Lease,
    pub(super) path: SharedPath,
    pub(super) device: Arc<TunDevice>,
    pub(super) reader: super::data::ReaderHandle,
    /// Current members other than us, with their names.
    pub(super) members: BTreeMap<PeerId, Option<String>>,
    pub(super) links: HashMap<PeerId, Link>,
    pub(super) opening: BTreeSet<PeerId>,
    /// Members without a stream, and our attempts to open one.
    pub(super) waiting: HashMap<PeerId, OpenSchedule>,
    /// Names to leases, for the DNS responder.
    pub(super) names: Names,
    /// The DNS responder, when its socket could be bound.
    pub(super) dns: Option<JoinHandle<()>>,
}

impl NetTunnel {
    /// Stops every task that holds the device and waits for them, so the device is
    /// closed (and the kernel removes the interface) when this returns.
    pub(super) async fn stop(mut self) {
        self.reader.stop().await;
        if let Some(mut dns) = self.dns.take() {
            dns.abort();
            let _ = (&mut dns).await;
        }
        for (_, mut link) in self.links.drain() {
            for t in &mut link.tasks {
                t.abort();
                let _ = t.await;
            }
        }
    }

    /// The status `vpn status` shows, without the paths (the caller asks the node).
    pub(super) fn status(&self, network: &str) -> NetStatus {
        let p = self.path.lock();
        let prefixes = p.engine.table().prefixes();
        let now = Instant::now();
        let mut all_drops = p.drops(None);
        let members = self
            .members
            .iter()
            .map(|(peer, name)| {
                let id = MemberId(peer.to_bytes());
                let lease = p.engine.table().lease(&id);
                let c = p.engine.counts(&id);
                let link = self.links.get(peer);
                let udp = link.and_then(|l| l.udp.as_ref()).map(|a| &a.link);
                let transport = link.map(|_| {
                    match udp.and_then(|u| u.usable(now)) {
                        Some(_) => "udp",
                        None => "stream",
                    }
                    .to_string()
                });
                let mut drops = p.drops(Some(&id));
                if let Some(u) = udp {
                    let (rejected, send_failed) = u.errors();
                    for (reason, n) in
                        [("udp_rejected", rejected), ("udp_send_failed", send_failed)]
                    {
                        if n > 0 {
                            *drops.entry(reason.to_string()).or_insert(0) += n;
                            *all_drops.entry(reason.to_string()).or_insert(0) += n;
                        }
                    }
                }
                MemberStatus {
                    peer_id: peer.to_string(),
                    name: name.clone(),
                    ipv4: lease.map(|l| l.v4.to_string()).unwrap_or_default(),
                    ipv6: lease.map(|l| l.v6.to_string()).unwrap_or_default(),
                    linked: self.links.contains_key(peer),
                    streams: p.out.get(&id).map_or(0, |o| o.streams()),
                    path: None,
                    transport,
                    endpoint: udp.and_then(|u| u.endpoint()).map(|e| e.to_string()),
                    candidates: udp
                        .map(|u| u.candidates().iter().map(|c| c.to_string()).collect())
                        .unwrap_or_default(),
                    rtt_ms: None,
                    packets_out: c.packets_out,
                    bytes_out: c.bytes_out,
                    packets_in: c.packets_in,
                    bytes_in: c.bytes_in,
                    drops,
                }
            })
            .collect();
        NetStatus {
            network: network.to_string(),
            interface: self.interface.clone(),
            ipv4: self.lease.v4.to_string(),
            ipv6: self.lease.v6.to_string(),
            prefix_v4: format!("{}/{}", prefixes.v4, crate::addr::V4_PREFIX_LEN),
            prefix_v6: format!("{}/{}", prefixes.v6, crate::addr::V6_PREFIX_LEN),
            mtu: self.mtu,
            offload: self.device.offload(),
            members,
            drops: all_drops,
            dns: self.dns_addr(),
            resolver: names::resolver_line(&self.interface, self.lease.v4),
            udp_port: None,
        }
    }

    fn dns_addr(&self) -> Option<String> {
        self.dns.as_ref().map(|_| self.lease.v4.to_string())
    }
}

#[cfg(test)]
mod tests {
    use p2pnode_node::network::{Lease as RecordLease, Member, NetworkId, Role};

    use super::*;
    use crate::Prefixes;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn entry(peer: PeerId, name: Option<&str>, lease: Option<Vec<u8>>, revoked: bool) -> Member {
        Member {
            peer,
            role: Role::Member,
            name: name.map(str::to_string),
            lease: lease.map(|l| RecordLease::new(l).unwrap()),
            added_by: None,
            added_at_ms: None,
            revoked_by: revoked.then_some(peer),
        }
    }

    /// The roster becomes the engine's input: revoked members refused, recorded leases
    /// read back (unreadable ones are no lease), names of the others kept.
    #[test]
    fn a_roster_becomes_claims_revocations_and_names() {
        let (me, named, gone, odd) = (peer(), peer(), peer(), peer());
        let id = [3; 32];
        let p = Prefixes::of(&id);
        let lease = Lease {
            v4: p.v4_host(42),
            v6: p.derive(&id, &MemberId(named.to_bytes())).1,
        };
        let roster = Roster {
            id: NetworkId(id),
            members: vec![
                entry(me, Some("me"), None, false),
                entry(
                    named,
                    Some("laptop"),
                    Some(lease.to_bytes().to_vec()),
                    false,
                ),
                entry(gone, None, None, true),
                entry(odd, None, Some(vec![9, 9]), false),
            ],
        };
        let view = View::of(&roster, &me);
        assert_eq!(view.claims.len(), 3);
        let claim = |p: &PeerId| {
            view.claims
                .iter()
                .find(|c| c.member == MemberId(p.to_bytes()))
                .cloned()
        };
        assert_eq!(claim(&named).unwrap().lease, Some(lease));
        assert_eq!(claim(&odd).unwrap().lease, None);
        assert!(claim(&gone).is_none());
        assert!(view.revoked.contains(&MemberId(gone.to_bytes())));
        assert_eq!(view.names.get(&named), Some(&Some("laptop".to_string())));
        assert!(!view.names.contains_key(&me) && !view.names.contains_key(&gone));
    }
}

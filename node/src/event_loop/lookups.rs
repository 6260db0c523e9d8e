//! Kademlia lookups: finding a peer, connecting to one by id, and the answers to both.

use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId, kad};
use tokio::sync::oneshot;

use super::EventLoop;
use super::addrs::strip_p2p;
use crate::api::{Connected, Found, Path};
use crate::error::NodeError;

/// What a finished DHT lookup should do.
pub(super) enum Lookup {
    Find(oneshot::Sender<Result<Found, NodeError>>),
    Connect(oneshot::Sender<Result<Connected, NodeError>>),
}

/// A DHT lookup under way.
pub(super) struct PendingLookup {
    target: PeerId,
    lookup: Lookup,
    /// Whether this is already the second query for the target (see `on_query_result`).
    retried: bool,
}

impl PendingLookup {
    fn new(target: PeerId, lookup: Lookup) -> Self {
        Self {
            target,
            lookup,
            retried: false,
        }
    }

    /// Whether whoever asked has stopped waiting for the answer.
    fn abandoned(&self) -> bool {
        match &self.lookup {
            Lookup::Find(reply) => reply.is_closed(),
            Lookup::Connect(reply) => reply.is_closed(),
        }
    }
}

impl EventLoop {
    /// [`Command::ConnectPeer`](super::Command::ConnectPeer): the connection we have, or a
    /// DHT lookup and then a dial.
    pub(super) fn connect_peer(
        &mut self,
        peer: PeerId,
        reply: oneshot::Sender<Result<Connected, NodeError>>,
    ) {
        if let Some(c) = self.best_connection(&peer) {
            let _ = reply.send(Ok(c));
            return;
        }
        if peer == *self.swarm.local_peer_id() {
            let _ = reply.send(Err(NodeError::SelfDial));
            return;
        }
        let id = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
        self.lookups
            .insert(id, PendingLookup::new(peer, Lookup::Connect(reply)));
    }

    /// [`Command::Find`](super::Command::Find): a DHT lookup.
    pub(super) fn find(&mut self, peer: PeerId, reply: oneshot::Sender<Result<Found, NodeError>>) {
        let id = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
        self.lookups
            .insert(id, PendingLookup::new(peer, Lookup::Find(reply)));
    }

    /// Answers the lookups for `peer` as soon as we have dialled it, usually because the
    /// lookup itself asked it for its neighbours. Waiting for the query to finish would
    /// add the round trips to the other closest peers (or a slow peer's whole timeout)
    /// to an answer we already have, and an address we connected to is a verified one.
    pub(super) fn lookup_reached(
        &mut self,
        peer: PeerId,
        address: &Multiaddr,
        connected: &Connected,
    ) {
        let reached: Vec<_> = self
            .lookups
            .extract_if(|_, pending| pending.target == peer)
            .collect();
        for (id, PendingLookup { lookup, .. }) in reached {
            if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                query.finish();
            }
            match lookup {
                Lookup::Find(reply) => {
                    let _ = reply.send(Ok(Found {
                        peer_id: peer.to_string(),
                        addresses: vec![strip_p2p(address).to_string()],
                    }));
                }
                Lookup::Connect(reply) => {
                    let _ = reply.send(Ok(connected.clone()));
                }
            }
        }
    }

    /// `peer`'s addresses in our Kademlia routing table.
    pub(super) fn table_addresses(&mut self, peer: PeerId) -> Vec<Multiaddr> {
        let kad = &mut self.swarm.behaviour_mut().kad;
        kad.kbucket(peer)
            .and_then(|bucket| {
                bucket
                    .iter()
                    .find(|e| *e.node.key.preimage() == peer)
                    .map(|e| e.node.value.iter().cloned().collect())
            })
            .unwrap_or_default()
    }

    pub(super) fn on_query_result(
        &mut self,
        id: kad::QueryId,
        result: kad::QueryResult,
        stats: &kad::QueryStats,
    ) {
        if let kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
            providers,
            ..
        })) = result
        {
            let me = *self.swarm.local_peer_id();
            for peer in providers {
                if peer != me && !self.conns.contains_key(&peer) && !self.dialing.contains(&peer) {
                    tracing::debug!(%peer, "dialling a member of a joined topic");
                    if self.swarm.dial(DialOpts::peer_id(peer).build()).is_ok() {
                        self.dialing.insert(peer);
                    }
                }
            }
            return;
        }
        let kad::QueryResult::GetClosestPeers(result) = result else {
            return;
        };
        let Some(pending) = self.lookups.remove(&id) else {
            return;
        };
        let target = pending.target;
        let (peers, timed_out) = match result {
            Ok(ok) => (ok.peers, false),
            Err(kad::GetClosestPeersError::Timeout { peers, .. }) => (peers, true),
        };
        let answered = !peers.is_empty();
        let mut addrs: Vec<Multiaddr> = peers
            .into_iter()
            .filter(|p| p.peer_id == target)
            .flat_map(|p| p.addrs)
            .collect();
        // A peer we are connected to is found even if the DHT has not learned it yet.
        for c in self.conns.get(&target).into_iter().flatten() {
            if !addrs.contains(&c.address) && c.path == Path::Direct && c.outbound {
                addrs.push(strip_p2p(&c.address));
            }
        }
        // Kademlia gives each peer 10 s and then ends the query without it, although its
        // answer may still come: on a slow or congested link the first lookup can end
        // before anyone answered, while a second one reuses the connections the first
        // opened. So a lookup that found nothing while peers were still unanswered asks
        // once more (not after the whole lookup's time ran out, nor for nobody).
        if addrs.is_empty()
            && stats.num_pending() > 0
            && !pending.retried
            && !timed_out
            && !pending.abandoned()
        {
            tracing::debug!(
                %target,
                unanswered = stats.num_pending(),
                "lookup ended with peers unanswered; asking again"
            );
            let id = self.swarm.behaviour_mut().kad.get_closest_peers(target);
            self.lookups.insert(
                id,
                PendingLookup {
                    retried: true,
                    ..pending
                },
            );
            return;
        }
        // "No peers to ask" only when nobody answered: a node whose connections merely
        // idled out still has a routing table, and its lookup went through the network.
        let no_peers = !answered && self.swarm.connected_peers().next().is_none();
        match pending.lookup {
            Lookup::Find(reply) => {
                let result = if addrs.is_empty() {
                    Err(not_found(target, no_peers))
                } else {
                    Ok(Found {
                        peer_id: target.to_string(),
                        addresses: addrs.iter().map(|a| a.to_string()).collect(),
                    })
                };
                let _ = reply.send(result);
            }
            Lookup::Connect(reply) => {
                // A query asks only the peers our table held when it began. One that mDNS
                // (or a connection) put there meanwhile is dialled at its addresses in our
                // own table: two nodes just started on one LAN would otherwise be "not
                // found" while the relay, the only peer asked, has not heard of the other
                // yet. Not for `find`: a peer long gone can linger in the table, and only
                // a dial tells.
                if addrs.is_empty() {
                    addrs = self.table_addresses(target);
                }
                if addrs.is_empty() {
                    let _ = reply.send(Err(not_found(target, no_peers)));
                } else {
                    self.dial_found(target, addrs, reply);
                }
            }
        }
    }
}

fn not_found(peer: PeerId, no_peers: bool) -> NodeError {
    if no_peers {
        NodeError::NoPeers
    } else {
        NodeError::NotFound {
            peer: peer.to_string(),
        }
    }
}

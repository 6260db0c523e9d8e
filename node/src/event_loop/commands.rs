//! The requests the event loop takes ([`Command`]) and their dispatch, and the reports it
//! answers with itself (status, peers).

use libp2p::{Multiaddr, PeerId, autonat};
use tokio::sync::{mpsc, oneshot};

use super::connections::Conn;
use super::{EventLoop, TopicMessage, TopicMessageId, Validation};
use crate::api::{Connected, ConnectionInfo, Found, Path, PeerInfo, Status};
use crate::error::NodeError;

/// A request to the event loop.
#[derive(Debug)]
pub enum Command {
    /// Report the node's status.
    Status(oneshot::Sender<Status>),
    /// Report what the doctor needs from the event loop.
    Diagnostics(oneshot::Sender<super::LoopDiagnostics>),
    /// List connected peers.
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    /// Dial an address.
    ConnectAddr(Multiaddr, oneshot::Sender<Result<Connected, NodeError>>),
    /// Reach a peer by id, looking it up in the DHT when needed.
    ConnectPeer(PeerId, oneshot::Sender<Result<Connected, NodeError>>),
    /// Look a peer up in the DHT.
    Find(PeerId, oneshot::Sender<Result<Found, NodeError>>),
    /// Listen on one more address.
    Listen(Multiaddr, oneshot::Sender<Result<(), NodeError>>),
    /// Close every connection of a peer and refuse new ones (revocation).
    Block(PeerId, oneshot::Sender<()>),
    /// Accept a peer's connections again.
    Unblock(PeerId, oneshot::Sender<()>),
    /// Join a gossipsub topic: subscribe, announce ourselves as a provider of the topic in
    /// the DHT and connect to the others there. Messages arrive on the sender.
    JoinTopic(
        String,
        mpsc::Sender<TopicMessage>,
        oneshot::Sender<Result<(), NodeError>>,
    ),
    /// Leave a topic.
    LeaveTopic(String, oneshot::Sender<()>),
    /// Publish on a joined topic.
    Publish(String, Vec<u8>, oneshot::Sender<Result<(), NodeError>>),
    /// Report a received topic message valid (forward it) or not; replies whether
    /// gossipsub still held it.
    ValidateTopicMessage(TopicMessageId, Validation, oneshot::Sender<bool>),
    /// Announce in the DHT that we provide `key` (an application protocol's key).
    Provide(Vec<u8>, oneshot::Sender<Result<(), NodeError>>),
    /// Withdraw our provider record for `key`.
    StopProviding(Vec<u8>, oneshot::Sender<()>),
    /// Look up the providers of `key` (at most [`super::MAX_PROVIDERS`], ourselves left
    /// out).
    FindProviders(Vec<u8>, oneshot::Sender<Result<Vec<PeerId>, NodeError>>),
}

impl EventLoop {
    pub(super) fn on_command(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Diagnostics(reply) => {
                let _ = reply.send(self.diagnostics());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.peers());
            }
            Command::ConnectAddr(addr, reply) => self.connect_addr(addr, reply),
            Command::ConnectPeer(peer, reply) => self.connect_peer(peer, reply),
            Command::Find(peer, reply) => self.find(peer, reply),
            Command::Block(peer, reply) => {
                self.block(peer);
                let _ = reply.send(());
            }
            Command::Unblock(peer, reply) => {
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
                let _ = reply.send(());
            }
            Command::JoinTopic(name, subscriber, reply) => self.join_topic(name, subscriber, reply),
            Command::LeaveTopic(name, reply) => self.leave_topic(name, reply),
            Command::Publish(name, data, reply) => self.publish(name, data, reply),
            Command::ValidateTopicMessage(id, v, reply) => {
                let _ = reply.send(self.validate_topic_message(id, v));
            }
            Command::Provide(key, reply) => {
                let _ = reply.send(self.provide(key));
            }
            Command::StopProviding(key, reply) => {
                self.stop_providing(key);
                let _ = reply.send(());
            }
            Command::FindProviders(key, reply) => self.find_providers(key, reply),
            Command::Listen(addr, reply) => {
                let result =
                    self.swarm
                        .listen_on(addr.clone())
                        .map(|_| ())
                        .map_err(|e| NodeError::Listen {
                            addr: addr.to_string(),
                            reason: crate::error::transport_reason(&e),
                        });
                let _ = reply.send(result);
            }
        }
    }

    fn status(&mut self) -> Status {
        let nat_status = match self
            .swarm
            .behaviour()
            .autonat
            .as_ref()
            .map(|a| a.nat_status())
        {
            Some(autonat::NatStatus::Public(_)) => "public",
            Some(autonat::NatStatus::Private) => "private",
            Some(autonat::NatStatus::Unknown) => "unknown",
            None => "off",
        };
        let mut reservations: Vec<String> = self
            .reservations
            .values()
            .filter(|r| r.accepted)
            .map(|r| r.circuit_addr.to_string())
            .collect();
        reservations.sort();
        let kad = &mut self.swarm.behaviour_mut().kad;
        let dht_peers = kad.kbuckets().map(|b| b.num_entries()).sum();
        let dht_queries = kad.iter_queries().count();
        let provided_keys = {
            use libp2p::kad::store::RecordStore;
            kad.store_mut().provided().count()
        };
        Status {
            peer_id: self.swarm.local_peer_id().to_string(),
            listen_addrs: self.swarm.listeners().map(|a| a.to_string()).collect(),
            external_addrs: self
                .swarm
                .external_addresses()
                .map(|a| a.to_string())
                .collect(),
            nat_status: nat_status.to_string(),
            reservations,
            connected_peers: self.conns.len(),
            relay_server: self.cfg.relay_server,
            dht_peers,
            dht_queries,
            provided_keys,
        }
    }

    fn peers(&self) -> Vec<PeerInfo> {
        let mut peers: Vec<PeerInfo> = self
            .conns
            .iter()
            .map(|(peer, list)| {
                let connections: Vec<ConnectionInfo> = list.iter().map(Conn::info).collect();
                // Prefer a direct connection, then the one with a measured round trip.
                let best = connections
                    .iter()
                    .filter(|c| c.path == Path::Direct)
                    .max_by_key(|c| c.rtt_ms.is_some())
                    .or_else(|| connections.first());
                PeerInfo {
                    peer_id: peer.to_string(),
                    path: best.map_or(Path::Relayed, |c| c.path),
                    transport: best.map_or_else(String::new, |c| c.transport.clone()),
                    rtt_ms: best.and_then(|c| c.rtt_ms),
                    connections,
                }
            })
            .collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        peers
    }
}

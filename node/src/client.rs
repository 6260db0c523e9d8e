//! [`Client`]: the cheap, cloneable handle through which everything else (the control
//! socket, the application protocols, tests) asks the event loop for work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use p2pnode_secure::SecureStream;
use tokio::sync::{mpsc, oneshot};

use crate::api::{Connected, Found, Path, PeerInfo, Pinged, Status, TrustInfo, VerifyInfo};
use crate::error::NodeError;
use crate::event_loop::Command;
use crate::peer::{Target, parse_target};
use crate::secure::{SecureListener, Security};
use crate::streams::{ECHO_PROTOCOL, ECHO_SIZE};

/// Connecting (DHT lookup plus dial) gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(45);
/// A provider lookup gives up after this long.
pub const FIND_PROVIDERS_TIMEOUT: Duration = Duration::from_secs(30);

/// Handle to a running node.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    streams: libp2p_stream::Control,
    security: Arc<Security>,
    networks: crate::networks::Networks,
    peer_id: PeerId,
    peer_changes: tokio::sync::watch::Receiver<u64>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

impl Client {
    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        streams: libp2p_stream::Control,
        security: Arc<Security>,
        networks: crate::networks::Networks,
        peer_id: PeerId,
        peer_changes: tokio::sync::watch::Receiver<u64>,
    ) -> Self {
        Self {
            commands,
            streams,
            security,
            networks,
            peer_id,
            peer_changes,
        }
    }

    /// Changes of the peers connected: wait on it and read [`peers`](Self::peers) instead
    /// of polling the list (see [`PeerChanges`](crate::PeerChanges)). Closed once the
    /// node stops.
    pub fn peer_changes(&self) -> crate::PeerChanges {
        crate::PeerChanges::new(self.peer_changes.clone())
    }

    /// Opens an application stream to `peer`: connects when needed, checks the trust store
    /// for the protocol named `app` and runs the post-quantum handshake.
    pub async fn open_secure(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
        app: &str,
    ) -> Result<SecureStream<libp2p::Stream>, NodeError> {
        // Refuse a revoked peer before dialling it at all.
        crate::secure::refuse_if_untrusted(peer, self.security.decide(peer, app).await?)?;
        self.connect_peer(peer).await?;
        self.security
            .open(&mut self.streams.clone(), peer, protocol, app)
            .await
    }

    /// Accepts application streams of `protocol`, each after the trust check for `app` and
    /// the handshake. Protocols listen through [`crate::protocol::Context::listen`], which
    /// names their own `app`; tests may pick any.
    #[cfg(any(test, feature = "test-util"))]
    pub fn listen_secure(
        &self,
        protocol: StreamProtocol,
        app: &'static str,
    ) -> Result<SecureListener, NodeError> {
        self.secure_listener(protocol, app)
    }

    pub(crate) fn secure_listener(
        &self,
        protocol: StreamProtocol,
        app: &'static str,
    ) -> Result<SecureListener, NodeError> {
        SecureListener::new(
            self.security.clone(),
            &mut self.streams.clone(),
            protocol,
            app,
        )
    }

    /// The node's networks: who is a member of which, for protocols to ask.
    pub fn networks(&self) -> &crate::networks::Networks {
        &self.networks
    }

    /// Joins a network with a ticket from `net invite`: reaches the issuer, presents the
    /// join request and keeps the record it sends back.
    pub async fn join_network(
        &self,
        ticket: &str,
        name: Option<String>,
    ) -> Result<crate::networks::NetInfo, crate::networks::NetError> {
        crate::networks::exchange::join(self, &self.networks, ticket, name).await
    }

    /// The short authentication string of a verification exchange with `peer`.
    pub async fn verify(&self, peer: PeerId) -> Result<VerifyInfo, NodeError> {
        self.connect_peer(peer).await?;
        let sas = self
            .security
            .verify(&mut self.streams.clone(), peer)
            .await?;
        let verified = self
            .trust_list()
            .await?
            .into_iter()
            .any(|t| t.peer_id == peer.to_string() && t.verified);
        Ok(VerifyInfo {
            peer_id: peer.to_string(),
            sas_words: sas.words(),
            sas_digits: sas.digits(),
            verified,
        })
    }

    /// Records a matching SAS comparison with `peer`: pins its key as verified.
    pub async fn confirm_verified(&self, peer: PeerId) -> Result<TrustInfo, NodeError> {
        let entry = self.security.confirm(peer).await?;
        self.ask(|tx| Command::Unblock(peer, tx)).await?;
        Ok(TrustInfo::new(peer, &entry))
    }

    /// Joins a gossipsub topic (subscribes, finds other members through the DHT) and
    /// returns the receiver of its messages, bounded to `capacity`.
    pub async fn join_topic(
        &self,
        topic: &str,
        capacity: usize,
    ) -> Result<mpsc::Receiver<crate::event_loop::TopicMessage>, NodeError> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.ask(|reply| Command::JoinTopic(topic.to_string(), tx, reply))
            .await??;
        Ok(rx)
    }

    /// Reports a message received on a joined topic as valid or not. Gossipsub forwards a
    /// message to the other members only once it is accepted here, so every subscriber
    /// reports every message it gets. Returns whether gossipsub still held the message (it
    /// drops unreported ones after a few heartbeats).
    pub async fn report_topic_message(
        &self,
        id: crate::event_loop::TopicMessageId,
        validation: crate::event_loop::Validation,
    ) -> Result<bool, NodeError> {
        self.ask(|reply| Command::ValidateTopicMessage(id, validation, reply))
            .await
    }

    /// Leaves a topic.
    pub async fn leave_topic(&self, topic: &str) -> Result<(), NodeError> {
        self.ask(|reply| Command::LeaveTopic(topic.to_string(), reply))
            .await
    }

    /// Publishes on a joined topic.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<(), NodeError> {
        self.ask(|reply| Command::Publish(topic.to_string(), data, reply))
            .await?
    }

    /// Announces in the DHT that this node provides `key` (1 to
    /// [`MAX_PROVIDER_KEY`](crate::event_loop::MAX_PROVIDER_KEY) bytes, chosen by the
    /// protocol). Kademlia republishes the record on its own schedule; a protocol that
    /// wants it fresh sooner calls this again.
    pub async fn provide(&self, key: Vec<u8>) -> Result<(), NodeError> {
        self.ask(|reply| Command::Provide(key, reply)).await?
    }

    /// Withdraws our provider record for `key` (others' copies expire on their own).
    pub async fn stop_providing(&self, key: Vec<u8>) -> Result<(), NodeError> {
        self.ask(|reply| Command::StopProviding(key, reply)).await
    }

    /// The peers that announced `key`, ourselves left out: at most
    /// [`MAX_PROVIDERS`](crate::event_loop::MAX_PROVIDERS), found within
    /// [`FIND_PROVIDERS_TIMEOUT`].
    pub async fn find_providers(&self, key: Vec<u8>) -> Result<Vec<PeerId>, NodeError> {
        match tokio::time::timeout(
            FIND_PROVIDERS_TIMEOUT,
            self.ask(|reply| Command::FindProviders(key, reply)),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => Err(NodeError::Timeout {
                what: "the provider lookup".to_string(),
                secs: FIND_PROVIDERS_TIMEOUT.as_secs(),
            }),
        }
    }

    /// Every trust entry.
    pub async fn trust_list(&self) -> Result<Vec<TrustInfo>, NodeError> {
        let trust = self.security.trust().clone();
        let list = tokio::task::spawn_blocking(move || trust.list())
            .await
            .map_err(|_| NodeError::Stopped)??;
        Ok(list.iter().map(|(p, e)| TrustInfo::new(*p, e)).collect())
    }

    /// Allows `peer` the given protocols (all when empty) and lifts a revocation.
    pub async fn allow(&self, peer: PeerId, protocols: &[String]) -> Result<TrustInfo, NodeError> {
        let known = self.security.protocols();
        for p in protocols {
            if !known.contains(&p.as_str()) {
                return Err(NodeError::InvalidInput(format!(
                    "unknown protocol {p:?}; known: {}",
                    known.join(", ")
                )));
            }
        }
        let grant: Vec<String> = if protocols.is_empty() {
            known.iter().map(|p| p.to_string()).collect()
        } else {
            protocols.to_vec()
        };
        let entry = self
            .update_trust(peer, move |e| {
                e.revoked = false;
                e.allowed_protocols.extend(grant);
            })
            .await?;
        self.ask(|tx| Command::Unblock(peer, tx)).await?;
        Ok(TrustInfo::new(peer, &entry))
    }

    /// Revokes `peer`: stored at once, its connections closed, refused from now on (also
    /// after a restart).
    pub async fn revoke(&self, peer: PeerId) -> Result<TrustInfo, NodeError> {
        let entry = self.update_trust(peer, |e| e.revoked = true).await?;
        self.ask(|tx| Command::Block(peer, tx)).await?;
        Ok(TrustInfo::new(peer, &entry))
    }

    async fn update_trust(
        &self,
        peer: PeerId,
        change: impl FnOnce(&mut p2pnode_secure::TrustEntry) + Send + 'static,
    ) -> Result<p2pnode_secure::TrustEntry, NodeError> {
        let key = crate::peer::verifying_key_of(&peer)?.to_bytes();
        let trust = self.security.trust().clone();
        tokio::task::spawn_blocking(move || trust.update(&peer, key, change))
            .await
            .map_err(|_| NodeError::Stopped)?
            .map_err(NodeError::from)
    }

    /// The secure gate, for the node's own shutdown.
    pub(crate) fn security(&self) -> &Security {
        &self.security
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The raw stream control, which bypasses the secure gate: only for tests of the
    /// connection layer itself.
    #[cfg(any(test, feature = "test-util"))]
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// The raw stream control, for the node's own services (no gate: they carry no
    /// application data).
    pub(crate) fn raw_streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    pub(crate) async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        ask(&self.commands, make).await
    }

    /// The node's status.
    pub async fn status(&self) -> Result<Status, NodeError> {
        self.ask(Command::Status).await
    }

    /// Connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NodeError> {
        self.ask(Command::Peers).await
    }

    /// Starts listening on one more address.
    pub async fn listen(&self, addr: Multiaddr) -> Result<(), NodeError> {
        self.ask(|tx| Command::Listen(addr, tx)).await?
    }

    /// Dials an address (with or without a `/p2p/<id>` suffix).
    pub async fn connect_addr(&self, addr: Multiaddr) -> Result<Connected, NodeError> {
        with_timeout("connecting", self.ask(|tx| Command::ConnectAddr(addr, tx))).await
    }

    /// Reaches a peer by id: an existing connection, else a DHT lookup and a dial.
    pub async fn connect_peer(&self, peer: PeerId) -> Result<Connected, NodeError> {
        with_timeout("connecting", self.ask(|tx| Command::ConnectPeer(peer, tx))).await
    }

    /// Parses `target` as a peer id or a multiaddr and connects to it.
    pub async fn connect(&self, target: &str) -> Result<Connected, NodeError> {
        match parse_target(target)? {
            Target::Peer(p) => self.connect_peer(p).await,
            Target::Addr(a) => self.connect_addr(a).await,
        }
    }

    /// Looks a peer up in the DHT.
    pub async fn find(&self, peer: PeerId) -> Result<Found, NodeError> {
        with_timeout("the DHT lookup", self.ask(|tx| Command::Find(peer, tx))).await
    }

    /// Sends `count` echo probes to `peer` over one stream and times each round trip.
    pub async fn ping(&self, peer: PeerId, count: u32) -> Result<Pinged, NodeError> {
        self.connect_peer(peer).await?;
        let stream_err = |reason: String| NodeError::Stream {
            peer: peer.to_string(),
            reason,
        };
        let mut stream = self
            .streams
            .clone()
            .open_stream(peer, ECHO_PROTOCOL)
            .await
            .map_err(|e| stream_err(e.to_string()))?;
        let mut rtts = Vec::with_capacity(count as usize);
        let mut probe = [0u8; ECHO_SIZE];
        let mut back = [0u8; ECHO_SIZE];
        for _ in 0..count {
            rand::Rng::fill(&mut rand::thread_rng(), &mut probe[..]);
            let start = Instant::now();
            let exchange = async {
                stream.write_all(&probe).await?;
                stream.flush().await?;
                stream.read_exact(&mut back).await
            };
            tokio::time::timeout(Duration::from_secs(10), exchange)
                .await
                .map_err(|_| stream_err("no echo within 10 s".into()))?
                .map_err(|e| stream_err(e.to_string()))?;
            if back != probe {
                return Err(stream_err("echo came back altered".into()));
            }
            rtts.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        let _ = stream.close().await;
        let path = self
            .peers()
            .await?
            .into_iter()
            .find(|p| p.peer_id == peer.to_string())
            .map_or(Path::Relayed, |p| p.path);
        Ok(Pinged {
            peer_id: peer.to_string(),
            rtt_ms: rtts,
            path,
        })
    }
}

async fn with_timeout<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<Result<T, NodeError>, NodeError>>,
) -> Result<T, NodeError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
        Ok(r) => r?,
        Err(_) => Err(NodeError::Timeout {
            what: what.to_string(),
            secs: CONNECT_TIMEOUT.as_secs(),
        }),
    }
}

/// Sends the command `make` builds to a task's queue and waits for its reply: the one way
/// every handle (this client, a protocol's) asks the task that owns the state. A task that
/// is gone is [`NodeError::Stopped`].
pub async fn ask<C, T>(
    commands: &mpsc::Sender<C>,
    make: impl FnOnce(oneshot::Sender<T>) -> C,
) -> Result<T, NodeError> {
    let (tx, rx) = oneshot::channel();
    commands
        .send(make(tx))
        .await
        .map_err(|_| NodeError::Stopped)?;
    rx.await.map_err(|_| NodeError::Stopped)
}

//! The node's composed libp2p behaviour: discovery (Kademlia, identify, mDNS), NAT
//! traversal (AutoNAT, relay client, DCUtR, and on `--relay` nodes the relay server),
//! liveness (ping), limits, and `libp2p-stream` on which the application protocols run.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use libp2p::kad::store::MemoryStore;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    PeerId, StreamProtocol, allow_block_list, autonat, connection_limits, gossipsub, identify,
    identity, kad, mdns, memory_connection_limits, ping, relay,
};

use crate::config::{Config, HolePunchMode};
use crate::gossip_idle::IdleGossip;
use crate::holepunch::DcutrForOthers;
use crate::prefix_connections;
use crate::relay_limits::PrefixLimiter;

/// Kademlia protocol id. The standard one, so our DHT records stay interoperable.
pub const KAD_PROTOCOL: StreamProtocol = kad::PROTOCOL_NAME;

/// The identify protocol version string nodes of this network announce.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/p2pnode/1.0.0";

/// All behaviours of a node. Optional ones are [`Toggle`]d so ordinary and relay nodes share
/// one type (as rust-libp2p's `misc/server` does).
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Refuses and closes connections of revoked peers (checked first).
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// Refuses a redial's connection when the peer got connected by another dial first
    /// (before any behaviour below sees it).
    pub redials: crate::redials::Behaviour,
    /// On relay nodes: refuses inbound connections past a network's share, before the
    /// handshake and before they take one of the global slots below.
    pub prefix_connections: Toggle<prefix_connections::Behaviour>,
    /// Refuses connections past the configured counts.
    pub limits: connection_limits::Behaviour,
    /// Refuses connections when the process uses too much memory (off when
    /// `max_memory_mb` is 0).
    pub memory: Toggle<memory_connection_limits::Behaviour>,
    /// Relay client: reservations on relays and dialing through them.
    pub relay_client: relay::client::Behaviour,
    /// Relay server, only on `--relay` nodes.
    pub relay_server: Toggle<relay::Behaviour>,
    /// Upgrades relayed connections to direct ones by hole punching (off in relay-only
    /// mode: it would tell peers our observed address).
    pub dcutr: Toggle<DcutrForOthers>,
    /// Tells peers our listen addresses and learns theirs and our observed address.
    pub identify: identify::Behaviour,
    /// Peer routing and content discovery.
    pub kad: kad::Behaviour<MemoryStore>,
    /// Learns whether we are publicly reachable, and serves such probes for others.
    pub autonat: Toggle<autonat::Behaviour>,
    /// Keeps a round-trip time per connection.
    pub ping: ping::Behaviour,
    /// LAN discovery.
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Streams for the application protocols.
    pub stream: libp2p_stream::Behaviour,
    /// Publish/subscribe for the protocols' topics (rooms; payloads are sealed end to end).
    /// Its streams do not keep connections alive ([`IdleGossip`]).
    pub gossipsub: IdleGossip,
}

/// Largest gossipsub message; room messages are far smaller.
pub const MAX_GOSSIP_MESSAGE: usize = 64 * 1024;

impl Behaviour {
    /// Builds the behaviour for `key` with the given configuration.
    pub fn new(
        key: &identity::Keypair,
        relay_client: relay::client::Behaviour,
        cfg: &Config,
    ) -> Result<Self, std::io::Error> {
        let peer_id = key.public().to_peer_id();

        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(cfg.max_connections))
            .with_max_established_per_peer(Some(cfg.max_connections_per_peer))
            .with_max_pending_incoming(Some(cfg.max_connections / 4 + 1))
            .with_max_pending_outgoing(Some(cfg.max_connections / 4 + 1));

        let relay_server = cfg.relay.then(|| relay_server(peer_id, cfg));

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL_VERSION.to_string(), key.public())
                .with_agent_version(format!("p2pnode/{}", env!("CARGO_PKG_VERSION")))
                .with_push_listen_addr_updates(true),
        );

        let mut kad_cfg = kad::Config::new(KAD_PROTOCOL);
        kad_cfg.set_query_timeout(Duration::from_secs(cfg.dht_query_timeout_secs.max(1)));
        kad_cfg.set_substreams_timeout(Duration::from_secs(cfg.dht_request_timeout_secs.max(1)));
        kad_cfg.set_periodic_bootstrap_interval(
            Some(cfg.dht_bootstrap_interval_secs)
                .filter(|&s| s > 0)
                .map(Duration::from_secs),
        );
        let mut kad = kad::Behaviour::with_config(peer_id, MemoryStore::new(peer_id), kad_cfg);
        // Every node answers DHT queries: nodes behind NAT are reachable through their relay
        // circuit addresses, and a relay/bootstrap node must serve from its first second
        // (Kademlia would otherwise wait for a confirmed external address).
        kad.set_mode(Some(kad::Mode::Server));

        let autonat = cfg.autonat.then(|| {
            autonat::Behaviour::new(
                peer_id,
                autonat::Config {
                    only_global_ips: !cfg.autonat_private_ips,
                    boot_delay: Duration::from_secs(5),
                    retry_interval: Duration::from_secs(30),
                    ..Default::default()
                },
            )
        });

        // mDNS announces our LAN addresses: never in relay-only mode.
        let mdns = if cfg.mdns && !cfg.relay_only {
            Some(mdns::tokio::Behaviour::new(
                mdns::Config::default(),
                peer_id,
            )?)
        } else {
            None
        };

        Ok(Self {
            blocked: allow_block_list::Behaviour::default(),
            redials: crate::redials::Behaviour::default(),
            limits: connection_limits::Behaviour::new(limits),
            prefix_connections: (cfg.relay && cfg.relay_limits.max_connections_per_prefix > 0)
                .then(|| {
                    prefix_connections::Behaviour::new(cfg.relay_limits.max_connections_per_prefix)
                })
                .into(),
            memory: (cfg.max_memory_mb > 0)
                .then(|| {
                    let bytes = cfg.max_memory_mb.saturating_mul(1024 * 1024);
                    memory_connection_limits::Behaviour::with_max_bytes(
                        usize::try_from(bytes).unwrap_or(usize::MAX),
                    )
                })
                .into(),
            relay_client,
            relay_server: relay_server.into(),
            // DCUtR runs beside ours for peers that speak only DCUtR; in `dcutr` mode alone.
            dcutr: (!cfg.relay_only && cfg.hole_punch != HolePunchMode::Off)
                .then(|| DcutrForOthers::new(peer_id, cfg.hole_punch == HolePunchMode::P2pnode))
                .into(),
            identify,
            kad,
            autonat: autonat.into(),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(15))),
            mdns: mdns.into(),
            stream: libp2p_stream::Behaviour::new(),
            gossipsub: IdleGossip::new(gossip(key)?),
        })
    }
}

fn gossip(key: &identity::Keypair) -> Result<gossipsub::Behaviour, std::io::Error> {
    let invalid = |e: &dyn std::fmt::Display| std::io::Error::other(format!("gossipsub: {e}"));
    let config = gossipsub::ConfigBuilder::default()
        .max_transmit_size(MAX_GOSSIP_MESSAGE)
        .validation_mode(gossipsub::ValidationMode::Strict)
        // Forward a message only once its subscriber accepted it (Client::
        // report_topic_message): a forged or replayed room message stops at the first
        // member that sees through it instead of spreading through the mesh.
        .validate_messages()
        // Rooms are small; a quick heartbeat lets a fresh mesh form within a second.
        .heartbeat_interval(Duration::from_millis(500))
        .build()
        .map_err(|e| invalid(&e))?;
    gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), config)
        .map_err(|e| invalid(&e))
}

fn relay_server(peer_id: PeerId, cfg: &Config) -> relay::Behaviour {
    let l = &cfg.relay_limits;
    let per_peer = NonZeroU32::new(30).unwrap_or(NonZeroU32::MIN);
    let mut config = relay::Config {
        max_reservations: l.max_reservations,
        max_reservations_per_peer: l.max_reservations_per_peer,
        reservation_duration: Duration::from_secs(l.reservation_duration_secs),
        max_circuits: l.max_circuits,
        max_circuits_per_peer: l.max_circuits_per_peer,
        max_circuit_duration: Duration::from_secs(l.max_circuit_duration_secs),
        max_circuit_bytes: l.max_circuit_bytes,
        // libp2p's per-IP limiters (60 per address) would refuse a fleet restarting
        // behind one NAT, yet let a host with a /24 or /48 take everything: ours below
        // count per network, with allowances set in the config.
        reservation_rate_limiters: Vec::new(),
        circuit_src_rate_limiters: Vec::new(),
    }
    .reservation_rate_per_peer(per_peer, Duration::from_secs(60))
    .circuit_src_per_peer(per_peer, Duration::from_secs(60));
    let prefixes = NonZeroUsize::new(l.max_tracked_prefixes).unwrap_or(NonZeroUsize::MIN);
    if let Some(burst) = NonZeroU32::new(l.reservation_burst_per_prefix) {
        let refill = Duration::from_secs(l.reservation_refill_secs.max(1));
        config
            .reservation_rate_limiters
            .push(Box::new(PrefixLimiter::new(burst, refill, prefixes)));
    }
    if let Some(burst) = NonZeroU32::new(l.circuit_burst_per_prefix) {
        let refill = Duration::from_secs(l.circuit_refill_secs.max(1));
        config
            .circuit_src_rate_limiters
            .push(Box::new(PrefixLimiter::new(burst, refill, prefixes)));
    }
    relay::Behaviour::new(peer_id, config)
}

//! The steps of [`NodeBuilder::start`](super::NodeBuilder::start) that stand on their
//! own: checks of what was registered and configured, the swarm, the peer-store writer,
//! the event loop's first peers, the metrics endpoint, and the registered protocols'
//! start.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{Node, StartError, StartFn, TransportKind};
use crate::behaviour::Behaviour;
use crate::config::Config;
use crate::event_loop::{EventLoop, KeepFor, StoreUpdate, peer_of};
use crate::listeners;
use crate::metrics::Metrics;
use crate::protocol::{Context, Protocols, Registered};
use crate::store::{MAX_REDIAL, Store, StoreError};
use crate::swarm;

/// Bound of the queue of peer-store writes; past it updates are dropped (they recur).
const STORE_QUEUE: usize = 256;

/// The registered protocols' names, refused if one is registered twice.
pub(super) fn unique_names(
    protocols: &[(&'static str, StartFn)],
) -> Result<Vec<&'static str>, StartError> {
    let names: Vec<&'static str> = protocols.iter().map(|(n, _)| *n).collect();
    match names
        .iter()
        .enumerate()
        .find_map(|(i, n)| names[..i].contains(n).then_some(*n))
    {
        Some(dup) => Err(StartError::DuplicateProtocol(dup.to_string())),
        None => Ok(names),
    }
}

/// The configured bootstrap peers, each with the address to dial it on.
pub(super) fn bootstrap_peers(config: &Config) -> Result<Vec<(PeerId, Multiaddr)>, StartError> {
    config
        .bootstrap
        .iter()
        .map(|addr| {
            let peer = peer_of(addr).ok_or_else(|| StartError::Bootstrap(addr.to_string()))?;
            let mut dial = addr.clone();
            dial.pop();
            Ok((peer, dial))
        })
        .collect()
}

/// The swarm on the chosen transports, listening as configured: on its own addresses, or
/// with `relay_only` only through the bootstrap relays.
pub(super) fn build_swarm(
    keypair: libp2p::identity::Keypair,
    config: &Config,
    transport: TransportKind,
    bootstrap: &[(PeerId, Multiaddr)],
) -> Result<Swarm<Behaviour>, StartError> {
    let mut swarm = if config.relay_only {
        if bootstrap.is_empty() {
            return Err(StartError::RelayOnlyWithoutRelay);
        }
        let base: swarm::TransportFactory = match transport {
            TransportKind::Real => {
                let stall = config.tcp_user_timeout();
                Arc::new(move |key| swarm::tcp_quic_transport(key, stall))
            }
            TransportKind::Memory => Arc::new(swarm::memory_transport),
            TransportKind::Custom(factory) => factory,
        };
        let relays = bootstrap.iter().map(|(_, a)| a.clone()).collect();
        swarm::build_custom(keypair, config, swarm::relay_only(base, relays))?
    } else {
        let mut swarm = match transport {
            TransportKind::Real => swarm::build(keypair, config)?,
            TransportKind::Memory => swarm::build_memory(keypair, config)?,
            TransportKind::Custom(factory) => swarm::build_custom(keypair, config, factory)?,
        };
        listeners::open(&mut swarm, config)?;
        swarm
    };
    for addr in &config.external_addresses {
        swarm.add_external_address(addr.clone());
    }
    Ok(swarm)
}

/// The thread that records peers' addresses in the database, off the event loop, and
/// the bounded queue into it. It ends when the queue's sender is dropped.
pub(super) fn spawn_store_writer(
    store: Store,
    span: tracing::Span,
    data_dir: &Path,
) -> Result<
    (
        std::sync::mpsc::SyncSender<StoreUpdate>,
        std::thread::JoinHandle<()>,
    ),
    StartError,
> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<StoreUpdate>(STORE_QUEUE);
    let writer = std::thread::Builder::new()
        .name("peer-store".into())
        .spawn(move || {
            let _span = span.enter();
            for (peer, addrs) in rx {
                if let Err(e) = store.record_peer(&peer, &addrs) {
                    tracing::warn!(%peer, "cannot record peer: {e}");
                }
            }
        })
        .map_err(|e| StoreError::Open {
            path: data_dir.to_path_buf(),
            source: Box::new(redb::Error::Io(e)),
        })?;
    Ok((tx, writer))
}

/// The peers the event loop starts with: the revoked ones blocked (revocations hold
/// across restarts), the bootstrap peers kept connected, and the peers it knew dialled
/// once, so that a restarted node finds its way back without a bootstrap list.
pub(super) fn first_peers(
    event_loop: &mut EventLoop,
    revoked: Vec<PeerId>,
    bootstrap: Vec<(PeerId, Multiaddr)>,
    store: &Store,
    ours: PeerId,
) -> Result<(), StartError> {
    for peer in revoked {
        event_loop.block(peer);
    }
    let bootstrap_peers: Vec<_> = bootstrap.iter().map(|(p, _)| *p).collect();
    for (peer, addr) in bootstrap {
        event_loop.keep_connected(peer, vec![addr], KeepFor::Bootstrap);
    }
    for (peer, addrs) in store.known_peers(MAX_REDIAL)? {
        if !bootstrap_peers.contains(&peer) && peer != ours && !addrs.is_empty() {
            event_loop.dial_known(peer, addrs);
        }
    }
    Ok(())
}

/// Serves the metrics endpoint on `listener` (bound for the `configured` address) until
/// `stop`: its address (the port chosen when the config gave 0) and its task.
pub(super) fn serve_metrics(
    listener: tokio::net::TcpListener,
    configured: SocketAddr,
    metrics: &Arc<Metrics>,
    stop: &Arc<Notify>,
    span: &tracing::Span,
) -> Result<(SocketAddr, JoinHandle<()>), StartError> {
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Metrics(configured, e))?;
    tracing::info!(%addr, "serving metrics");
    let task = tokio::spawn(tracing::Instrument::instrument(
        crate::metrics::serve(listener, metrics.clone(), stop.clone()),
        span.clone(),
    ));
    Ok((addr, task))
}

/// The node's database, signing key and directory, which each protocol's [`Context`]
/// carries beside the node's client and span.
pub(super) struct Shared<'a> {
    pub(super) store: &'a Store,
    pub(super) signing_key: &'a p2pnode_secure::SigningKey,
    pub(super) data_dir: &'a Path,
}

/// Starts the registered protocols in order on the running `node`. If one fails (or
/// claims a control route prefix another holds), those that started are stopped with the
/// node, so nothing is left running behind the error.
pub(super) async fn start_protocols(
    mut node: Node,
    protocols: Vec<(&'static str, StartFn)>,
    shared: Shared<'_>,
) -> Result<Node, StartError> {
    let accepted = Arc::default();
    let mut running: Vec<Registered> = Vec::new();
    for (name, start) in protocols {
        let ctx = Context {
            name,
            client: node.client.clone(),
            database: shared.store.database().clone(),
            signing_key: shared.signing_key.clone(),
            data_dir: shared.data_dir.to_path_buf(),
            span: node.span.clone(),
            accepted: Arc::clone(&accepted),
        };
        // Tasks the protocol spawns while starting inherit the node's span.
        let started = node
            .span
            .in_scope(|| start(ctx))
            .map_err(StartError::from)
            .and_then(|handler| {
                let taken = handler.route_prefixes().iter().find(|p| {
                    running
                        .iter()
                        .any(|r| r.handler.route_prefixes().contains(p))
                });
                match taken {
                    Some(p) => Err(StartError::DuplicateProtocol(p.to_string())),
                    None => Ok(handler),
                }
            });
        match started {
            Ok(handler) => running.push(Registered { name, handler }),
            Err(e) => {
                node.protocols = Protocols::new(running, accepted);
                node.shutdown().await;
                return Err(e);
            }
        }
    }
    node.protocols = Protocols::new(running, accepted);
    Ok(node)
}

//! Starting and stopping a node: identity, database, swarm, listeners, the event loop task,
//! the peer-store writer, the echo and verification services, the registered application
//! protocols ([`NodeBuilder::protocol`]), and a clean shutdown of all of them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::config::{Config, HolePunchMode};
use crate::diagnostics::{TIME_PROTOCOL, serve_time};
use crate::error::NodeError;
use crate::event_loop::{EventLoop, HolePunching, LoopConfig};
use crate::holepunch::{self, HOLEPUNCH_PROTOCOL, INTRODUCE_PROTOCOL};
use crate::identity::{self, IdentityError};
use crate::metrics::Metrics;
use crate::peer::{short_id, signing_key_of};
use crate::protocol::{Context, Protocol, ProtocolError, ProtocolHandler, Protocols};
use crate::secure::{SecureListener, Security, VERIFY_PROTOCOL, serve_verify};
use crate::store::{Store, StoreError};
use crate::streams::{ECHO_PROTOCOL, serve_echo};
use crate::swarm::{self, BuildError};
use crate::trust::TrustDb;

mod steps;

/// Bound of the command channel into the event loop.
const COMMAND_QUEUE: usize = 64;
/// Echo streams served at once.
const MAX_ECHO_STREAMS: usize = 32;

/// Which transports the node runs on.
#[derive(Clone, Default)]
pub enum TransportKind {
    /// TCP, QUIC, DNS and relay: a real node.
    #[default]
    Real,
    /// The in-process memory transport: tests and simulations.
    Memory,
    /// A transport made by the caller (simulations wrap the memory transport with latency).
    Custom(swarm::TransportFactory),
}

impl std::fmt::Debug for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Real => "Real",
            Self::Memory => "Memory",
            Self::Custom(_) => "Custom",
        })
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The identity could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The network stack could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A listen address could not be bound.
    #[error(transparent)]
    Listen(NodeError),
    /// A bootstrap address lacks its `/p2p/<peer-id>`.
    #[error("bootstrap address {0} must end in /p2p/<peer-id>")]
    Bootstrap(String),
    /// `--relay-only` needs a relay to listen through.
    #[error("--relay-only needs at least one --bootstrap relay to listen through")]
    RelayOnlyWithoutRelay,
    /// No listener could be opened at all.
    #[error("could not listen on any address")]
    NoListener,
    /// The metrics endpoint could not be bound.
    #[error("cannot serve metrics on {0}: {1}")]
    Metrics(std::net::SocketAddr, std::io::Error),
    /// Two registered protocols share a name or a control route prefix.
    #[error("protocol {0:?} is registered twice (by name or control route prefix)")]
    DuplicateProtocol(String),
    /// A registered protocol could not start.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// A running node. Drop it only after [`Node::shutdown`].
pub struct Node {
    client: Client,
    data_dir: PathBuf,
    stop: Arc<Notify>,
    event_loop: JoinHandle<()>,
    echo: JoinHandle<()>,
    verify: JoinHandle<()>,
    /// The membership exchange: serving streams, and opening them on connects and pushes.
    net_tasks: Vec<JoinHandle<()>>,
    holepunch: Option<JoinHandle<()>>,
    protocols: Protocols,
    store_writer: Option<std::thread::JoinHandle<()>>,
    span: tracing::Span,
    metrics: Arc<Metrics>,
    /// The metrics endpoint's address and its task, when `metrics` is configured.
    metrics_server: Option<(std::net::SocketAddr, JoinHandle<()>)>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.client.peer_id())
            .finish()
    }
}

/// A protocol registered on a [`NodeBuilder`], waiting for the node to run.
type StartFn = Box<dyn FnOnce(Context) -> Result<Arc<dyn ProtocolHandler>, ProtocolError> + Send>;

/// Composes a node from its configuration, its transports and the application protocols
/// the binary registers.
pub struct NodeBuilder {
    data_dir: PathBuf,
    config: Config,
    transport: TransportKind,
    protocols: Vec<(&'static str, StartFn)>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("data_dir", &self.data_dir)
            .field("transport", &self.transport)
            .field(
                "protocols",
                &self.protocols.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl NodeBuilder {
    /// Runs the node on these transports (the real ones by default).
    pub fn transport(mut self, transport: TransportKind) -> Self {
        self.transport = transport;
        self
    }

    /// Registers an application protocol: it starts once the connection layer runs, in
    /// registration order, and stops (in reverse order) before it.
    pub fn protocol<P: Protocol>(mut self, protocol: P) -> Self {
        let name = protocol.name();
        self.protocols.push((
            name,
            Box::new(move |ctx| {
                let handler: Arc<dyn ProtocolHandler> = Arc::new(protocol.start(ctx)?);
                Ok(handler)
            }),
        ));
        self
    }

    /// Starts the node and its protocols.
    pub async fn start(self) -> Result<Node, StartError> {
        let Self {
            data_dir,
            config,
            transport,
            protocols,
        } = self;
        let data_dir = data_dir.as_path();
        let names = steps::unique_names(&protocols)?;
        identity::ensure_data_dir(data_dir)?;
        let keypair = identity::load_or_create(data_dir)?;
        let peer_id = keypair.public().to_peer_id();
        let signing_key = signing_key_of(&keypair).ok_or_else(|| IdentityError::Corrupt {
            path: data_dir.join(identity::IDENTITY_FILE),
            reason: "not an Ed25519 key".into(),
        })?;
        let span = tracing::info_span!("node", peer = %short_id(&peer_id.to_string()));
        let store = Store::open(data_dir)?;
        let trust = TrustDb::open(store.database().clone())?;
        let revoked = trust.revoked()?;
        let (networks, net_pushes) = crate::networks::Networks::open(
            crate::networks::db::NetworkDb::open(store.database().clone())?,
            signing_key.clone(),
        )?;
        let metrics = Arc::new(Metrics::new());
        // Bound before anything runs: a taken port is a start error, not a log line.
        let metrics_listener = match config.metrics {
            Some(addr) => Some((
                addr,
                crate::metrics::bind(addr)
                    .await
                    .map_err(|e| StartError::Metrics(addr, e))?,
            )),
            None => None,
        };
        let security = Arc::new(Security::new(
            signing_key.clone(),
            trust,
            config.pad,
            names,
            metrics.clone(),
        ));
        let bootstrap = steps::bootstrap_peers(&config)?;
        let swarm = steps::build_swarm(keypair, &config, transport, &bootstrap)?;

        let mut streams = swarm.behaviour().stream.new_control();
        let hole_punch = config.hole_punch == HolePunchMode::P2pnode && !config.relay_only;
        let mut accept = |protocol| {
            streams.accept(protocol).map_err(|e| {
                StartError::Listen(NodeError::Stream {
                    peer: peer_id.to_string(),
                    reason: e.to_string(),
                })
            })
        };
        let echo_incoming = accept(ECHO_PROTOCOL)?;
        let time_incoming = accept(TIME_PROTOCOL)?;
        let holepunch_incoming = if hole_punch {
            Some((accept(HOLEPUNCH_PROTOCOL)?, accept(INTRODUCE_PROTOCOL)?))
        } else {
            None
        };
        let (puncher, our_addrs, punch_dials) =
            holepunch::channels(streams.clone(), metrics.clone());
        let (store_tx, store_writer) =
            steps::spawn_store_writer(store.clone(), span.clone(), data_dir)?;

        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let mut event_loop = EventLoop::new(
            swarm,
            cmd_rx,
            Some(store_tx),
            LoopConfig {
                relay_server: config.relay,
                confirm_listen_addrs: config.relay && config.external_addresses.is_empty(),
                max_reservations: config.max_reservations,
                hole_punch,
                introduce: hole_punch && config.relay,
                data_dir: data_dir.to_path_buf(),
                relay_only: config.relay_only,
                hole_punch_mode: config.hole_punch.as_str(),
            },
            HolePunching {
                puncher: puncher.clone(),
                ours: our_addrs,
                dials: punch_dials,
            },
            metrics.clone(),
        );
        steps::first_peers(&mut event_loop, revoked, bootstrap, &store, peer_id)?;

        let stop = Arc::new(Notify::new());
        let loop_stop = stop.clone();
        let peer_changes = event_loop.peer_changes();
        let event_loop = tokio::spawn(tracing::Instrument::instrument(
            event_loop.run(async move { loop_stop.notified().await }),
            span.clone(),
        ));
        let echo = tokio::spawn(tracing::Instrument::instrument(
            async move {
                futures::join!(
                    serve_echo(echo_incoming, MAX_ECHO_STREAMS),
                    serve_time(time_incoming, MAX_ECHO_STREAMS),
                );
            },
            span.clone(),
        ));
        let holepunch = holepunch_incoming.map(|(exchanges, intros)| {
            tokio::spawn(tracing::Instrument::instrument(
                puncher.serve(exchanges, intros),
                span.clone(),
            ))
        });
        let verify_listener = span.in_scope(|| {
            SecureListener::new(security.clone(), &mut streams, VERIFY_PROTOCOL, "verify")
        });
        let verify = tokio::spawn(tracing::Instrument::instrument(
            serve_verify(
                security.clone(),
                verify_listener.map_err(StartError::Listen)?,
            ),
            span.clone(),
        ));
        let metrics_server = metrics_listener
            .map(|(configured, listener)| {
                steps::serve_metrics(listener, configured, &metrics, &stop, &span)
            })
            .transpose()?;
        let net_listener = span.in_scope(|| {
            SecureListener::new(
                security.clone(),
                &mut streams,
                crate::networks::exchange::NET_PROTOCOL,
                crate::networks::exchange::APP,
            )
        });
        let net_listener = net_listener.map_err(StartError::Listen)?;
        let client = Client::new(
            cmd_tx,
            streams,
            security,
            networks.clone(),
            peer_id,
            peer_changes,
        );
        let net_tasks = vec![
            tokio::spawn(tracing::Instrument::instrument(
                crate::networks::exchange::serve(networks.clone(), net_listener),
                span.clone(),
            )),
            tokio::spawn(tracing::Instrument::instrument(
                crate::networks::exchange::drive(client.clone(), networks, net_pushes),
                span.clone(),
            )),
        ];
        let node = Node {
            client,
            data_dir: data_dir.to_path_buf(),
            stop,
            event_loop,
            echo,
            holepunch,
            verify,
            net_tasks,
            protocols: Protocols::default(),
            store_writer: Some(store_writer),
            span,
            metrics,
            metrics_server,
        };
        let shared = steps::Shared {
            store: &store,
            signing_key: &signing_key,
            data_dir,
        };
        let node = steps::start_protocols(node, protocols, shared).await?;
        tracing::info!(peer = %peer_id, data_dir = %data_dir.display(), relay = config.relay, protocols = ?node.protocols, "node started");
        Ok(node)
    }
}

impl Node {
    /// A builder for a node with its data in `data_dir`: register protocols on it, then
    /// start it.
    pub fn builder(data_dir: &Path, config: Config) -> NodeBuilder {
        NodeBuilder {
            data_dir: data_dir.to_path_buf(),
            config,
            transport: TransportKind::Real,
            protocols: Vec::new(),
        }
    }

    /// Starts a node on the real transports with its data in `data_dir`, running no
    /// application protocol.
    pub async fn start(data_dir: &Path, config: Config) -> Result<Self, StartError> {
        Self::builder(data_dir, config).start().await
    }

    /// Starts a node on the chosen transports, running no application protocol.
    pub async fn start_with(
        data_dir: &Path,
        config: Config,
        transport: TransportKind,
    ) -> Result<Self, StartError> {
        Self::builder(data_dir, config)
            .transport(transport)
            .start()
            .await
    }

    /// A handle for commands.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The running application protocols.
    pub fn protocols(&self) -> &Protocols {
        &self.protocols
    }

    /// The running protocol handler of type `H`, if one is registered.
    pub fn protocol<H: ProtocolHandler>(&self) -> Option<&H> {
        self.protocols.get::<H>()
    }

    /// The node's metrics: a protocol may record into them, and they are served on
    /// [`Config::metrics`].
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Where the metrics endpoint listens (the port chosen when the config gave 0).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_server.as_ref().map(|(addr, _)| *addr)
    }

    /// The node's tracing span (`node{peer=...}`): tasks that serve this node, such as the
    /// control server, run in it.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the protocols (each drains and commits), then the event loop, closing every
    /// connection, and waits for the database writes.
    pub async fn shutdown(mut self) {
        // Protocols first: they must not write to streams of a swarm that is going away,
        // and they may still need it to finish what they acknowledged.
        self.protocols.shutdown().await;
        for task in &self.net_tasks {
            task.abort();
        }
        for task in self.net_tasks.drain(..) {
            let _ = task.await;
        }
        self.stop.notify_one();
        if let Err(e) = (&mut self.event_loop).await {
            tracing::warn!("event loop ended badly: {e}");
        }
        // The swarm is gone with the loop, so the stream control's incoming side ends too.
        self.echo.abort();
        let _ = (&mut self.echo).await;
        self.verify.abort();
        let _ = (&mut self.verify).await;
        // Every secure listener's accept loop is gone before we return, so a node started
        // again on this data directory finds its database closed.
        self.client.security().stop_listeners().await;
        if let Some(task) = self.holepunch.as_mut() {
            task.abort();
            let _ = task.await;
        }
        if let Some((_, task)) = self.metrics_server.as_mut() {
            task.abort();
            let _ = task.await;
        }
        if let Some(writer) = self.store_writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        tracing::info!("node stopped");
    }
}

//! The contract between the node and the application protocols (chat, files, sync, the
//! tunnel), modelled on iroh's `Router` + `ProtocolHandler`.
//!
//! The node knows no application protocol. A protocol crate implements [`Protocol`]; the
//! binary registers it on a [`NodeBuilder`](crate::NodeBuilder), which starts it once the
//! connection layer runs, handing it a [`Context`] (the [`Client`], the node's database,
//! its signing key, the node's span). What `start` returns, a [`ProtocolHandler`], is
//! what the node keeps: the control server sends it the requests under its route
//! prefixes (`/v1/<prefix>/...`), and the node calls its `shutdown` before the swarm
//! stops. The trust store's list of protocols is the list of registered names.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use libp2p::StreamProtocol;
use p2pnode_secure::SigningKey;
use redb::Database;

use crate::client::Client;
use crate::error::NodeError;
use crate::route::{ControlReply, ControlRequest};
use crate::secure::SecureListener;

/// An application protocol, before it runs: what a binary registers on the node.
pub trait Protocol: Send + 'static {
    /// What the node keeps of the running protocol.
    type Handler: ProtocolHandler;

    /// The protocol's name, as the trust store grants it (`chat`, `files`, ...).
    fn name(&self) -> &'static str;

    /// Starts the protocol on a running node. Called inside the node's span, before the
    /// control socket serves requests.
    fn start(self, ctx: Context) -> Result<Self::Handler, ProtocolError>;
}

/// A running application protocol, as the node and its control server see it.
pub trait ProtocolHandler: Any + Send + Sync {
    /// The first path segments of the control routes it serves (`/v1/<prefix>/...`),
    /// usually just its name. A prefix may be served by one protocol only.
    fn route_prefixes(&self) -> &[&'static str];

    /// Serves one control request whose path is under one of its prefixes.
    fn handle(&self, request: ControlRequest) -> BoxFuture<'static, ControlReply>;

    /// Stops the protocol: takes no new work, commits what it acknowledged and ends its
    /// tasks. Called before the swarm stops, so streams are still up while it drains.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// The one task that owns a protocol's state and the signal that stops it: what
/// [`ProtocolHandler::shutdown`] does for such a service (chat, sync) is stop it and wait
/// until it has committed what it acknowledged.
pub struct OwnerTask {
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for OwnerTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnerTask")
    }
}

impl OwnerTask {
    /// `task`, which ends once `stop` fires (or its receiver sees it dropped).
    pub fn new(stop: tokio::sync::oneshot::Sender<()>, task: tokio::task::JoinHandle<()>) -> Self {
        Self {
            stop: Mutex::new(Some(stop)),
            task: tokio::sync::Mutex::new(Some(task)),
        }
    }

    /// Signals the task to stop and waits for it to end; later calls return at once.
    /// `name` names the service in the warning if the task ended badly.
    pub async fn stop(&self, name: &str) {
        if let Some(stop) = self.stop.lock().ok().and_then(|mut s| s.take()) {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.lock().await.take()
            && let Err(e) = task.await
        {
            tracing::warn!("{name} service ended badly: {e}");
        }
    }
}

/// A protocol could not start.
#[derive(Debug, thiserror::Error)]
#[error("protocol {protocol} could not start: {source}")]
pub struct ProtocolError {
    /// The protocol's name.
    pub protocol: &'static str,
    /// Why.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl ProtocolError {
    /// An error of protocol `protocol`.
    pub fn new(
        protocol: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            protocol,
            source: source.into(),
        }
    }
}

/// What a protocol gets from the node when it starts.
pub struct Context {
    pub(crate) name: &'static str,
    pub(crate) client: Client,
    pub(crate) database: Arc<Database>,
    pub(crate) signing_key: SigningKey,
    pub(crate) data_dir: PathBuf,
    pub(crate) span: tracing::Span,
    pub(crate) accepted: Arc<Mutex<Vec<(&'static str, StreamProtocol)>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("name", &self.name).finish()
    }
}

impl Context {
    /// The protocol's registered name (its trust-store name).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The node's handle: connect, publish, open secure streams.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The node's database, for the protocol's own tables (prefix their names with the
    /// protocol's name).
    pub fn database(&self) -> &Arc<Database> {
        &self.database
    }

    /// The node's identity key (the Ed25519 key its peer id carries), for protocols that
    /// sign what they publish.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// The node's data directory, for protocols that keep files.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The node's networks: ask whether a peer is a current member of a network before
    /// serving it anything of that network, and subscribe to changes to close a revoked
    /// member's streams at once.
    pub fn networks(&self) -> &crate::networks::Networks {
        self.client.networks()
    }

    /// The node's span: tasks the protocol spawns should run in it.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Accepts `protocol` streams, each after the trust check for this protocol's name and
    /// the post-quantum handshake. There is no other way to accept application streams.
    pub fn listen(&self, protocol: StreamProtocol) -> Result<SecureListener, NodeError> {
        let listener = self.client.secure_listener(protocol.clone(), self.name)?;
        if let Ok(mut accepted) = self.accepted.lock() {
            accepted.push((self.name, protocol));
        }
        Ok(listener)
    }
}

/// One registered, running protocol.
#[derive(Clone)]
pub(crate) struct Registered {
    pub(crate) name: &'static str,
    pub(crate) handler: Arc<dyn ProtocolHandler>,
}

/// The running protocols of a node: what the control server dispatches to. Cheap to
/// clone.
#[derive(Clone, Default)]
pub struct Protocols {
    list: Arc<[Registered]>,
    accepted: Arc<Mutex<Vec<(&'static str, StreamProtocol)>>>,
}

impl std::fmt::Debug for Protocols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Protocols {
    pub(crate) fn new(
        list: Vec<Registered>,
        accepted: Arc<Mutex<Vec<(&'static str, StreamProtocol)>>>,
    ) -> Self {
        Self {
            list: list.into(),
            accepted,
        }
    }

    /// The registered protocols' names, in registration order.
    pub fn names(&self) -> Vec<&'static str> {
        self.list.iter().map(|r| r.name).collect()
    }

    /// The stream protocols each registered protocol accepts.
    pub fn stream_protocols(&self) -> Vec<(&'static str, StreamProtocol)> {
        self.accepted.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// The running handler of type `H`, if one is registered.
    pub fn get<H: ProtocolHandler>(&self) -> Option<&H> {
        self.list.iter().find_map(|r| {
            let any: &dyn Any = &*r.handler;
            any.downcast_ref::<H>()
        })
    }

    /// The handler serving the control routes under `/v1/<prefix>/`.
    pub(crate) fn for_route(&self, prefix: &str) -> Option<&Arc<dyn ProtocolHandler>> {
        self.list
            .iter()
            .find(|r| r.handler.route_prefixes().contains(&prefix))
            .map(|r| &r.handler)
    }

    /// Shuts every protocol down, the last registered first.
    pub(crate) async fn shutdown(&self) {
        for r in self.list.iter().rev() {
            r.handler.shutdown().await;
            tracing::debug!(protocol = r.name, "protocol stopped");
        }
    }
}

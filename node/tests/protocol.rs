//! The protocol contract, proved with a protocol written only for this test: an echo over
//! secure streams with one control route, registered on test nodes without any change to
//! the node itself. It gets its streams through the secure gate under its own trust name,
//! its control route through the node's control socket, and its `shutdown` before the
//! swarm stops.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::common::{WAIT, addr_of, memory_config, start_memory_with};
use futures::future::BoxFuture;
use p2pnode_node::control::{self, ControlClient, ControlError, ControlReply, ControlRequest};
use p2pnode_node::{
    Context, Node, NodeError, Protocol, ProtocolError, ProtocolHandler, StartError, StreamProtocol,
    TransportKind,
};
use p2pnode_secure::TrustDecision;
use serde::{Deserialize, Serialize};

const NAME: &str = "echo-test";
const STREAM: StreamProtocol = StreamProtocol::new("/p2pnode-test/echo/1");

/// The protocol as registered.
#[derive(Default)]
struct Echo {
    /// Set once the service has shut down.
    stopped: Arc<AtomicBool>,
}

/// The running protocol.
struct EchoService {
    echoed: Arc<AtomicUsize>,
    stopped: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Say {
    text: String,
}

impl Protocol for Echo {
    type Handler = EchoService;

    fn name(&self) -> &'static str {
        NAME
    }

    fn start(self, ctx: Context) -> Result<EchoService, ProtocolError> {
        let mut listener = ctx
            .listen(STREAM)
            .map_err(|e| ProtocolError::new(NAME, e))?;
        let echoed = Arc::new(AtomicUsize::new(0));
        let count = echoed.clone();
        let task = tokio::spawn(async move {
            while let Some(mut accepted) = listener.next().await {
                // Only peers granted this protocol get an echo.
                if accepted.decision != TrustDecision::Allow {
                    continue;
                }
                if let Ok(msg) = accepted.stream.recv().await
                    && accepted.stream.send(&msg).await.is_ok()
                {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Ok(EchoService {
            echoed,
            stopped: self.stopped,
            task,
        })
    }
}

impl ProtocolHandler for EchoService {
    fn route_prefixes(&self) -> &[&'static str] {
        &[NAME]
    }

    fn handle(&self, request: ControlRequest) -> BoxFuture<'static, ControlReply> {
        let echoed = self.echoed.load(Ordering::SeqCst);
        Box::pin(async move {
            match (request.method(), request.route()) {
                (control::Method::Post, "echo-test/say") => {
                    ControlReply::from_result(request.json::<Say>())
                }
                (control::Method::Get, "echo-test/count") => ControlReply::ok(&echoed),
                (_, route) => ControlReply::unknown(route),
            }
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.task.abort();
            self.stopped.store(true, Ordering::SeqCst);
        })
    }
}

async fn start_with_echo(dir: &std::path::Path, echo: Echo) -> Node {
    start_memory_with(dir, echo).await
}

#[tokio::test]
async fn a_registered_protocol_gets_secure_streams_under_its_own_trust_name() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_with_echo(da.path(), Echo::default()).await;
    let b = start_with_echo(db.path(), Echo::default()).await;
    let (a_id, b_id) = (a.client().peer_id(), b.client().peer_id());
    assert_eq!(b.protocols().names(), vec![NAME]);
    assert_eq!(
        b.protocols().stream_protocols(),
        vec![(NAME, STREAM)],
        "the node knows which streams each protocol accepts"
    );
    a.client().connect_addr(addr_of(&b).await).await.unwrap();

    // The trust store's protocols are the registered ones.
    let err = b
        .client()
        .allow(a_id, &["files".to_string()])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown protocol") && err.to_string().contains(NAME),
        "{err}"
    );
    let granted = b.client().allow(a_id, &[]).await.unwrap();
    assert_eq!(granted.allowed_protocols, vec![NAME.to_string()]);

    let mut stream = a.client().open_secure(b_id, STREAM, NAME).await.unwrap();
    stream.send(b"through the gate").await.unwrap();
    let back = tokio::time::timeout(WAIT, stream.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"through the gate");
    assert_eq!(
        b.protocol::<EchoService>()
            .unwrap()
            .echoed
            .load(Ordering::SeqCst),
        1
    );

    // Revoked: refused before a byte of the protocol moves.
    b.client().revoke(a_id).await.unwrap();
    let refused = a.client().open_secure(b_id, STREAM, NAME).await;
    assert!(refused.is_err(), "a revoked peer's stream was served");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn the_control_socket_hands_a_protocol_its_routes_and_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with_echo(dir.path(), Echo::default()).await;
    let listener = control::bind(dir.path()).await.unwrap();
    let stop = Arc::new(tokio::sync::Notify::new());
    let server = tokio::spawn(control::serve(
        listener,
        node.client().clone(),
        node.protocols().clone(),
        Arc::new(tokio::sync::Notify::new()),
        stop.clone(),
    ));
    let ctl = ControlClient::new(dir.path());

    let said: Say = ctl
        .post("echo-test/say", &Say { text: "hi".into() })
        .await
        .unwrap();
    assert_eq!(said.text, "hi");
    let count: usize = ctl.get("echo-test/count").await.unwrap();
    assert_eq!(count, 0);
    // A malformed body gets the protocol's error, as JSON with a kind.
    let bad = ctl
        .post::<Say, _>("echo-test/say", &serde_json::json!({ "nope": 1 }))
        .await
        .unwrap_err();
    assert_eq!(bad.kind(), "invalid_input", "{bad}");
    // The node's own routes are still the node's.
    let status: p2pnode_node::api::Status = ctl.get("status").await.unwrap();
    assert_eq!(status.peer_id, node.client().peer_id().to_string());
    // A prefix nobody registered is an unknown endpoint.
    match ctl.get::<serde_json::Value>("chat/requests").await {
        Err(ControlError::Api(body)) => assert_eq!(body.kind, "unknown_endpoint"),
        other => panic!("expected unknown_endpoint, got {other:?}"),
    }
    stop.notify_one();
    server.await.unwrap();
    node.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_protocols_and_a_name_registers_once() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::default();
    let stopped = echo.stopped.clone();
    let node = start_with_echo(dir.path(), echo).await;
    assert!(!stopped.load(Ordering::SeqCst));
    node.shutdown().await;
    assert!(
        stopped.load(Ordering::SeqCst),
        "shutdown skipped the protocol"
    );

    let err = Node::builder(dir.path(), memory_config())
        .transport(TransportKind::Memory)
        .protocol(Echo::default())
        .protocol(Echo::default())
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StartError::DuplicateProtocol(n) if n == NAME),
        "{err}"
    );
}

#[tokio::test]
async fn a_node_without_protocols_grants_none_and_refuses_unknown_names() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), memory_config(), TransportKind::Memory)
        .await
        .unwrap();
    let peer = p2pnode_node::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let err = node
        .client()
        .allow(peer, &[NAME.to_string()])
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::InvalidInput(_)), "{err}");
    assert!(node.protocols().names().is_empty());
    assert!(node.protocol::<EchoService>().is_none());
    node.shutdown().await;
}

/// A protocol that cannot start.
struct Broken;

impl Protocol for Broken {
    type Handler = EchoService;

    fn name(&self) -> &'static str {
        "broken-test"
    }

    fn start(self, _ctx: Context) -> Result<EchoService, ProtocolError> {
        Err(ProtocolError::new("broken-test", "no room for it"))
    }
}

/// A protocol of another name that claims the echo's control route prefix.
struct Squatter;

struct SquatterService;

impl Protocol for Squatter {
    type Handler = SquatterService;

    fn name(&self) -> &'static str {
        "squatter-test"
    }

    fn start(self, _ctx: Context) -> Result<SquatterService, ProtocolError> {
        Ok(SquatterService)
    }
}

impl ProtocolHandler for SquatterService {
    fn route_prefixes(&self) -> &[&'static str] {
        &[NAME]
    }

    fn handle(&self, request: ControlRequest) -> BoxFuture<'static, ControlReply> {
        let route = request.route().to_string();
        Box::pin(async move { ControlReply::unknown(&route) })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Starts a node with the echo, then `then`: the refusal, and whether the echo was
/// stopped behind it.
async fn refused_after_echo<P: Protocol>(dir: &std::path::Path, then: P) -> (StartError, bool) {
    let echo = Echo::default();
    let stopped = echo.stopped.clone();
    let err = Node::builder(dir, memory_config())
        .transport(TransportKind::Memory)
        .protocol(echo)
        .protocol(then)
        .start()
        .await
        .unwrap_err();
    (err, stopped.load(Ordering::SeqCst))
}

#[tokio::test]
async fn a_refused_protocol_stops_those_started_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (err, stopped) = refused_after_echo(dir.path(), Broken).await;
    assert!(matches!(err, StartError::Protocol(_)), "{err}");
    assert!(err.to_string().contains("no room for it"), "{err}");
    assert!(stopped, "the echo was left running");

    let (err, stopped) = refused_after_echo(dir.path(), Squatter).await;
    assert!(
        matches!(&err, StartError::DuplicateProtocol(p) if p == NAME),
        "{err}"
    );
    assert!(stopped, "the echo was left running");

    // The node behind each refusal stopped too: its database is free for the next.
    start_with_echo(dir.path(), Echo::default())
        .await
        .shutdown()
        .await;
}

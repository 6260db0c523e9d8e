//! Helpers shared by the in-process tests: waiting for events and reading a node's state.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::time::Duration;

use p2pnode_node::{Multiaddr, Node, PeerId};

/// How long a test waits for any one event.
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `check` until it yields a value, failing the test after [`WAIT`].
pub async fn wait_for<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("condition not reached in time")
}

/// The node's first listen address, with its peer id.
pub async fn addr_of(node: &Node) -> Multiaddr {
    let a = wait_for(|| async {
        node.client()
            .status()
            .await
            .ok()?
            .listen_addrs
            .first()
            .cloned()
    })
    .await;
    format!("{a}/p2p/{}", node.client().peer_id())
        .parse()
        .unwrap()
}

/// The configuration of an in-process test node: the memory transport, no mDNS.
pub fn memory_config() -> p2pnode_node::Config {
    p2pnode_node::Config {
        listen: vec!["/memory/0".parse().unwrap()],
        mdns: false,
        ..p2pnode_node::Config::default()
    }
}

/// Starts a node on the memory transport with one registered protocol.
pub async fn start_memory_with<P: p2pnode_node::Protocol>(
    dir: &std::path::Path,
    protocol: P,
) -> Node {
    Node::builder(dir, memory_config())
        .transport(p2pnode_node::TransportKind::Memory)
        .protocol(protocol)
        .start()
        .await
        .unwrap()
}

/// Whether `a` lists `b` among its connected peers.
pub async fn connected(a: &Node, b: PeerId) -> bool {
    a.client()
        .peers()
        .await
        .unwrap()
        .iter()
        .any(|p| p.peer_id == b.to_string())
}

/// A protocol that only has a name: registered so the trust store knows it, for tests of
/// the secure gate that open and accept streams under that name themselves.
pub struct Named(pub &'static str);

/// The running [`Named`] protocol: no routes, nothing to stop.
pub struct NamedHandler;

impl p2pnode_node::Protocol for Named {
    type Handler = NamedHandler;

    fn name(&self) -> &'static str {
        self.0
    }

    fn start(
        self,
        _ctx: p2pnode_node::Context,
    ) -> Result<NamedHandler, p2pnode_node::ProtocolError> {
        Ok(NamedHandler)
    }
}

impl p2pnode_node::ProtocolHandler for NamedHandler {
    fn route_prefixes(&self) -> &[&'static str] {
        &[]
    }

    fn handle(
        &self,
        request: p2pnode_node::control::ControlRequest,
    ) -> futures::future::BoxFuture<'static, p2pnode_node::control::ControlReply> {
        let route = request.route().to_string();
        Box::pin(async move { p2pnode_node::control::ControlReply::unknown(&route) })
    }

    fn shutdown(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

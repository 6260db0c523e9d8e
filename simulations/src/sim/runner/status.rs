//! Polling a node's status (virtual time): its listen address, a connection, and its
//! own-id lookup.

use std::time::Duration;

use libp2p::multiaddr::Protocol;
use p2pnode_node::{Client, Multiaddr, NodeError};
use tokio::time::Instant;

use super::{LISTEN_WAIT, POLL, RECONNECT_WAIT, SELF_LOOKUP_ATTEMPTS, SelfLookup};

/// Waits for a first connection, then looks up the node's own id (Kademlia's join). A
/// lookup that finds the node without a connection is tried again once the node has one
/// back: under load a join's connection handshakes can run out their (wall-clock) time,
/// and the node redials its bootstrap peers by itself, as a real node on a bad link would.
pub(super) async fn self_lookup(client: &Client) -> SelfLookup {
    let start = Instant::now();
    // Look up once connected to a bootstrap peer, as a node's own DHT bootstrap does.
    // Started at once, the lookup would also wait for the bootstrap dials on Kademlia's
    // 10 s wall-clock peer timeout: on a link of 100 ms each way, late in a big run (tens
    // of wall seconds per virtual one), the connection came after it and the lookup ended
    // unanswered. This narrows that window, it does not close it: the request's own round
    // trip can still outlast 10 wall seconds.
    reconnected(client).await;
    let mut tries = 0;
    while tries < SELF_LOOKUP_ATTEMPTS {
        tries += 1;
        match client.find(client.peer_id()).await {
            // Finding ourselves (a peer already knew us) or learning that nobody else has
            // our id both mean the lookup went through the network.
            Ok(_) | Err(NodeError::NotFound { .. }) => {
                return SelfLookup {
                    took: Some(start.elapsed()),
                    tries,
                };
            }
            Err(NodeError::NoPeers) if tries < SELF_LOOKUP_ATTEMPTS => {
                tracing::info!(tries, "own-id lookup found no connection; trying again");
                reconnected(client).await;
            }
            Err(e) => {
                tracing::warn!(tries, "own-id lookup failed: {e}");
                break;
            }
        }
    }
    SelfLookup { took: None, tries }
}

/// Waits until the node is connected to a peer, for at most [`RECONNECT_WAIT`] (virtual
/// time: polling costs no wall time).
async fn reconnected(client: &Client) {
    poll_status(client, RECONNECT_WAIT, |s| {
        (s.connected_peers > 0).then_some(())
    })
    .await;
}

/// The node's first listen address with its peer id, once it reports one.
pub(super) async fn listen_addr(client: &Client) -> Option<Multiaddr> {
    let addr = poll_status(client, LISTEN_WAIT, |s| {
        s.listen_addrs.first()?.parse::<Multiaddr>().ok()
    })
    .await?;
    Some(addr.with(Protocol::P2p(client.peer_id())))
}

/// Checks the node's status every [`POLL`] until `check` yields a value, for at most
/// `limit` (virtual time).
async fn poll_status<T>(
    client: &Client,
    limit: Duration,
    check: impl Fn(&p2pnode_node::api::Status) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(v) = client.status().await.ok().as_ref().and_then(&check) {
            return Some(v);
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

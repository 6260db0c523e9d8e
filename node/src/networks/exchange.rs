//! The exchange of membership records between members: the node-internal stream protocol
//! [`NET_PROTOCOL`], through the secure gate like every application stream (the trust
//! store's revoked peers and changed keys are refused there; membership decides the rest).
//!
//! A stream carries requests from its opener, each answered before the next:
//! - `Sync { network, heads, ops }`: the opener's heads and ops the other side may lack.
//!   The answerer takes the ops (they are judged by their signatures and the record's
//!   rules, so their relayer does not matter), then, only if its record names the opener
//!   a current member, answers with its heads and the ops the opener lacks; otherwise
//!   `NotShared`, the same answer as for a network it does not hold, so a non-member learns
//!   nothing. Rounds repeat until neither side has anything new ([`MAX_ROUNDS`] at most).
//! - `Join { request, name }`: a join request; the answer is the first batch of the record
//!   (then `Sync` rounds fetch the rest) or `Refused` with the reason.
//!
//! The opener is the side whose record names the other as a member: on every new
//! connection for every shared network, and for every push of new ops. Bounds: messages
//! fit one secure frame ([`MAX_MESSAGE`]), ops per message [`MAX_SYNC_BATCH`], streams
//! served at once [`MAX_SERVING`] and per peer [`MAX_SERVING_PER_PEER`], exchanges we
//! open at once [`MAX_OPENING`], rounds per stream, and a deadline per stream.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId, StreamProtocol};
use p2pnode_secure::SecureStream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{NetError, NetInfo, Networks, Push, parse_ticket};
use crate::client::Client;
use crate::network::{Bin, JoinRequest, MAX_SYNC_BATCH, NetworkId, OpId, SignedOp, WireJoin};
use crate::secure::SecureListener;

/// The stream protocol of the membership exchange.
pub const NET_PROTOCOL: StreamProtocol = StreamProtocol::new("/p2pnode/net/1");
/// The name the trust store sees for it.
pub const APP: &str = "net";
/// Largest message: one secure frame, with room for the CBOR around the ops.
pub const MAX_MESSAGE: usize = p2pnode_secure::session::MAX_PAYLOAD_LEN;
/// Bytes of encoded ops put in one message.
const MAX_OPS_BYTES: usize = MAX_MESSAGE - 4096;
/// Requests one stream may carry.
pub const MAX_ROUNDS: usize = 40;
/// Streams served at once.
pub const MAX_SERVING: usize = 32;
/// Streams of one peer served at once.
pub const MAX_SERVING_PER_PEER: usize = 2;
/// Exchanges we open at once; past it a new one waits for the next connection or push.
pub const MAX_OPENING: usize = 32;
/// A whole exchange (open, handshake, rounds) gives up after this long.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);
/// Most connected peers looked at per change.
const MAX_PEERS: usize = 1024;

#[derive(Serialize, Deserialize)]
enum Request {
    Sync {
        network: Bin,
        heads: Vec<Bin>,
        ops: Vec<Bin>,
    },
    Join {
        request: WireJoin,
        name: Option<String>,
    },
}

#[derive(Serialize, Deserialize)]
enum Response {
    Sync { heads: Vec<Bin>, ops: Vec<Bin> },
    Joined { ops: Vec<Bin> },
    NotShared,
    Refused { reason: String },
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    crate::network::cbor(v)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    ciborium::from_reader(bytes).ok()
}

/// The ops of `ops` that fit one message, in order.
fn fit(ops: Vec<SignedOp>) -> Vec<Bin> {
    let mut total = 0;
    let mut out = Vec::new();
    for op in ops {
        total += op.encoded().len();
        if total > MAX_OPS_BYTES || out.len() >= MAX_SYNC_BATCH {
            break;
        }
        out.push(Bin(op.encoded().to_vec()));
    }
    out
}

fn decode_ops(ops: Vec<Bin>) -> Vec<SignedOp> {
    ops.into_iter()
        .take(MAX_SYNC_BATCH)
        .filter_map(|b| SignedOp::decode(&b.0).ok())
        .collect()
}

fn heads(h: &[OpId]) -> Vec<Bin> {
    h.iter().map(|i| Bin(i.0.to_vec())).collect()
}

fn op_ids(h: Vec<Bin>) -> Vec<OpId> {
    h.into_iter()
        .take(crate::network::MAX_HEADS)
        .filter_map(|b| b.array().map(OpId))
        .collect()
}

type Stream = SecureStream<libp2p::Stream>;

fn exchange_err(peer: PeerId, reason: impl ToString) -> NetError {
    NetError::Exchange {
        peer: peer.to_string(),
        reason: reason.to_string(),
    }
}

async fn ask(stream: &mut Stream, peer: PeerId, req: &Request) -> Result<Response, NetError> {
    stream
        .send(&encode(req))
        .await
        .map_err(|e| exchange_err(peer, e))?;
    let bytes = stream.recv().await.map_err(|e| exchange_err(peer, e))?;
    decode(&bytes).ok_or_else(|| exchange_err(peer, "malformed answer"))
}

/// Runs `Sync` rounds on `stream` for `network`, the first carrying `first` (pushed ops).
async fn sync_rounds(
    networks: &Networks,
    stream: &mut Stream,
    peer: PeerId,
    network: NetworkId,
    first: Vec<SignedOp>,
) -> Result<(), NetError> {
    let mut send = first;
    let mut retried = false;
    for _ in 0..MAX_ROUNDS {
        let req = Request::Sync {
            network: Bin(network.0.to_vec()),
            heads: heads(&networks.heads(&network).unwrap_or_default()),
            ops: fit(send),
        };
        match ask(stream, peer, &req).await? {
            Response::Sync { heads: theirs, ops } => {
                let ops = decode_ops(ops);
                let got = ops.len();
                let net = networks.clone();
                tokio::task::spawn_blocking(move || net.apply_remote(peer, &network, ops))
                    .await
                    .map_err(|_| NetError::Node(crate::error::NodeError::Stopped))??;
                send = networks.missing_for(&network, &op_ids(theirs));
                if send.is_empty() && got == 0 {
                    return Ok(());
                }
            }
            // Our record names the peer a member, its does not name us (it missed ops we
            // hold, such as our own add): send it everything once, then stop.
            Response::NotShared if !retried && networks.holds(&network) => {
                retried = true;
                send = networks.missing_for(&network, &[]);
            }
            Response::NotShared => return Ok(()),
            Response::Joined { .. } | Response::Refused { .. } => {
                return Err(exchange_err(peer, "unexpected answer"));
            }
        }
    }
    Ok(())
}

/// One exchange we open: `network` with `peer`, starting with `ops`.
async fn exchange(
    client: Client,
    networks: Networks,
    peer: PeerId,
    network: NetworkId,
    ops: Vec<SignedOp>,
) {
    let run = async {
        let mut stream = client.open_secure(peer, NET_PROTOCOL, APP).await?;
        sync_rounds(&networks, &mut stream, peer, network, ops).await?;
        let _ = stream.close().await;
        Ok::<_, NetError>(())
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, run).await {
        Ok(Ok(())) => tracing::debug!(%peer, "network record exchanged"),
        Ok(Err(e)) => tracing::debug!(%peer, "network exchange failed: {e}"),
        Err(_) => tracing::debug!(%peer, "network exchange timed out"),
    }
}

/// Opens exchanges: with every newly connected peer for each network both are in, and
/// with the connected members for every push. Ends when the node's client stops.
pub(crate) async fn drive(client: Client, networks: Networks, mut pushes: mpsc::Receiver<Push>) {
    let mut known: HashSet<PeerId> = HashSet::new();
    let mut tasks = JoinSet::new();
    // The peers are looked at when they change, not on a timer (an idle node then does
    // nothing here), and once at the start for those connected already.
    let mut changes = client.peer_changes();
    changes.mark_changed();
    loop {
        let mut start: Vec<(PeerId, NetworkId, Vec<SignedOp>)> = Vec::new();
        tokio::select! {
            push = pushes.recv() => {
                let Some(push) = push else { break };
                let Ok(peers) = client.peers().await else { break };
                let connected: HashSet<PeerId> =
                    peers.iter().filter_map(|p| p.peer_id.parse().ok()).collect();
                for peer in push.to.into_iter().filter(|p| connected.contains(p)) {
                    start.push((peer, push.network, push.ops.clone()));
                }
            }
            changed = changes.changed() => {
                // The event loop has ended.
                if changed.is_err() {
                    break;
                }
                let Ok(peers) = client.peers().await else { break };
                let now: HashSet<PeerId> = peers
                    .iter()
                    .filter_map(|p| p.peer_id.parse().ok())
                    .take(MAX_PEERS)
                    .collect();
                for peer in now.difference(&known) {
                    for network in networks.shared_with(peer) {
                        start.push((*peer, network, Vec::new()));
                    }
                }
                known = now;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
        for (peer, network, ops) in start {
            if tasks.len() >= MAX_OPENING {
                tracing::warn!(%peer, "{MAX_OPENING} network exchanges under way; skipping one");
                continue;
            }
            tasks.spawn(exchange(
                client.clone(),
                networks.clone(),
                peer,
                network,
                ops,
            ));
        }
    }
    tasks.shutdown().await;
}

/// Serves the exchange streams others open.
pub(crate) async fn serve(networks: Networks, mut listener: SecureListener) {
    let busy: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.next() => match a { Some(a) => a, None => break },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let peer = accepted.peer;
        if tasks.len() >= MAX_SERVING {
            tracing::debug!(%peer, "network exchange refused: {MAX_SERVING} served");
            continue;
        }
        {
            let mut b = busy.lock().unwrap_or_else(|e| e.into_inner());
            let n = b.entry(peer).or_insert(0);
            if *n >= MAX_SERVING_PER_PEER {
                tracing::debug!(%peer, "network exchange refused: peer busy");
                continue;
            }
            *n += 1;
        }
        let (networks, busy) = (networks.clone(), busy.clone());
        tasks.spawn(async move {
            let _ =
                tokio::time::timeout(EXCHANGE_TIMEOUT, answer(&networks, peer, accepted.stream))
                    .await;
            let mut b = busy.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = b.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    b.remove(&peer);
                }
            }
        });
    }
    tasks.shutdown().await;
}

/// Answers one stream's requests.
async fn answer(networks: &Networks, peer: PeerId, mut stream: Stream) {
    for _ in 0..MAX_ROUNDS {
        let Ok(bytes) = stream.recv().await else {
            return;
        };
        let Some(req) = decode::<Request>(&bytes) else {
            tracing::debug!(%peer, "malformed network request");
            return;
        };
        let net = networks.clone();
        let Ok(resp) = tokio::task::spawn_blocking(move || respond(&net, peer, req)).await else {
            return;
        };
        if stream.send(&encode(&resp)).await.is_err() {
            return;
        }
    }
}

fn respond(networks: &Networks, peer: PeerId, req: Request) -> Response {
    match req {
        Request::Sync {
            network,
            heads: theirs,
            ops,
        } => {
            let Some(network) = network.array().map(NetworkId) else {
                return Response::NotShared;
            };
            if let Err(e) = networks.apply_remote(peer, &network, decode_ops(ops)) {
                tracing::warn!(%peer, "network ops not taken: {e}");
            }
            if !networks.is_member_id(&network, &peer)
                || !networks.is_member_id(&network, &networks.me())
            {
                if networks.holds(&network) {
                    networks.count_refused();
                }
                return Response::NotShared;
            }
            Response::Sync {
                heads: heads(&networks.heads(&network).unwrap_or_default()),
                ops: fit(networks.missing_for(&network, &op_ids(theirs))),
            }
        }
        Request::Join { request, name } => {
            let request = match JoinRequest::from_wire(request) {
                Ok(r) => r,
                Err(e) => {
                    return Response::Refused {
                        reason: format!("invalid invite: {e}"),
                    };
                }
            };
            match networks.admit(peer, request, name) {
                Ok(ops) => Response::Joined { ops: fit(ops) },
                Err(e) => {
                    tracing::info!(%peer, "join refused: {e}");
                    Response::Refused {
                        reason: e.to_string(),
                    }
                }
            }
        }
    }
}

/// Joins with `ticket`: checks it here first (forged and expired tickets never leave this
/// node), reaches the issuer, presents the join request and keeps the record it sends.
/// Nothing is stored unless the record names us a member.
pub async fn join(
    client: &Client,
    networks: &Networks,
    ticket: &str,
    name: Option<String>,
) -> Result<NetInfo, NetError> {
    let (token, addrs) = parse_ticket(ticket)?;
    let invite = token.invite().clone();
    if super::now_ms() > invite.expires_ms {
        return Err(NetError::Refused {
            what: "invalid invite",
            source: crate::network::OpError::InviteExpired,
        });
    }
    if networks.holds(&invite.network) && networks.is_member_id(&invite.network, &networks.me()) {
        return Err(NetError::Invalid("already a member of this network".into()));
    }
    let issuer = invite.issuer;
    // Whom to ask, in order: the issuer at its addresses, then the other members the ticket
    // names, one peer at a time.
    let mut candidates: Vec<(PeerId, Vec<Multiaddr>)> = vec![(issuer, Vec::new())];
    for addr in addrs {
        // An address without `/p2p/<id>` is the issuer's.
        let (peer, addr) = match crate::event_loop::peer_of(&addr) {
            Some(peer) => (peer, addr),
            None => (issuer, addr.with(libp2p::multiaddr::Protocol::P2p(issuer))),
        };
        match candidates.iter_mut().find(|(p, _)| *p == peer) {
            Some((_, list)) => list.push(addr),
            None => candidates.push((peer, vec![addr])),
        }
    }
    let request = token.join_request(&networks.me());
    let mut last = None;
    for (peer, addrs) in candidates {
        let attempt = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
            reach(client, peer, addrs, peer == issuer).await?;
            join_through(
                client,
                networks,
                peer,
                &request,
                invite.network,
                name.clone(),
            )
            .await
        })
        .await
        .unwrap_or_else(|_| Err(exchange_err(peer, "timed out")));
        match attempt {
            Ok(info) => return Ok(info),
            // A member's refusal is the network's answer (the invite is used up, expired or
            // revoked in the record every member holds): asking another would not help.
            Err(e @ NetError::JoinRefused { .. }) => return Err(e),
            Err(e) => {
                tracing::debug!(%peer, "join: no answer from this member: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| exchange_err(issuer, "no member reachable")))
}

/// Connects to `peer` at one of `addrs`, or else (for the issuer) wherever the DHT says it
/// is now.
async fn reach(
    client: &Client,
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    look_up: bool,
) -> Result<(), NetError> {
    for addr in addrs {
        match client.connect_addr(addr.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => tracing::debug!(%addr, "join: cannot reach {peer} there: {e}"),
        }
    }
    if look_up {
        client.connect_peer(peer).await?;
        return Ok(());
    }
    Err(exchange_err(
        peer,
        "not reachable at the ticket's addresses",
    ))
}

/// Presents the join request to `member` and keeps the record it answers with.
async fn join_through(
    client: &Client,
    networks: &Networks,
    member: PeerId,
    request: &JoinRequest,
    network: NetworkId,
    name: Option<String>,
) -> Result<NetInfo, NetError> {
    let mut stream = client.open_secure(member, NET_PROTOCOL, APP).await?;
    let req = Request::Join {
        request: request.to_wire(),
        name,
    };
    let ops = match ask(&mut stream, member, &req).await? {
        Response::Joined { ops } => decode_ops(ops),
        Response::Refused { reason } => {
            return Err(NetError::JoinRefused {
                peer: member.to_string(),
                reason,
            });
        }
        _ => return Err(exchange_err(member, "unexpected answer")),
    };
    // Every op's signature is checked and the record committed (an fsync): off the runtime.
    let net = networks.clone();
    let info = tokio::task::spawn_blocking(move || {
        let record = net.joined(network, ops)?;
        net.keep_joined(record)
    })
    .await
    .map_err(|_| NetError::Node(crate::error::NodeError::Stopped))??;
    // The rest of a record larger than one message.
    sync_rounds(networks, &mut stream, member, network, Vec::new()).await?;
    let _ = stream.close().await;
    Ok(info)
}

//! The control routes of networks, `/v1/net/...`, and their request bodies (the CLI sends
//! the same types).

use std::time::Duration;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

use super::{NetError, Networks};
use crate::client::Client;
use crate::peer::parse_peer_id;
use crate::route::{ControlReply, ControlRequest, Method};

/// `GET`: the networks we hold ([`super::NetInfo`]s).
pub const LIST: &str = "net";
/// `POST` [`NetworkRequest`]: make a network.
pub const CREATE: &str = "net/create";
/// `POST` [`InviteRequest`]: an invite ticket.
pub const INVITE: &str = "net/invite";
/// `POST` [`JoinRequestBody`]: join with a ticket.
pub const JOIN: &str = "net/join";
/// `POST` [`NetworkRequest`]: the members ([`super::MemberInfo`]s).
pub const MEMBERS: &str = "net/members";
/// `POST` [`MemberRequest`]: revoke a member.
pub const REVOKE: &str = "net/revoke";
/// `POST` [`MemberRequest`]: make a member an admin.
pub const PROMOTE: &str = "net/promote";
/// `POST` [`NetworkRequest`]: leave a network.
pub const LEAVE: &str = "net/leave";

/// Longest invite lifetime: a year.
pub const MAX_EXPIRY_SECS: u64 = 365 * 24 * 3600;

/// A body naming one network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkRequest {
    /// The network's name.
    pub network: String,
}

/// Body of `POST /v1/net/invite`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InviteRequest {
    /// The network's name.
    pub network: String,
    /// Seconds until the ticket expires.
    pub expires_secs: u64,
    /// How many peers may join with it.
    pub uses: u32,
    /// Whether it makes the joiner an admin.
    pub admin: bool,
}

/// Body of `POST /v1/net/join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequestBody {
    /// The ticket `net invite` printed.
    pub ticket: String,
    /// The name to be known by in the network.
    #[serde(default)]
    pub name: Option<String>,
}

/// A body naming a network and one of its members.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberRequest {
    /// The network's name.
    pub network: String,
    /// The member's peer id.
    pub peer_id: String,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| NetError::Node(crate::error::NodeError::Stopped))?
}

/// The addresses a ticket carries: where we listen and are seen, concrete ones only.
async fn our_addrs(client: &Client) -> Vec<Multiaddr> {
    let Ok(status) = client.status().await else {
        return Vec::new();
    };
    status
        .external_addrs
        .iter()
        .chain(&status.listen_addrs)
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .collect()
}

/// Where up to [`super::MAX_TICKET_MEMBERS`] other current members of `network` can be
/// reached, one address each ending in its `/p2p/<id>`: a joiner is admitted by any member,
/// so a ticket still works while its issuer is offline.
async fn member_addrs(client: &Client, networks: &Networks, network: &str) -> Vec<Multiaddr> {
    let Ok(peers) = client.peers().await else {
        return Vec::new();
    };
    let me = client.peer_id();
    peers
        .iter()
        .filter_map(|p| {
            let peer: libp2p::PeerId = p.peer_id.parse().ok()?;
            if peer == me || !networks.is_member(network, &peer) {
                return None;
            }
            // One we dialled first: its address is where the member listens. One it
            // dialled is usually that too (nodes dial from their listening port), else
            // an address nobody can dial, which the joiner then skips.
            let c = p.connections.iter().min_by_key(|c| !c.outbound)?;
            let addr: Multiaddr = c.address.parse().ok()?;
            Some(if crate::event_loop::peer_of(&addr) == Some(peer) {
                addr
            } else {
                addr.with(libp2p::multiaddr::Protocol::P2p(peer))
            })
        })
        .take(super::MAX_TICKET_MEMBERS)
        .collect()
}

fn body<T: serde::de::DeserializeOwned>(req: &ControlRequest) -> Result<T, NetError> {
    req.json::<T>().map_err(NetError::Node)
}

/// Serves one request under `/v1/net`.
pub(crate) async fn handle(req: ControlRequest, client: &Client) -> ControlReply {
    let networks: Networks = client.networks().clone();
    match (req.method(), req.route()) {
        (Method::Get, LIST) => ControlReply::ok(&networks.list()),
        (Method::Post, CREATE) => {
            reply(async {
                let r: NetworkRequest = body(&req)?;
                blocking(move || networks.create(&r.network)).await
            })
            .await
        }
        (Method::Post, INVITE) => {
            reply(async {
                let r: InviteRequest = body(&req)?;
                if r.expires_secs == 0 || r.expires_secs > MAX_EXPIRY_SECS {
                    return Err(NetError::Invalid(format!(
                        "an invite expires in 1 s to {} days",
                        MAX_EXPIRY_SECS / 86400
                    )));
                }
                let mut addrs = our_addrs(client).await;
                addrs.truncate(super::MAX_TICKET_ADDRS - super::MAX_TICKET_MEMBERS);
                addrs.extend(member_addrs(client, &networks, &r.network).await);
                blocking(move || {
                    networks.invite(
                        &r.network,
                        Duration::from_secs(r.expires_secs),
                        r.uses,
                        r.admin,
                        &addrs,
                    )
                })
                .await
            })
            .await
        }
        (Method::Post, JOIN) => {
            reply(async {
                let r: JoinRequestBody = body(&req)?;
                super::exchange::join(client, &networks, &r.ticket, r.name).await
            })
            .await
        }
        (Method::Post, MEMBERS) => {
            reply(async {
                let r: NetworkRequest = body(&req)?;
                networks.members(&r.network)
            })
            .await
        }
        (Method::Post, REVOKE) => {
            reply(async {
                let r: MemberRequest = body(&req)?;
                let peer = parse_peer_id(&r.peer_id)?;
                blocking(move || networks.revoke(&r.network, peer)).await
            })
            .await
        }
        (Method::Post, PROMOTE) => {
            reply(async {
                let r: MemberRequest = body(&req)?;
                let peer = parse_peer_id(&r.peer_id)?;
                blocking(move || networks.promote(&r.network, peer)).await
            })
            .await
        }
        (Method::Post, LEAVE) => {
            reply(async {
                let r: NetworkRequest = body(&req)?;
                blocking(move || networks.leave(&r.network)).await
            })
            .await
        }
        (_, route) => ControlReply::unknown(route),
    }
}

async fn reply<T: Serialize>(
    f: impl std::future::Future<Output = Result<T, NetError>>,
) -> ControlReply {
    ControlReply::from_result(f.await)
}

//! The datagram session's negotiation, over a new tunnel stream: each side offers its
//! link index, UDP port and addresses with one message of the handshake.

use std::net::{IpAddr, SocketAddr};

use libp2p::multiaddr::Protocol as Proto;
use libp2p::{Multiaddr, PeerId, Stream};
use p2pnode_node::Client;
use p2pnode_secure::{
    HandshakeConfig, Initiator, ReceiveMode, Responder, SecureStream, Session, SessionConfig,
    SigningKey,
};

use crate::datagram::{MAX_OFFER_ADDRS, Offer};

use super::LABEL;

/// What one side brings to the negotiation.
pub(in crate::service) struct Local {
    pub(in crate::service) signing: SigningKey,
    /// Our UDP port; 0 when we have no socket.
    pub(in crate::service) port: u16,
    /// Our addresses, as the node knows them.
    pub(in crate::service) addrs: Vec<IpAddr>,
    /// The member's addresses as our direct connections to it see them.
    pub(in crate::service) observed: Vec<IpAddr>,
}

impl Local {
    /// Gathers our addresses and the member's observed ones from the node.
    pub(in crate::service) async fn gather(
        client: &Client,
        signing: SigningKey,
        port: u16,
        peer: PeerId,
    ) -> Self {
        let mut addrs = Vec::new();
        let mut observed = Vec::new();
        if port != 0 {
            if let Ok(status) = client.status().await {
                // Confirmed external addresses first: they matter most behind a NAT.
                let all = status.external_addrs.iter().chain(&status.listen_addrs);
                push_ips(&mut addrs, all);
            }
            if let Ok(peers) = client.peers().await
                && let Some(p) = peers.iter().find(|p| p.peer_id == peer.to_string())
            {
                let direct = p
                    .connections
                    .iter()
                    .filter(|c| c.path == p2pnode_node::api::Path::Direct)
                    .map(|c| &c.address);
                push_ips(&mut observed, direct);
            }
        }
        Self {
            signing,
            port,
            addrs,
            observed,
        }
    }
}

/// The IP addresses of direct (not relayed) multiaddrs, at most [`MAX_OFFER_ADDRS`].
pub(in crate::service) fn push_ips<'a>(
    out: &mut Vec<IpAddr>,
    addrs: impl Iterator<Item = &'a String>,
) {
    for a in addrs {
        let Ok(ma) = a.parse::<Multiaddr>() else {
            continue;
        };
        if ma.iter().any(|p| matches!(p, Proto::P2pCircuit)) {
            continue;
        }
        let ip = ma.iter().find_map(|p| match p {
            Proto::Ip4(ip) => Some(IpAddr::V4(ip)),
            Proto::Ip6(ip) => Some(IpAddr::V6(ip)),
            _ => None,
        });
        // A link-local IPv6 address needs its interface, which an offer cannot name.
        let usable = match ip {
            Some(IpAddr::V4(v4)) => !v4.is_unspecified(),
            Some(IpAddr::V6(v6)) => {
                !v6.is_unspecified() && !v6.is_unicast_link_local() && v6.to_ipv4_mapped().is_none()
            }
            None => false,
        };
        if let Some(ip) = ip.filter(|_| usable)
            && !out.contains(&ip)
            && out.len() < MAX_OFFER_ADDRS
        {
            out.push(ip);
        }
    }
}

/// A datagram session agreed over a tunnel stream.
pub(in crate::service) struct Negotiated {
    pub(super) session: Session,
    pub(super) index: u32,
    pub(super) peer_index: u32,
    pub(super) peer_port: u16,
    pub(super) candidates: Vec<SocketAddr>,
}

fn config(local: &Local, stream: &SecureStream<Stream>) -> HandshakeConfig {
    HandshakeConfig::new(local.signing.clone(), *stream.remote_key(), LABEL).with_session(
        SessionConfig::default()
            .with_receive_mode(ReceiveMode::Window)
            .with_packet_frames(),
    )
}

fn our_offer(local: &Local, handshake: Vec<u8>) -> Offer {
    // Never 0, so a zeroed header never finds a link.
    let index = rand::random::<u32>().max(1);
    Offer {
        index,
        port: local.port,
        addrs: local.addrs.clone(),
        handshake,
    }
}

fn negotiated(session: Session, ours: &Offer, theirs: &Offer, local: &Local) -> Option<Negotiated> {
    if ours.port == 0 || theirs.port == 0 {
        return None;
    }
    let observed = local
        .observed
        .iter()
        .map(|ip| SocketAddr::new(*ip, theirs.port));
    Some(Negotiated {
        session,
        index: ours.index,
        peer_index: theirs.index,
        peer_port: theirs.port,
        candidates: observed.chain(theirs.candidates()).collect(),
    })
}

/// The opener's side, after its hello: offer, read the answer, finish the handshake.
/// `None`: one side has no socket. An error ends the stream.
pub(in crate::service) async fn offer(
    stream: &mut SecureStream<Stream>,
    local: &Local,
) -> Result<Option<Negotiated>, String> {
    let (initiator, msg1) = Initiator::start(config(local, stream), &mut rand::rngs::OsRng);
    let ours = our_offer(local, msg1);
    stream
        .send(&ours.encode())
        .await
        .map_err(|e| e.to_string())?;
    let reply = stream.recv().await.map_err(|e| e.to_string())?;
    let theirs = Offer::decode(&reply).map_err(|e| e.to_string())?;
    let (session, msg3) = initiator
        .finish(&theirs.handshake)
        .map_err(|e| format!("datagram handshake: {e}"))?;
    stream.send(&msg3).await.map_err(|e| e.to_string())?;
    Ok(negotiated(session, &ours, &theirs, local))
}

/// The other side, after reading the hello: answer the offer, finish the handshake.
pub(in crate::service) async fn answer(
    stream: &mut SecureStream<Stream>,
    local: &Local,
) -> Result<Option<Negotiated>, String> {
    let bytes = stream.recv().await.map_err(|e| e.to_string())?;
    let theirs = Offer::decode(&bytes).map_err(|e| e.to_string())?;
    let (responder, msg2) = Responder::accept(
        config(local, stream),
        &theirs.handshake,
        &mut rand::rngs::OsRng,
    )
    .map_err(|e| format!("datagram handshake: {e}"))?;
    let ours = our_offer(local, msg2);
    stream
        .send(&ours.encode())
        .await
        .map_err(|e| e.to_string())?;
    let msg3 = stream.recv().await.map_err(|e| e.to_string())?;
    let session = responder
        .finish(&msg3)
        .map_err(|e| format!("datagram handshake: {e}"))?;
    Ok(negotiated(session, &ours, &theirs, local))
}

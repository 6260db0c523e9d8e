//! How the NAT in front of us maps our addresses, judged from the addresses peers with a
//! direct connection observe, against our listen addresses.

use p2pnode_node::api::Observation;
use p2pnode_node::{Multiaddr, multiaddr::Protocol};
use serde::Serialize;

/// How the NAT in front of us maps our addresses, as peers observe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NatBehaviour {
    /// No peer has told us how it sees us over a direct connection.
    Unknown,
    /// Peers see one of our own listen addresses: no NAT.
    NoNat,
    /// Peers see our listen port on another address: a port-preserving (cone) NAT.
    PortPreserving,
    /// Peers see another port, the same one for each of them (endpoint-independent).
    PortTranslating,
    /// One peer sees another port: symmetric, or port-translating; a second observer
    /// would tell.
    PortChanging,
    /// Different peers see different ports: a symmetric NAT.
    Symmetric,
}

/// The facts the verdicts rest on, for scripts.
/// The address and port of an IP multiaddr, and its transport (`tcp`, `quic`).
fn endpoint(addr: &str) -> Option<(std::net::IpAddr, u16, &'static str)> {
    let addr: Multiaddr = addr.parse().ok()?;
    if addr.iter().any(|p| p == Protocol::P2pCircuit) {
        return None;
    }
    let (mut ip, mut port, mut transport) = (None, None, None);
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(a.into()),
            Protocol::Ip6(a) => ip = Some(a.into()),
            Protocol::Tcp(p) => {
                port = Some(p);
                transport = Some("tcp");
            }
            Protocol::Udp(p) => port = Some(p),
            Protocol::QuicV1 => transport = Some("quic"),
            _ => {}
        }
    }
    Some((ip?, port?, transport?))
}

/// How the NAT maps us, from our listen addresses and what peers observed.
pub(crate) fn nat_behaviour(listen: &[String], observed: &[Observation]) -> NatBehaviour {
    let ours: Vec<_> = listen.iter().filter_map(|a| endpoint(a)).collect();
    // (peer's IP, our observed IP, port, transport)
    let seen: Vec<_> = observed
        .iter()
        .filter_map(|o| {
            let (peer_ip, _, _) = endpoint(&o.peer_address)?;
            let (ip, port, transport) = endpoint(&o.observed)?;
            Some((peer_ip, ip, port, transport))
        })
        .collect();
    if seen.is_empty() {
        return NatBehaviour::Unknown;
    }
    if seen
        .iter()
        .all(|(_, ip, _, _)| ours.iter().any(|(o, _, _)| o == ip))
    {
        return NatBehaviour::NoNat;
    }
    let preserved =
        |port: u16, transport: &str| ours.iter().any(|(_, p, t)| *p == port && *t == transport);
    if seen.iter().all(|(_, _, port, t)| preserved(*port, t)) {
        return NatBehaviour::PortPreserving;
    }
    // Per transport, the distinct ports that distinct peer hosts saw.
    let mut observers_per_port = std::collections::BTreeMap::new();
    for (peer_ip, _, port, transport) in &seen {
        observers_per_port
            .entry(*transport)
            .or_insert_with(std::collections::BTreeMap::new)
            .entry(*port)
            .or_insert_with(std::collections::BTreeSet::new)
            .insert(*peer_ip);
    }
    if observers_per_port.values().any(|ports| ports.len() > 1) {
        return NatBehaviour::Symmetric;
    }
    let hosts: std::collections::BTreeSet<_> = seen.iter().map(|(p, _, _, _)| p).collect();
    if hosts.len() > 1 {
        NatBehaviour::PortTranslating
    } else {
        NatBehaviour::PortChanging
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(peer_address: &str, observed: &str) -> Observation {
        Observation {
            peer_id: "peer".into(),
            peer_address: peer_address.into(),
            observed: observed.into(),
            at: 0,
        }
    }

    const LISTEN: &str = "/ip4/10.0.1.2/tcp/4001";
    const RELAY: &str = "/ip4/198.51.100.2/tcp/4001";
    const OTHER: &str = "/ip4/198.51.100.3/tcp/4001";

    #[test]
    fn nat_behaviour_from_observations() {
        let listen = vec![LISTEN.to_string(), format!("{RELAY}/p2p-circuit")];
        assert_eq!(nat_behaviour(&listen, &[]), NatBehaviour::Unknown);
        assert_eq!(
            nat_behaviour(&listen, &[obs(RELAY, "/ip4/10.0.1.2/tcp/4001")]),
            NatBehaviour::NoNat
        );
        assert_eq!(
            nat_behaviour(&listen, &[obs(RELAY, "/ip4/198.51.100.11/tcp/4001")]),
            NatBehaviour::PortPreserving
        );
        assert_eq!(
            nat_behaviour(&listen, &[obs(RELAY, "/ip4/198.51.100.11/tcp/61000")]),
            NatBehaviour::PortChanging
        );
        assert_eq!(
            nat_behaviour(
                &listen,
                &[
                    obs(RELAY, "/ip4/198.51.100.11/tcp/61000"),
                    obs(OTHER, "/ip4/198.51.100.11/tcp/61000")
                ]
            ),
            NatBehaviour::PortTranslating
        );
        assert_eq!(
            nat_behaviour(
                &listen,
                &[
                    obs(RELAY, "/ip4/198.51.100.11/tcp/61000"),
                    obs(OTHER, "/ip4/198.51.100.11/tcp/61007")
                ]
            ),
            NatBehaviour::Symmetric
        );
    }
}

//! The wire format: the exchange's message ([`encode`], [`decode`]) and the relay's
//! [`Introduction`], with the address filter both apply.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use super::{HolePunchError, MAX_ADDRS};

/// The one message each side sends: where it can be reached, most likely first.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    addrs: Vec<String>,
}

/// Encodes our addresses as a message (CBOR; at most [`MAX_ADDRS`] of them).
pub fn encode(addrs: &[Multiaddr]) -> Vec<u8> {
    let msg = Message {
        addrs: addrs
            .iter()
            .take(MAX_ADDRS)
            .map(ToString::to_string)
            .collect(),
    };
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = ciborium::into_writer(&msg, &mut out);
    out
}

/// Decodes `peer`'s message into the addresses worth dialling: relayed addresses and ones
/// naming another peer are dropped (a peer can only send us to itself).
pub fn decode(bytes: &[u8], peer: PeerId) -> Result<Vec<Multiaddr>, HolePunchError> {
    let msg: Message =
        ciborium::from_reader(bytes).map_err(|e| HolePunchError::Malformed(e.to_string()))?;
    dialable_addrs(&msg.addrs, peer)
}

/// Parses the addresses of a message naming `peer`: relayed ones and ones naming another
/// peer are dropped, and so are repeats.
fn dialable_addrs(texts: &[String], peer: PeerId) -> Result<Vec<Multiaddr>, HolePunchError> {
    if texts.len() > MAX_ADDRS {
        return Err(HolePunchError::Malformed(format!(
            "{} addresses, at most {MAX_ADDRS} allowed",
            texts.len()
        )));
    }
    let mut addrs = Vec::with_capacity(texts.len());
    for text in texts {
        let mut addr: Multiaddr = text
            .parse()
            .map_err(|e| HolePunchError::Malformed(format!("address {text:?}: {e}")))?;
        if let Some(Protocol::P2p(id)) = addr.iter().last() {
            if id != peer {
                continue;
            }
            addr.pop();
        }
        if addr.iter().any(|p| p == Protocol::P2pCircuit) || addrs.contains(&addr) {
            continue;
        }
        addrs.push(addr);
    }
    Ok(addrs)
}

/// What a relay tells each end of a circuit it has just accepted: the other end, the
/// addresses the relay sees it at, and the role of the dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introduction {
    /// The other end of the circuit.
    pub peer: PeerId,
    /// Where the relay sees it: the remote addresses of its direct connections to the relay
    /// (behind a NAT, the NAT's mapping of the port it also dials from).
    pub addrs: Vec<Multiaddr>,
    /// Dial as the listener: the circuit's destination B, as in the exchange.
    pub as_listener: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct IntroductionMessage {
    peer: String,
    addrs: Vec<String>,
    as_listener: bool,
}

impl Introduction {
    /// CBOR, at most [`MAX_ADDRS`] addresses.
    pub fn encode(&self) -> Vec<u8> {
        let msg = IntroductionMessage {
            peer: self.peer.to_string(),
            addrs: self
                .addrs
                .iter()
                .take(MAX_ADDRS)
                .map(ToString::to_string)
                .collect(),
            as_listener: self.as_listener,
        };
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = ciborium::into_writer(&msg, &mut out);
        out
    }

    /// Decodes an introduction; addresses are filtered as in [`decode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, HolePunchError> {
        let msg: IntroductionMessage =
            ciborium::from_reader(bytes).map_err(|e| HolePunchError::Malformed(e.to_string()))?;
        let peer: PeerId = msg
            .peer
            .parse()
            .map_err(|e| HolePunchError::Malformed(format!("peer id {:?}: {e}", msg.peer)))?;
        Ok(Self {
            peer,
            addrs: dialable_addrs(&msg.addrs, peer)?,
            as_listener: msg.as_listener,
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A fresh peer id (shared with the other hole-punch tests).
    pub(in crate::holepunch) fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    /// A multiaddr from its text.
    pub(in crate::holepunch) fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_message_round_trips_and_keeps_the_order() {
        let p = peer();
        let addrs = vec![
            addr("/ip4/198.51.100.7/tcp/4701"),
            addr("/ip4/198.51.100.7/udp/4701/quic-v1"),
        ];
        assert_eq!(decode(&encode(&addrs), p).unwrap(), addrs);
    }

    #[test]
    fn relayed_foreign_and_repeated_addresses_are_dropped() {
        let p = peer();
        let other = peer();
        let sent = vec![
            addr(&format!("/ip4/198.51.100.7/tcp/4701/p2p/{p}")),
            addr("/ip4/198.51.100.7/tcp/4701"),
            addr(&format!("/ip4/203.0.113.1/tcp/1/p2p/{other}")),
            addr(&format!(
                "/ip4/203.0.113.1/tcp/1/p2p/{other}/p2p-circuit/p2p/{p}"
            )),
        ];
        assert_eq!(
            decode(&encode(&sent), p).unwrap(),
            vec![addr("/ip4/198.51.100.7/tcp/4701")]
        );
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        let p = peer();
        assert!(matches!(
            decode(b"\xff\x00garbage", p),
            Err(HolePunchError::Malformed(_))
        ));
        let mut bad = Vec::new();
        ciborium::into_writer(
            &Message {
                addrs: vec!["not an address".into()],
            },
            &mut bad,
        )
        .unwrap();
        assert!(matches!(decode(&bad, p), Err(HolePunchError::Malformed(_))));
        let mut many = Vec::new();
        ciborium::into_writer(
            &Message {
                addrs: vec!["/ip4/198.51.100.7/tcp/1".into(); MAX_ADDRS + 1],
            },
            &mut many,
        )
        .unwrap();
        assert!(matches!(
            decode(&many, p),
            Err(HolePunchError::Malformed(_))
        ));
    }

    #[test]
    fn an_introduction_round_trips_and_names_only_its_peer() {
        let (p, other) = (peer(), peer());
        let intro = Introduction {
            peer: p,
            addrs: vec![
                addr(&format!("/ip4/198.51.100.7/tcp/4701/p2p/{p}")),
                addr(&format!("/ip4/203.0.113.1/tcp/1/p2p/{other}")),
                addr("/ip4/198.51.100.7/udp/4701/quic-v1"),
            ],
            as_listener: true,
        };
        assert_eq!(
            Introduction::decode(&intro.encode()).unwrap(),
            Introduction {
                peer: p,
                addrs: vec![
                    addr("/ip4/198.51.100.7/tcp/4701"),
                    addr("/ip4/198.51.100.7/udp/4701/quic-v1"),
                ],
                as_listener: true,
            }
        );
    }

    #[test]
    fn bad_introductions_are_errors_not_panics() {
        let encode = |msg: &IntroductionMessage| {
            let mut out = Vec::new();
            ciborium::into_writer(msg, &mut out).unwrap();
            out
        };
        let bad_peer = encode(&IntroductionMessage {
            peer: "not a peer id".into(),
            addrs: vec!["/ip4/198.51.100.7/tcp/1".into()],
            as_listener: false,
        });
        let too_many = encode(&IntroductionMessage {
            peer: peer().to_string(),
            addrs: vec!["/ip4/198.51.100.7/tcp/1".into(); MAX_ADDRS + 1],
            as_listener: false,
        });
        for bytes in [&b"\xa1\x00"[..], &bad_peer, &too_many] {
            assert!(
                matches!(
                    Introduction::decode(bytes),
                    Err(HolePunchError::Malformed(_))
                ),
                "{bytes:?}"
            );
        }
    }
}

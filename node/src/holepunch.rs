//! Hole punching: turns a relayed connection into a direct one.
//!
//! Two parts, both p2pnode's own (`hole_punch = "dcutr"` runs libp2p's DCUtR instead, for
//! peers that do not speak them):
//!
//! **Introductions** (`/p2pnode/holepunch/introduce/1`). The relay sees both ends of a
//! circuit at their public addresses (behind a NAT, the mapping of the port each also
//! dials from), so the moment it accepts a circuit from A to B it tells each where the
//! other is, and both dial before the circuit's own handshake is done: B "as listener"
//! the moment its message arrives, A timed so that its dial does not reach B's NAT
//! before B's dial has opened it. In the NAT lab (+50 ms RTT, p95) the direct
//! connection exists 1.6 RTT after the relayed one over TCP and 0.6 over QUIC (DCUtR:
//! 5.3 and 4.3 in the same run). A node obeys an introduction only from a relay it chose
//! (one holding its reservation, or a bootstrap peer), since the addresses come from the
//! relay alone.
//!
//! **The exchange** (`/p2pnode/holepunch/1`), for a relay that does not introduce or a
//! punch the introduction could not make. libp2p's DCUtR is started by the relayed
//! connection's *listener* B, which has the connection half a round trip after the
//! dialer A, and B spends a round trip negotiating its stream before its first message:
//! the two sides dial each other 2.5 round trips after A's relayed connection exists.
//! Here A, which dialled through the relay because it wants B, starts at once, and B
//! writes its addresses the moment it accepts the stream, so they reach A with the
//! negotiation's confirmation:
//!
//! ```text
//!   A (dialled the relay circuit)          B
//!   open stream ---------------------->   accept, send B's addresses       0 -> 0.5 RTT
//!   read B's addresses, RTT measured <--                                   1 RTT
//!   send A's addresses --------------->   read them, dial A at once         1.5 RTT
//!   wait RTT/2, dial B                                                      1.5 RTT
//! ```
//!
//! Both dials leave at the same moment, so each NAT has a mapping out to the other when the
//! other's packets arrive: a TCP simultaneous open, or for QUIC B sending hole-punch
//! packets while A dials (B dials "as listener", exactly as in DCUtR). In the NAT lab
//! (+50 ms RTT, p95, introductions off): direct at 2.8 RTT over QUIC and 3.8 over TCP,
//! against DCUtR's 4.3 and 5.3 in the same run. The messages carry what DCUtR's CONNECT
//! and SYNC carry. When an introduction's dial is under way the exchange's dial takes its
//! outcome instead of dialling again (one punch dial per peer at a time).
//!
//! Both carry only addresses, which the connections' Noise sessions already protect; they
//! are not behind the post-quantum handshake, which would cost the round trips they exist
//! to save. The codecs and the address list are plain functions ([`encode`], [`decode`],
//! [`Introduction`], [`Candidates`]); the async sides run as tasks that ask the event loop
//! to dial.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::AsyncWriteExt;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use p2pnode_secure::stream::{read_length_prefixed, write_length_prefixed};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::api::Connected;
use crate::error::NodeError;

/// The protocol name.
pub const HOLEPUNCH_PROTOCOL: StreamProtocol = StreamProtocol::new("/p2pnode/holepunch/1");

/// The relay's side: it introduces the two ends of each circuit it accepts to each other.
pub const INTRODUCE_PROTOCOL: StreamProtocol =
    StreamProtocol::new("/p2pnode/holepunch/introduce/1");

/// Most addresses one message may carry (DCUtR's candidate cache holds 20; a NATed host
/// rarely has more than a few observed addresses).
pub const MAX_ADDRS: usize = 16;
/// Largest message accepted.
const MAX_MESSAGE: usize = 4096;
/// The whole exchange of one attempt, before the dial.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts before giving up (DCUtR also tries three times).
pub const ATTEMPTS: u32 = 3;
/// Exchanges answered at once; more are refused.
pub const MAX_EXCHANGES: usize = 32;
/// Dial requests waiting for the event loop.
const DIAL_QUEUE: usize = 64;

/// Why a hole punch attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum HolePunchError {
    /// The peer's message is not a valid one.
    #[error("malformed hole-punch message: {0}")]
    Malformed(String),
    /// This node knows no address of its own a peer could punch to (none observed yet).
    #[error("no address of our own to offer (none observed yet)")]
    NoOwnAddrs,
    /// The peer offered no address to punch to.
    #[error("the peer offered no address to punch to")]
    NoPeerAddrs,
    /// The peer does not speak this protocol (an older node, a relay-only node, or one
    /// running `hole_punch = "dcutr"`).
    #[error("the peer does not speak p2pnode's hole punching")]
    Unsupported,
    /// Opening, reading or writing the stream failed.
    #[error("hole-punch stream: {0}")]
    Stream(String),
    /// The exchange took longer than its timeout.
    #[error("hole-punch exchange timed out")]
    Timeout,
    /// The direct dial failed.
    #[error("direct dial failed: {0}")]
    Dial(NodeError),
    /// The node is stopping.
    #[error("the node is shutting down")]
    Stopped,
}

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

/// Our own addresses a peer could punch to: the ones other peers observed (identify), the
/// most recently reported first, and confirmed external ones. Bounded to [`MAX_ADDRS`].
#[derive(Debug, Default)]
pub struct Candidates {
    list: VecDeque<Multiaddr>,
}

impl Candidates {
    /// Records an address (moved to the front when already known) and says whether the
    /// list changed. Only dialable addresses count: relayed ones do not (the point is to
    /// get off the relay), nor what a peer at the far end of a circuit observes (just
    /// `/p2p/<our id>`).
    pub fn add(&mut self, mut addr: Multiaddr) -> bool {
        if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
            addr.pop();
        }
        let dialable = matches!(
            addr.iter().next(),
            Some(
                Protocol::Ip4(_)
                    | Protocol::Ip6(_)
                    | Protocol::Dns(_)
                    | Protocol::Dns4(_)
                    | Protocol::Dns6(_)
                    | Protocol::Memory(_)
            )
        );
        if !dialable || addr.iter().any(|p| p == Protocol::P2pCircuit) {
            return false;
        }
        // Every identify exchange reports the same few addresses again.
        if self.list.front() == Some(&addr) {
            return false;
        }
        self.list.retain(|a| a != &addr);
        self.list.push_front(addr);
        self.list.truncate(MAX_ADDRS);
        true
    }

    /// The addresses, most recent first.
    pub fn to_vec(&self) -> Vec<Multiaddr> {
        self.list.iter().cloned().collect()
    }
}

/// A dial the event loop makes for a hole punch.
#[derive(Debug)]
pub(crate) struct PunchDial {
    pub(crate) peer: PeerId,
    pub(crate) addrs: Vec<Multiaddr>,
    /// Dial as the listener: B's side (for QUIC: send hole-punch packets and wait for A's
    /// connection; for TCP: take the responder's role in the simultaneous open).
    pub(crate) as_listener: bool,
    /// The relay whose introduction asked for the dial; `None` for the exchange's dials.
    pub(crate) introduced_by: Option<PeerId>,
    pub(crate) reply: oneshot::Sender<Result<Connected, NodeError>>,
}

/// What a hole-punch task needs: streams, our current addresses, the event loop's dialler.
#[derive(Clone)]
pub(crate) struct Puncher {
    streams: libp2p_stream::Control,
    ours: watch::Receiver<Vec<Multiaddr>>,
    dials: mpsc::Sender<PunchDial>,
    /// A relay's introductions under way; more are not made.
    introducing: Arc<Semaphore>,
}

/// Builds a [`Puncher`], the sender the event loop publishes our addresses on, and the
/// receiver of the dials it must make.
pub(crate) fn channels(
    streams: libp2p_stream::Control,
) -> (
    Puncher,
    watch::Sender<Vec<Multiaddr>>,
    mpsc::Receiver<PunchDial>,
) {
    let (ours_tx, ours) = watch::channel(Vec::new());
    let (dials, dial_rx) = mpsc::channel(DIAL_QUEUE);
    (
        Puncher {
            streams,
            ours,
            dials,
            introducing: Arc::new(Semaphore::new(MAX_EXCHANGES)),
        },
        ours_tx,
        dial_rx,
    )
}

impl Puncher {
    /// A's side: we dialled `peer` through a relay. Tries [`ATTEMPTS`] times and logs a
    /// failure (the NAT lab reads "hole punch failed: gave up after"). The event loop ends
    /// the task as soon as a direct connection exists, whichever dial made it, and logs
    /// the success itself.
    pub(crate) async fn punch(self, peer: PeerId) {
        for attempt in 1..=ATTEMPTS {
            match self.attempt(peer).await {
                Ok(c) => {
                    tracing::debug!(%peer, attempt, address = %c.address, "hole punch: direct connection");
                    return;
                }
                // Another try cannot do better than these.
                Err(
                    e @ (HolePunchError::NoOwnAddrs
                    | HolePunchError::NoPeerAddrs
                    | HolePunchError::Unsupported),
                ) => {
                    tracing::info!(%peer, "hole punch failed: gave up after {attempt} attempts: {e}");
                    return;
                }
                Err(HolePunchError::Stopped) => return,
                Err(e) => tracing::debug!(%peer, attempt, "hole punch attempt failed: {e}"),
            }
        }
        tracing::info!(%peer, "hole punch failed: gave up after {ATTEMPTS} attempts");
    }

    async fn attempt(&self, peer: PeerId) -> Result<Connected, HolePunchError> {
        // A node that has only just connected may not have heard its address from anyone
        // yet (identify with the relay still under way): wait for it a little.
        let mut ours_rx = self.ours.clone();
        let ours = match tokio::time::timeout(
            EXCHANGE_TIMEOUT,
            ours_rx.wait_for(|addrs| !addrs.is_empty()),
        )
        .await
        {
            Ok(Ok(addrs)) => addrs.clone(),
            _ => return Err(HolePunchError::NoOwnAddrs),
        };
        let start = Instant::now();
        let exchange = async {
            let mut stream = self.open(peer, HOLEPUNCH_PROTOCOL).await?;
            let theirs = read_message(&mut stream, peer).await?;
            // Opening the stream took one round trip: the confirmation came back with
            // B's addresses.
            let rtt = start.elapsed();
            write_length_prefixed(&mut stream, &encode(&ours))
                .await
                .map_err(|e| HolePunchError::Stream(e.to_string()))?;
            let _ = stream.close().await;
            Ok::<_, HolePunchError>((theirs, rtt))
        };
        let (theirs, rtt) = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
            .await
            .map_err(|_| HolePunchError::Timeout)??;
        if theirs.is_empty() {
            return Err(HolePunchError::NoPeerAddrs);
        }
        // B dials as soon as our message arrives, half a round trip from now.
        tokio::time::sleep(rtt / 2).await;
        tracing::debug!(%peer, ?rtt, addrs = ?theirs, "hole punching as dialer");
        self.dial(peer, theirs, false, None).await
    }

    /// B's side: answers one exchange on an accepted stream, then dials.
    async fn answer(&self, peer: PeerId, mut stream: libp2p::Stream) -> Result<(), HolePunchError> {
        let ours = self.ours.borrow().clone();
        let exchange = async {
            write_length_prefixed(&mut stream, &encode(&ours))
                .await
                .map_err(|e| HolePunchError::Stream(e.to_string()))?;
            read_message(&mut stream, peer).await
        };
        let theirs = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
            .await
            .map_err(|_| HolePunchError::Timeout)??;
        if ours.is_empty() {
            return Err(HolePunchError::NoOwnAddrs);
        }
        if theirs.is_empty() {
            return Err(HolePunchError::NoPeerAddrs);
        }
        tracing::debug!(%peer, addrs = ?theirs, "hole punching as listener");
        self.dial(peer, theirs, true, None).await.map(|_| ())
    }

    async fn dial(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        as_listener: bool,
        introduced_by: Option<PeerId>,
    ) -> Result<Connected, HolePunchError> {
        let (reply, answer) = oneshot::channel();
        self.dials
            .send(PunchDial {
                peer,
                addrs,
                as_listener,
                introduced_by,
                reply,
            })
            .await
            .map_err(|_| HolePunchError::Stopped)?;
        answer
            .await
            .map_err(|_| HolePunchError::Stopped)?
            .map_err(HolePunchError::Dial)
    }

    /// Serves exchanges (B's side) and introductions (both ends'), at most
    /// [`MAX_EXCHANGES`] of each at once.
    pub(crate) async fn serve(
        self,
        exchanges: libp2p_stream::IncomingStreams,
        introductions: libp2p_stream::IncomingStreams,
    ) {
        let answerer = self.clone();
        let exchanges = crate::streams::serve_streams(
            exchanges,
            MAX_EXCHANGES,
            "hole-punch",
            move |peer, stream| {
                let puncher = answerer.clone();
                async move {
                    if let Err(e) = puncher.answer(peer, stream).await {
                        tracing::debug!(%peer, "answering a hole punch failed: {e}");
                    }
                }
            },
        );
        let introductions = crate::streams::serve_streams(
            introductions,
            MAX_EXCHANGES,
            "introduction",
            move |relay, stream| {
                let puncher = self.clone();
                async move {
                    if let Err(e) = puncher.introduced(relay, stream).await {
                        tracing::debug!(%relay, "introduced dial failed: {e}");
                    }
                }
            },
        );
        futures::join!(exchanges, introductions);
    }

    /// Either end of a circuit: `relay` introduced the other end; dial it at once.
    async fn introduced(
        &self,
        relay: PeerId,
        mut stream: libp2p::Stream,
    ) -> Result<(), HolePunchError> {
        let bytes = tokio::time::timeout(
            EXCHANGE_TIMEOUT,
            read_length_prefixed(&mut stream, MAX_MESSAGE),
        )
        .await
        .map_err(|_| HolePunchError::Timeout)?
        .map_err(|e| HolePunchError::Stream(e.to_string()))?;
        let intro = Introduction::decode(&bytes)?;
        if intro.addrs.is_empty() {
            return Err(HolePunchError::NoPeerAddrs);
        }
        tracing::debug!(%relay, peer = %intro.peer, addrs = ?intro.addrs, as_listener = intro.as_listener, "hole punching on the relay's introduction");
        let c = self
            .dial(intro.peer, intro.addrs, intro.as_listener, Some(relay))
            .await?;
        tracing::info!(peer = %intro.peer, %relay, address = %c.address, "hole punch succeeded: direct connection (introduced by the relay)");
        Ok(())
    }

    /// The relay's side: the circuit from `src` (A) to `dst` (B) was just accepted; tell
    /// each where the relay sees the other. Skipped when [`MAX_EXCHANGES`] are under way.
    pub(crate) fn introduce(&self, src: (PeerId, Vec<Multiaddr>), dst: (PeerId, Vec<Multiaddr>)) {
        let Ok(permit) = self.introducing.clone().try_acquire_owned() else {
            tracing::debug!(src = %src.0, dst = %dst.0, "too many introductions under way; skipping one");
            return;
        };
        let puncher = self.clone();
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            let _permit = permit;
            let (a, b) = (src.0, dst.0);
            match tokio::time::timeout(EXCHANGE_TIMEOUT, puncher.send_introductions(src, dst)).await
            {
                Ok(Ok(())) => {
                    tracing::debug!(src = %a, dst = %b, "introduced the ends of a circuit")
                }
                Ok(Err(e)) => tracing::debug!(src = %a, dst = %b, "introduction failed: {e}"),
                Err(_) => tracing::debug!(src = %a, dst = %b, "introduction timed out"),
            }
        }));
    }

    /// Both streams are opened before either message is written, so that a peer that does
    /// not speak the protocol gets the other end no dial it could not answer. B dials (as
    /// listener) the moment its message arrives, which opens B's NAT towards A; A's dial
    /// should not reach B's NAT before that: most routers drop it (harmless while B's
    /// packets still reach A), some answer with a TCP reset, which ends A's attempt and
    /// leaves the punch to the exchange. Opening a stream takes one round trip to that
    /// end, which is how long the relay waits for it; a message arrives half of that after
    /// it is written. So A's is written no earlier than B's arrival less A's half round
    /// trip. That ignores the direct path being shorter than the relay's, as it usually
    /// is, so A usually waits longer than it must.
    async fn send_introductions(
        &self,
        (a, a_addrs): (PeerId, Vec<Multiaddr>),
        (b, b_addrs): (PeerId, Vec<Multiaddr>),
    ) -> Result<(), HolePunchError> {
        let start = Instant::now();
        let timed_open = |peer| async move {
            let stream = self.open(peer, INTRODUCE_PROTOCOL).await?;
            Ok::<_, HolePunchError>((stream, start.elapsed()))
        };
        let ((to_a, rtt_a), (to_b, rtt_b)) = futures::try_join!(timed_open(a), timed_open(b))?;
        let b_arrives = start.elapsed() + rtt_b / 2;
        send_introduction(
            to_b,
            Introduction {
                peer: a,
                addrs: a_addrs,
                as_listener: true,
            },
        )
        .await?;
        tokio::time::sleep_until(start + b_arrives.saturating_sub(rtt_a / 2)).await;
        send_introduction(
            to_a,
            Introduction {
                peer: b,
                addrs: b_addrs,
                as_listener: false,
            },
        )
        .await
    }

    async fn open(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<libp2p::Stream, HolePunchError> {
        self.streams
            .clone()
            .open_stream(peer, protocol)
            .await
            .map_err(|e| match e {
                libp2p_stream::OpenStreamError::UnsupportedProtocol(_) => {
                    HolePunchError::Unsupported
                }
                e => HolePunchError::Stream(e.to_string()),
            })
    }
}

/// Writes `intro` and closes the stream.
async fn send_introduction(
    mut stream: libp2p::Stream,
    intro: Introduction,
) -> Result<(), HolePunchError> {
    write_length_prefixed(&mut stream, &intro.encode())
        .await
        .map_err(|e| HolePunchError::Stream(e.to_string()))?;
    let _ = stream.close().await;
    Ok(())
}

async fn read_message(
    stream: &mut libp2p::Stream,
    peer: PeerId,
) -> Result<Vec<Multiaddr>, HolePunchError> {
    let bytes = read_length_prefixed(stream, MAX_MESSAGE)
        .await
        .map_err(|e| HolePunchError::Stream(e.to_string()))?;
    decode(&bytes, peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn addr(s: &str) -> Multiaddr {
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

    #[test]
    fn candidates_are_bounded_newest_first_and_never_relayed() {
        let mut c = Candidates::default();
        for port in 0..(MAX_ADDRS as u16 + 4) {
            c.add(addr(&format!("/ip4/198.51.100.7/tcp/{port}")));
        }
        c.add(addr("/ip4/198.51.100.7/tcp/5"));
        c.add(addr(&format!(
            "/ip4/203.0.113.1/tcp/1/p2p/{}/p2p-circuit",
            peer()
        )));
        c.add(addr(&format!("/p2p/{}", peer())));
        let list = c.to_vec();
        assert_eq!(list.len(), MAX_ADDRS);
        assert_eq!(list[0], addr("/ip4/198.51.100.7/tcp/5"));
        assert_eq!(
            list[1],
            addr(&format!("/ip4/198.51.100.7/tcp/{}", MAX_ADDRS + 3))
        );
        assert!(list.iter().all(|a| !a.to_string().contains("circuit")));
    }
}

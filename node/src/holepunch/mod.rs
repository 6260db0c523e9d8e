//! Hole punching: turns a relayed connection into a direct one.
//!
//! Two parts, both p2pnode's own (`hole_punch = "dcutr"` runs libp2p's DCUtR instead, for
//! peers that do not speak them):
//!
//! **Introductions** (`/p2pnode/holepunch/introduce/1`). The relay sees both ends of a
//! circuit at their public addresses (behind a NAT, the mapping of the port each also
//! dials from), so the moment it accepts a circuit from A to B it tells each where the
//! other is, and both dial before the circuit's own handshake is done: B "as listener"
//! the moment its message arrives, A once B has written back that it agrees to the
//! circuit (so a peer B revoked never learns B's address from the relay), by which time
//! B's dial has opened B's NAT. In the NAT lab (+50 ms RTT, p50) the direct connection
//! exists 2.0 RTT after the relayed one over TCP and 1.1 over QUIC (DCUtR: 5.2 and 4.2
//! in the same run; `simulations/LAB.md` has the figures).
//!
//! An introduction makes us dial addresses the relay alone names, so a node obeys one
//! only when (a) the relay is one of its bootstrap peers: holding our reservation is
//! not enough, since a node reserves on any relay it meets; (b) a circuit with the named
//! peer through that relay exists or is being set up, in either direction (for a dial
//! Kademlia makes itself, whose addresses libp2p does not show, a dial to that peer under
//! way): without it a relay could name made-up peers and use us as a reflector; (c) that relay has not
//! introduced that peer in the last [`INTRO_WINDOW`] and has had fewer than
//! [`MAX_INTRODUCTIONS`] obeyed in it; and it dials at most [`MAX_PUNCH_ADDRS`] of the
//! addresses, none reaching further in than the network we reached the relay over (a
//! relay on the Internet cannot send us to our LAN or loopback; names are never dialled).
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
//! and SYNC carry. A peer gets [`MAX_ANSWERS`] exchanges answered per [`ANSWER_WINDOW`],
//! and the addresses it names pass the same filter as an introduction's. When an introduction's dial is under way the exchange's dial takes its
//! outcome instead of dialling again (one punch dial per peer at a time).
//!
//! Both carry only addresses, which the connections' own security (TLS or Noise) already
//! protects; they are not behind the post-quantum handshake, which would cost the round trips they exist
//! to save. The codecs and the address list are plain functions ([`encode`], [`decode`],
//! [`Introduction`], [`Candidates`]); the async sides run as tasks that ask the event loop
//! to dial.

mod budget;
mod candidates;
mod codec;
mod dcutr;
mod exchange;
mod introductions;

use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::api::Connected;
use crate::error::NodeError;
use crate::metrics::Metrics;

pub(crate) use budget::IntroBudget;
pub use budget::{ANSWER_WINDOW, INTRO_WINDOW, MAX_ANSWERS, MAX_INTRODUCTIONS};
pub use candidates::Candidates;
pub use codec::{Introduction, decode, encode};
pub use dcutr::DcutrForOthers;

/// The protocol name.
pub const HOLEPUNCH_PROTOCOL: StreamProtocol = StreamProtocol::new("/p2pnode/holepunch/1");

/// The relay's side: it introduces the two ends of each circuit it accepts to each other.
pub const INTRODUCE_PROTOCOL: StreamProtocol =
    StreamProtocol::new("/p2pnode/holepunch/introduce/1");

/// Most addresses one message may carry (DCUtR's candidate cache holds 20; a NATed host
/// rarely has more than a few observed addresses).
pub const MAX_ADDRS: usize = 16;
/// Most addresses one punch dials: a host has a public address or two per transport, and
/// each dial is a connection attempt to whatever the sender named.
pub const MAX_PUNCH_ADDRS: usize = 4;
/// What the introduced end writes back to say it agrees to the circuit; the relay tells
/// the other end where it is only then (see `Puncher::introduce`).
pub const AGREED: u8 = 1;
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
    /// The introduced end did not agree to the circuit.
    #[error("the introduced peer refused the circuit")]
    Refused,
    /// The peer already had its exchanges answered recently.
    #[error("the peer had {MAX_ANSWERS} exchanges answered in the last {} s", ANSWER_WINDOW.as_secs())]
    TooMany,
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
    pub(crate) introduced_by: Option<Introducer>,
    pub(crate) reply: oneshot::Sender<Result<Connected, NodeError>>,
}

/// The relay behind an introduction, and whom to tell once the event loop obeys it.
#[derive(Debug)]
pub(crate) struct Introducer {
    pub(crate) relay: PeerId,
    /// Sent to when the introduction is obeyed (before the dial); dropped when refused.
    pub(crate) agreed: oneshot::Sender<()>,
}

/// What a hole-punch task needs: streams, our current addresses, the event loop's dialler.
#[derive(Clone)]
pub(crate) struct Puncher {
    streams: libp2p_stream::Control,
    ours: watch::Receiver<Vec<Multiaddr>>,
    dials: mpsc::Sender<PunchDial>,
    /// A relay's introductions under way; more are not made.
    introducing: Arc<Semaphore>,
    /// Exchanges answered per peer: each answer makes us dial, so they are few.
    answers: Arc<std::sync::Mutex<budget::AnswerBudget>>,
    metrics: Arc<Metrics>,
}

/// Builds a [`Puncher`], the sender the event loop publishes our addresses on, and the
/// receiver of the dials it must make.
pub(crate) fn channels(
    streams: libp2p_stream::Control,
    metrics: Arc<Metrics>,
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
            answers: Arc::default(),
            metrics,
        },
        ours_tx,
        dial_rx,
    )
}

impl Puncher {
    async fn dial(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        as_listener: bool,
        introduced_by: Option<Introducer>,
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
                    let (peer, transport, result) = puncher.introduced(relay, stream).await;
                    let outcome = match result {
                        Ok(()) => "success",
                        Err(e) => {
                            tracing::debug!(%relay, "introduced dial failed: {e}");
                            match e {
                                HolePunchError::Dial(NodeError::InvalidInput(_)) => "refused",
                                _ => "failure",
                            }
                        }
                    };
                    puncher
                        .metrics
                        .punch("introduction", outcome, transport, peer);
                }
            },
        );
        futures::join!(exchanges, introductions);
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

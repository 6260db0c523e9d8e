//! The exchange (`/p2pnode/holepunch/1`): A's side ([`Puncher::punch`]) and B's answer.

use futures::AsyncWriteExt;
use libp2p::{Multiaddr, PeerId};
use p2pnode_secure::stream::{read_length_prefixed, write_length_prefixed};
use tokio::time::Instant;

use super::{
    ATTEMPTS, EXCHANGE_TIMEOUT, HOLEPUNCH_PROTOCOL, HolePunchError, MAX_MESSAGE, Puncher, decode,
    encode,
};
use crate::api::Connected;
use crate::event_loop::{transport_of, transport_of_all};

impl Puncher {
    /// A's side: we dialled `peer` through a relay. Tries [`ATTEMPTS`] times and logs a
    /// failure (the NAT lab reads "hole punch failed: gave up after"). The event loop ends
    /// the task as soon as a direct connection exists, whichever dial made it, and logs
    /// the success itself.
    pub(crate) async fn punch(self, peer: PeerId) {
        // The transport of the addresses last tried: the failure's label.
        let mut transport = "unknown";
        for attempt in 1..=ATTEMPTS {
            match self.attempt(peer, &mut transport).await {
                Ok(c) => {
                    tracing::debug!(%peer, attempt, address = %c.address, "hole punch: direct connection");
                    let transport = c.address.parse().map_or(transport, |a| transport_of(&a));
                    self.metrics
                        .punch("exchange", "success", transport, Some(peer));
                    return;
                }
                // A peer that speaks only DCUtR starts DCUtR itself (see `dcutr`): not a
                // failure of ours.
                Err(HolePunchError::Unsupported) => {
                    tracing::debug!(%peer, "the peer does not speak our hole punching; DCUtR is its way");
                    return;
                }
                // Another try cannot do better than these.
                Err(e @ (HolePunchError::NoOwnAddrs | HolePunchError::NoPeerAddrs)) => {
                    tracing::info!(%peer, "hole punch failed: gave up after {attempt} attempts: {e}");
                    self.metrics
                        .punch("exchange", "failure", transport, Some(peer));
                    return;
                }
                Err(HolePunchError::Stopped) => return,
                Err(e) => tracing::debug!(%peer, attempt, "hole punch attempt failed: {e}"),
            }
        }
        tracing::info!(%peer, "hole punch failed: gave up after {ATTEMPTS} attempts");
        self.metrics
            .punch("exchange", "failure", transport, Some(peer));
    }

    async fn attempt(
        &self,
        peer: PeerId,
        transport: &mut &'static str,
    ) -> Result<Connected, HolePunchError> {
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
        *transport = transport_of_all(&theirs);
        self.dial(peer, theirs, false, None).await
    }

    /// B's side: answers one exchange on an accepted stream, then dials; a peer past its
    /// [`MAX_ANSWERS`](super::MAX_ANSWERS) gets no answer (the stream is dropped).
    pub(super) async fn answer(
        &self,
        peer: PeerId,
        mut stream: libp2p::Stream,
    ) -> Result<(), HolePunchError> {
        let admitted = self
            .answers
            .lock()
            .map(|mut a| a.admit(peer, std::time::Instant::now()))
            .unwrap_or(false);
        if !admitted {
            self.metrics.refused("exchange_budget");
            return Err(HolePunchError::TooMany);
        }
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

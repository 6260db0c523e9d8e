//! Introductions (`/p2pnode/holepunch/introduce/1`): the relay's side, and either end's
//! dial on one.

use futures::AsyncWriteExt;
use libp2p::{Multiaddr, PeerId};
use p2pnode_secure::stream::{read_length_prefixed, write_length_prefixed};
use tokio::time::Instant;

use super::{
    EXCHANGE_TIMEOUT, HolePunchError, INTRODUCE_PROTOCOL, Introduction, MAX_MESSAGE, Puncher,
};

impl Puncher {
    /// Either end of a circuit: `relay` introduced the other end; dial it at once.
    pub(super) async fn introduced(
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
    /// each where the relay sees the other. Skipped when
    /// [`MAX_EXCHANGES`](super::MAX_EXCHANGES) are under way.
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

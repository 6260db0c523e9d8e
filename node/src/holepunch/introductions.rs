//! Introductions (`/p2pnode/holepunch/introduce/1`): the relay's side, and either end's
//! dial on one.

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{Multiaddr, PeerId};
use p2pnode_secure::stream::{read_length_prefixed, write_length_prefixed};
use tokio::sync::oneshot;

use crate::event_loop::transport_of_all;

use super::{
    AGREED, EXCHANGE_TIMEOUT, HolePunchError, INTRODUCE_PROTOCOL, Introducer, Introduction,
    MAX_MESSAGE, Puncher,
};

impl Puncher {
    /// Either end of a circuit: `relay` introduced the other end; dial it at once if the
    /// event loop agrees (a circuit with that peer through that relay exists or is being
    /// set up, the budget allows it, the addresses pass the filter). Agreeing is written
    /// back before the dial: the relay waits for it before telling the other end where we
    /// are.
    /// Returns the introduced peer and the transport of its addresses, once known, beside
    /// the outcome.
    pub(super) async fn introduced(
        &self,
        relay: PeerId,
        mut stream: libp2p::Stream,
    ) -> (Option<PeerId>, &'static str, Result<(), HolePunchError>) {
        match read_introduction(&mut stream).await {
            Ok(intro) => {
                let (peer, transport) = (intro.peer, transport_of_all(&intro.addrs));
                (Some(peer), transport, self.obey(relay, intro, stream).await)
            }
            Err(e) => (None, "unknown", Err(e)),
        }
    }

    async fn obey(
        &self,
        relay: PeerId,
        intro: Introduction,
        mut stream: libp2p::Stream,
    ) -> Result<(), HolePunchError> {
        tracing::debug!(%relay, peer = %intro.peer, addrs = ?intro.addrs, as_listener = intro.as_listener, "introduction received");
        let (agreed, agreement) = oneshot::channel();
        let introducer = Introducer { relay, agreed };
        let dial = self.dial(intro.peer, intro.addrs, intro.as_listener, Some(introducer));
        let agree = async move {
            if agreement.await.is_ok() {
                let _ = stream.write_all(&[AGREED]).await;
                let _ = stream.close().await;
            }
        };
        let (c, ()) = futures::join!(dial, agree);
        let c = c?;
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
    /// not speak the protocol gets the other end no dial it could not answer. B (the
    /// circuit's destination) is told first and dials (as listener) the moment its
    /// message arrives, which opens B's NAT towards A; it writes back that it agrees
    /// before it dials. Only then is A told where B is: B may refuse the circuit (it
    /// revoked A, or sees no circuit from A through us), and A must not learn B's address
    /// then. A's dial thus leaves about one round trip through us after B's, so B's NAT
    /// is open by the time it arrives; B's early packets towards A's NAT are dropped by
    /// most routers (harmless), and some answer with a TCP reset, which ends B's attempt
    /// and leaves the punch to the exchange.
    async fn send_introductions(
        &self,
        (a, a_addrs): (PeerId, Vec<Multiaddr>),
        (b, b_addrs): (PeerId, Vec<Multiaddr>),
    ) -> Result<(), HolePunchError> {
        let (to_a, mut to_b) = futures::try_join!(
            self.open(a, INTRODUCE_PROTOCOL),
            self.open(b, INTRODUCE_PROTOCOL)
        )?;
        let to_b_intro = Introduction {
            peer: a,
            addrs: a_addrs,
            as_listener: true,
        };
        write_length_prefixed(&mut to_b, &to_b_intro.encode())
            .await
            .map_err(|e| HolePunchError::Stream(e.to_string()))?;
        let mut answer = [0u8; 1];
        let agreed = matches!(to_b.read(&mut answer).await, Ok(1) if answer[0] == AGREED);
        let _ = to_b.close().await;
        if !agreed {
            return Err(HolePunchError::Refused);
        }
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

async fn read_introduction(stream: &mut libp2p::Stream) -> Result<Introduction, HolePunchError> {
    let bytes = tokio::time::timeout(EXCHANGE_TIMEOUT, read_length_prefixed(stream, MAX_MESSAGE))
        .await
        .map_err(|_| HolePunchError::Timeout)?
        .map_err(|e| HolePunchError::Stream(e.to_string()))?;
    let intro = Introduction::decode(&bytes)?;
    if intro.addrs.is_empty() {
        return Err(HolePunchError::NoPeerAddrs);
    }
    Ok(intro)
}

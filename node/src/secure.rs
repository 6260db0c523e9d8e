//! Secure application streams: every protocol's stream opens through [`Security::open`]
//! or arrives through [`SecureListener`], which check the trust
//! store and run the post-quantum hybrid handshake of `p2pnode_secure` before any
//! application byte moves. There is no other way to get an application stream, so the
//! secure path is the only path.
//!
//! Also here: the SAS verification exchange behind `p2pnode verify`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::{PeerId, Stream, StreamProtocol};
use p2pnode_secure::{
    HandshakeConfig, PeerKey, Sas, SecureStream, SigningKey, TrustDecision, TrustStore,
    VerifyingKey,
};
use tokio::sync::mpsc;

use crate::error::NodeError;
use crate::gate::{FIRST_MESSAGE_TIMEOUT, Gate, Refusal};
use crate::metrics::Metrics;
use crate::peer::verifying_key_of;
use crate::streams::ServeTasks;
use crate::trust::TrustDb;

/// The stream protocol of `p2pnode verify`: a handshake whose only product is the SAS.
pub const VERIFY_PROTOCOL: StreamProtocol = StreamProtocol::new("/p2pnode/verify/1.0.0");

/// A handshake that has not finished in this long is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long `verify` waits for the peer to record the code of the exchange it started.
const VERIFY_RECORDED_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a SAS from a verification exchange stays available for confirmation.
const PENDING_SAS_TTL: Duration = Duration::from_secs(600);
/// Most verification exchanges remembered at once.
const MAX_PENDING_SAS: usize = 64;
/// Stream tasks one listener runs at once. Which handshakes get a slot is the [`Gate`]'s
/// decision; this only bounds the tasks (a refused stream's task ends at once).
const MAX_STREAM_TASKS: usize = 64;

/// A SAS waiting for the user to compare it.
#[derive(Debug, Clone)]
struct PendingSas {
    sas: Sas,
    key: PeerKey,
    at: Instant,
    /// Whether `p2pnode verify` showed this code to the user: a shown code is never
    /// replaced by a later exchange, or a man in the middle could retry until the codes
    /// the two users compare happen to match.
    shown: bool,
}

/// The node's identity key, trust store and pending verifications. Shared by the
/// [`crate::Client`] clones and the listeners.
pub struct Security {
    signing: SigningKey,
    trust: TrustDb,
    pending: Mutex<HashMap<PeerId, PendingSas>>,
    pad: bool,
    /// The registered protocols' names: what `allow` and a confirmed verification grant.
    protocols: Vec<&'static str>,
    /// The accept loops of every [`SecureListener`], ended for certain at shutdown.
    listeners: Arc<ServeTasks>,
    /// Admission to the handshakes we answer, shared by every listener.
    gate: Gate,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Security")
    }
}

/// A blocking trust-store task that did not finish: the runtime is going away.
fn stopped(_: tokio::task::JoinError) -> NodeError {
    NodeError::Stopped
}

impl Security {
    pub(crate) fn new(
        signing: SigningKey,
        trust: TrustDb,
        pad: bool,
        protocols: Vec<&'static str>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            signing,
            trust,
            pending: Mutex::new(HashMap::new()),
            pad,
            protocols,
            listeners: Arc::default(),
            gate: Gate::default(),
            metrics,
        }
    }

    /// Ends every secure listener's accept loop and waits for them: after this, none holds
    /// the trust store any more.
    pub(crate) async fn stop_listeners(&self) {
        self.listeners.shutdown().await;
    }

    /// The trust table.
    pub fn trust(&self) -> &TrustDb {
        &self.trust
    }

    /// The names of the protocols the node runs, which the trust store grants.
    pub fn protocols(&self) -> &[&'static str] {
        &self.protocols
    }

    /// What the trust store says about `peer` for the protocol named `app`.
    pub async fn decide(&self, peer: PeerId, app: &str) -> Result<TrustDecision, NodeError> {
        let key = verifying_key_of(&peer)?.to_bytes();
        let trust = self.trust.clone();
        let app = app.to_string();
        tokio::task::spawn_blocking(move || trust.check(&peer.to_bytes(), &key, &app))
            .await
            .map_err(stopped)?
            .map_err(NodeError::from)
    }

    fn config(&self, remote: VerifyingKey, protocol: &StreamProtocol) -> HandshakeConfig {
        // Padding is marked per frame, so each side chooses it for what it sends.
        HandshakeConfig::new(self.signing.clone(), remote, protocol.as_ref().as_bytes())
            .with_session(p2pnode_secure::SessionConfig::default().with_padding(self.pad))
    }

    /// Opens `protocol` to `peer` and runs the handshake as initiator. Refused before any
    /// byte is sent when the peer is revoked or its key changed since verification.
    pub async fn open(
        &self,
        streams: &mut libp2p_stream::Control,
        peer: PeerId,
        protocol: StreamProtocol,
        app: &str,
    ) -> Result<SecureStream<Stream>, NodeError> {
        refuse_if_untrusted(peer, self.decide(peer, app).await?)?;
        let remote = verifying_key_of(&peer)?;
        let stream = streams
            .open_stream(peer, protocol.clone())
            .await
            .map_err(|e| NodeError::Stream {
                peer: peer.to_string(),
                reason: e.to_string(),
            })?;
        let config = self.config(remote, &protocol);
        let mut rng = rand::rngs::OsRng;
        let mut stream = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            p2pnode_secure::initiate(stream, config, &mut rng),
        )
        .await
        .map_err(|_| handshake_timeout(peer))?
        .map_err(|e| handshake_err(peer, e))?;
        stream.set_traffic(self.traffic(app));
        Ok(stream)
    }

    /// The per-protocol byte and frame counters for a session of `app`. Labels are the
    /// registered protocols' names (bounded), `other` for anything else.
    fn traffic(&self, app: &str) -> Arc<dyn p2pnode_secure::Traffic> {
        let protocol = self
            .protocols
            .iter()
            .copied()
            .find(|p| *p == app)
            .unwrap_or("other");
        Arc::new(crate::metrics::ProtocolTraffic::new(
            self.metrics.clone(),
            protocol,
        ))
    }

    async fn respond(
        &self,
        peer: PeerId,
        mut stream: Stream,
        protocol: &StreamProtocol,
    ) -> Result<SecureStream<Stream>, NodeError> {
        let config = self.config(verifying_key_of(&peer)?, protocol);
        // A real initiator sends its first message at once; a silent stream is let go
        // long before the whole handshake's deadline.
        let msg1 = tokio::time::timeout(
            FIRST_MESSAGE_TIMEOUT,
            p2pnode_secure::stream::read_handshake_message(&mut stream),
        )
        .await
        .map_err(|_| NodeError::Timeout {
            what: format!("the first handshake message from {peer}"),
            secs: FIRST_MESSAGE_TIMEOUT.as_secs(),
        })?
        .map_err(|e| handshake_err(peer, e))?;
        let mut rng = rand::rngs::OsRng;
        tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            p2pnode_secure::stream::respond_to(stream, &msg1, config, &mut rng),
        )
        .await
        .map_err(|_| handshake_timeout(peer))?
        .map_err(|e| handshake_err(peer, e))
    }

    /// Remembers the SAS of a verification exchange with `peer`, unless a code for that
    /// peer was already shown (it stays until it expires or is confirmed). When the table
    /// is full, the oldest code nobody was shown makes room; if every code was shown, the
    /// new one is dropped.
    fn remember_sas(&self, peer: PeerId, sas: Sas, key: PeerKey, shown: bool) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        pending.retain(|_, p| p.at.elapsed() < PENDING_SAS_TTL);
        if pending.get(&peer).is_some_and(|p| p.shown) {
            tracing::warn!(%peer, "another verification exchange while a code is shown; keeping the shown code");
            return;
        }
        if pending.len() >= MAX_PENDING_SAS && !pending.contains_key(&peer) {
            let oldest_unshown = pending
                .iter()
                .filter(|(_, p)| !p.shown)
                .min_by_key(|(_, p)| p.at)
                .map(|(k, _)| *k);
            match oldest_unshown {
                Some(oldest) => {
                    pending.remove(&oldest);
                }
                None => return,
            }
        }
        pending.insert(
            peer,
            PendingSas {
                sas,
                key,
                at: Instant::now(),
                shown,
            },
        );
    }

    /// The pending code for `peer`, marked as shown (the caller shows it).
    fn show_pending_sas(&self, peer: &PeerId) -> Option<Sas> {
        let mut pending = self.pending.lock().ok()?;
        let p = pending
            .get_mut(peer)
            .filter(|p| p.at.elapsed() < PENDING_SAS_TTL)?;
        p.shown = true;
        Some(p.sas)
    }

    fn pending_sas(&self, peer: &PeerId) -> Option<PendingSas> {
        let pending = self.pending.lock().ok()?;
        pending
            .get(peer)
            .filter(|p| p.at.elapsed() < PENDING_SAS_TTL)
            .cloned()
    }

    /// The SAS for `peer`: from a recent exchange the peer started, else from a new
    /// exchange we start now. Both sides of one exchange show the same code.
    pub async fn verify(
        &self,
        streams: &mut libp2p_stream::Control,
        peer: PeerId,
    ) -> Result<Sas, NodeError> {
        if let Some(sas) = self.show_pending_sas(&peer) {
            return Ok(sas);
        }
        let mut stream = self.open(streams, peer, VERIFY_PROTOCOL, "verify").await?;
        let sas = *stream.sas();
        let key = stream.remote_key().to_bytes();
        self.remember_sas(peer, sas, key, true);
        // The peer closes the stream once it has recorded the code; wait for that, so its
        // user running `verify` next finds this exchange's code instead of starting
        // another exchange with another code.
        let _ = tokio::time::timeout(VERIFY_RECORDED_TIMEOUT, stream.recv()).await;
        let _ = stream.close().await;
        Ok(sas)
    }

    /// Records that the user compared the SAS of the latest exchange with `peer` and it
    /// matched: the peer's key is pinned as verified and every protocol is allowed.
    pub async fn confirm(&self, peer: PeerId) -> Result<p2pnode_secure::TrustEntry, NodeError> {
        let pending = self.pending_sas(&peer).ok_or_else(|| {
            NodeError::InvalidInput(format!(
                "no verification code for {peer} to confirm; run `p2pnode verify {peer}` first"
            ))
        })?;
        let trust = self.trust.clone();
        let grant: Vec<String> = self.protocols.iter().map(|p| p.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            trust.update(&peer, pending.key, |e| {
                e.peer_key = pending.key;
                e.verify(pending.key);
                e.revoked = false;
                e.allowed_protocols.extend(grant);
            })
        })
        .await
        .map_err(stopped)?
        .map_err(NodeError::from)
    }
}

fn handshake_err(peer: PeerId, e: p2pnode_secure::HandshakeError) -> NodeError {
    NodeError::Handshake {
        peer: peer.to_string(),
        source: Arc::new(e),
    }
}

/// A short, bounded label for why a handshake failed (a metrics label).
fn failure_reason(e: &NodeError) -> &'static str {
    use p2pnode_secure::HandshakeError as H;
    match e {
        NodeError::Timeout { .. } => "timeout",
        NodeError::Handshake { source, .. } => match source.as_ref() {
            H::Decode(_) | H::MessageTooLarge { .. } => "malformed",
            H::RemoteKeyMismatch | H::BadSignature | H::CommitmentMismatch => "authentication",
            H::InvalidKemKey | H::Kem => "kem",
            H::Closed => "closed",
            H::Io(_) => "io",
            #[allow(unreachable_patterns)]
            _ => "other",
        },
        _ => "other",
    }
}

fn handshake_timeout(peer: PeerId) -> NodeError {
    NodeError::Timeout {
        what: format!("the secure handshake with {peer}"),
        secs: HANDSHAKE_TIMEOUT.as_secs(),
    }
}

/// Turns the decisions that end a conversation before it starts into errors.
pub(crate) fn refuse_if_untrusted(peer: PeerId, decision: TrustDecision) -> Result<(), NodeError> {
    match decision {
        TrustDecision::Revoked => Err(NodeError::Revoked {
            peer: peer.to_string(),
        }),
        TrustDecision::KeyChanged => {
            tracing::error!(%peer, "SECURITY ALARM: the peer's key differs from the verified one");
            Err(NodeError::KeyChanged {
                peer: peer.to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// An application stream that passed the handshake, with the trust decision for it.
/// `Allow` means go ahead; `UnknownPeer` and `NotAllowed` are for the protocol to handle
/// (a request to accept, or a refusal for members-only protocols).
pub struct Accepted {
    /// The authenticated peer.
    pub peer: PeerId,
    /// The secured stream.
    pub stream: SecureStream<Stream>,
    /// What the trust store says.
    pub decision: TrustDecision,
}

/// Incoming secure streams of one protocol. Revoked peers and changed keys are refused
/// before the handshake; handshakes run concurrently (bounded) so a slow peer cannot stall
/// the others.
pub struct SecureListener {
    accepted: mpsc::Receiver<Accepted>,
    task: tokio::task::AbortHandle,
}

impl SecureListener {
    /// Starts accepting `protocol` streams for the application `app`.
    pub(crate) fn new(
        security: Arc<Security>,
        streams: &mut libp2p_stream::Control,
        protocol: StreamProtocol,
        app: &'static str,
    ) -> Result<Self, NodeError> {
        let incoming = streams
            .accept(protocol.clone())
            .map_err(|e| NodeError::InvalidInput(e.to_string()))?;
        let (tx, rx) = mpsc::channel(32);
        let tasks = Arc::clone(&security.listeners);
        let stop = tasks.stopping();
        let task = tasks.spawn(accept_loop(security, incoming, protocol, app, tx, stop));
        Ok(Self { accepted: rx, task })
    }

    /// The next accepted stream; `None` once the node stops.
    pub async fn next(&mut self) -> Option<Accepted> {
        self.accepted.recv().await
    }

    /// An accepted stream if one is ready now, without waiting.
    pub fn accepted_now(&mut self) -> Option<Accepted> {
        self.accepted.try_recv().ok()
    }
}

impl Drop for SecureListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    security: Arc<Security>,
    incoming: libp2p_stream::IncomingStreams,
    protocol: StreamProtocol,
    app: &'static str,
    tx: mpsc::Sender<Accepted>,
    stop: impl std::future::Future<Output = ()>,
) {
    let what = format!("{protocol} handshake");
    crate::streams::serve_streams_until(
        incoming,
        MAX_STREAM_TASKS,
        &what,
        |peer, stream| {
            let (security, protocol, tx) = (security.clone(), protocol.clone(), tx.clone());
            async move {
                let Some(accepted) = admit(&security, peer, stream, &protocol, app).await else {
                    return;
                };
                // Never wait for a slow protocol while holding anything: a full queue
                // refuses the stream, and the peer opens another later.
                if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(accepted) {
                    tracing::warn!(%peer, %protocol, "protocol is not keeping up; dropping a stream");
                }
            }
        },
        stop,
    )
    .await;
}

/// One incoming stream through the gate: a handshake slot (per peer, rate-limited, and
/// from the budget of known peers or of strangers), the trust check, the handshake (its
/// first message within [`FIRST_MESSAGE_TIMEOUT`]), the slot given back, and the trust
/// check again, so a revocation made during the handshake wins.
async fn admit(
    security: &Security,
    peer: PeerId,
    stream: Stream,
    protocol: &StreamProtocol,
    app: &'static str,
) -> Option<Accepted> {
    let metrics = &security.metrics;
    let refused = |e: Refusal| {
        tracing::debug!(%peer, %protocol, "refused stream: {e}");
        metrics.refused(match e {
            Refusal::PeerBusy => "gate_peer_busy",
            Refusal::RateLimited => "gate_rate",
            Refusal::Full => "gate_full",
        });
        metrics.stream(app, "refused");
    };
    let mut slot = match security.gate.enter(peer, Instant::now()) {
        Ok(slot) => slot,
        Err(e) => {
            refused(e);
            return None;
        }
    };
    let Some(decision) = trusted(security, peer, protocol, app).await else {
        metrics.stream(app, "refused");
        return None;
    };
    if let Err(e) = slot.classify(decision != TrustDecision::UnknownPeer) {
        refused(e);
        return None;
    }
    let mut stream = match security.respond(peer, stream, protocol).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(%peer, %protocol, "handshake failed: {e}");
            metrics.stream(app, "failed");
            metrics.handshake_failed(failure_reason(&e));
            return None;
        }
    };
    drop(slot);
    let Some(decision) = trusted(security, peer, protocol, app).await else {
        metrics.stream(app, "refused");
        return None;
    };
    metrics.stream(app, "accepted");
    stream.set_traffic(security.traffic(app));
    Some(Accepted {
        peer,
        stream,
        decision,
    })
}

/// The trust store's decision for `peer`, or `None` (logged) when it refuses the peer.
async fn trusted(
    security: &Security,
    peer: PeerId,
    protocol: &StreamProtocol,
    app: &str,
) -> Option<TrustDecision> {
    let decision = match security.decide(peer, app).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(%peer, "trust check failed: {e}");
            return None;
        }
    };
    if let Err(e) = refuse_if_untrusted(peer, decision) {
        tracing::warn!(%peer, %protocol, "refused stream: {e}");
        return None;
    }
    Some(decision)
}

/// Serves the verification protocol: answers handshakes and keeps their SAS for
/// `p2pnode verify` on this side.
pub(crate) async fn serve_verify(security: Arc<Security>, mut listener: SecureListener) {
    while let Some(Accepted {
        peer, mut stream, ..
    }) = listener.next().await
    {
        let sas = *stream.sas();
        security.remember_sas(peer, sas, stream.remote_key().to_bytes(), false);
        tracing::warn!(%peer, "peer {peer} started a verification; run `p2pnode verify {peer}` to compare codes");
        let _ = stream.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTOCOLS: [&str; 3] = ["proto-a", "proto-b", "proto-c"];

    #[tokio::test]
    async fn a_changed_key_raises_the_alarm_in_every_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let trust = TrustDb::open(store.database().clone()).unwrap();
        let me = libp2p::identity::Keypair::generate_ed25519();
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let real = verifying_key_of(&peer).unwrap().to_bytes();
        // The entry pins another key than the one the peer id carries, as it would after
        // the peer's key was swapped under a name the user trusted.
        let other = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .try_into_ed25519()
            .unwrap()
            .to_bytes();
        trust
            .update(&peer, real, |e| {
                e.verify(other);
                e.allowed_protocols
                    .extend(PROTOCOLS.iter().map(|p| p.to_string()));
            })
            .unwrap();
        let me = crate::peer::signing_key_of(&me).unwrap();
        let security = Security::new(me, trust, false, PROTOCOLS.to_vec(), Arc::default());
        for app in PROTOCOLS {
            let decision = security.decide(peer, app).await.unwrap();
            assert_eq!(decision, TrustDecision::KeyChanged);
            let err = refuse_if_untrusted(peer, decision).unwrap_err();
            assert!(err.to_string().contains("SECURITY ALARM"), "{err}");
        }
    }
}

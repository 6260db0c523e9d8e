//! A transfer's providers: the worker fetching from each, and the bookkeeping that decides
//! whether one that left is asked again (a new stream after a relay circuit ended, a pause
//! when its gate turned us away) or let go.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use p2pnode_node::NodeError;
use p2pnode_secure::HandshakeError;
use tokio::sync::mpsc;

use super::worker::worker;
use super::{
    BUSY_PAUSE, BUSY_PAUSE_MAX, BUSY_TRIES, Event, MAX_REOPENS, MAX_STRIKES, REOPEN_PAUSE,
    REOPEN_TRIES, WORKER_QUEUE,
};
use crate::api::ProviderInfo;
use crate::service::serve::open;
use crate::service::wire::Secure;
use crate::service::{FilesError, Inner};
use crate::{ContentId, GroupRef, Planner};

/// A transfer's providers: a worker for each one fetching, and what became of each that
/// left or was dropped, for the progress and for whether to ask it again.
pub(super) struct Providers {
    inner: Arc<Inner>,
    me: PeerId,
    content: ContentId,
    entries: Arc<Vec<(u64, ContentId)>>,
    events: mpsc::Sender<Event>,
    workers: HashMap<PeerId, Worker>,
    /// Dropped for a group that failed verification: never asked again.
    dropped: HashSet<PeerId>,
    /// Groups served on earlier streams.
    served_before: HashMap<PeerId, u64>,
    /// Streams opened again.
    reopens: HashMap<PeerId, u32>,
    /// Those whose connection was last seen relayed.
    relayed: HashSet<PeerId>,
    /// Those whose new stream is being opened: the transfer waits for them before it
    /// says no provider is left.
    reopening: HashSet<PeerId>,
    /// Failed tries in a row at a new stream (see [`REOPEN_TRIES`]).
    failed_opens: HashMap<PeerId, u32>,
    /// Streams that failed to open or served nothing. The DHT keeps naming a provider
    /// that died; found again, it would be tried for ever, and a transfer whose providers
    /// are all gone would never end.
    strikes: HashMap<PeerId, u32>,
    pub(super) last_failure: String,
}

impl Providers {
    pub(super) fn new(
        inner: &Arc<Inner>,
        content: ContentId,
        entries: Arc<Vec<(u64, ContentId)>>,
        events: mpsc::Sender<Event>,
    ) -> Self {
        Self {
            inner: inner.clone(),
            me: inner.client.peer_id(),
            content,
            entries,
            events,
            workers: HashMap::new(),
            dropped: HashSet::new(),
            served_before: HashMap::new(),
            reopens: HashMap::new(),
            relayed: HashSet::new(),
            reopening: HashSet::new(),
            failed_opens: HashMap::new(),
            strikes: HashMap::new(),
            last_failure: String::from("none"),
        }
    }

    /// Whether no provider is fetching or about to again.
    pub(super) fn is_empty(&self) -> bool {
        self.workers.is_empty() && self.reopening.is_empty()
    }

    /// Starts a worker for `peer` (on `stream`, else it opens one) if the planner takes it.
    pub(super) fn start(
        &mut self,
        plan: &mut Planner<PeerId>,
        peer: PeerId,
        stream: Option<Secure>,
    ) {
        if !plan.add_provider(peer) {
            return;
        }
        // A few batches queued at most; the planner's window bounds what they hold.
        let (tx, rx) = mpsc::channel(WORKER_QUEUE);
        self.inner.spawn(worker(
            self.inner.clone(),
            peer,
            self.content,
            self.entries.clone(),
            rx,
            self.events.clone(),
            stream,
        ));
        let pending = Vec::new();
        self.workers.insert(peer, Worker { tx, pending });
    }

    /// Hands each worker the groups the planner asks of its provider.
    pub(super) fn hand_out(&mut self, plan: &mut Planner<PeerId>, now: Instant) {
        while let Some(r) = plan.next_request(now) {
            if let Some(w) = self.workers.get_mut(&r.provider) {
                w.pending.push(r.group);
            }
        }
        for w in self.workers.values_mut() {
            if !w.pending.is_empty() {
                let batch = std::mem::take(&mut w.pending);
                // A full queue keeps the groups here for the next round.
                if let Err(mpsc::error::TrySendError::Full(batch)) = w.tx.try_send(batch) {
                    w.pending = batch;
                }
            }
        }
    }

    pub(super) fn on_bad(&mut self, plan: &mut Planner<PeerId>, peer: PeerId, group: GroupRef) {
        tracing::warn!(%peer, ?group, "provider sent a group that failed verification; dropped");
        self.last_failure = format!("{peer} sent a group that failed verification");
        plan.on_bad(&peer, group);
        self.workers.remove(&peer);
        self.dropped.insert(peer);
    }

    pub(super) fn on_found(&mut self, plan: &mut Planner<PeerId>, peer: PeerId) {
        let struck = self.strikes.get(&peer).is_some_and(|&n| n >= MAX_STRIKES);
        if peer != self.me
            && !struck
            && !self.reopening.contains(&peer)
            && !self.workers.contains_key(&peer)
        {
            tracing::debug!(%peer, "provider found while fetching");
            self.start(plan, peer, None);
        }
    }

    pub(super) fn on_gone(
        &mut self,
        plan: &mut Planner<PeerId>,
        peer: PeerId,
        reason: &str,
        busy: bool,
    ) {
        let served = plan
            .served()
            .find(|(p, _)| **p == peer)
            .map_or(0, |(_, n)| n);
        let n = self.reopens.entry(peer).or_default();
        // Its groups go back to the others now; it rejoins once a new stream is open. One
        // that served nothing on its last stream is let go, unless its gate only turned us
        // away for now: then it is asked again after a pause, holding no groups meanwhile.
        let reopen = (served > 0 || busy) && *n < MAX_REOPENS;
        if reopen {
            *n += 1;
        }
        if served == 0 && !busy {
            *self.strikes.entry(peer).or_default() += 1;
        }
        let over = if self.relayed.contains(&peer) {
            " (over a relay, whose circuits end at its limits)"
        } else {
            ""
        };
        if reopen {
            if busy {
                tracing::debug!(%peer, "provider busy{over}: {reason}; asking again after a pause");
            } else {
                tracing::info!(%peer, "provider's stream ended{over}: {reason}; opening another");
            }
            self.reopening.insert(peer);
            // A busy provider is left alone for a while: the others, or those the swarm
            // finds meanwhile, take its groups.
            let pause = if busy {
                self.inner.config.rediscover_every.max(busy_pause(1))
            } else {
                Duration::ZERO
            };
            reopen_later(&self.inner, &self.events, peer, pause);
        } else {
            tracing::info!(%peer, "provider left the transfer{over}: {reason}");
        }
        self.last_failure = format!("{peer}{over}: {reason}");
        *self.served_before.entry(peer).or_default() += served;
        plan.remove_provider(&peer);
        self.workers.remove(&peer);
    }

    pub(super) fn on_back(
        &mut self,
        plan: &mut Planner<PeerId>,
        peer: PeerId,
        stream: Result<Box<Secure>, String>,
    ) {
        self.reopening.remove(&peer);
        match stream {
            Ok(stream) => {
                self.failed_opens.remove(&peer);
                if !self.dropped.contains(&peer) && !self.workers.contains_key(&peer) {
                    self.start(plan, peer, Some(*stream));
                }
            }
            Err(reason) => {
                self.last_failure = format!("{peer}: no new stream: {reason}");
                // One that served before is tried again, after a pause that doubles: a new
                // stream over a relay can fail while the circuit that just ended is torn
                // down ("oneshot canceled"); a later try dials a new circuit.
                *self.strikes.entry(peer).or_default() += 1;
                let failed = self.failed_opens.entry(peer).or_default();
                *failed += 1;
                let served = self.served_before.get(&peer).copied().unwrap_or(0);
                if served > 0 && *failed < REOPEN_TRIES && !self.dropped.contains(&peer) {
                    tracing::info!(%peer, "no new stream: {reason}; trying again");
                    let pause = REOPEN_PAUSE * (1 << (*failed - 1));
                    self.reopening.insert(peer);
                    reopen_later(&self.inner, &self.events, peer, pause);
                } else {
                    tracing::info!(%peer, "provider left the transfer: no new stream: {reason}");
                }
            }
        }
    }

    /// Asks the node which providers it reaches over a relay.
    pub(super) async fn see_paths(&mut self) {
        if let Ok(peers) = self.inner.client.peers().await {
            self.relayed = peers
                .iter()
                .filter(|p| p.path == p2pnode_node::api::Path::Relayed)
                .filter_map(|p| p.peer_id.parse().ok())
                .collect();
        }
    }

    /// What each provider did for the transfer, for its progress.
    pub(super) fn infos(&self, plan: &Planner<PeerId>) -> Vec<ProviderInfo> {
        let info = |p: &PeerId, groups: u64, dropped: bool| ProviderInfo {
            peer_id: p.to_string(),
            groups: groups + self.served_before.get(p).copied().unwrap_or(0),
            dropped,
            relayed: self.relayed.contains(p),
            reopened: self.reopens.get(p).copied().unwrap_or(0),
        };
        plan.served()
            .map(|(p, n)| info(p, n, false))
            .chain(self.dropped.iter().map(|p| info(p, 0, true)))
            .collect()
    }
}

pub(super) struct Worker {
    tx: mpsc::Sender<Vec<GroupRef>>,
    pending: Vec<GroupRef>,
}

/// Opens a new stream to `peer` after `pause` (patiently, see [`open_patiently`]) and
/// reports it to the transfer as [`Event::Back`].
pub(super) fn reopen_later(
    inner: &Arc<Inner>,
    events: &mpsc::Sender<Event>,
    peer: PeerId,
    pause: Duration,
) {
    let (inner2, events) = (inner.clone(), events.clone());
    inner.spawn(async move {
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let stream = open_patiently(&inner2, peer)
            .await
            .map(Box::new)
            .map_err(|e| e.to_string());
        let _ = events.send(Event::Back { peer, stream }).await;
    });
}

/// Whether `e` is a provider's handshake gate turning us away: it closed the stream where
/// its answer was due. That is how it says it is busy (or that we come too often, or that
/// it does not take us: those fail again, and after [`BUSY_TRIES`] the failure stands).
pub(super) fn turned_away(e: &FilesError) -> bool {
    matches!(
        e,
        FilesError::Node(NodeError::Handshake { source, .. })
            if matches!(**source, HandshakeError::Closed)
    )
}

/// The pause before try `n + 1` at a provider that turned us away `n` times: doubling from
/// [`BUSY_PAUSE`], drawn between half and one and a half times that, so fetchers turned
/// away together do not all come back together.
pub(super) fn busy_pause(n: u32) -> Duration {
    let base = BUSY_PAUSE
        .saturating_mul(1 << n.saturating_sub(1).min(8))
        .min(BUSY_PAUSE_MAX);
    base.mul_f64(0.5 + rand::random::<f64>())
}

/// Opens a stream to `peer`, coming back after a pause while its gate turns us away.
pub(super) async fn open_patiently(inner: &Inner, peer: PeerId) -> Result<Secure, FilesError> {
    let mut n = 0;
    loop {
        match open(inner, peer).await {
            Err(e) if turned_away(&e) && n + 1 < BUSY_TRIES => {
                n += 1;
                let pause = busy_pause(n);
                tracing::debug!(%peer, tries = n, ?pause, "provider busy: {e}");
                tokio::time::sleep(pause).await;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_gate_closing_the_handshake_counts_as_busy() {
        let handshake = |source| {
            FilesError::Node(NodeError::Handshake {
                peer: "p".into(),
                source: Arc::new(source),
            })
        };
        assert!(turned_away(&handshake(HandshakeError::Closed)));
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert!(!turned_away(&handshake(HandshakeError::Io(eof))));
        assert!(!turned_away(&FilesError::NoProvider("gone".into())));
    }

    #[test]
    fn busy_pauses_double_to_a_cap_and_are_spread() {
        for n in 1..=BUSY_TRIES {
            let base = BUSY_PAUSE
                .saturating_mul(1 << (n - 1).min(8))
                .min(BUSY_PAUSE_MAX);
            for _ in 0..50 {
                let p = busy_pause(n);
                assert!(p >= base / 2 && p <= base * 3 / 2, "try {n}: {p:?}");
            }
        }
        // Patience is bounded: every pause together is a few seconds at most.
        let most: Duration = (1..BUSY_TRIES)
            .map(|n| BUSY_PAUSE.saturating_mul(1 << (n - 1)).min(BUSY_PAUSE_MAX) * 3 / 2)
            .sum();
        assert!(most < Duration::from_secs(12), "{most:?}");
    }
}

//! The streams to peers: one per connected peer that shares a network with us, opened by
//! the smaller peer id (the other after [`FALLBACK_OPEN`](super::FALLBACK_OPEN)),
//! retried with a doubling pause, and dropped when the peer shares no network any more.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::AsyncReadExt;
use libp2p::{PeerId, StreamProtocol};
use p2pnode_node::open_schedule::OpenSchedule;
use p2pnode_secure::SecureStream;
use tokio::sync::mpsc;

use super::{
    Batch, INBOUND_BYTES_PER_PEER, MAX_LINKS, OPEN_TIMEOUT, Opened, PAUSES, Service, WRITER_QUEUE,
    io, spawn,
};

/// A peer's stream: its writer and reader tasks, and what it carries.
pub(super) struct Link {
    pub(super) id: u64,
    /// Whether the smaller peer id opened it (the winner when both open at once).
    pub(super) preferred: bool,
    pub(super) writer: mpsc::Sender<Vec<u8>>,
    /// Bytes queued for the writer, not yet written.
    pub(super) queued: Arc<std::sync::atomic::AtomicU64>,
    pub(super) reader: tokio::task::AbortHandle,
    pub(super) writer_task: tokio::task::AbortHandle,
    /// The documents exchanged with this peer, at most
    /// [`MAX_DOCS_PER_PEER`](super::MAX_DOCS_PER_PEER).
    pub(super) docs: HashSet<String>,
}

impl Drop for Link {
    /// Both tasks end at once, so the stream is dropped and the peer gets a reset. The
    /// writer does not drain what is queued: a dropped link's backlog is stale (its sync
    /// state was reset), goes to a peer we stopped reading or no longer trust, and could
    /// be up to [`OUTBOUND_BYTES_PER_PEER`](super::OUTBOUND_BYTES_PER_PEER). While it
    /// drained over a lossy link, the peer kept the stream as its live link: it refused our
    /// next stream and sent frames nobody read, so a dropped link healed only after the
    /// whole backlog went out.
    fn drop(&mut self) {
        self.reader.abort();
        self.writer_task.abort();
    }
}

impl Service {
    pub(super) fn attach(
        &mut self,
        peer: PeerId,
        stream: SecureStream<libp2p::Stream>,
        preferred: bool,
        batch: &mut Batch,
    ) {
        if let Some(old) = self.links.get(&peer) {
            if old.preferred && !preferred {
                return;
            }
            self.drop_link(peer);
        }
        if self.links.len() >= MAX_LINKS {
            tracing::warn!(%peer, "sync: {MAX_LINKS} streams open; refusing another");
            return;
        }
        // The peer's attempts are kept until a frame comes over the stream: a peer that
        // takes streams and closes them unread (one that revoked us) is asked again only
        // after the doubling pause, not as soon as each stream ends.
        let (io, session) = stream.into_parts();
        let session = Arc::new(Mutex::new(session));
        let (read, write) = io.split();
        let (writer, rx) = mpsc::channel(WRITER_QUEUE);
        let id = self.next_link;
        self.next_link += 1;
        let queued = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer_task = spawn(io::write_frames(
            peer,
            id,
            write,
            session.clone(),
            rx,
            queued.clone(),
            self.inbound_tx.clone(),
        ))
        .abort_handle();
        let budget = Arc::new(tokio::sync::Semaphore::new(INBOUND_BYTES_PER_PEER as usize));
        let reader = spawn(io::read_frames(
            peer,
            id,
            read,
            session,
            budget,
            self.inbound_tx.clone(),
        ))
        .abort_handle();
        self.links.insert(
            peer,
            Link {
                id,
                preferred,
                writer,
                queued,
                reader,
                writer_task,
                docs: HashSet::new(),
            },
        );
        tracing::debug!(%peer, "sync stream up");
        // Catch up on connect: a first message for every document this peer may sync.
        for doc in self.docs.keys() {
            batch.sends.insert((doc.clone(), peer));
        }
    }

    pub(super) fn drop_link(&mut self, peer: PeerId) {
        let Some(link) = self.links.remove(&peer) else {
            return;
        };
        let peer_bytes = peer.to_bytes();
        for doc in &link.docs {
            if let Some(d) = self.docs.get_mut(doc) {
                d.session.disconnected(&peer_bytes);
            }
        }
    }

    /// Opens streams to connected peers that share a network with us, and drops the
    /// streams of peers that share none any more. Gives when it next has something to do
    /// with the peers connected now (an open that comes due), if ever: the owner runs it
    /// again then, or sooner when peers or memberships change.
    pub(super) async fn look_at_peers(&mut self) -> Option<Instant> {
        let Ok(peers) = self.client.peers().await else {
            return None;
        };
        let connected: HashSet<PeerId> = peers
            .iter()
            .filter_map(|p| p.peer_id.parse().ok())
            .take(MAX_LINKS)
            .collect();
        self.seen.retain(|p, _| connected.contains(p));
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for peer in connected {
            if self.links.contains_key(&peer) || self.opening.contains(&peer) {
                continue;
            }
            // A peer that shares no network is looked at again when a membership changes.
            if !self.shares_network(&peer) {
                continue;
            }
            let seen = self
                .seen
                .entry(peer)
                .or_insert_with(|| OpenSchedule::new(now));
            let due = seen.due(self.me < peer, &PAUSES);
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            // An open that brings no stream is reported (`Opened::Failed`), and the peers
            // are looked at again then: its pause counts from here.
            seen.attempted(now);
            self.open(peer);
        }
        self.membership_changed(None);
        next
    }

    pub(super) fn open(&mut self, peer: PeerId) {
        self.opening.insert(peer);
        let client = self.client.clone();
        let tx = self.opened_tx.clone();
        spawn(async move {
            let started = Instant::now();
            let protocol = StreamProtocol::new(crate::STREAM_PROTOCOL);
            let opened = tokio::time::timeout(
                OPEN_TIMEOUT,
                client.open_secure(peer, protocol, crate::PROTOCOL),
            )
            .await;
            let result = match opened {
                Ok(Ok(stream)) => Opened::Ok(peer, Box::new(stream)),
                Ok(Err(e)) => Opened::Failed(peer, e.to_string(), started.elapsed()),
                Err(_) => Opened::Failed(peer, "timed out".into(), started.elapsed()),
            };
            let _ = tx.send(result).await;
        });
    }
}

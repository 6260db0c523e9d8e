//! The documents' side of the owner: a write run on a document (creating it in its
//! network), a peer's frame merged into one, and at a batch's end the saves, then the
//! replies, watchers' events and next messages, in that order.

use std::collections::HashMap;
use std::path::Path;

use libp2p::PeerId;
use p2pnode_crdt::{ChangeHash, Document, SyncSession};

use super::{
    Batch, CHUNK_OVERHEAD, Doc, MAX_DOCS, MAX_DOCS_PER_PEER, OUTBOUND_BYTES_PER_PEER, Service,
    SyncError, WriteOp, blocking, check_network, hex_heads,
};
use crate::api::WatchEvent;
use crate::wire::{CHUNK_LEN, Frame, MAX_FRAME_LEN};

/// Frames larger than this are merged through [`blocking`]: automerge's work grows with
/// the frame, and a handoff costs more than merging a small one.
const LARGE_FRAME: usize = 64 * 1024;

/// Writes `<dir>/<doc>.network` so that a crash leaves the old file or the new one.
fn write_network(dir: &Path, doc: &str, network: &str) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(format!("{doc}.network"));
    let tmp = dir.join(format!(".{doc}.network.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(network.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl Service {
    /// Runs a write; on error nothing is kept (a document created for it is dropped).
    pub(super) fn write(
        &mut self,
        doc: &str,
        create: Option<String>,
        must_be_new: bool,
        op: WriteOp,
    ) -> Result<Option<ChangeHash>, SyncError> {
        if let Some(d) = self.docs.get_mut(doc) {
            if must_be_new {
                return Err(SyncError::Invalid(format!(
                    "document `{doc}` exists (in network `{}`)",
                    d.network
                )));
            }
            return Ok(op(d.session.document_mut())?);
        }
        let Some(network) = create else {
            return Err(SyncError::UnknownDocument(doc.to_string()));
        };
        check_network(&network)?;
        if !self.networks.is_in(&network) {
            return Err(SyncError::Invalid(format!(
                "not a member of network `{network}` (see `p2pnode net list`)"
            )));
        }
        // The store refuses names that cannot be file names.
        self.store.contains(doc)?;
        if self.docs.len() >= MAX_DOCS {
            return Err(SyncError::Invalid(format!(
                "this node holds {MAX_DOCS} documents, the most it may"
            )));
        }
        let mut fresh = Document::new(&self.me_bytes)?;
        let change = op(&mut fresh)?;
        blocking(|| write_network(self.store.dir(), doc, &network))
            .map_err(|e| SyncError::NotSaved(format!("network of `{doc}`: {e}")))?;
        self.docs.insert(
            doc.to_string(),
            Doc {
                session: SyncSession::new(fresh).with_max_message_bytes(MAX_FRAME_LEN),
                network,
                watch: None,
            },
        );
        Ok(change)
    }

    pub(super) fn receive(&mut self, peer: PeerId, frame: Frame, batch: &mut Batch) {
        self.stats.frames_in += 1;
        self.stats.bytes_in += frame.message.len() as u64;
        let allowed = match self.docs.get(&frame.doc) {
            Some(_) => self.may_sync(&peer, &frame.doc),
            // A document new to us: only of a network we are in, from a member of it.
            None => self.links.contains_key(&peer) && self.may_sync_network(&peer, &frame.network),
        };
        if !allowed {
            self.stats.refused_frames += 1;
            return;
        }
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        if !link.docs.contains(&frame.doc) && link.docs.len() >= MAX_DOCS_PER_PEER {
            tracing::warn!(%peer, doc = frame.doc, "sync: too many documents with this peer");
            self.stats.refused_frames += 1;
            return;
        }
        if let Some(d) = self.docs.get(&frame.doc)
            && !d.network.is_empty()
            && d.network != frame.network
        {
            // A document belongs to one network: a peer naming another one is not
            // talking about our document.
            tracing::warn!(%peer, doc = frame.doc, network = frame.network, "sync: network mismatch");
            self.stats.refused_frames += 1;
            return;
        }
        if !self.docs.contains_key(&frame.doc) {
            // A document a peer shares with us: created here, in the network it names.
            let valid =
                check_network(&frame.network).is_ok() && self.store.contains(&frame.doc).is_ok();
            if !valid || self.docs.len() >= MAX_DOCS {
                tracing::warn!(%peer, doc = frame.doc, "sync: document not taken");
                self.stats.refused_frames += 1;
                return;
            }
            let Ok(fresh) = Document::new(&self.me_bytes) else {
                return;
            };
            let dir = self.store.dir();
            if let Err(e) = blocking(|| write_network(dir, &frame.doc, &frame.network)) {
                tracing::warn!(doc = frame.doc, "sync: cannot store the network: {e}");
                return;
            }
            self.docs.insert(
                frame.doc.clone(),
                Doc {
                    session: SyncSession::new(fresh).with_max_message_bytes(MAX_FRAME_LEN),
                    network: frame.network.clone(),
                    watch: None,
                },
            );
            batch.dirty.insert(frame.doc.clone());
        }
        link.docs.insert(frame.doc.clone());
        let Some(d) = self.docs.get_mut(&frame.doc) else {
            return;
        };
        let peer_bytes = peer.to_bytes();
        let mut merge = || d.session.receive_message(&peer_bytes, &frame.message);
        let merged = if frame.message.len() > LARGE_FRAME {
            blocking(merge)
        } else {
            merge()
        };
        match merged {
            Err(e) => {
                tracing::warn!(%peer, doc = frame.doc, "sync: {e}; dropping the stream");
                self.drop_link(peer);
                return;
            }
            Ok(changed) if changed.any() => {
                self.stats.changes_in += changed.changes;
                batch.dirty.insert(frame.doc.clone());
                batch.events.push((
                    frame.doc.clone(),
                    WatchEvent::Changed {
                        doc: frame.doc.clone(),
                        source: peer.to_string(),
                        changes: changed.changes,
                        heads: hex_heads(&changed.heads),
                    },
                ));
                for other in self.links.keys() {
                    batch.sends.insert((frame.doc.clone(), *other));
                }
            }
            Ok(_) => {}
        }
        batch.sends.insert((frame.doc, peer));
    }

    /// Saves what changed, then answers, tells watchers and sends the next messages.
    pub(super) fn finish(&mut self, batch: Batch) {
        let mut failed: HashMap<String, String> = HashMap::new();
        // The owner waits on purpose: it is the only writer, and nothing of this batch may
        // be acknowledged or sent before the fsync returned. `blocking` keeps the rest of
        // the node running meanwhile.
        // Most batches (events, frames that changed nothing) save nothing, and a
        // handoff of the worker costs a cross-CPU wake-up.
        let save = !batch.dirty.is_empty();
        let saves = || {
            for name in &batch.dirty {
                let Some(d) = self.docs.get_mut(name) else {
                    continue;
                };
                if let Err(e) = self.store.save_session(name, &mut d.session) {
                    tracing::error!(doc = name, "sync: cannot save: {e}");
                    failed.insert(name.clone(), e.to_string());
                }
            }
        };
        if save {
            blocking(saves);
        }
        for (doc, reply) in batch.replies {
            reply(match failed.get(&doc) {
                Some(e) => Err(SyncError::NotSaved(e.clone())),
                None => Ok(()),
            });
        }
        for (doc, event) in batch.events {
            if let Some(tx) = self.docs.get(&doc).and_then(|d| d.watch.as_ref())
                && !failed.contains_key(&doc)
            {
                // No watcher is fine.
                let _ = tx.send(event);
            }
        }
        let mut stalled = Vec::new();
        for (doc, peer) in batch.sends {
            if failed.contains_key(&doc) || !self.may_sync(&peer, &doc) {
                continue;
            }
            let (Some(d), Some(link)) = (self.docs.get_mut(&doc), self.links.get_mut(&peer)) else {
                continue;
            };
            if !link.docs.contains(&doc) {
                if link.docs.len() >= MAX_DOCS_PER_PEER {
                    continue;
                }
                link.docs.insert(doc.clone());
            }
            let Some(message) = d.session.generate_message(&peer.to_bytes()) else {
                continue;
            };
            self.stats.frames_out += 1;
            self.stats.bytes_out += message.len() as u64;
            let frame = Frame {
                doc,
                network: d.network.clone(),
                message,
            }
            .encode();
            let chunks = frame.len().div_ceil(CHUNK_LEN) as u64;
            self.stats.wire_bytes_out += frame.len() as u64 + chunks * CHUNK_OVERHEAD;
            use std::sync::atomic::Ordering;
            let len = frame.len() as u64;
            if link.queued.load(Ordering::Relaxed) + len > OUTBOUND_BYTES_PER_PEER {
                stalled.push(peer);
                continue;
            }
            link.queued.fetch_add(len, Ordering::Relaxed);
            if link.writer.try_send(frame).is_err() {
                stalled.push(peer);
            }
        }
        for peer in stalled {
            tracing::warn!(%peer, "sync: stream stalled; dropping it");
            self.drop_link(peer);
        }
    }
}

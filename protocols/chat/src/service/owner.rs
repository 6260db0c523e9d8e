//! The owner task's loop: gather ready inputs into a batch, apply them, commit the batch
//! in one transaction (the next batch is handled meanwhile), then write its frames,
//! answer its callers and publish its events.

use std::collections::HashSet;

use libp2p::PeerId;
use tokio::sync::mpsc;

use super::*;

impl Service {
    pub(super) async fn run(
        mut self,
        mut listener: SecureListener,
        mut commands: mpsc::Receiver<Command>,
        mut inbound: mpsc::Receiver<Inbound>,
        mut opened: mpsc::Receiver<Opened>,
        mut room_rx: mpsc::Receiver<(String, TopicMessage)>,
        mut stop: oneshot::Receiver<()>,
    ) {
        self.restore().await;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The batch whose transaction is being committed. The next batch is handled (and
        // its early frames and events go out) meanwhile; its commit waits for this one.
        let mut committing: Option<Committing> = None;
        loop {
            let first = tokio::select! {
                done = wait_commit(&mut committing), if committing.is_some() => {
                    if let Some(c) = committing.take() {
                        self.settle(done, c).await;
                    }
                    continue;
                }
                _ = &mut stop => break,
                c = commands.recv() => match c {
                    Some(c) => Input::Command(c),
                    None => break,
                },
                Some(i) = inbound.recv() => Input::Inbound(i),
                Some(o) = opened.recv() => Input::Opened(o),
                a = listener.next() => match a {
                    Some(a) => Input::Accepted(Box::new(a)),
                    None => break,
                },
                Some((room, m)) = room_rx.recv() => Input::Room(room, m),
                // Only while something waits on the clock: an idle node does nothing here.
                _ = tick.tick(), if self.has_timed_work() => Input::Tick,
            };
            let mut inputs = vec![first];
            // Group commit: whatever else is ready shares this batch's transaction.
            while inputs.len() < MAX_BATCH {
                if let Ok(i) = inbound.try_recv() {
                    inputs.push(Input::Inbound(i));
                } else if let Ok(c) = commands.try_recv() {
                    inputs.push(Input::Command(c));
                } else if let Ok((room, m)) = room_rx.try_recv() {
                    inputs.push(Input::Room(room, m));
                } else {
                    break;
                }
            }
            let (batch, mut after, reserved) = self.apply(inputs).await;
            // Keep the disk off the latency path: messages within a committed
            // reservation, and incoming messages, go out before the batch commits.
            for (peer, frame) in self.take_early(&mut after.frames) {
                self.write(peer, frame);
            }
            for event in after.early_events.drain(..) {
                self.events.send(event);
            }
            // Batches settle in order: the one before this goes first.
            if let Some(mut c) = committing.take() {
                let done = wait_commit_of(&mut c).await;
                self.settle(done, c).await;
            }
            if batch.is_empty() {
                self.finish(Ok(()), after).await;
            } else {
                let db = self.db.clone();
                committing = Some(Committing {
                    task: tokio::task::spawn_blocking(move || db.commit(&batch)),
                    after,
                    reserved,
                });
            }
        }
        if let Some(mut c) = committing.take() {
            let done = wait_commit_of(&mut c).await;
            self.settle(done, c).await;
        }
        tracing::debug!("chat service stopped");
    }

    /// Applies a batch's inputs to the state machines: what to commit, what follows the
    /// commit, and the `reserved_up_to` of each conversation it changed.
    pub(super) async fn apply(&mut self, inputs: Vec<Input>) -> (Batch, After, Vec<(PeerId, u64)>) {
        let mut batch = Batch::default();
        let mut after = After::default();
        let mut dirty = HashSet::new();
        for input in inputs {
            self.handle(input, &mut batch, &mut after, &mut dirty).await;
        }
        let mut reserved = Vec::new();
        for peer in dirty {
            if let Some(p) = self.peers.get(&peer).filter(|p| Service::keeps_state(p)) {
                batch
                    .snapshots
                    .push((peer.to_string(), p.conv.snapshot().encode()));
                reserved.push((peer, p.conv.cursor().reserved_up_to));
            }
        }
        (batch, after, reserved)
    }

    /// A batch's commit ended: what it reserved is now durable, and its actions follow.
    pub(super) async fn settle(&mut self, committed: Committed, c: Committing) {
        if committed.is_ok() {
            for (peer, r) in c.reserved {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.durable_reserved = r;
                }
            }
        }
        self.finish(committed, c.after).await;
    }

    /// Acts on a batch once it is durable (or reports its failure).
    pub(super) async fn finish(&mut self, committed: Committed, after: After) {
        if let Err(e) = &committed {
            tracing::error!("chat: cannot store chat state, nothing sent: {e}");
            // Memory is now ahead of disk: drop the streams so the peers resend from
            // what they know, and the callers learn their messages were not stored.
            for p in self.peers.values_mut() {
                p.link = None;
                p.conv.disconnected();
            }
        }
        for reply in after.replies {
            reply(committed.clone());
        }
        if committed.is_err() {
            return;
        }
        for (peer, frame) in after.frames {
            self.write(peer, frame);
        }
        for event in after.early_events.into_iter().chain(after.events) {
            self.events.send(event);
        }
        for (topic, data) in after.publish {
            if let Err(e) = self.client.publish(&topic, data).await {
                tracing::debug!(%topic, "room publish failed: {e}");
            }
        }
    }

    /// Removes from `frames` and returns each peer's leading message frames that its
    /// committed reservation covers (a peer's frames keep their order: after its first
    /// frame that must wait for the commit, the rest of its frames wait too).
    pub(super) fn take_early(&self, frames: &mut Vec<(PeerId, Frame)>) -> Vec<(PeerId, Frame)> {
        let mut waiting = HashSet::new();
        let mut early = Vec::new();
        frames.retain(|(peer, frame)| {
            let covered = !waiting.contains(peer)
                && matches!(frame, Frame::Message(m)
                    if self.peers.get(peer).is_some_and(|p| m.last_seq() <= p.durable_reserved));
            if covered {
                early.push((*peer, frame.clone()));
            } else {
                waiting.insert(*peer);
            }
            !covered
        });
        early
    }

    pub(super) fn write(&mut self, peer: PeerId, frame: Frame) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(link) = &p.link else {
            return;
        };
        if let Err(e) = link.writer.try_send(frame) {
            tracing::warn!(%peer, "chat stream stalled or closed ({e}); reconnecting later");
            p.link = None;
            p.conv.disconnected();
        }
    }
}

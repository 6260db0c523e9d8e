//! One provider's worker: holds its stream, keeps the groups the driver hands it
//! requested, and verifies each group before handing it back.

use std::collections::VecDeque;
use std::sync::Arc;

use libp2p::PeerId;
use tokio::sync::mpsc;

use super::Event;
use super::providers::turned_away;
use crate::service::disk::Checked;
use crate::service::serve::open;
use crate::service::wire::{self, Request, Response, Secure, WireError};
use crate::service::{ANSWER_TIMEOUT, Inner, MAX_GROUPS_PER_REQUEST};
use crate::{ContentId, GROUP_SIZE, GroupRef, Proof, verify_group};

/// One provider's worker: opens its stream at the first batch (unless given one), then keeps its requests
/// pipelined: between reading two groups it sends the requests of any batch that arrived
/// meanwhile, so the provider always has the next groups queued (the planner's window
/// bounds how many) and the link does not idle a round trip per batch.
pub(super) async fn worker(
    inner: Arc<Inner>,
    peer: PeerId,
    content: ContentId,
    entries: Arc<Vec<(u64, ContentId)>>,
    mut batches: mpsc::Receiver<Vec<GroupRef>>,
    events: mpsc::Sender<Event>,
    stream: Option<Secure>,
) {
    let Some(first) = batches.recv().await else {
        return;
    };
    let opened = match stream {
        Some(s) => Ok(s),
        None => open(&inner, peer).await,
    };
    let mut s = match opened {
        Ok(s) => s,
        Err(e) => {
            let (reason, busy) = (e.to_string(), turned_away(&e));
            let _ = events.send(Event::Gone { peer, reason, busy }).await;
            return;
        }
    };
    let mut pending = Pending::default();
    let result: Result<(), WireError> = async {
        pending.request(&inner, &mut s, content, first).await?;
        loop {
            if pending.is_empty() {
                match batches.recv().await {
                    Some(batch) => pending.request(&inner, &mut s, content, batch).await?,
                    None => return Ok(()),
                }
            }
            while let Ok(batch) = batches.try_recv() {
                pending.request(&inner, &mut s, content, batch).await?;
            }
            if !pending.read_one(&mut s, peer, &entries, &events).await? {
                return Ok(());
            }
        }
    }
    .await;
    if let Err(e) = result {
        let reason = e.to_string();
        let busy = false;
        let _ = events.send(Event::Gone { peer, reason, busy }).await;
    }
}

/// A worker's requests sent and not yet answered in full, in the order sent.
#[derive(Default)]
struct Pending {
    requests: VecDeque<(u64, VecDeque<GroupRef>)>,
    data: Vec<u8>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Sends the batch's requests (up to [`MAX_GROUPS_PER_REQUEST`] groups each, of any
    /// files) and flushes once.
    async fn request(
        &mut self,
        inner: &Inner,
        s: &mut Secure,
        content: ContentId,
        batch: Vec<GroupRef>,
    ) -> Result<(), WireError> {
        for groups in batch.chunks(MAX_GROUPS_PER_REQUEST) {
            #[cfg(test)]
            inner
                .requested_groups
                .fetch_add(groups.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let req = inner.next_id();
            let msg = Request::Groups {
                req,
                content,
                groups: groups.iter().map(|g| (g.file, g.group)).collect(),
            };
            wire::feed(s, &msg).await?;
            self.requests
                .push_back((req, groups.iter().copied().collect()));
        }
        s.flush().await?;
        Ok(())
    }

    /// Reads and verifies the next group answered. False when it failed verification
    /// (the worker ends; the driver drops the provider).
    async fn read_one(
        &mut self,
        s: &mut Secure,
        peer: PeerId,
        entries: &[(u64, ContentId)],
        events: &mpsc::Sender<Event>,
    ) -> Result<bool, WireError> {
        let Some((req, groups)) = self.requests.front_mut() else {
            return Ok(true);
        };
        let req = *req;
        let Some(&g) = groups.front() else {
            self.requests.pop_front();
            return Ok(true);
        };
        let GroupRef { file, group } = g;
        let Some(&(size, root)) = entries.get(file as usize) else {
            return Err(WireError::Violation("no such file".into()));
        };
        match wire::recv::<Response>(s, ANSWER_TIMEOUT).await? {
            Response::Group {
                req: r,
                file: got_file,
                group: got,
                len,
                proof,
            } if r == req && got_file == file && got == group => {
                if u64::from(len) > GROUP_SIZE {
                    return Err(WireError::Violation("group larger than a group".into()));
                }
                wire::recv_data(s, len as usize, &mut self.data, ANSWER_TIMEOUT).await?;
                let proven = Proof::from_bytes(&proof.0)
                    .and_then(|p| verify_group(&root, size, group, &self.data, &p));
                let ok = proven.is_ok();
                let event = if let Ok(proven) = proven {
                    let bytes =
                        std::mem::replace(&mut self.data, Vec::with_capacity(GROUP_SIZE as usize));
                    Event::Verified {
                        peer,
                        group: g,
                        data: Checked { bytes, proven },
                    }
                } else {
                    Event::Bad { peer, group: g }
                };
                if events.send(event).await.is_err() || !ok {
                    return Ok(false);
                }
                groups.pop_front();
                if groups.is_empty() {
                    self.requests.pop_front();
                }
                Ok(true)
            }
            Response::NotYet {
                req: r,
                file: got_file,
                group: got,
            } if r == req && got_file == file && got == group => {
                // A provider still fetching: this group is asked elsewhere, it stays.
                if events.send(Event::NotYet { peer, group: g }).await.is_err() {
                    return Ok(false);
                }
                groups.pop_front();
                if groups.is_empty() {
                    self.requests.pop_front();
                }
                Ok(true)
            }
            Response::Refused {
                req: r, message, ..
            } if r == req => {
                tracing::debug!(%peer, "groups refused: {message}");
                for (_, groups) in self.requests.drain(..) {
                    for group in groups {
                        let failed = Event::Failed { peer, group };
                        if events.send(failed).await.is_err() {
                            return Ok(false);
                        }
                    }
                }
                // A provider that refuses once (its copy changed, a bound) would be asked
                // again and again: it leaves the transfer instead.
                Err(WireError::Violation(format!("refused: {message}")))
            }
            _ => Err(WireError::Violation("unexpected answer".into())),
        }
    }
}

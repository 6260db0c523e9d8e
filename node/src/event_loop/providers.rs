//! Generic DHT provider records for application protocols: announce that we hold a key
//! (`start_providing`), withdraw it, and look up who holds one. The node gives the keys
//! no meaning; a protocol picks them (files uses content ids).

use std::collections::HashSet;

use libp2p::{PeerId, kad};
use tokio::sync::oneshot;

use super::EventLoop;
use crate::error::NodeError;

/// Most providers one lookup returns: more is no use to a transfer and would let a
/// flood of records grow the answer without bound.
pub const MAX_PROVIDERS: usize = 64;
/// Most provider lookups under way at once; more are refused rather than queued.
const MAX_PROVIDER_LOOKUPS: usize = 256;
/// Largest key accepted (a content id is 32 bytes; this leaves room for a prefix).
pub const MAX_PROVIDER_KEY: usize = 256;

/// A provider lookup under way: the providers found so far and who waits for them.
pub(super) struct PendingProviders {
    found: HashSet<PeerId>,
    reply: oneshot::Sender<Result<Vec<PeerId>, NodeError>>,
}

fn check_key(key: &[u8]) -> Result<(), NodeError> {
    if key.is_empty() || key.len() > MAX_PROVIDER_KEY {
        return Err(NodeError::InvalidInput(format!(
            "a provider key is 1 to {MAX_PROVIDER_KEY} bytes"
        )));
    }
    Ok(())
}

impl EventLoop {
    /// [`Command::Provide`](super::Command::Provide).
    pub(super) fn provide(&mut self, key: Vec<u8>) -> Result<(), NodeError> {
        check_key(&key)?;
        self.swarm
            .behaviour_mut()
            .kad
            .start_providing(kad::RecordKey::new(&key))
            .map(|_| ())
            .map_err(|e| NodeError::InvalidInput(format!("cannot announce a provider record: {e}")))
    }

    /// [`Command::StopProviding`](super::Command::StopProviding).
    pub(super) fn stop_providing(&mut self, key: Vec<u8>) {
        self.swarm
            .behaviour_mut()
            .kad
            .stop_providing(&kad::RecordKey::new(&key));
    }

    /// [`Command::FindProviders`](super::Command::FindProviders).
    pub(super) fn find_providers(
        &mut self,
        key: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<PeerId>, NodeError>>,
    ) {
        if let Err(e) = check_key(&key) {
            let _ = reply.send(Err(e));
            return;
        }
        if self.provider_lookups.len() >= MAX_PROVIDER_LOOKUPS {
            let _ = reply.send(Err(NodeError::InvalidInput(
                "too many provider lookups under way".into(),
            )));
            return;
        }
        let id = self
            .swarm
            .behaviour_mut()
            .kad
            .get_providers(kad::RecordKey::new(&key));
        self.provider_lookups.insert(
            id,
            PendingProviders {
                found: HashSet::new(),
                reply,
            },
        );
    }

    /// A step of a provider lookup of ours; false if the query is not one (a topic's).
    pub(super) fn on_providers(
        &mut self,
        id: kad::QueryId,
        result: &kad::GetProvidersResult,
        last: bool,
    ) -> bool {
        let Some(pending) = self.provider_lookups.get_mut(&id) else {
            return false;
        };
        let me = *self.swarm.local_peer_id();
        if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
            for p in providers {
                if *p != me && pending.found.len() < MAX_PROVIDERS {
                    pending.found.insert(*p);
                }
            }
        }
        let full = pending.found.len() >= MAX_PROVIDERS;
        if last || full || pending.reply.is_closed() {
            if !last && let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                q.finish();
            }
            if let Some(pending) = self.provider_lookups.remove(&id) {
                let mut found: Vec<PeerId> = pending.found.into_iter().collect();
                found.sort();
                let _ = pending.reply.send(Ok(found));
            }
        }
        true
    }
}

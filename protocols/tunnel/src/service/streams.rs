//! The owner's side of the streams: accepting them (after the hello names the network),
//! opening them to members in turn, and starting the reader and writer of each.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::AsyncReadExt;
use libp2p::{PeerId, Stream, StreamProtocol};
use p2pnode_node::secure::Accepted;
use p2pnode_secure::SecureStream;
use tokio::sync::mpsc;

use super::link::{self, Outgoing};
use super::net::{Link, Waiting};
use super::{
    Event, FALLBACK_OPEN, HEALTHY_LINK, HELLO_TIMEOUT, MAX_BACKOFF_DOUBLINGS, MAX_LINKS,
    OPEN_TIMEOUT, RETRY_EVERY, Service, spawn,
};
use crate::MemberId;

impl Service {
    pub(super) fn accepted(&mut self, a: Accepted) {
        let Accepted {
            peer, mut stream, ..
        } = a;
        // Members only: a peer that shares no network with us gets the stream closed unread.
        if !self.networks.shares_a_network(&peer) {
            tracing::debug!(%peer, "tunnel stream refused: no network in common");
            return;
        }
        let Ok(permit) = self.hellos.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "tunnel stream refused: too many waiting for their hello");
            return;
        };
        let events = self.events_tx.clone();
        spawn(async move {
            let hello = tokio::time::timeout(HELLO_TIMEOUT, link::read_hello(&mut stream)).await;
            drop(permit);
            match hello {
                Ok(Ok(network)) => {
                    let stream = Box::new(stream);
                    let _ = events
                        .send(Event::Hello {
                            peer,
                            network,
                            stream,
                        })
                        .await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, "tunnel stream without hello: {e}"),
                Err(_) => tracing::debug!(%peer, "tunnel stream sent no hello in time"),
            }
        });
    }

    pub(super) fn event(&mut self, e: Event) {
        match e {
            Event::Opened {
                network,
                peer,
                stream,
            } => {
                if let Some(t) = self.nets.get_mut(&network) {
                    t.opening.remove(&peer);
                }
                match stream {
                    // The smaller id's stream wins: ours, when we are the smaller.
                    Ok(s) => self.attach(&network, peer, *s, self.me < peer),
                    Err(e) => tracing::debug!(%peer, network, "cannot open a tunnel stream: {e}"),
                }
            }
            Event::Hello {
                peer,
                network,
                stream,
            } => {
                let Some(name) = self
                    .nets
                    .iter()
                    .find(|(_, t)| t.id == network)
                    .map(|(n, _)| n.clone())
                else {
                    tracing::debug!(%peer, "tunnel stream for a network that is not up here");
                    return;
                };
                if !self.networks.is_member(&name, &peer) {
                    tracing::debug!(%peer, network = name, "tunnel stream refused: not a member");
                    return;
                }
                self.attach(&name, peer, *stream, peer < self.me);
            }
            Event::Closed {
                network,
                peer,
                link,
                reason,
            } => {
                let Some(t) = self.nets.get_mut(&network) else {
                    return;
                };
                if t.links.get(&peer).is_some_and(|l| l.id == link) {
                    tracing::debug!(%peer, network, "tunnel stream ended: {reason}");
                    if let Some(l) = t.links.remove(&peer)
                        && l.since.elapsed() >= HEALTHY_LINK
                    {
                        t.waiting.remove(&peer);
                    }
                }
            }
        }
    }

    /// Starts the reader and writer of a new stream to `peer` in `network`.
    fn attach(
        &mut self,
        network: &str,
        peer: PeerId,
        stream: SecureStream<Stream>,
        preferred: bool,
    ) {
        let total: usize = self.nets.values().map(|t| t.links.len()).sum();
        let Some(t) = self.nets.get_mut(network) else {
            return;
        };
        if !t.members.contains_key(&peer) {
            return;
        }
        if let Some(old) = t.links.get(&peer) {
            if old.preferred && !preferred {
                return;
            }
            t.links.remove(&peer);
        } else if total >= MAX_LINKS {
            tracing::warn!(%peer, "tunnel: {MAX_LINKS} streams open; refusing another");
            return;
        }
        let id = self.next_link;
        self.next_link += 1;
        let (io, session) = stream.into_parts();
        let session = Arc::new(Mutex::new(session));
        let (read, write) = io.split();
        let member = MemberId(peer.to_bytes());
        let now = Instant::now();
        let out = {
            let Ok(mut p) = t.path.lock() else {
                return;
            };
            p.out
                .entry(member.clone())
                .or_insert_with(|| Arc::new(Outgoing::new(t.mtu, now)))
                .clone()
        };
        out.set_link(id);
        let closed = |events: mpsc::Sender<Event>, network: String| {
            move |reason: String| async move {
                let event = Event::Closed {
                    network,
                    peer,
                    link: id,
                    reason,
                };
                let _ = events.send(event).await;
            }
        };
        let writer = {
            let (session, out) = (session.clone(), out.clone());
            let done = closed(self.events_tx.clone(), network.to_string());
            spawn(async move { done(link::write_packets(write, session, out).await).await })
        };
        let reader = {
            let (path, device, mtu) = (t.path.clone(), t.device.clone(), t.mtu);
            let done = closed(self.events_tx.clone(), network.to_string());
            spawn(async move {
                done(link::read_packets(read, session, path, device, member, mtu).await).await
            })
        };
        tracing::debug!(%peer, network, "tunnel stream up");
        t.links.insert(
            peer,
            Link {
                id,
                preferred,
                since: now,
                out,
                tasks: [writer, reader],
            },
        );
    }

    /// Opens streams to members that have none, in turn and with backoff.
    pub(super) fn tick(&mut self) {
        let now = Instant::now();
        for (name, t) in &mut self.nets {
            let members: Vec<PeerId> = t.members.keys().copied().collect();
            for peer in members {
                if t.links.contains_key(&peer) || t.opening.contains(&peer) {
                    continue;
                }
                let w = t.waiting.entry(peer).or_insert(Waiting {
                    first: now,
                    last_attempt: None,
                    attempts: 0,
                });
                let our_turn = self.me < peer || now.duration_since(w.first) >= FALLBACK_OPEN;
                let doublings = w.attempts.saturating_sub(1).min(MAX_BACKOFF_DOUBLINGS);
                let due = w
                    .last_attempt
                    .is_none_or(|at| now.duration_since(at) >= RETRY_EVERY * 2u32.pow(doublings));
                if !our_turn || !due {
                    continue;
                }
                w.last_attempt = Some(now);
                w.attempts += 1;
                t.opening.insert(peer);
                let (client, events, network, id) = (
                    self.client.clone(),
                    self.events_tx.clone(),
                    name.clone(),
                    t.id,
                );
                spawn(async move {
                    let opened = tokio::time::timeout(OPEN_TIMEOUT, async {
                        let protocol = StreamProtocol::new(crate::STREAM_PROTOCOL);
                        let mut s = client
                            .open_secure(peer, protocol, crate::PROTOCOL)
                            .await
                            .map_err(|e| e.to_string())?;
                        link::send_hello(&mut s, &id).await?;
                        Ok::<_, String>(Box::new(s))
                    })
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()));
                    let event = Event::Opened {
                        network,
                        peer,
                        stream: opened,
                    };
                    let _ = events.send(event).await;
                });
            }
        }
    }
}

//! The owner's side of the streams: accepting them (after the hello names the network),
//! opening them to members in turn, and starting the reader and writer of each.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::AsyncReadExt;
use libp2p::{PeerId, Stream, StreamProtocol};
use p2pnode_node::open_schedule::OpenSchedule;
use p2pnode_node::secure::Accepted;
use p2pnode_secure::SecureStream;
use tokio::sync::mpsc;

use super::link::{self, Outgoing};
use super::net::Link;
use super::udp;
use super::{Event, HEALTHY_LINK, HELLO_TIMEOUT, MAX_LINKS, OPEN_TIMEOUT, PAUSES, Service, spawn};
use crate::MemberId;

/// How often members whose datagram path is not up are looked at for new addresses.
const OBSERVE_EVERY: Duration = Duration::from_secs(2);

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
        let (client, signing) = (self.client.clone(), self.signing.clone());
        let (port, up_ids) = (self.port.clone(), self.up_ids.clone());
        spawn(async move {
            let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
                let network = link::read_hello(&mut stream).await?;
                // Only for a network that is up: its socket is bound, so the answer
                // carries our port (a stream that came before our `vpn up` would else
                // agree on no datagram path for its whole life).
                if !up_ids.read().is_ok_and(|up| up.contains(&network)) {
                    return Err("a stream for a network that is not up here".to_string());
                }
                let port = port.load(std::sync::atomic::Ordering::Relaxed);
                let local = udp::Local::gather(&client, signing, port, peer).await;
                let datagram = udp::answer(&mut stream, &local).await?;
                Ok::<_, String>((network, datagram))
            })
            .await;
            drop(permit);
            match hello {
                Ok(Ok((network, datagram))) => {
                    let stream = Box::new(stream);
                    let _ = events
                        .send(Event::Hello {
                            peer,
                            network,
                            stream,
                            datagram: datagram.map(Box::new),
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
                    Ok((s, datagram)) => self.attach(&network, peer, *s, datagram, self.me < peer),
                    Err(e) => tracing::debug!(%peer, network, "cannot open a tunnel stream: {e}"),
                }
            }
            Event::Hello {
                peer,
                network,
                stream,
                datagram,
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
                self.attach(&name, peer, *stream, datagram, peer < self.me);
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
        datagram: Option<Box<udp::Negotiated>>,
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
            let mut p = t.path.lock();
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
        let datagram = match (datagram, &self.udp) {
            (Some(n), Some((u, _))) => {
                let attached = udp::attach(
                    u,
                    *n,
                    member.clone(),
                    t.path.clone(),
                    t.device.clone(),
                    t.mtu,
                );
                if attached.is_none() {
                    tracing::debug!(%peer, network, "tunnel: datagram index taken; stream only");
                }
                attached
            }
            (None, _) => {
                tracing::debug!(%peer, network, "tunnel: no datagram path agreed; stream only");
                None
            }
            (Some(_), None) => None,
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
                udp: datagram,
            },
        );
    }

    /// Looks for new addresses of members whose datagram path is not up: a connection
    /// that was relayed when the stream opened may have become direct (hole-punched)
    /// since, and its remote address is the member's NAT, where probes may meet.
    fn observe(&mut self, now: Instant) {
        if now.duration_since(self.observed_at) < OBSERVE_EVERY {
            return;
        }
        self.observed_at = now;
        let waiting: Vec<(PeerId, Arc<udp::UdpLink>)> = self
            .nets
            .values()
            .flat_map(|t| t.links.iter())
            .filter_map(|(peer, l)| l.udp.as_ref().map(|a| (*peer, a.link.clone())))
            .filter(|(_, link)| link.usable(now).is_none())
            .collect();
        if waiting.is_empty() {
            return;
        }
        let client = self.client.clone();
        spawn(async move {
            let Ok(peers) = client.peers().await else {
                return;
            };
            for (peer, link) in waiting {
                let Some(p) = peers.iter().find(|p| p.peer_id == peer.to_string()) else {
                    continue;
                };
                let direct = p
                    .connections
                    .iter()
                    .filter(|c| c.path == p2pnode_node::api::Path::Direct)
                    .map(|c| &c.address);
                let mut ips = Vec::new();
                udp::push_ips(&mut ips, direct);
                for ip in ips {
                    link.observed(ip);
                }
            }
        });
    }

    /// Opens streams to members that have none, in turn and with backoff.
    pub(super) fn tick(&mut self) {
        let now = Instant::now();
        self.observe(now);
        let (signing, port) = (
            self.signing.clone(),
            self.port.load(std::sync::atomic::Ordering::Relaxed),
        );
        for (name, t) in &mut self.nets {
            let members: Vec<PeerId> = t.members.keys().copied().collect();
            for peer in members {
                if t.links.contains_key(&peer) || t.opening.contains(&peer) {
                    continue;
                }
                let w = t
                    .waiting
                    .entry(peer)
                    .or_insert_with(|| OpenSchedule::new(now));
                if w.due(self.me < peer, &PAUSES) > now {
                    continue;
                }
                w.attempted(now);
                t.opening.insert(peer);
                let (client, events, network, id) = (
                    self.client.clone(),
                    self.events_tx.clone(),
                    name.clone(),
                    t.id,
                );
                let signing = signing.clone();
                spawn(async move {
                    let opened = tokio::time::timeout(OPEN_TIMEOUT, async {
                        let protocol = StreamProtocol::new(crate::STREAM_PROTOCOL);
                        let mut s = client
                            .open_secure(peer, protocol, crate::PROTOCOL)
                            .await
                            .map_err(|e| e.to_string())?;
                        link::send_hello(&mut s, &id).await?;
                        let local = udp::Local::gather(&client, signing, port, peer).await;
                        let datagram = udp::offer(&mut s, &local).await?;
                        Ok::<_, String>((Box::new(s), datagram.map(Box::new)))
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

//! Gossipsub topics: joining, leaving, publishing, delivering messages, and finding the
//! other members in the DHT.

use std::time::{Duration, Instant};

use libp2p::{PeerId, gossipsub, kad};
use tokio::sync::{mpsc, oneshot};

use super::EventLoop;
use crate::error::NodeError;

/// A message received on a joined topic. Gossipsub forwards it to other members only once
/// the subscriber reports it valid ([`Client::report_topic_message`]); every message must
/// be reported (one left unreported is dropped from gossipsub's cache unforwarded after a
/// few heartbeats).
///
/// [`Client::report_topic_message`]: crate::Client::report_topic_message
#[derive(Debug, Clone)]
pub struct TopicMessage {
    /// Names this message in its validation report.
    pub id: TopicMessageId,
    /// The peer that published it (gossipsub signs messages with the publisher's key, and
    /// `Strict` validation refuses unsigned ones, so this is authenticated).
    pub source: Option<PeerId>,
    /// The peer that forwarded it to us (not necessarily the publisher).
    pub propagation_source: PeerId,
    /// The payload.
    pub data: Vec<u8>,
}

/// A received topic message as gossipsub knows it: its id and the peer it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMessageId {
    id: gossipsub::MessageId,
    from: PeerId,
}

/// The subscriber's judgement of a topic message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// Valid: deliver it and forward it to the other members.
    Accept,
    /// Invalid (forged, malformed): not forwarded, and held against the peer that sent it.
    Reject,
    /// Not forwarded, without blame (a duplicate, too old, or no room to take it).
    Ignore,
}

impl From<Validation> for gossipsub::MessageAcceptance {
    fn from(v: Validation) -> Self {
        match v {
            Validation::Accept => Self::Accept,
            Validation::Reject => Self::Reject,
            Validation::Ignore => Self::Ignore,
        }
    }
}

/// A joined topic: where its messages go, and when to look for its members again.
pub(super) struct Joined {
    topic: gossipsub::IdentTopic,
    subscriber: mpsc::Sender<TopicMessage>,
    next_lookup: Instant,
}

/// How often the DHT is asked again for the members of a joined topic.
const TOPIC_LOOKUP_INTERVAL: Duration = Duration::from_secs(15);

impl EventLoop {
    /// [`Command::JoinTopic`](super::Command::JoinTopic).
    pub(super) fn join_topic(
        &mut self,
        name: String,
        subscriber: mpsc::Sender<TopicMessage>,
        reply: oneshot::Sender<Result<(), NodeError>>,
    ) {
        let topic = gossipsub::IdentTopic::new(name);
        let result = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .map(|_| ())
            .map_err(|e| NodeError::InvalidInput(format!("cannot join topic: {e}")));
        if result.is_ok() {
            let key = kad::RecordKey::new(&topic.hash().as_str());
            if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
                tracing::warn!("cannot announce topic membership: {e}");
            }
            self.topics.insert(
                topic.hash(),
                Joined {
                    topic,
                    subscriber,
                    next_lookup: Instant::now(),
                },
            );
            self.lookup_topics();
        }
        let _ = reply.send(result);
    }

    /// [`Command::LeaveTopic`](super::Command::LeaveTopic).
    pub(super) fn leave_topic(&mut self, name: String, reply: oneshot::Sender<()>) {
        let topic = gossipsub::IdentTopic::new(name);
        self.swarm.behaviour_mut().gossipsub.unsubscribe(&topic);
        let key = kad::RecordKey::new(&topic.hash().as_str());
        self.swarm.behaviour_mut().kad.stop_providing(&key);
        self.topics.remove(&topic.hash());
        let _ = reply.send(());
    }

    /// [`Command::Publish`](super::Command::Publish).
    pub(super) fn publish(
        &mut self,
        name: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), NodeError>>,
    ) {
        let topic = gossipsub::IdentTopic::new(name);
        let result = match self.swarm.behaviour_mut().gossipsub.publish(topic, data) {
            Ok(_) => Ok(()),
            // Alone on the topic so far: the message has no one to reach, which is
            // not an error for the sender.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Ok(()),
            Err(e) => Err(NodeError::InvalidInput(format!("cannot publish: {e}"))),
        };
        let _ = reply.send(result);
    }

    /// A message on a topic: to its subscriber, if we joined it. A message nobody takes
    /// is reported as ignored at once, so gossipsub neither forwards nor keeps it.
    pub(super) fn on_topic_message(
        &mut self,
        propagation_source: PeerId,
        message_id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        let id = TopicMessageId {
            id: message_id,
            from: propagation_source,
        };
        let topic = message.topic.clone();
        let delivered = match self.topics.get(&topic) {
            Some(joined) => {
                let msg = TopicMessage {
                    id: id.clone(),
                    source: message.source,
                    propagation_source,
                    data: message.data,
                };
                // A subscriber that cannot keep up loses messages rather than stalling
                // the event loop; gossip is best-effort anyway.
                let sent = joined.subscriber.try_send(msg).is_ok();
                if !sent {
                    tracing::warn!(%topic, "topic subscriber is behind; message dropped");
                }
                sent
            }
            None => false,
        };
        if !delivered {
            self.validate_topic_message(id, Validation::Ignore);
        }
    }

    /// [`Command::ValidateTopicMessage`](super::Command::ValidateTopicMessage): forwards an
    /// accepted message, drops the others. False if gossipsub no longer held it.
    pub(super) fn validate_topic_message(&mut self, id: TopicMessageId, v: Validation) -> bool {
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id.id, &id.from, v.into())
    }

    /// Asks the DHT for the members of joined topics that are due, and dials them.
    pub(super) fn lookup_topics(&mut self) {
        let now = Instant::now();
        let due: Vec<kad::RecordKey> = self
            .topics
            .values_mut()
            .filter(|j| j.next_lookup <= now)
            .map(|j| {
                j.next_lookup = now + TOPIC_LOOKUP_INTERVAL;
                kad::RecordKey::new(&j.topic.hash().as_str())
            })
            .collect();
        if self.swarm.connected_peers().next().is_none() {
            return;
        }
        for key in due {
            self.swarm.behaviour_mut().kad.get_providers(key);
        }
    }
}

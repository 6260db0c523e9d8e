//! Gossipsub topics: joining, leaving, publishing, delivering messages, and finding the
//! other members in the DHT.

use std::time::{Duration, Instant};

use libp2p::{PeerId, gossipsub, kad};
use tokio::sync::{mpsc, oneshot};

use super::EventLoop;
use crate::error::NodeError;

/// A message received on a joined topic.
#[derive(Debug, Clone)]
pub struct TopicMessage {
    /// The peer that published it (gossipsub signs messages with the publisher's key).
    pub source: Option<PeerId>,
    /// The payload.
    pub data: Vec<u8>,
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

    /// A message on a topic: to its subscriber, if we joined it.
    pub(super) fn on_topic_message(&self, message: gossipsub::Message) {
        if let Some(joined) = self.topics.get(&message.topic) {
            let msg = TopicMessage {
                source: message.source,
                data: message.data,
            };
            // A subscriber that cannot keep up loses messages rather than stalling
            // the event loop; gossip is best-effort anyway.
            if joined.subscriber.try_send(msg).is_err() {
                tracing::warn!(topic = %message.topic, "topic subscriber is behind; message dropped");
            }
        }
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

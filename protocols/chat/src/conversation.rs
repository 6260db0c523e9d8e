//! The sans-IO state machine of one 1:1 conversation (one per peer).
//!
//! [`Conversation`] numbers outgoing messages, keeps them in a bounded outbox until the
//! peer's cumulative [`Receipt`] covers them, and resends them after every reconnect. On
//! the receiving side it drops duplicates, buffers out-of-order messages (bounded) and
//! delivers strictly in sequence, answering with receipts. It never reads a clock or
//! touches a socket: time comes in as unix milliseconds, frames go out as [`Output`]s.
//!
//! # How the node drives it
//!
//! 1. Stream to the peer opened (either side): [`Conversation::connected`]; write the
//!    returned `Hello`. Stream closed or failed: [`Conversation::disconnected`].
//! 2. Each frame read: [`Frame::decode`](crate::Frame::decode), then
//!    [`Conversation::handle_frame`]. A decode error is a protocol violation: log it and
//!    close the stream.
//! 3. User typed a message: [`Conversation::send`]; store the returned [`Message`] in the
//!    history as "sent, not yet delivered".
//! 4. Timer: call [`Conversation::handle_timeout`] at [`Conversation::poll_timeout`].
//! 5. **After each of these calls, persist first, then act on the outputs**: save
//!    [`Conversation::snapshot`] (or [`Conversation::cursor`] plus the outbox rows) in
//!    the same database transaction as the history changes the outputs imply (delivered
//!    messages, delivery marks), commit, and only then write the `Send` frames. A node
//!    killed at any point then neither loses nor duplicates a message: what was not
//!    committed was not acknowledged, so the peer sends it again.
//!
//!    One exception keeps the disk off the latency path: a `Message` frame whose
//!    [`Message::last_seq`] is at most the [`Cursor::reserved_up_to`] of the last
//!    *committed* snapshot may be written before the commit. Its number can then never be
//!    given to another message: a node that dies before committing restores a cursor
//!    whose reservation covers it, and [`Conversation::restore`] skips the reserved
//!    numbers. Showing a delivered message before its commit is also safe; the receipt
//!    (a `Send` frame) still waits, so the peer resends whatever a crash lost.

use std::collections::{BTreeMap, VecDeque};

use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::error::{RestoreError, SendError};
use crate::id::MessageId;
use crate::wire::{Frame, Hello, MAX_BODY_LEN, Message, Receipt, to_cbor};

/// Tuning of a [`Conversation`]. Not persisted: pass it again on restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    max_outbox: usize,
    max_reorder: u64,
    window: usize,
    retransmit_after_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_outbox: 10_000,
            max_reorder: 1024,
            window: 1024,
            retransmit_after_ms: 10_000,
        }
    }
}

impl Config {
    /// Most messages waiting for a receipt before [`Conversation::send`] refuses more
    /// (at least 1; default 10 000).
    pub fn with_max_outbox(mut self, n: usize) -> Self {
        self.max_outbox = n.max(1);
        self
    }

    /// Most out-of-order messages buffered ahead of the next expected one (at least 1;
    /// default 1024). Messages further ahead are dropped and arrive again later.
    pub fn with_max_reorder(mut self, n: u64) -> Self {
        self.max_reorder = n.max(1);
        self
    }

    /// Most messages sent but not yet acknowledged on the current connection (at least
    /// 1; default 1024). Keep it at most the peer's reorder bound.
    pub fn with_window(mut self, n: usize) -> Self {
        self.window = n.max(1);
        self
    }

    /// Resend unacknowledged messages (or our `Hello`) after this long without progress
    /// (at least 1 ms; default 10 s).
    pub fn with_retransmit_after_ms(mut self, ms: u64) -> Self {
        self.retransmit_after_ms = ms.max(1);
        self
    }

    /// The outbox bound.
    pub fn max_outbox(&self) -> usize {
        self.max_outbox
    }
}

/// The small, fixed-size part of the persisted state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Random id of this state; a new one tells the peer we started over.
    pub epoch: u64,
    /// Sequence number of our next message (starts at 1).
    pub next_seq: u64,
    /// Messages numbered up to here may be written before the state that numbered them
    /// is committed (see the [module docs](self), step 5), so after a restart some of
    /// `next_seq..=reserved_up_to` may already be on the wire though we have no record of
    /// them: [`Conversation::restore`] skips them.
    #[serde(default)]
    pub reserved_up_to: u64,
    /// The peer acknowledged our messages up to here; the outbox holds the rest.
    pub acked_up_to: u64,
    /// We delivered the peer's messages up to here.
    pub delivered_up_to: u64,
    /// The peer's epoch, once its first `Hello` arrived.
    pub peer_epoch: Option<u64>,
}

/// Everything that must survive a restart: the cursor and the unacknowledged messages
/// (seq `acked_up_to + 1` to `next_seq - 1`, in order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Counters and epochs.
    pub cursor: Cursor,
    /// Messages sent but not yet acknowledged, oldest first.
    pub outbox: Vec<Message>,
}

impl Snapshot {
    /// CBOR bytes to store.
    pub fn encode(&self) -> Vec<u8> {
        to_cbor(self)
    }

    /// Reads bytes written by [`Snapshot::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, RestoreError> {
        ciborium::from_reader(bytes).map_err(|e| RestoreError::Decode(e.to_string()))
    }
}

/// Sequence numbers reserved at a time (see [`Cursor::reserved_up_to`]): one commit in
/// this many messages must finish before its message may go out.
pub const SEQ_RESERVATION: u64 = 256;

/// What the node must do after a call, in order (after persisting the state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Encode with [`Frame::encode`] and write on the peer's stream.
    Send(Frame),
    /// The peer's next message in order: store it in history and show it.
    Deliver(Message),
    /// The peer received our messages up to `up_to_seq`: mark these as delivered.
    Delivered {
        /// Highest sequence number now acknowledged.
        up_to_seq: u64,
        /// Ids of the messages newly acknowledged, oldest first.
        ids: Vec<MessageId>,
    },
}

#[derive(Debug, Clone, Copy)]
enum Link {
    /// No stream to the peer.
    Down,
    /// A stream is open.
    Up {
        /// The peer's `Hello` arrived on this connection.
        peer_ready: bool,
        /// When our last `Hello` asking for a reply went out.
        hello_at: u64,
        /// How many outbox messages (a prefix) were sent on this connection.
        in_flight: usize,
        /// Last acknowledgement progress (or start of the flight).
        progress_at: u64,
    },
}

/// One 1:1 conversation with a peer. See the [module docs](self) for how to drive it.
#[derive(Debug, Clone)]
pub struct Conversation {
    config: Config,
    cursor: Cursor,
    outbox: VecDeque<Message>,
    reorder: BTreeMap<u64, Message>,
    link: Link,
}

impl Conversation {
    /// A new conversation with nothing sent or received, and a random epoch.
    pub fn new(config: Config, rng: &mut impl CryptoRngCore) -> Self {
        Self {
            config,
            cursor: Cursor {
                epoch: rng.next_u64(),
                next_seq: 1,
                reserved_up_to: 0,
                acked_up_to: 0,
                delivered_up_to: 0,
                peer_epoch: None,
            },
            outbox: VecDeque::new(),
            reorder: BTreeMap::new(),
            link: Link::Down,
        }
    }

    /// Rebuilds a conversation from persisted state; it starts disconnected.
    ///
    /// Numbers reserved but not used in the snapshot (we may have sent them before a
    /// crash) are never reused: a placeholder that skips them joins the outbox.
    pub fn restore(config: Config, snapshot: Snapshot) -> Result<Self, RestoreError> {
        let Snapshot { mut cursor, outbox } = snapshot;
        let mut expected = cursor.acked_up_to;
        for (index, message) in outbox.iter().enumerate() {
            expected = expected.saturating_add(1);
            if message.seq != expected || message.last_seq() != message.skip_to.unwrap_or(expected)
            {
                return Err(RestoreError::OutboxSequence {
                    index,
                    found: message.seq,
                    expected,
                });
            }
            expected = message.last_seq();
        }
        if expected.checked_add(1) != Some(cursor.next_seq) {
            return Err(RestoreError::NextSeq {
                next_seq: cursor.next_seq,
                last: expected,
            });
        }
        let mut outbox: VecDeque<Message> = outbox.into();
        if cursor.reserved_up_to >= cursor.next_seq {
            debug!(
                from = cursor.next_seq,
                to = cursor.reserved_up_to,
                "skipping sequence numbers reserved before the restart"
            );
            outbox.push_back(Message {
                id: MessageId([0; crate::id::MESSAGE_ID_LEN]),
                seq: cursor.next_seq,
                sent_at: 0,
                body: String::new(),
                skip_to: Some(cursor.reserved_up_to),
            });
            cursor.next_seq = cursor.reserved_up_to + 1;
        }
        Ok(Self {
            config,
            cursor,
            outbox,
            reorder: BTreeMap::new(),
            link: Link::Down,
        })
    }

    /// The state to persist after every call.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            cursor: self.cursor,
            outbox: self.outbox.iter().cloned().collect(),
        }
    }

    /// The fixed-size part of the state, for nodes that keep outbox rows separately.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Messages waiting for the peer's receipt, oldest first.
    pub fn outbox(&self) -> impl ExactSizeIterator<Item = &Message> {
        self.outbox.iter()
    }

    /// Whether a stream is open and the peer's `Hello` arrived on it.
    pub fn is_online(&self) -> bool {
        matches!(
            self.link,
            Link::Up {
                peer_ready: true,
                ..
            }
        )
    }

    /// Queues a message; it is sent now if the peer is online, else after it reconnects.
    ///
    /// Returns the message (store it in history) and the outputs.
    pub fn send(
        &mut self,
        body: impl Into<String>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Message, Vec<Output>), SendError> {
        let body = body.into();
        if body.len() > MAX_BODY_LEN {
            return Err(SendError::BodyTooLong {
                len: body.len(),
                max: MAX_BODY_LEN,
            });
        }
        if self.outbox.len() >= self.config.max_outbox {
            return Err(SendError::OutboxFull {
                limit: self.config.max_outbox,
            });
        }
        let message = Message {
            id: MessageId::new(now_ms, rng),
            seq: self.cursor.next_seq,
            sent_at: now_ms,
            body,
            skip_to: None,
        };
        self.cursor.next_seq += 1;
        if message.seq > self.cursor.reserved_up_to {
            self.cursor.reserved_up_to = message.seq + SEQ_RESERVATION - 1;
        }
        self.outbox.push_back(message.clone());
        let mut out = Vec::new();
        self.fill_window(now_ms, &mut out);
        Ok((message, out))
    }

    /// A stream to the peer is open: returns our `Hello` to write first.
    pub fn connected(&mut self, now_ms: u64) -> Vec<Output> {
        self.link = Link::Up {
            peer_ready: false,
            hello_at: now_ms,
            in_flight: 0,
            progress_at: now_ms,
        };
        vec![Output::Send(Frame::Hello(self.hello(true)))]
    }

    /// The stream closed or failed; unacknowledged messages wait for the next one.
    pub fn disconnected(&mut self) {
        self.link = Link::Down;
    }

    /// Handles a frame read from the peer's stream.
    pub fn handle_frame(&mut self, frame: Frame, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        let Link::Up { peer_ready, .. } = self.link else {
            debug!("chat frame while disconnected, ignored");
            return out;
        };
        match frame {
            Frame::Hello(hello) => self.on_hello(hello, now_ms, &mut out),
            Frame::Message(message) if peer_ready => self.on_message(message, &mut out),
            Frame::Message(message) => {
                debug!(
                    seq = message.seq,
                    "chat message before the peer's hello, dropped"
                );
            }
            Frame::Receipt(receipt) => {
                if receipt.epoch == self.cursor.epoch {
                    self.ack(receipt.up_to, now_ms, &mut out);
                    self.fill_window(now_ms, &mut out);
                } else {
                    debug!("chat receipt for another epoch, ignored");
                }
            }
        }
        out
    }

    /// Resends our `Hello` or the unacknowledged messages when nothing moved for the
    /// retransmission interval. Call at [`Conversation::poll_timeout`].
    pub fn handle_timeout(&mut self, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        let rto = self.config.retransmit_after_ms;
        let hello = self.hello(true);
        if let Link::Up {
            peer_ready,
            hello_at,
            in_flight,
            progress_at,
        } = &mut self.link
        {
            if !*peer_ready {
                if now_ms >= hello_at.saturating_add(rto) {
                    debug!("no hello from peer yet, asking again");
                    *hello_at = now_ms;
                    out.push(Output::Send(Frame::Hello(hello)));
                }
            } else if *in_flight > 0 && now_ms >= progress_at.saturating_add(rto) {
                debug!(in_flight = *in_flight, "no receipt progress, resending");
                *progress_at = now_ms;
                out.extend(
                    self.outbox
                        .iter()
                        .take(*in_flight)
                        .map(|m| Output::Send(Frame::Message(m.clone()))),
                );
            }
        }
        out
    }

    /// When to call [`Conversation::handle_timeout`] next (unix ms), if at all.
    pub fn poll_timeout(&self) -> Option<u64> {
        let rto = self.config.retransmit_after_ms;
        match self.link {
            Link::Down => None,
            Link::Up {
                peer_ready: false,
                hello_at,
                ..
            } => Some(hello_at.saturating_add(rto)),
            Link::Up { in_flight: 0, .. } => None,
            Link::Up { progress_at, .. } => Some(progress_at.saturating_add(rto)),
        }
    }

    fn hello(&self, want_reply: bool) -> Hello {
        Hello {
            epoch: self.cursor.epoch,
            your_epoch: self.cursor.peer_epoch,
            received_up_to: self.cursor.delivered_up_to,
            acked_up_to: self.cursor.acked_up_to,
            want_reply,
        }
    }

    fn on_hello(&mut self, hello: Hello, now_ms: u64, out: &mut Vec<Output>) {
        // Receiving direction: what of the peer's messages do we already have?
        match self.cursor.peer_epoch {
            Some(epoch) if epoch != hello.epoch => {
                warn!("peer started its chat state over; following its numbering");
                self.cursor.delivered_up_to = hello.acked_up_to;
                self.reorder.clear();
            }
            _ if hello.acked_up_to > self.cursor.delivered_up_to => {
                if self.cursor.peer_epoch.is_some() {
                    warn!(
                        delivered = self.cursor.delivered_up_to,
                        acked = hello.acked_up_to,
                        "peer holds receipts we have no record of (restored older state?)"
                    );
                }
                self.cursor.delivered_up_to = hello.acked_up_to;
            }
            _ => {}
        }
        self.cursor.peer_epoch = Some(hello.epoch);
        let delivered = self.cursor.delivered_up_to;
        self.reorder.retain(|&seq, _| seq > delivered);
        if self.drain_reorder(out) {
            self.push_receipt(out);
        }

        // Sending direction: its receipts count only if it knows our current epoch.
        if hello.your_epoch == Some(self.cursor.epoch) {
            self.ack(hello.received_up_to, now_ms, out);
        }
        if let Link::Up {
            peer_ready,
            progress_at,
            ..
        } = &mut self.link
            && !*peer_ready
        {
            *peer_ready = true;
            *progress_at = now_ms;
        }
        if hello.want_reply {
            out.push(Output::Send(Frame::Hello(self.hello(false))));
        }
        self.fill_window(now_ms, out);
    }

    fn on_message(&mut self, mut message: Message, out: &mut Vec<Output>) {
        let delivered = self.cursor.delivered_up_to;
        if message.skip_to.is_some() && message.seq <= delivered && message.last_seq() > delivered {
            // A skip that we partly passed already: what is left of it is next.
            message.seq = delivered + 1;
        }
        if message.last_seq() <= delivered {
            // Already delivered: our receipt was probably lost, repeat it.
            self.push_receipt(out);
            return;
        }
        if message.seq - delivered > self.config.max_reorder {
            debug!(
                seq = message.seq,
                delivered, "chat message too far ahead, dropped"
            );
            return;
        }
        self.reorder.entry(message.seq).or_insert(message);
        if self.drain_reorder(out) {
            self.push_receipt(out);
        }
    }

    /// Delivers buffered messages that are next in order; true if any was delivered.
    fn drain_reorder(&mut self, out: &mut Vec<Output>) -> bool {
        let mut any = false;
        while let Some(next) = self.cursor.delivered_up_to.checked_add(1)
            && let Some(message) = self.reorder.remove(&next)
        {
            if message.skip_to.is_some() {
                // Numbers the peer will never send: nothing to show, nothing to wait for.
                let last = message.last_seq();
                self.cursor.delivered_up_to = last;
                self.reorder.retain(|&seq, _| seq > last);
            } else {
                self.cursor.delivered_up_to = next;
                out.push(Output::Deliver(message));
            }
            any = true;
        }
        any
    }

    fn push_receipt(&self, out: &mut Vec<Output>) {
        if let Some(epoch) = self.cursor.peer_epoch {
            out.push(Output::Send(Frame::Receipt(Receipt {
                epoch,
                up_to: self.cursor.delivered_up_to,
            })));
        }
    }

    fn ack(&mut self, up_to: u64, now_ms: u64, out: &mut Vec<Output>) {
        let last_sent = self.cursor.next_seq - 1;
        let up_to = if up_to > last_sent {
            warn!(up_to, last_sent, "peer acknowledged messages never sent");
            last_sent
        } else {
            up_to
        };
        if up_to <= self.cursor.acked_up_to {
            return;
        }
        let mut popped = 0;
        let mut ids = Vec::new();
        while let Some(front) = self.outbox.front()
            && front.last_seq() <= up_to
        {
            if let Some(m) = self.outbox.pop_front()
                && m.skip_to.is_none()
            {
                ids.push(m.id);
            }
            popped += 1;
        }
        // Acknowledgements land on message boundaries; a receipt inside a skip (the peer
        // passed part of it earlier) counts once the whole skip is covered.
        self.cursor.acked_up_to = self.outbox.front().map_or(up_to, |m| m.seq - 1).min(up_to);
        if let Link::Up {
            in_flight,
            progress_at,
            ..
        } = &mut self.link
        {
            *in_flight = in_flight.saturating_sub(popped);
            *progress_at = now_ms;
        }
        if !ids.is_empty() {
            out.push(Output::Delivered {
                up_to_seq: self.cursor.acked_up_to,
                ids,
            });
        }
    }

    fn fill_window(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let Link::Up {
            peer_ready: true,
            in_flight,
            progress_at,
            ..
        } = &mut self.link
        else {
            return;
        };
        let limit = self.config.window.min(self.outbox.len());
        if *in_flight == 0 && limit > 0 {
            *progress_at = now_ms;
        }
        while *in_flight < limit {
            if let Some(message) = self.outbox.get(*in_flight) {
                out.push(Output::Send(Frame::Message(message.clone())));
            }
            *in_flight += 1;
        }
    }
}

#[cfg(test)]
mod tests;

//! Two conversations over a simulated link that loses, duplicates and reorders frames,
//! with reconnects and crashes, in virtual time. Each side behaves like the node: after
//! every call it writes the message frames its last committed reservation covers, then
//! persists the snapshot together with the delivered history (one "transaction"), then
//! performs the other outputs; a crash (also between the early frames and the commit)
//! restores from what was persisted.
#![allow(clippy::unwrap_used)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use p2pnode_chat::{Config, Conversation, Frame, Message, MessageId, Output, Snapshot};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy)]
struct Link {
    loss: f64,
    duplicate: f64,
    max_delay_ms: u64,
    reconnect_every: f64,
    crash: f64,
    /// Probability that a crash hits after persisting but before the outputs went out.
    crash_before_outputs: f64,
    /// Probability that a crash hits after early message frames, before their commit.
    crash_after_early: f64,
}

const PERFECT: Link = Link {
    loss: 0.0,
    duplicate: 0.0,
    max_delay_ms: 1,
    reconnect_every: 0.0,
    crash: 0.0,
    crash_before_outputs: 0.0,
    crash_after_early: 0.0,
};

/// One side as the node would run it.
struct Side {
    conv: Conversation,
    config: Config,
    /// What is "on disk": the snapshot bytes and the history of delivered messages.
    stored_state: Vec<u8>,
    stored_history: Vec<Message>,
    stored_marked: HashSet<MessageId>,
    /// The committed `reserved_up_to`: message frames up to it may precede the commit.
    stored_reserved: u64,
    /// Messages the user was told are sent (their commit happened).
    sent: Vec<Message>,
    /// Messages whose frames went out early but whose commit a crash prevented: never
    /// acknowledged to the user, so the peer may or may not show them.
    lost: HashSet<MessageId>,
    crashes: usize,
    /// Crashes between early frames and their commit.
    early_crashes: usize,
}

impl Side {
    fn new(config: Config, rng: &mut StdRng) -> Self {
        let conv = Conversation::new(config, rng);
        Self {
            stored_state: conv.snapshot().encode(),
            conv,
            config,
            stored_history: Vec::new(),
            stored_marked: HashSet::new(),
            stored_reserved: 0,
            sent: Vec::new(),
            lost: HashSet::new(),
            crashes: 0,
            early_crashes: 0,
        }
    }

    /// The frames at the front of `outputs` that may be written before the commit:
    /// messages within the committed reservation.
    fn early(&self, outputs: &[Output]) -> Vec<Frame> {
        outputs
            .iter()
            .map_while(|o| match o {
                Output::Send(Frame::Message(m)) if m.last_seq() <= self.stored_reserved => {
                    Some(Frame::Message(m.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// Persists state and the history implied by `outputs`, then returns the frames to
    /// write after the first `early` ones (or none if a crash hits in between).
    fn commit(&mut self, outputs: Vec<Output>, early: usize, crash_now: bool) -> Vec<Frame> {
        let mut frames = Vec::new();
        for output in outputs {
            match output {
                Output::Deliver(m) => self.stored_history.push(m),
                Output::Delivered { ids, .. } => {
                    for id in ids {
                        assert!(self.stored_marked.insert(id), "marked twice: {id}");
                    }
                }
                Output::Send(frame) => frames.push(frame),
            }
        }
        frames.drain(..early);
        self.stored_state = self.conv.snapshot().encode();
        self.stored_reserved = self.conv.cursor().reserved_up_to;
        if crash_now {
            self.crash();
            return Vec::new();
        }
        frames
    }

    /// Loses everything in memory and restarts from storage, disconnected.
    fn crash(&mut self) {
        self.crashes += 1;
        let snapshot = Snapshot::decode(&self.stored_state).unwrap();
        self.conv = Conversation::restore(self.config, snapshot).unwrap();
        self.stored_reserved = self.conv.cursor().reserved_up_to;
    }
}

/// (deliver at, tie-break, destination, connection generation, encoded frame)
type InFlight = (u64, u64, usize, u64, Vec<u8>);

struct Sim {
    rng: StdRng,
    link: Link,
    now: u64,
    sides: [Side; 2],
    wire: BinaryHeap<Reverse<InFlight>>,
    counter: u64,
    generation: u64,
    up: bool,
}

impl Sim {
    fn new(seed: u64, link: Link, config: Config) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let sides = [Side::new(config, &mut rng), Side::new(config, &mut rng)];
        Self {
            rng,
            link,
            now: 1_700_000_000_000,
            sides,
            wire: BinaryHeap::new(),
            counter: 0,
            generation: 0,
            up: false,
        }
    }

    fn maybe_crash(&mut self) -> bool {
        self.link.crash > 0.0
            && self
                .rng
                .gen_bool(self.link.crash * self.link.crash_before_outputs)
    }

    fn transmit(&mut self, from: usize, frames: Vec<Frame>) {
        if !self.up {
            return;
        }
        for frame in frames {
            let bytes = frame.encode();
            if self.rng.gen_bool(self.link.loss) {
                continue;
            }
            let copies = if self.rng.gen_bool(self.link.duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let at = self.now + self.rng.gen_range(0..self.link.max_delay_ms.max(1));
                self.counter += 1;
                self.wire.push(Reverse((
                    at,
                    self.counter,
                    1 - from,
                    self.generation,
                    bytes.clone(),
                )));
            }
        }
    }

    /// Acts on `outputs` as the node does; false if `side` crashed before its commit.
    fn run(&mut self, side: usize, outputs: Vec<Output>) -> bool {
        let early = self.sides[side].early(&outputs);
        let n = early.len();
        if n > 0
            && self.link.crash_after_early > 0.0
            && self.rng.gen_bool(self.link.crash_after_early)
        {
            // Dies after writing the early frames, before the commit. What it wrote was
            // on the wire: the peer reads it before it notices the stream is gone.
            for frame in early {
                if !self.up {
                    break;
                }
                let out = self.sides[1 - side].conv.handle_frame(frame, self.now);
                self.run(1 - side, out);
            }
            self.disconnect();
            self.sides[side].crash();
            self.sides[side].early_crashes += 1;
            return false;
        }
        self.transmit(side, early);
        let crash = self.maybe_crash();
        let frames = self.sides[side].commit(outputs, n, crash);
        if crash {
            self.disconnect();
        } else {
            self.transmit(side, frames);
        }
        true
    }

    fn disconnect(&mut self) {
        self.up = false;
        self.generation += 1;
        for side in &mut self.sides {
            side.conv.disconnected();
        }
    }

    fn connect(&mut self) {
        self.up = true;
        for i in 0..2 {
            let out = self.sides[i].conv.connected(self.now);
            self.run(i, out);
            if !self.up {
                return;
            }
        }
    }

    fn send(&mut self, side: usize, body: String) {
        let (message, out) = self.sides[side]
            .conv
            .send(body, self.now, &mut self.rng)
            .unwrap();
        if self.run(side, out) {
            self.sides[side].sent.push(message);
        } else {
            self.sides[side].lost.insert(message.id);
        }
    }

    /// Advances one millisecond: frames due, timers, link events.
    fn tick(&mut self) {
        self.now += 1;
        while let Some(Reverse((at, ..))) = self.wire.peek()
            && *at <= self.now
        {
            let Some(Reverse((_, _, to, generation, bytes))) = self.wire.pop() else {
                break;
            };
            if generation != self.generation || !self.up {
                continue; // that stream is gone
            }
            let frame = Frame::decode(&bytes).unwrap();
            let out = self.sides[to].conv.handle_frame(frame, self.now);
            self.run(to, out);
        }
        for i in 0..2 {
            if self.sides[i]
                .conv
                .poll_timeout()
                .is_some_and(|t| t <= self.now)
            {
                let out = self.sides[i].conv.handle_timeout(self.now);
                self.run(i, out);
            }
        }
        if self.up
            && self.link.reconnect_every > 0.0
            && self.rng.gen_bool(self.link.reconnect_every)
        {
            self.disconnect();
        }
        if self.link.crash > 0.0 && self.rng.gen_bool(self.link.crash) {
            let side = self.rng.gen_range(0..2);
            self.disconnect();
            self.sides[side].crash();
        }
        if !self.up && self.rng.gen_bool(0.05) {
            self.connect();
        }
    }

    fn settled(&self, n: usize) -> bool {
        (0..2).all(|i| {
            let s = &self.sides[i];
            let lost = &self.sides[1 - i].lost;
            let got = s.stored_history.iter().filter(|m| !lost.contains(&m.id));
            s.sent.len() == n && s.conv.outbox().len() == 0 && got.count() == n
        })
    }

    /// Sends `n` messages each way at random moments, then runs until everything is
    /// delivered and acknowledged; checks exactly-once, in-order delivery.
    fn exchange(&mut self, n: usize) {
        let limit = 2_000_000;
        let mut ticks = 0;
        while !self.settled(n) {
            ticks += 1;
            assert!(ticks < limit, "no convergence: {}", self.progress());
            for side in 0..2 {
                if self.sides[side].sent.len() < n && self.rng.gen_bool(0.3) {
                    let k = self.sides[side].sent.len();
                    self.send(side, format!("{side}->{} #{k}", 1 - side));
                }
            }
            self.tick();
        }
        for side in 0..2 {
            let all = &self.sides[side].stored_history;
            assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "in order");
            let lost = &self.sides[1 - side].lost;
            let got: Vec<&Message> = all.iter().filter(|m| !lost.contains(&m.id)).collect();
            let sent = &self.sides[1 - side].sent;
            assert_eq!(got.len(), sent.len());
            for (k, (g, s)) in got.iter().zip(sent).enumerate() {
                assert_eq!(*g, s, "message {k} to side {side}");
            }
            let marked = &self.sides[1 - side].stored_marked;
            assert_eq!(marked.len(), n, "every sent message got its delivery mark");
            assert!(sent.iter().all(|m| marked.contains(&m.id)));
        }
        let ids: HashSet<_> = self
            .sides
            .iter()
            .flat_map(|s| &s.sent)
            .map(|m| m.id)
            .collect();
        assert_eq!(ids.len(), 2 * n, "ids are unique");
    }

    fn progress(&self) -> String {
        self.sides
            .iter()
            .map(|s| {
                format!(
                    "sent {} outbox {} delivered {} crashes {}",
                    s.sent.len(),
                    s.conv.outbox().len(),
                    s.stored_history.len(),
                    s.crashes
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn lossy() -> Link {
    Link {
        loss: 0.1,
        duplicate: 0.1,
        max_delay_ms: 40,
        reconnect_every: 0.002,
        crash: 0.0,
        crash_before_outputs: 0.0,
        crash_after_early: 0.0,
    }
}

fn config() -> Config {
    Config::default()
        .with_retransmit_after_ms(150)
        .with_window(256)
        .with_max_reorder(256)
}

#[test]
fn thousand_each_way_over_perfect_link() {
    let mut sim = Sim::new(1, PERFECT, config());
    sim.connect();
    sim.exchange(1000);
    assert_eq!(sim.generation, 0, "never reconnected");
}

#[test]
fn thousand_each_way_over_lossy_reordering_duplicating_link_with_reconnects() {
    let mut reconnects = 0;
    for seed in 0..4 {
        let mut sim = Sim::new(seed, lossy(), config());
        sim.exchange(1000);
        assert!(sim.generation > 0, "seed {seed}: never reconnected");
        reconnects += sim.generation;
    }
    assert!(reconnects >= 10, "only {reconnects} reconnects");
}

#[test]
fn thousand_each_way_with_crashes_restoring_from_persisted_state() {
    let mut crashes = 0;
    for seed in 10..14 {
        let link = Link {
            crash: 0.001,
            crash_before_outputs: 0.3,
            ..lossy()
        };
        let mut sim = Sim::new(seed, link, config());
        sim.exchange(1000);
        crashes += sim.sides.iter().map(|s| s.crashes).sum::<usize>();
    }
    assert!(crashes >= 10, "only {crashes} crashes");
}

#[test]
fn crashes_between_early_frames_and_their_commit_lose_nothing_acknowledged() {
    let (mut early_crashes, mut shown_though_lost) = (0, 0);
    for seed in 20..24 {
        let link = Link {
            crash_after_early: 0.01,
            ..lossy()
        };
        let mut sim = Sim::new(seed, link, config());
        sim.exchange(1000);
        for i in 0..2 {
            early_crashes += sim.sides[i].early_crashes;
            let lost = &sim.sides[i].lost;
            shown_though_lost += sim.sides[1 - i]
                .stored_history
                .iter()
                .filter(|m| lost.contains(&m.id))
                .count();
        }
    }
    assert!(early_crashes >= 20, "only {early_crashes} early crashes");
    // Some of those messages reached the peer before the crash: the numbers they used are
    // the ones a restart must not hand out again (exchange() checked nothing was eaten).
    assert!(shown_though_lost >= 1, "no lost message reached the peer");
}

#[test]
fn queued_while_offline_survives_restart_and_is_delivered_once() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut sim = Sim::new(7, lossy(), config());
    // Side 0 writes 1000 messages while the peer is unreachable, crashing midway.
    for k in 0..1000 {
        let (m, out) = sim.sides[0]
            .conv
            .send(format!("offline #{k}"), sim.now, &mut rng)
            .unwrap();
        assert!(out.is_empty());
        sim.sides[0].sent.push(m);
        sim.sides[0].commit(Vec::new(), 0, k == 500);
    }
    assert_eq!(sim.sides[0].crashes, 1);
    // The crash added a placeholder that skips the numbers reserved before it.
    let queued = sim.sides[0].conv.outbox().filter(|m| m.skip_to.is_none());
    assert_eq!(queued.count(), 1000);
    // Both sides restart before they ever meet.
    sim.sides[0].crash();
    sim.sides[1].crash();
    sim.connect();
    let mut ticks = 0;
    while sim.sides[1].stored_history.len() < 1000 || sim.sides[0].conv.outbox().len() > 0 {
        sim.tick();
        ticks += 1;
        assert!(ticks < 1_000_000, "{}", sim.progress());
    }
    let bodies: Vec<_> = sim.sides[1]
        .stored_history
        .iter()
        .map(|m| &m.body)
        .collect();
    let expected: Vec<_> = (0..1000).map(|k| format!("offline #{k}")).collect();
    assert_eq!(bodies, expected.iter().collect::<Vec<_>>());
}

#[test]
fn outbox_limit_applies_while_offline_and_frees_after_delivery() {
    let config = config().with_max_outbox(100);
    let mut sim = Sim::new(3, PERFECT, config);
    let mut rng = StdRng::seed_from_u64(3);
    for k in 0..100 {
        let (m, _) = sim.sides[0]
            .conv
            .send(format!("{k}"), sim.now, &mut rng)
            .unwrap();
        sim.sides[0].sent.push(m);
    }
    assert!(
        sim.sides[0]
            .conv
            .send("one too many", sim.now, &mut rng)
            .is_err()
    );
    sim.connect();
    for _ in 0..100 {
        sim.tick();
    }
    assert_eq!(sim.sides[1].stored_history.len(), 100);
    assert_eq!(sim.sides[0].conv.outbox().len(), 0);
    assert!(
        sim.sides[0]
            .conv
            .send("fits again", sim.now, &mut rng)
            .is_ok()
    );
}

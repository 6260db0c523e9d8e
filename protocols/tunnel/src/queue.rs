//! The queue in front of a slow path (a relayed connection, which carries only a byte
//! stream): bounded, with room for a fixed number of packets allocated once, and no packet
//! kept past a deadline. A packet that waited longer than the inner connection's own
//! retransmission timer would only be retransmitted again by it; sending it late is worse
//! than dropping it, and keeping it makes the queue a buffer bloat. When full, the oldest
//! packet goes, as a router's tail would, but from the head: the newest is the most useful.

use std::time::{Duration, Instant};

/// A bounded packet queue with slots allocated up front.
#[derive(Debug)]
pub struct PacketQueue {
    /// `capacity` slots of `slot_len` bytes, in one allocation.
    buf: Vec<u8>,
    slot_len: usize,
    /// Per slot: the packet's length and when it was queued.
    meta: Vec<(usize, Instant)>,
    head: usize,
    len: usize,
    max_age: Duration,
    dropped_full: u64,
    dropped_stale: u64,
}

impl PacketQueue {
    /// Room for `capacity` packets of at most `slot_len` bytes, each kept at most `max_age`.
    pub fn new(capacity: usize, slot_len: usize, max_age: Duration, now: Instant) -> Self {
        let capacity = capacity.max(1);
        Self {
            buf: vec![0; capacity * slot_len],
            slot_len,
            meta: vec![(0, now); capacity],
            head: 0,
            len: 0,
            max_age,
            dropped_full: 0,
            dropped_stale: 0,
        }
    }

    fn capacity(&self) -> usize {
        self.meta.len()
    }

    /// Queues a copy of `packet`, dropping the oldest when full. A packet longer than a
    /// slot is refused (`false`): the MTU check comes before the queue.
    pub fn push(&mut self, packet: &[u8], now: Instant) -> bool {
        if packet.len() > self.slot_len {
            return false;
        }
        if self.len == self.capacity() {
            self.head = (self.head + 1) % self.capacity();
            self.len -= 1;
            self.dropped_full += 1;
        }
        let slot = (self.head + self.len) % self.capacity();
        let start = slot * self.slot_len;
        self.buf[start..start + packet.len()].copy_from_slice(packet);
        self.meta[slot] = (packet.len(), now);
        self.len += 1;
        true
    }

    /// The oldest packet still within its deadline, given to `send` (which copies it out),
    /// then removed; packets past the deadline on the way are dropped and counted.
    pub fn pop<T>(&mut self, now: Instant, send: impl FnOnce(&[u8]) -> T) -> Option<T> {
        while self.len > 0 {
            let slot = self.head;
            let (len, queued) = self.meta[slot];
            self.head = (self.head + 1) % self.capacity();
            self.len -= 1;
            if now.saturating_duration_since(queued) > self.max_age {
                self.dropped_stale += 1;
                continue;
            }
            let start = slot * self.slot_len;
            return Some(send(&self.buf[start..start + len]));
        }
        None
    }

    /// Packets waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Packets dropped because the queue was full.
    pub fn dropped_full(&self) -> u64 {
        self.dropped_full
    }

    /// Packets dropped because they waited too long.
    pub fn dropped_stale(&self) -> u64 {
        self.dropped_stale
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn fifo_within_the_deadline() {
        let t0 = Instant::now();
        let mut q = PacketQueue::new(4, 16, Duration::from_millis(100), t0);
        for i in 0..3u8 {
            assert!(q.push(&[i; 5], t0));
        }
        for i in 0..3u8 {
            assert_eq!(q.pop(t0, <[u8]>::to_vec), Some(vec![i; 5]));
        }
        assert_eq!(q.pop(t0, <[u8]>::to_vec), None);
    }

    #[test]
    fn full_drops_the_oldest_and_late_ones_are_dropped() {
        let t0 = Instant::now();
        let mut q = PacketQueue::new(2, 16, Duration::from_millis(100), t0);
        q.push(b"a", t0);
        q.push(b"b", t0 + Duration::from_millis(80));
        q.push(b"c", t0 + Duration::from_millis(90));
        assert_eq!(q.dropped_full(), 1);
        // At 150 ms "b" waited 70 ms: fine; later "c" is still fine too.
        assert_eq!(
            q.pop(t0 + Duration::from_millis(150), <[u8]>::to_vec),
            Some(b"b".to_vec())
        );
        assert_eq!(q.pop(t0 + Duration::from_millis(300), <[u8]>::to_vec), None);
        assert_eq!(q.dropped_stale(), 1);
        assert!(!q.push(&[0; 17], t0), "longer than a slot");
    }

    proptest! {
        #[test]
        fn never_more_than_capacity_and_every_packet_accounted(ops in prop::collection::vec((any::<bool>(), 0u64..50), 0..200)) {
            let t0 = Instant::now();
            let mut q = PacketQueue::new(8, 4, Duration::from_millis(20), t0);
            let (mut pushed, mut popped) = (0u64, 0u64);
            let mut now = t0;
            for (push, step) in ops {
                now += Duration::from_millis(step);
                if push {
                    q.push(&[1, 2, 3], now);
                    pushed += 1;
                } else if q.pop(now, |p| p.len()).is_some() {
                    popped += 1;
                }
                prop_assert!(q.len() <= 8);
            }
            prop_assert_eq!(pushed, popped + q.len() as u64 + q.dropped_full() + q.dropped_stale());
        }
    }
}

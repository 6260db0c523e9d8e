//! Framing: replay protection, ordering modes, rekeying, size limits, padding.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use crate::common::pair;
use p2pnode_secure::session::{HEADER_LEN, MAX_PAYLOAD_LEN, PAD_TRAILER_LEN, TAG_LEN};
use p2pnode_secure::{OpenError, ReceiveMode, SealError, Session, SessionConfig};

fn seal(s: &mut Session, payload: &[u8], now: Instant) -> Vec<u8> {
    let mut out = Vec::new();
    s.seal(payload, now, &mut out).unwrap();
    out
}

fn open(s: &mut Session, frame: &[u8]) -> Result<Vec<u8>, OpenError> {
    let mut f = frame.to_vec();
    s.open(&mut f).map(<[u8]>::to_vec)
}

fn window() -> SessionConfig {
    SessionConfig::default().with_receive_mode(ReceiveMode::Window)
}

#[test]
fn roundtrip_sizes() {
    let (mut a, mut b) = pair(SessionConfig::default());
    let now = Instant::now();
    for len in [0, 1, 1400, MAX_PAYLOAD_LEN] {
        let payload = vec![0xa5; len];
        let frame = seal(&mut a, &payload, now);
        assert_eq!(frame.len(), HEADER_LEN + len + TAG_LEN);
        assert_eq!(open(&mut b, &frame).unwrap(), payload);
    }
}

#[test]
fn replayed_frame_refused_in_both_modes() {
    for mode in [ReceiveMode::Ordered, ReceiveMode::Window] {
        let (mut a, mut b) = pair(SessionConfig::default().with_receive_mode(mode));
        let frame = seal(&mut a, b"once", Instant::now());
        assert_eq!(open(&mut b, &frame).unwrap(), b"once");
        let err = open(&mut b, &frame).unwrap_err();
        match mode {
            ReceiveMode::Ordered => assert_eq!(
                err,
                OpenError::OutOfOrder {
                    expected: 1,
                    actual: 0
                }
            ),
            ReceiveMode::Window => assert_eq!(err, OpenError::Replayed(0)),
        }
    }
}

#[test]
fn window_accepts_reordering_and_refuses_too_old() {
    let (mut a, mut b) = pair(window());
    let now = Instant::now();
    let frames: Vec<_> = (0..3000u32)
        .map(|i| seal(&mut a, &i.to_be_bytes(), now))
        .collect();

    // Reordered within the window: newest first, then a few older ones.
    for i in [100usize, 99, 50, 0, 101] {
        assert_eq!(open(&mut b, &frames[i]).unwrap(), (i as u32).to_be_bytes());
    }
    // Frame 2999 moves the 2048-wide window to [952, 2999]: 951 is too old, 952 fine.
    open(&mut b, &frames[2999]).unwrap();
    assert_eq!(
        open(&mut b, &frames[951]).unwrap_err(),
        OpenError::TooOld(951)
    );
    assert_eq!(open(&mut b, &frames[952]).unwrap(), 952u32.to_be_bytes());
    assert_eq!(
        open(&mut b, &frames[952]).unwrap_err(),
        OpenError::Replayed(952)
    );
}

#[test]
fn ordered_mode_refuses_reordering_and_gaps() {
    let (mut a, mut b) = pair(SessionConfig::default());
    let now = Instant::now();
    let f0 = seal(&mut a, b"0", now);
    let f1 = seal(&mut a, b"1", now);
    let f2 = seal(&mut a, b"2", now);
    assert_eq!(
        open(&mut b, &f1).unwrap_err(),
        OpenError::OutOfOrder {
            expected: 0,
            actual: 1
        }
    );
    assert_eq!(open(&mut b, &f0).unwrap(), b"0");
    assert_eq!(
        open(&mut b, &f2).unwrap_err(),
        OpenError::OutOfOrder {
            expected: 1,
            actual: 2
        }
    );
    assert_eq!(open(&mut b, &f1).unwrap(), b"1");
    assert_eq!(open(&mut b, &f2).unwrap(), b"2");
}

#[test]
fn tampered_frame_refused_without_moving_state() {
    let (mut a, mut b) = pair(window());
    let frame = seal(&mut a, b"payload", Instant::now());
    for byte in 0..frame.len() {
        let mut bad = frame.clone();
        bad[byte] ^= 0x80;
        assert!(open(&mut b, &bad).is_err(), "byte {byte}");
    }
    // The genuine frame still opens: nothing above touched the window.
    assert_eq!(open(&mut b, &frame).unwrap(), b"payload");
}

#[test]
fn rekey_after_frames_is_followed_by_receiver() {
    let config = SessionConfig::default().with_rekey_after_frames(3);
    let (mut a, mut b) = pair(config);
    let now = Instant::now();
    for i in 0..10u8 {
        let frame = seal(&mut a, &[i], now);
        assert_eq!(open(&mut b, &frame).unwrap(), [i]);
        assert_eq!(b.recv_epoch(), a.send_epoch());
    }
    assert_eq!(a.send_epoch(), 3); // frames 0-2, 3-5, 6-8, 9
    // Epoch keys differ: a frame re-stamped with another epoch does not open.
    let mut frame = seal(&mut a, b"x", now);
    frame[4] ^= 1;
    assert_eq!(
        open(&mut b, &frame).unwrap_err(),
        OpenError::Epoch {
            current: 3,
            actual: 2
        }
    );
}

#[test]
fn rekey_after_time_uses_caller_clock() {
    let config = SessionConfig::default().with_rekey_after(Duration::from_secs(60));
    let (mut a, mut b) = pair(config);
    let t0 = Instant::now();
    open(&mut b, &seal(&mut a, b"a", t0)).unwrap();
    open(&mut b, &seal(&mut a, b"b", t0 + Duration::from_secs(59))).unwrap();
    assert_eq!(a.send_epoch(), 0);
    open(&mut b, &seal(&mut a, b"c", t0 + Duration::from_secs(60))).unwrap();
    assert_eq!((a.send_epoch(), b.recv_epoch()), (1, 1));
    // A clock that goes backwards does not trigger or break anything.
    open(&mut b, &seal(&mut a, b"d", t0)).unwrap();
    assert_eq!(a.send_epoch(), 1);
}

#[test]
fn window_rekey_with_loss_and_late_frames() {
    let config = window().with_rekey_after_frames(4);
    let (mut a, mut b) = pair(config);
    let now = Instant::now();
    let frames: Vec<_> = (0..80u8).map(|i| seal(&mut a, &[i], now)).collect();
    // Epoch e holds frames 4e..4e+3. Lose epochs 1 and 2 entirely.
    open(&mut b, &frames[0]).unwrap();
    open(&mut b, &frames[13]).unwrap(); // epoch 3, two epochs skipped
    assert_eq!(b.recv_epoch(), 3);
    // A late frame of the previous epoch (2) still opens; older epochs are gone.
    assert_eq!(open(&mut b, &frames[11]).unwrap(), [11]);
    assert_eq!(
        open(&mut b, &frames[1]).unwrap_err(),
        OpenError::Epoch {
            current: 3,
            actual: 0
        }
    );
    // Too far ahead (more than 8 epochs) is refused.
    assert_eq!(
        open(&mut b, &frames[79]).unwrap_err(),
        OpenError::Epoch {
            current: 3,
            actual: 19
        }
    );
    assert_eq!(open(&mut b, &frames[45]).unwrap(), [45]); // epoch 11, 8 ahead
    assert_eq!(b.recv_epoch(), 11);
}

#[test]
fn oversized_frames_refused_before_decryption() {
    let config = SessionConfig::default().with_max_payload_len(1000);
    let (mut a, mut b) = pair(config.clone());
    assert_eq!(
        a.seal(&[0; 1001], Instant::now(), &mut Vec::new()),
        Err(SealError::PayloadTooLarge {
            len: 1001,
            max: 1000
        })
    );
    let max = config.max_frame_len();
    assert_eq!(max, HEADER_LEN + 1000 + PAD_TRAILER_LEN + TAG_LEN);
    let mut big = vec![0u8; max + 1];
    assert_eq!(
        b.open(&mut big).unwrap_err(),
        OpenError::TooLarge { len: max + 1, max }
    );
    let mut short = vec![0u8; HEADER_LEN + TAG_LEN - 1];
    assert_eq!(
        b.open(&mut short).unwrap_err(),
        OpenError::TooShort { len: short.len() }
    );
    // A peer with a larger limit is refused even though its frame authenticates.
    let (mut big_sender, mut small_receiver) = {
        let (x, _) = pair(SessionConfig::default());
        let (_, y) = pair(config);
        (x, y)
    };
    let frame = seal(&mut big_sender, &[0; 1004], Instant::now());
    assert!(open(&mut small_receiver, &frame).is_err());
}

#[test]
fn unknown_flags_refused() {
    let (mut a, mut b) = pair(SessionConfig::default());
    let mut frame = seal(&mut a, b"x", Instant::now());
    frame[0] = 0x80;
    assert_eq!(
        open(&mut b, &frame).unwrap_err(),
        OpenError::UnknownFlags(0x80)
    );
}

#[test]
fn padding_hides_sizes_and_roundtrips() {
    let (mut a, mut b) = pair(SessionConfig::default().with_padding(true));
    let now = Instant::now();
    let overhead = HEADER_LEN + TAG_LEN;
    for (len, padded) in [
        (0, 256),
        (252, 256),
        (253, 1024),
        (5000, 16384),
        (20_000, MAX_PAYLOAD_LEN + 4),
    ] {
        let payload = vec![7u8; len];
        let frame = seal(&mut a, &payload, now);
        assert_eq!(frame.len(), overhead + padded, "payload {len}");
        assert_eq!(open(&mut b, &frame).unwrap(), payload);
    }
    // The receiver needs no padding setting of its own.
    let (mut plain_a, mut plain_b) = pair(SessionConfig::default());
    let frame = seal(&mut plain_a, b"plain", now);
    assert_eq!(open(&mut plain_b, &frame).unwrap(), b"plain");
}

/// Counts what it is told, for the traffic test.
#[derive(Default)]
struct Counted {
    sealed: std::sync::atomic::AtomicUsize,
    opened: std::sync::atomic::AtomicUsize,
    rejected: std::sync::atomic::AtomicUsize,
}

impl p2pnode_secure::Traffic for Counted {
    fn sealed(&self, bytes: usize) {
        self.sealed
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
    fn opened(&self, bytes: usize) {
        self.opened
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
    fn rejected(&self) {
        self.rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn traffic_counts_whole_frames_and_rejections() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;
    let (mut a, mut b) = pair(SessionConfig::default());
    let (ta, tb) = (Arc::new(Counted::default()), Arc::new(Counted::default()));
    a.set_traffic(ta.clone());
    b.set_traffic(tb.clone());
    let now = Instant::now();
    let frame = seal(&mut a, &[1; 100], now);
    assert_eq!(ta.sealed.load(Relaxed), frame.len());
    open(&mut b, &frame).unwrap();
    assert_eq!(tb.opened.load(Relaxed), frame.len());
    // A replay is refused and counted, not added to the bytes.
    assert!(open(&mut b, &frame).is_err());
    assert_eq!(tb.rejected.load(Relaxed), 1);
    assert_eq!(tb.opened.load(Relaxed), frame.len());
}

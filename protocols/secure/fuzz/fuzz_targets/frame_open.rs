//! Frame opening, driven by a script: the input configures a session pair, then seals,
//! delivers (in any order, repeatedly), corrupts frames, injects raw bytes and moves the
//! clock. Invariants: a frame opens at most once and only to what was sealed; a corrupted
//! or injected frame never opens; in-order delivery on a fresh frame always works.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use p2pnode_secure::{ReceiveMode, Session, SessionConfig};

const MAX_FRAMES: usize = 256;

fuzz_target!(|data: &[u8]| {
    let Some((&[mode, rekey, max_len], mut script)) = data.split_first_chunk::<3>() else {
        return;
    };
    let window = mode & 1 == 1;
    let config = SessionConfig::default()
        .with_receive_mode(if window {
            ReceiveMode::Window
        } else {
            ReceiveMode::Ordered
        })
        .with_padding(mode & 2 == 2)
        .with_rekey_after_frames(u64::from(rekey % 8) + 1)
        .with_rekey_after(Duration::from_secs(10))
        .with_max_payload_len(usize::from(max_len) * 8 + 1);
    // The handshake is fuzzed by its own targets; here it would only cost time.
    let (mut sender, mut receiver) = Session::pair_for_fuzzing([7; 32], config);
    let mut now = Instant::now();
    // (payload, frame, opened already)
    let mut frames: Vec<(Vec<u8>, Vec<u8>, bool)> = Vec::new();

    while let Some((&op, rest)) = script.split_first() {
        script = rest;
        let arg = script.first().copied().unwrap_or(0);
        script = script.get(1..).unwrap_or(&[]);
        match op % 5 {
            // Seal a new frame.
            0 if frames.len() < MAX_FRAMES => {
                let payload = vec![op; usize::from(arg) * 3];
                let mut frame = Vec::new();
                if sender.seal(&payload, now, &mut frame).is_ok() {
                    frames.push((payload, frame, false));
                }
            }
            // Deliver a recorded frame as is.
            1 if !frames.is_empty() => {
                let i = usize::from(arg) % frames.len();
                let (payload, frame, opened) = &mut frames[i];
                let mut copy = frame.clone();
                if let Ok(got) = receiver.open(&mut copy) {
                    assert!(!*opened, "frame {i} accepted twice");
                    assert_eq!(got, payload.as_slice());
                    *opened = true;
                }
            }
            // Deliver a recorded frame with one bit flipped.
            2 if !frames.is_empty() => {
                let i = usize::from(arg) % frames.len();
                let mut copy = frames[i].1.clone();
                let bit = usize::from(script.first().copied().unwrap_or(0)) % (copy.len() * 8);
                copy[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    receiver.open(&mut copy).is_err(),
                    "corrupted frame accepted"
                );
            }
            // Inject raw bytes from the input.
            3 => {
                let take = usize::from(arg).min(script.len());
                let (raw, rest) = script.split_at(take);
                script = rest;
                let mut copy = raw.to_vec();
                assert!(receiver.open(&mut copy).is_err(), "injected frame accepted");
            }
            // Let time pass (drives time-based rekeying).
            4 => now += Duration::from_secs(u64::from(arg)),
            _ => {}
        }
    }

    // A frame sealed now and delivered next must open: in window mode unless its key
    // epoch is more than the allowed 8 ahead (all frames between were lost), in ordered
    // mode if every earlier frame was delivered (necessarily in order).
    let mut frame = Vec::new();
    if sender.seal(b"final", now, &mut frame).is_ok() {
        let epoch_gap = sender.send_epoch().saturating_sub(receiver.recv_epoch());
        let all_delivered = frames.iter().all(|(_, _, opened)| *opened);
        let result = receiver.open(&mut frame);
        if (window && epoch_gap <= 8) || all_delivered {
            assert_eq!(result.ok(), Some(&b"final"[..]));
        }
    }
});

//! Handshake cost and framing overhead, measured against raw ChaCha20-Poly1305 in the
//! same run. Plain `std::time::Instant`, a warm-up, and the median of several runs.
//!
//! Run with `cargo bench -p p2pnode-secure`.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use ml_kem::kem::{Decapsulate, Encapsulate};
use ml_kem::{KemCore, MlKem768};
use p2pnode_secure::session::HEADER_LEN;
use p2pnode_secure::{HandshakeConfig, Initiator, Responder, Session, SigningKey};
use rand::rngs::OsRng;

const RUNS: usize = 9;

/// Runs `f` once to warm up, then `RUNS` times, and returns the median duration.
fn median(mut f: impl FnMut() -> Duration) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..RUNS).map(|_| f()).collect();
    times.sort();
    times[RUNS / 2]
}

/// Median time of one call to `op`, timed over batches of `iters` calls.
fn per_op(iters: u32, mut op: impl FnMut()) -> Duration {
    median(|| time(iters, &mut op)) / iters
}

fn pair() -> (Session, Session) {
    let alice = SigningKey::generate(&mut OsRng);
    let bob = SigningKey::generate(&mut OsRng);
    handshake(&alice, &bob)
}

fn handshake(alice: &SigningKey, bob: &SigningKey) -> (Session, Session) {
    let label = b"/p2pnode/bench/1".to_vec();
    // ChaCha20-Poly1305 sessions, whatever the CPU: the framing is measured against the
    // bare ChaCha20-Poly1305 below.
    let (initiator, msg1) = Initiator::start(
        HandshakeConfig::new(alice.clone(), bob.verifying_key(), label.clone()).with_aes(false),
        &mut OsRng,
    );
    let (responder, msg2) = Responder::accept(
        HandshakeConfig::new(bob.clone(), alice.verifying_key(), label).with_aes(false),
        &msg1,
        &mut OsRng,
    )
    .unwrap();
    let (a, msg3) = initiator.finish(&msg2).unwrap();
    let b = responder.finish(&msg3).unwrap();
    (a, b)
}

fn bench_handshake() {
    let alice = SigningKey::generate(&mut OsRng);
    let bob = SigningKey::generate(&mut OsRng);
    let full = per_op(50, || {
        black_box(handshake(&alice, &bob));
    });

    let keygen = per_op(200, || {
        black_box(MlKem768::generate(&mut OsRng));
    });
    let (dk, ek) = MlKem768::generate(&mut OsRng);
    let encaps = per_op(200, || {
        black_box(ek.encapsulate(&mut OsRng).unwrap());
    });
    let (ct, _) = ek.encapsulate(&mut OsRng).unwrap();
    let decaps = per_op(200, || {
        black_box(dk.decapsulate(&ct).unwrap());
    });
    let kem = keygen + encaps + decaps;
    println!("handshake (both sides, in memory): {:>8.1} us", us(full));
    println!(
        "  ML-KEM-768 keygen {:.1} us + encaps {:.1} us + decaps {:.1} us = {:.1} us ({:.0}% of handshake)",
        us(keygen),
        us(encaps),
        us(decaps),
        us(kem),
        100.0 * kem.as_secs_f64() / full.as_secs_f64()
    );
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn mib_per_s(bytes: usize, per_op: Duration) -> f64 {
    bytes as f64 / per_op.as_secs_f64() / (1024.0 * 1024.0)
}

/// Seal + open of one frame vs. encrypt + decrypt in place with the bare AEAD. The three
/// variants alternate inside every run, so load from other processes hits them alike,
/// and the ratio is taken per run before the median.
fn bench_throughput(size: usize, iters: u32) {
    let payload = vec![0x5a_u8; size];
    let aead = ChaCha20Poly1305::new(&[7u8; 32].into());
    let nonce = Nonce::default();
    let mut buf = payload.clone();
    let mut raw = || {
        time(iters, || {
            let tag = aead
                .encrypt_in_place_detached(&nonce, b"", &mut buf)
                .unwrap();
            aead.decrypt_in_place_detached(&nonce, b"", &mut buf, &tag)
                .unwrap();
            black_box(&buf);
        })
    };

    let (mut a, mut b) = pair();
    let now = Instant::now();
    let mut frame = Vec::with_capacity(size + 64);
    let mut framed = || {
        time(iters, || {
            frame.clear();
            a.seal(&payload, now, &mut frame).unwrap();
            black_box(b.open(&mut frame).unwrap());
        })
    };

    let (mut c, mut d) = pair();
    let mut in_place = [vec![0u8; HEADER_LEN], payload.clone()].concat();
    in_place.reserve(64);
    let mut zero_copy = || {
        time(iters, || {
            // After `open` the buffer holds header room + plaintext + tag: drop the tag
            // and it is ready to be sealed again, as an application writing in place.
            in_place.truncate(HEADER_LEN + size);
            c.seal_in_place(&mut in_place, 0, now).unwrap();
            black_box(d.open(&mut in_place).unwrap());
        })
    };

    let mut samples = Vec::new();
    for run in 0..=RUNS {
        // Rotate the order so none of the three always runs first after a pause.
        let (r, f, z) = match run % 3 {
            0 => (raw(), framed(), zero_copy()),
            1 => {
                let f = framed();
                let z = zero_copy();
                (raw(), f, z)
            }
            _ => {
                let z = zero_copy();
                let r = raw();
                (r, framed(), z)
            }
        };
        samples.push((r, f, z));
    }
    samples.remove(0); // warm-up
    let med = |pick: &dyn Fn(&(Duration, Duration, Duration)) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(pick).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let per = |secs: f64| Duration::from_secs_f64(secs / f64::from(iters));
    let raw_t = per(med(&|s| s.0.as_secs_f64()));
    let framed_t = per(med(&|s| s.1.as_secs_f64()));
    let in_place_t = per(med(&|s| s.2.as_secs_f64()));
    let framed_ratio = med(&|s| s.1.as_secs_f64() / s.0.as_secs_f64());
    let in_place_ratio = med(&|s| s.2.as_secs_f64() / s.0.as_secs_f64());
    println!(
        "{size:>6} B  raw AEAD {:>7.1} MiB/s ({:>6.2} us)",
        mib_per_s(size, raw_t),
        us(raw_t)
    );
    println!(
        "          seal+open  {:>7.1} MiB/s ({:>6.2} us)  time ratio to raw {:.3} ({:+.1}%)",
        mib_per_s(size, framed_t),
        us(framed_t),
        framed_ratio,
        100.0 * (framed_ratio - 1.0)
    );
    println!(
        "          seal_in_place+open {:>7.1} MiB/s ({:>6.2} us)  time ratio to raw {:.3} ({:+.1}%)",
        mib_per_s(size, in_place_t),
        us(in_place_t),
        in_place_ratio,
        100.0 * (in_place_ratio - 1.0)
    );
}

fn time(iters: u32, mut op: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        op();
    }
    start.elapsed()
}

fn main() {
    // `cargo test --all-targets` runs benches once without `--bench`; skip the timing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    bench_handshake();
    println!("seal+open per frame (one core), median of {RUNS} runs:");
    bench_throughput(1400, 20_000);
    bench_throughput(64 * 1024, 1_000);
}

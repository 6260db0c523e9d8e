//! Hashing and verification throughput of the files core, beside plain `blake3::hash` on
//! the same buffer in the same run (the baseline: what BLAKE3 costs with no tree kept).
//!
//! - outboard (slices): `OutboardBuilder` fed 64 KiB groups straight from the buffer;
//! - outboard (reader): `compute_outboard` over `io::Read`, copying each group into its
//!   buffer as a file read would;
//! - outboard (at): `compute_outboard_at` on every CPU, reading groups at offsets as a
//!   file's offer or share does;
//! - proofs: reading every group's proof from the in-memory outboard;
//! - verify: `verify_group` of every group with its proof (what a receiver does).
//!
//! All on one thread but "at" (blake3 without rayon), best and median of `--reps` runs.
//! Run: `cargo bench -p p2pnode-files --bench files_hashing [-- --mib 256 --reps 5]`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use p2pnode_files::{
    GROUP_SIZE, OutboardBuilder, compute_outboard, compute_outboard_at, group_count, group_range,
    outboard_size, proof, verify_group,
};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

/// Best and median of `reps` timed runs.
fn time(reps: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut runs: Vec<Duration> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    runs.sort();
    (runs[0], runs[runs.len() / 2])
}

fn report(name: &str, bytes: u64, (best, median): (Duration, Duration), baseline: Duration) {
    let gbs = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
    println!(
        "{name:<22} best {:>6.2} GB/s  median {:>6.2} GB/s  ({:>5.1} % of blake3::hash)",
        gbs(best),
        gbs(median),
        100.0 * baseline.as_secs_f64() / best.as_secs_f64()
    );
}

fn main() {
    let mib = arg("--mib", 256);
    let reps = arg("--reps", 5).max(1);
    let size = (mib as u64) << 20;
    // Pseudo-random content (xorshift), so nothing is special about it.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let groups = group_count(size);
    println!(
        "files_hashing: {mib} MiB, {groups} groups of {} KiB, outboard {} KiB, {reps} runs",
        GROUP_SIZE / 1024,
        outboard_size(size) / 1024
    );

    let base = time(reps, || {
        black_box(blake3::hash(black_box(&data)));
    });
    report("blake3::hash (base)", size, base, base.0);

    let mut outboard = Vec::with_capacity(outboard_size(size) as usize);
    let slices = time(reps, || {
        outboard.clear();
        let mut b = OutboardBuilder::new(size);
        while let Some(r) = b.next_group() {
            b.push(&data[r.start as usize..r.end as usize], &mut outboard)
                .unwrap();
        }
        black_box(b.finish().unwrap());
    });
    report("outboard (slices)", size, slices, base.0);

    let mut outboard2 = Vec::with_capacity(outboard_size(size) as usize);
    let mut root = None;
    let reader = time(reps, || {
        outboard2.clear();
        root = Some(compute_outboard(&data[..], size, &mut outboard2).unwrap());
    });
    report("outboard (reader)", size, reader, base.0);
    let root = root.unwrap();
    assert_eq!(root.as_bytes(), blake3::hash(&data).as_bytes());
    assert_eq!(outboard, outboard2);

    // What a file's offer or share runs: read at offsets, on every CPU.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut outboard3 = Vec::with_capacity(outboard_size(size) as usize);
    let at = time(reps, || {
        outboard3.clear();
        black_box(compute_outboard_at(&data[..], size, threads, &mut outboard3).unwrap());
    });
    report(&format!("outboard (at, {threads} thr)"), size, at, base.0);
    assert_eq!(outboard, outboard3);

    let mut proofs = Vec::with_capacity(groups as usize);
    let (pbest, _) = time(1, || {
        proofs = (0..groups)
            .map(|g| proof(&outboard, size, g).unwrap())
            .collect();
    });
    let proof_bytes: usize = proofs.iter().map(|p| p.nodes().len() * 32).sum();
    println!(
        "{:<22} {:>6.2} µs per group, {} bytes of proof ({:.2} % of the content)",
        "proofs (from memory)",
        pbest.as_secs_f64() * 1e6 / groups as f64,
        proof_bytes,
        100.0 * proof_bytes as f64 / size as f64
    );

    let verify = time(reps, || {
        for (g, p) in proofs.iter().enumerate() {
            let r = group_range(size, g as u64).unwrap();
            verify_group(
                &root,
                size,
                g as u64,
                &data[r.start as usize..r.end as usize],
                p,
            )
            .unwrap();
        }
    });
    report("verify every group", size, verify, base.0);
}

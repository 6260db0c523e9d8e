use super::*;

/// Deterministic, incompressible-looking test content.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn build(data: &[u8]) -> (ContentId, Vec<u8>) {
    let mut outboard = Vec::new();
    let id = compute_outboard(data, data.len() as u64, &mut outboard).unwrap();
    (id, outboard)
}

fn group_of(data: &[u8], group: u64) -> &[u8] {
    let r = group_range(data.len() as u64, group).unwrap();
    &data[r.start as usize..r.end as usize]
}

const G: usize = GROUP_SIZE as usize;
const SIZES: &[usize] = &[
    0,
    1,
    1023,
    1024,
    1025,
    G - 1,
    G,
    G + 1,
    2 * G - 1,
    2 * G,
    2 * G + 1,
    3 * G,
    3 * G + 7,
    4 * G,
    5 * G + 1024,
    7 * G + 1,
    8 * G,
    9 * G - 1,
    13 * G + 513,
];

#[test]
fn root_is_blake3_and_outboard_has_expected_size() {
    for &len in SIZES {
        let data = content(len, len as u64);
        let (id, outboard) = build(&data);
        assert_eq!(id.as_bytes(), blake3::hash(&data).as_bytes(), "len {len}");
        assert_eq!(
            outboard.len() as u64,
            outboard_size(len as u64),
            "len {len}"
        );
    }
}

#[test]
fn every_group_verifies_with_its_proof() {
    for &len in SIZES {
        let data = content(len, 7 + len as u64);
        let (id, outboard) = build(&data);
        let size = len as u64;
        for g in 0..group_count(size) {
            let p = proof(&outboard, size, g).unwrap();
            let p = Proof::from_bytes(&p.to_bytes()).unwrap();
            verify_group(&id, size, g, group_of(&data, g), &p)
                .unwrap_or_else(|e| panic!("len {len} group {g}: {e}"));
        }
    }
}

#[test]
fn empty_content_is_one_empty_group() {
    let (id, outboard) = build(&[]);
    assert_eq!(group_count(0), 1);
    assert!(outboard.is_empty());
    assert_eq!(id.as_bytes(), blake3::hash(b"").as_bytes());
    verify_group(&id, 0, 0, &[], &Proof::default()).unwrap();
    assert!(matches!(
        verify_group(&id, 0, 0, b"x", &Proof::default()),
        Err(VerifyError::WrongLength { .. })
    ));
}

#[test]
fn a_flipped_byte_anywhere_fails() {
    let len = 5 * G + 333;
    let data = content(len, 1);
    let (id, outboard) = build(&data);
    let size = len as u64;
    // Every 997th byte, first and last byte of every group.
    let mut positions: Vec<usize> = (0..len).step_by(997).collect();
    for g in 0..group_count(size) {
        let r = group_range(size, g).unwrap();
        positions.extend([r.start as usize, r.end as usize - 1]);
    }
    for pos in positions {
        let g = pos as u64 / GROUP_SIZE;
        let mut bad = group_of(&data, g).to_vec();
        bad[pos % G] ^= 0x01;
        let p = proof(&outboard, size, g).unwrap();
        assert!(
            matches!(
                verify_group(&id, size, g, &bad, &p),
                Err(VerifyError::Mismatch { .. })
            ),
            "flip at {pos} passed"
        );
    }
}

#[test]
fn a_flipped_proof_bit_fails() {
    let len = 6 * G;
    let data = content(len, 2);
    let (id, outboard) = build(&data);
    let size = len as u64;
    for g in 0..group_count(size) {
        let p = proof(&outboard, size, g).unwrap();
        for i in 0..p.to_bytes().len() {
            let mut bytes = p.to_bytes();
            bytes[i] ^= 0x80;
            let bad = Proof::from_bytes(&bytes).unwrap();
            assert!(verify_group(&id, size, g, group_of(&data, g), &bad).is_err());
        }
    }
}

#[test]
fn a_wrong_offset_fails() {
    // Full groups, so the lengths agree and only the position can give it away.
    let len = 8 * G;
    let data = content(len, 3);
    let (id, outboard) = build(&data);
    let size = len as u64;
    for g in 0..8u64 {
        for other in (0..8u64).filter(|&o| o != g) {
            // Group g's bytes claimed to be group `other`, with either proof.
            for p in [proof(&outboard, size, g), proof(&outboard, size, other)] {
                let p = p.unwrap();
                assert!(verify_group(&id, size, other, group_of(&data, g), &p).is_err());
            }
        }
    }
    // The same bytes hashed at offset 0 and at their real offset differ even when the
    // content repeats (BLAKE3's chunk counter).
    let twice = [content(G, 9), content(G, 9)].concat();
    let (id, outboard) = build(&twice);
    let p0 = proof(&outboard, 2 * GROUP_SIZE, 0).unwrap();
    assert!(verify_group(&id, 2 * GROUP_SIZE, 1, &twice[..G], &p0).is_err());
}

#[test]
fn a_truncated_last_chunk_fails() {
    let len = 3 * G + 2000;
    let data = content(len, 4);
    let (id, outboard) = build(&data);
    let size = len as u64;
    let last = group_count(size) - 1;
    let p = proof(&outboard, size, last).unwrap();
    let full = group_of(&data, last);
    assert!(matches!(
        verify_group(&id, size, last, &full[..full.len() - 1], &p),
        Err(VerifyError::WrongLength { .. })
    ));
    // A sender that also lies about the size (one byte shorter) is caught too.
    assert!(verify_group(&id, size - 1, last, &full[..full.len() - 1], &p).is_err());
    // A short file where a full group is expected.
    let p0 = proof(&outboard, size, 0).unwrap();
    assert!(verify_group(&id, size, 0, &group_of(&data, 0)[..G - 1], &p0).is_err());
}

#[test]
fn a_wrong_size_claim_fails_on_the_last_group() {
    let len = 4 * G + 10;
    let data = content(len, 5);
    let (id, _) = build(&data);
    // A provider claims the content is 4 full groups and serves the true prefix with
    // a self-made outboard: the last group cannot be proven.
    let (_, fake_outboard) = build(&data[..4 * G]);
    let p = proof(&fake_outboard, 4 * GROUP_SIZE, 3).unwrap();
    assert!(verify_group(&id, 4 * GROUP_SIZE, 3, group_of(&data, 3), &p).is_err());
}

#[test]
fn proof_depth_and_range_are_checked() {
    let len = 4 * G;
    let data = content(len, 6);
    let (id, outboard) = build(&data);
    let size = len as u64;
    let p = proof(&outboard, size, 1).unwrap();
    let mut short = p.to_bytes();
    short.truncate(short.len() - NODE_SIZE);
    let short = Proof::from_bytes(&short).unwrap();
    assert!(matches!(
        verify_group(&id, size, 1, group_of(&data, 1), &short),
        Err(VerifyError::WrongProofLength { .. })
    ));
    assert!(matches!(
        verify_group(&id, size, 4, &[], &p),
        Err(VerifyError::NoSuchGroup { .. })
    ));
    assert!(matches!(
        proof(&outboard, size, 4),
        Err(ProofError::NoSuchGroup { .. })
    ));
    assert!(Proof::from_bytes(&[0u8; 33]).is_err());
    assert!(Proof::from_bytes(&vec![0u8; NODE_SIZE * (MAX_PROOF_NODES + 1)]).is_err());
}

#[test]
fn streams_content_it_never_holds() {
    // 48 MiB from a reader that has no buffer behind it: the builder holds one group.
    use std::io::Read as _;
    let size = 48 << 20;
    let mut outboard = Vec::new();
    let id = compute_outboard(io::repeat(0xa5).take(size), size, &mut outboard).unwrap();
    let mut reference = blake3::Hasher::new();
    reference
        .update_reader(io::repeat(0xa5).take(size))
        .unwrap();
    assert_eq!(id.as_bytes(), reference.finalize().as_bytes());
    assert_eq!(outboard.len() as u64, outboard_size(size));
}

#[test]
fn streaming_refuses_content_that_changed_size() {
    let data = content(2 * G + 5, 8);
    let mut sink = Vec::new();
    assert!(matches!(
        compute_outboard(&data[..], data.len() as u64 + 1, &mut sink),
        Err(OutboardError::TooShort { .. })
    ));
    assert!(matches!(
        compute_outboard(&data[..], data.len() as u64 - 1, &mut sink),
        Err(OutboardError::TooLong { .. })
    ));
    let mut b = OutboardBuilder::new(data.len() as u64);
    b.push(&data[..G], &mut sink).unwrap();
    assert!(matches!(
        b.push(&data[..10], &mut sink),
        Err(OutboardError::WrongGroupLength { .. })
    ));
    assert!(matches!(b.finish(), Err(OutboardError::Incomplete { .. })));
}

#[test]
fn hashing_at_offsets_on_threads_gives_the_streamed_outboard() {
    // Sizes with one part, two parts of one stretch, and several stretches (70 groups
    // each, the last shorter), each with a partial last group; 1 to 3 threads.
    for (size, stretch) in [
        (3 * G + 1, 1024),
        (64 * G + 5, 1024),
        (65 * G, 1024),
        (200 * G + 7, 70),
        (140 * G, 70),
    ] {
        let data = content(size, size as u64);
        let (id, outboard) = build(&data);
        for threads in 1..=3 {
            let mut got = Vec::new();
            let got_id = outboard_at(&data[..], size as u64, threads, stretch, &mut got).unwrap();
            assert_eq!(got_id, id, "size {size}, {threads} threads");
            assert!(
                got == outboard,
                "size {size}, {threads} threads: outboards differ"
            );
        }
    }
    // One group, and empty content, through the public entry.
    for size in [0, 1, G] {
        let data = content(size, 3);
        let mut got = Vec::new();
        let got_id = compute_outboard_at(&data[..], size as u64, 2, &mut got).unwrap();
        assert_eq!(got_id, build(&data).0);
        assert!(got.is_empty());
    }
}

#[test]
fn hashing_at_offsets_refuses_content_that_changed_size() {
    for size in [10, 2 * G + 5, 70 * G + 3] {
        let data = content(size, 9);
        let mut sink = Vec::new();
        let longer = size as u64 + 1;
        assert!(matches!(
            compute_outboard_at(&data[..], longer, 2, &mut sink),
            Err(OutboardError::TooShort { .. })
        ));
        assert!(matches!(
            compute_outboard_at(&data[..], size as u64 - 1, 2, &mut sink),
            Err(OutboardError::TooLong { .. })
        ));
    }
}

#[test]
fn outboard_is_bao_trees_post_order_outboard() {
    // n0's bao-tree as an independent reference for the tree's shape and the order of
    // the parent pairs (its post-order outboard at 2^6-chunk blocks).
    use bao_tree::BlockSize;
    use bao_tree::io::outboard::PostOrderMemOutboard;
    for &len in SIZES {
        let data = content(len, 11 + len as u64);
        let (id, outboard) = build(&data);
        let reference =
            PostOrderMemOutboard::create(&data, BlockSize::from_chunk_log(GROUP_CHUNKS_LOG as u8));
        assert_eq!(id.as_bytes(), reference.root.as_bytes(), "len {len}");
        assert_eq!(outboard, reference.data, "len {len}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn any_size_verifies_and_any_flip_fails(
        len in 0usize..(12 * G),
        pick in 0usize..usize::MAX,
        bit in 0u8..8,
    ) {
        let data = content(len, len as u64 ^ 0x55);
        let (id, outboard) = build(&data);
        let size = len as u64;
        let reference = blake3::hash(&data);
        proptest::prop_assert_eq!(id.as_bytes(), reference.as_bytes());
        for g in 0..group_count(size) {
            let p = proof(&outboard, size, g).unwrap();
            proptest::prop_assert!(verify_group(&id, size, g, group_of(&data, g), &p).is_ok());
        }
        if len > 0 {
            let pos = pick % len;
            let g = pos as u64 / GROUP_SIZE;
            let mut bad = group_of(&data, g).to_vec();
            bad[pos % G] ^= 1 << bit;
            let p = proof(&outboard, size, g).unwrap();
            proptest::prop_assert!(verify_group(&id, size, g, &bad, &p).is_err());
        }
    }
}

#[test]
fn a_receiver_builds_the_outboard_from_what_it_verified() {
    let len = 11 * G + 100;
    let data = content(len, 12);
    let (id, outboard) = build(&data);
    let size = len as u64;
    let mut partial = vec![0u8; outboard_size(size) as usize];
    // Groups arrive out of order; after each, the receiver can prove what it has.
    let order = [7u64, 0, 11, 3, 4, 10, 1, 2, 9, 5, 8, 6];
    // A provider serving while it fetches keeps one reader as its outboard grows.
    let mut served = ProofReader::new(size);
    for (n, &g) in order.iter().enumerate() {
        let p = proof(&outboard, size, g).unwrap();
        let verified = verify_group(&id, size, g, group_of(&data, g), &p).unwrap();
        for (offset, pair) in verified.outboard_entries() {
            partial[offset as usize..offset as usize + 64].copy_from_slice(pair);
        }
        for &have in &order[..=n] {
            let from_partial = proof(&partial, size, have).unwrap();
            verify_group(&id, size, have, group_of(&data, have), &from_partial).unwrap();
            assert_eq!(served.proof(&partial, have).unwrap(), from_partial);
        }
    }
    assert_eq!(partial, outboard, "all groups: the whole outboard");
}

#[test]
fn path_indices_cover_the_outboard_once() {
    // Every parent index appears on some path, each is in range, and the root is last.
    for groups in 2..200u64 {
        let mut seen = vec![false; groups as usize - 1];
        for g in 0..groups {
            let steps = path(groups, g);
            assert_eq!(steps[0].parent, groups - 2);
            for s in steps {
                seen[s.parent as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s), "groups {groups}");
    }
}

/// An outboard that counts its reads.
struct Counted<'a> {
    bytes: &'a [u8],
    reads: std::cell::Cell<usize>,
}

impl ReadAt for Counted<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.reads.set(self.reads.get() + 1);
        self.bytes.read_exact_at(buf, offset)
    }
}

#[test]
fn a_proof_reader_gives_the_same_proofs_reading_each_parent_once_in_order() {
    // The reader only reads, so any bytes of the right length stand in for an outboard.
    for groups in [2u64, 3, 64, 100, 1000, 4097] {
        let size = groups * GROUP_SIZE - 3;
        let bytes = content(outboard_size(size) as usize, groups);
        let outboard = Counted {
            bytes: &bytes,
            reads: std::cell::Cell::new(0),
        };
        let mut reader = ProofReader::new(size);
        for g in 0..groups {
            let p = reader.proof(&outboard, g).unwrap();
            assert_eq!(
                p,
                proof(&bytes, size, g).unwrap(),
                "{groups} groups, group {g}"
            );
        }
        // Each parent is read once (a tree of n groups has n - 1), where `proof()` reads
        // one per level of every group's path.
        assert_eq!(outboard.reads.get() as u64, groups - 1, "{groups} groups");

        // Out of order (a stride through the groups, then back to the start) the proofs
        // are still the same.
        let mut g = 0;
        for _ in 0..groups {
            g = (g + 37) % groups;
            assert_eq!(
                reader.proof(&outboard, g).unwrap(),
                proof(&bytes, size, g).unwrap()
            );
        }
    }
}

#[test]
fn a_proof_reader_recovers_from_a_failed_read() {
    // Eight groups: parents 0 to 2 under groups 0 to 3, 3 to 5 under 4 to 7, the root 6.
    let size = 8 * GROUP_SIZE;
    let whole = content(outboard_size(size) as usize, 9);
    let short = &whole[..3 * 64];
    let mut reader = ProofReader::new(size);
    assert_eq!(
        reader.proof(&whole[..], 2).unwrap(),
        proof(&whole, size, 2).unwrap()
    );
    // Group 7 shares only the root with group 2, and its other parents are cut off.
    assert!(matches!(reader.proof(short, 7), Err(ProofError::Io(_))));
    for g in [7, 0, 5, 2] {
        assert_eq!(
            reader.proof(&whole[..], g).unwrap(),
            proof(&whole, size, g).unwrap()
        );
    }
    assert!(matches!(
        reader.proof(&whole[..], 8),
        Err(ProofError::NoSuchGroup {
            group: 8,
            groups: 8
        })
    ));
}

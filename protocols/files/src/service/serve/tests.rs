//! The served stream's spare buffers.

use super::*;

/// A group is read into a spare buffer whatever its size: one larger is cut to the
/// group (none of its old bytes left), one smaller grows.
#[test]
fn a_group_read_into_a_spare_buffer_is_exactly_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small");
    let content: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let mut opened = Opened {
        data: std::fs::File::open(&path).unwrap(),
        outboard: None,
    };
    for spare in [
        Vec::new(),
        vec![0xAA; 10],
        vec![0xAA; crate::GROUP_SIZE as usize],
    ] {
        let (data, proof) = read_group(&mut opened, 1000, 0, spare).unwrap();
        assert_eq!(data, content);
        assert!(proof.is_empty(), "a one-group file has no proof");
    }
}

/// A reader keeps at most MAX_SPARE buffers, however many groups were sent.
#[test]
fn a_reader_keeps_a_bounded_number_of_spare_buffers() {
    let mut reader = Reader {
        content: ContentId::of(b"x"),
        file: None,
        spare: Vec::new(),
    };
    let mut spent: Vec<Vec<u8>> = (0..3 * MAX_SPARE).map(|_| vec![0; 16]).collect();
    reader.give(&mut spent);
    assert_eq!(reader.spare.len(), MAX_SPARE);
    assert!(spent.is_empty());
    let mut more = vec![vec![0; 16]];
    reader.give(&mut more);
    assert_eq!(reader.spare.len(), MAX_SPARE);
}

#![allow(clippy::unwrap_used)]

use super::*;
use futures::io::Cursor;

/// Bytes written at t=0 are in the inner stream at t=latency, not before, and flush
/// waits for them; under a paused clock that costs no wall time.
#[tokio::test(start_paused = true)]
async fn writes_arrive_after_the_latency() {
    let counters = Arc::new(NodeCounters::default());
    let latency = Duration::from_millis(80);
    let mut io = DelayedIo::new(Cursor::new(Vec::new()), latency, 1 << 16, counters.clone());
    let start = Instant::now();
    io.write_all(b"hello").await.unwrap();
    assert!(io.inner.get_ref().is_empty(), "delivered too early");
    io.flush().await.unwrap();
    // The timer wheel has millisecond ticks.
    let took = start.elapsed();
    assert!(
        took >= latency && took <= latency + Duration::from_millis(2),
        "{took:?}"
    );
    assert_eq!(io.inner.get_ref(), b"hello");
    assert_eq!(counters.bytes_out.load(Ordering::Relaxed), 5);
}

#[test]
fn find_node_requests_are_read() {
    // multistream header, proposal, then a FIND_NODE for a 4-byte key.
    let mut wire = b"\x13/multistream/1.0.0\n\x10/ipfs/kad/1.0.0\n".to_vec();
    wire.extend_from_slice(&[10, 0x08, 0x04, 0x12, 4, 1, 2, 3, 4, 0x50, 0]);
    let start = wire.len() - 11;
    assert_eq!(
        parse_request(&wire[start..]),
        Some(Some((FIND_NODE, &[1u8, 2, 3, 4][..])))
    );
    assert_eq!(parse_request(&wire[start..start + 6]), Some(None));

    // Through a counting stream, fed a few bytes at a time.
    let counters = Arc::new(NodeCounters::default());
    counters.watch(&[1, 2, 3, 4]);
    let mut s = Sniffed {
        inner: SubstreamBox::new(Cursor::new(Vec::new())),
        outbound: true,
        seen: Some(Vec::new()),
        counted: false,
        counters: counters.clone(),
    };
    for chunk in wire.chunks(5) {
        s.sniff(chunk);
    }
    assert_eq!(counters.kad_out.load(Ordering::Relaxed), 1);
    assert_eq!(counters.unwatch(&[1, 2, 3, 4]), 1);
    assert_eq!(counters.unwatch(&[1, 2, 3, 4]), 0);
}

#[test]
fn the_sniffed_name_is_the_nodes_kademlia_protocol() {
    assert_eq!(
        KAD_NAME,
        p2pnode_node::behaviour::KAD_PROTOCOL.as_ref().as_bytes()
    );
}

/// A writer faster than the link fills the queue and then waits, and every byte comes
/// out in order.
#[tokio::test(start_paused = true)]
async fn a_full_queue_makes_the_writer_wait() {
    let counters = Arc::new(NodeCounters::default());
    let mut io = DelayedIo::new(
        Cursor::new(Vec::new()),
        Duration::from_millis(10),
        100,
        counters,
    );
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    for chunk in data.chunks(70) {
        io.write_all(chunk).await.unwrap();
        assert!(io.queued <= 100);
        tokio::time::advance(Duration::from_millis(3)).await;
    }
    io.flush().await.unwrap();
    assert_eq!(io.inner.get_ref(), &data);
}

//! The stream tasks: one reader and one writer per live stream, each talking to the
//! owner over bounded channels.

use super::*;

/// Reads sealed frames, opens them and hands the chat frames to the owner. Ends (and
/// reports) on the first error: a secure stream that fails once is not trusted again.
pub(super) async fn read_frames(
    peer: PeerId,
    link: u64,
    mut io: futures::io::ReadHalf<libp2p::Stream>,
    session: Arc<Mutex<Session>>,
    max: usize,
    tx: mpsc::Sender<Inbound>,
) {
    let reason = loop {
        let mut sealed = match read_length_prefixed(&mut io, max).await {
            Ok(b) => b,
            Err(e) => break e.to_string(),
        };
        let payload = {
            let Ok(mut s) = session.lock() else {
                break "session lock poisoned".to_string();
            };
            match s.open(&mut sealed) {
                Ok(p) => p.to_vec(),
                Err(e) => break format!("bad secure frame: {e}"),
            }
        };
        let frame = match Frame::decode(&payload) {
            Ok(f) => f,
            Err(e) => break format!("protocol violation: {e}"),
        };
        // Waiting here is the backpressure on a peer that sends faster than we store.
        if tx.send(Inbound::Frame { peer, link, frame }).await.is_err() {
            return;
        }
    };
    let _ = tx.send(Inbound::Closed { peer, link, reason }).await;
}

/// Seals and writes the owner's frames; coalesces whatever is queued into one flush.
pub(super) async fn write_frames(
    peer: PeerId,
    link: u64,
    mut io: futures::io::WriteHalf<libp2p::Stream>,
    session: Arc<Mutex<Session>>,
    mut rx: mpsc::Receiver<Frame>,
    tx: mpsc::Sender<Inbound>,
) {
    let mut buf = Vec::new();
    let reason = 'outer: loop {
        let Some(first) = rx.recv().await else {
            // Replaced or dropped by the owner: close our side politely.
            let _ = io.close().await;
            return;
        };
        buf.clear();
        let mut next = Some(first);
        let mut count = 0;
        while let Some(frame) = next {
            let payload = frame.encode();
            let start = buf.len();
            buf.extend_from_slice(&[0; LENGTH_PREFIX_LEN]);
            {
                let Ok(mut s) = session.lock() else {
                    break 'outer "session lock poisoned".to_string();
                };
                if let Err(e) = s.seal(&payload, Instant::now(), &mut buf) {
                    break 'outer format!("cannot seal: {e}");
                }
            }
            let len = u32::try_from(buf.len() - start - LENGTH_PREFIX_LEN).unwrap_or(u32::MAX);
            buf[start..start + LENGTH_PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
            count += 1;
            next = if count < 256 && buf.len() < 1 << 20 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if let Err(e) = io.write_all(&buf).await {
            break e.to_string();
        }
        if let Err(e) = io.flush().await {
            break e.to_string();
        }
    };
    let _ = tx.send(Inbound::Closed { peer, link, reason }).await;
}

//! The stream tasks: one reader and one writer per live stream, talking to the owner over
//! bounded channels. Frames travel in chunks, one secure message each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::AsyncWriteExt;
use libp2p::PeerId;
use p2pnode_secure::Session;
use p2pnode_secure::stream::{LENGTH_PREFIX_LEN, read_length_prefixed};
use tokio::sync::{Semaphore, mpsc};

use super::Inbound;
use crate::wire::{Assembler, CHUNK_LEN};

/// Reads chunks, opens them, reassembles frames and hands them to the owner. Ends (and
/// reports) on the first error: a stream that fails once is not trusted again.
pub(super) async fn read_frames(
    peer: PeerId,
    link: u64,
    mut io: futures::io::ReadHalf<libp2p::Stream>,
    session: Arc<Mutex<Session>>,
    budget: Arc<Semaphore>,
    tx: mpsc::Sender<Inbound>,
) {
    let max = match session.lock() {
        Ok(s) => s.config().max_frame_len(),
        Err(_) => return,
    };
    let mut asm = Assembler::default();
    let reason = loop {
        let mut sealed = match read_length_prefixed(&mut io, max).await {
            Ok(b) => b,
            Err(e) => break e.to_string(),
        };
        let pushed = {
            let Ok(mut s) = session.lock() else {
                break "session lock poisoned".to_string();
            };
            match s.open(&mut sealed) {
                Ok(chunk) => asm.push(chunk),
                Err(e) => break format!("bad secure frame: {e}"),
            }
        };
        match pushed {
            Ok(None) => {}
            // Waiting here is the backpressure on a peer that sends faster than we store.
            Ok(Some(frame)) => {
                // The peer's share of the bytes waiting for the owner, given back when the
                // owner has applied the frame: one peer cannot fill the shared queue.
                let len = u32::try_from(frame.message.len()).unwrap_or(u32::MAX);
                let Ok(permit) = budget.clone().acquire_many_owned(len).await else {
                    return;
                };
                let inbound = Inbound::Frame {
                    peer,
                    link,
                    frame,
                    _permit: permit,
                };
                if tx.send(inbound).await.is_err() {
                    return;
                }
            }
            Err(e) => break format!("protocol violation: {e}"),
        }
    };
    let _ = tx.send(Inbound::Closed { peer, link, reason }).await;
}

/// Seals and writes the owner's encoded frames in chunks, then flushes.
pub(super) async fn write_frames(
    peer: PeerId,
    link: u64,
    mut io: futures::io::WriteHalf<libp2p::Stream>,
    session: Arc<Mutex<Session>>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    queued: Arc<AtomicU64>,
    tx: mpsc::Sender<Inbound>,
) {
    let mut buf = Vec::new();
    let reason = 'outer: loop {
        let Some(frame) = rx.recv().await else {
            // The sender is gone but this task was not aborted yet (a dropped link aborts
            // it, see `Link`'s `Drop`): close our side politely.
            let _ = io.close().await;
            return;
        };
        for chunk in frame.chunks(CHUNK_LEN) {
            buf.clear();
            buf.extend_from_slice(&[0; LENGTH_PREFIX_LEN]);
            {
                let Ok(mut s) = session.lock() else {
                    break 'outer "session lock poisoned".to_string();
                };
                if let Err(e) = s.seal(chunk, Instant::now(), &mut buf) {
                    break 'outer format!("cannot seal: {e}");
                }
            }
            let len = u32::try_from(buf.len() - LENGTH_PREFIX_LEN).unwrap_or(u32::MAX);
            buf[..LENGTH_PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
            if let Err(e) = io.write_all(&buf).await {
                break 'outer e.to_string();
            }
        }
        if let Err(e) = io.flush().await {
            break e.to_string();
        }
        queued.fetch_sub(frame.len() as u64, Ordering::Relaxed);
    };
    let _ = tx.send(Inbound::Closed { peer, link, reason }).await;
}

//! The provider side of `/p2pnode/files/1`: streams accepted through the secure gate,
//! each served one request at a time (so a peer has at most one group in memory per
//! stream, and at most [`MAX_STREAMS_PER_PEER`] streams), and offers taken into the inbox.
//!
//! Access: a public share is served to any peer the gate let through (not revoked, key
//! unchanged): its content id is the capability, as with iroh's tickets. Content shared
//! for an offer is served only to the peer it was offered to, and an offer is taken only
//! from a peer holding the files permission.
//!
//! Serving while fetching: content a `get` is still fetching is served from its
//! [`Partial`]: the groups verified so far (its `.part` files, proofs from its partial
//! outboard), and [`Response::NotYet`] in place of each group asked for that it does not
//! have yet; the request goes on. It costs what any share costs: the same streams, within
//! the same bounds per peer and in all.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use libp2p::{PeerId, StreamProtocol};
use p2pnode_node::secure::{Accepted, SecureListener};
use p2pnode_secure::TrustDecision;

use super::partial::Partial;
use super::share::Share;
use super::wire::{self, Blob, Refusal, Request, Response, Secure, WireError};
use super::{
    ANSWER_TIMEOUT, FilesError, IDLE_TIMEOUT, Inner, MAX_GROUPS_PER_REQUEST, MAX_OFFERS,
    MAX_OFFERS_PER_PEER, MAX_STREAMS_PER_PEER, OPEN_TIMEOUT, Offer, now_ms,
};
use crate::api::{OfferInfo, SendInfo};
use crate::{ContentId, ProofReader, check_path, group_range};

/// Takes every accepted stream and serves it in its own task, within the bounds.
pub(super) async fn accept_loop(inner: Weak<Inner>, mut listener: SecureListener) {
    while let Some(accepted) = listener.next().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let peer = accepted.peer;
        let Ok(permit) = inner.serving.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "serving at the limit; stream dropped");
            continue;
        };
        {
            let Ok(mut per) = inner.streams_per_peer.lock() else {
                continue;
            };
            let n = per.entry(peer).or_default();
            if *n >= MAX_STREAMS_PER_PEER {
                tracing::debug!(%peer, "too many streams from one peer; dropped");
                continue;
            }
            *n += 1;
        }
        let task_inner = inner.clone();
        inner.spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_stream(&task_inner, accepted).await {
                tracing::debug!(%peer, "files stream ended: {e}");
            }
            if let Ok(mut per) = task_inner.streams_per_peer.lock()
                && let Some(n) = per.get_mut(&peer)
            {
                *n -= 1;
                if *n == 0 {
                    per.remove(&peer);
                }
            }
        });
    }
}

fn refused(req: u64, refusal: Refusal, message: impl Into<String>) -> Response {
    Response::Refused {
        req,
        refusal,
        message: message.into(),
    }
}

async fn serve_stream(inner: &Arc<Inner>, accepted: Accepted) -> Result<(), WireError> {
    let Accepted {
        peer,
        mut stream,
        decision,
    } = accepted;
    // A transfer asks for a large file's groups request after request: it stays open.
    let mut reader: Option<Reader> = None;
    loop {
        let request = match wire::recv::<Request>(&mut stream, IDLE_TIMEOUT).await {
            Ok(r) => r,
            Err(WireError::Stream(p2pnode_secure::StreamError::Closed)) => return Ok(()),
            Err(e) => return Err(e),
        };
        match request {
            Request::Manifest { req, content } => match find_source(inner, &content, &peer) {
                Some(source) => {
                    let len = source.manifest().len() as u64;
                    wire::send(&mut stream, &Response::Manifest { req, len }).await?;
                    wire::send_data(&mut stream, source.manifest()).await?;
                }
                None => {
                    let msg = refused(req, Refusal::NotFound, format!("{content} is not shared"));
                    wire::send(&mut stream, &msg).await?;
                }
            },
            Request::Groups {
                req,
                content,
                groups,
            } => {
                let asked = Asked {
                    req,
                    content,
                    groups,
                };
                reader = serve_groups(inner, &mut stream, peer, asked, reader.take()).await?;
            }
            Request::Offer {
                req,
                content,
                name,
                files,
                size,
            } => {
                let answer = take_offer(inner, peer, decision, content, name, files, size);
                let msg = match answer {
                    Ok(()) => Response::OfferTaken { req },
                    Err((refusal, message)) => refused(req, refusal, message),
                };
                wire::send(&mut stream, &msg).await?;
            }
        }
    }
}

fn find_share(inner: &Inner, content: &ContentId, peer: &PeerId) -> Option<Arc<Share>> {
    let shares = inner.shares.lock().ok()?;
    shares.get(content).filter(|s| s.serves(peer)).cloned()
}

/// What a content is served from: a share, or a `get` still fetching it.
#[derive(Clone)]
enum Source {
    Full(Arc<Share>),
    Partial(Arc<Partial>),
}

impl Source {
    fn manifest(&self) -> &[u8] {
        match self {
            Source::Full(s) => &s.manifest,
            Source::Partial(p) => &p.manifest,
        }
    }

    fn entries(&self) -> &[(u64, ContentId)] {
        match self {
            Source::Full(s) => &s.entries,
            Source::Partial(p) => &p.entries,
        }
    }
}

fn find_source(inner: &Inner, content: &ContentId, peer: &PeerId) -> Option<Source> {
    if let Some(share) = find_share(inner, content, peer) {
        return Some(Source::Full(share));
    }
    if !inner.config.serve_while_fetching {
        return None;
    }
    super::partial::find_partial(inner, content).map(Source::Partial)
}

/// Bytes read from disk in one blocking call and sent before one flush (8 whole groups,
/// or many small files): fewer thread hand-offs and flushes per byte, for at most twice
/// this held per served stream (the batch being sent and the next one being read).
const READ_BYTES: u64 = 512 * 1024;

/// A request for groups, as received.
struct Asked {
    req: u64,
    content: ContentId,
    groups: Vec<(u32, u64)>,
}

/// What a served stream reads with: the file it read last, kept open (a large file is
/// asked for in many requests), which content that is from, and the buffers of groups
/// already sent, read into again.
struct Reader {
    content: ContentId,
    file: Option<(u32, Opened)>,
    spare: Vec<Vec<u8>>,
}

/// Spare buffers a reader keeps at most: two batches' worth of whole groups.
const MAX_SPARE: usize = 2 * (READ_BYTES / crate::GROUP_SIZE) as usize;

impl Reader {
    /// Takes back the buffers of groups sent, up to [`MAX_SPARE`] kept.
    fn give(&mut self, spent: &mut Vec<Vec<u8>>) {
        let room = MAX_SPARE.saturating_sub(self.spare.len());
        self.spare.extend(spent.drain(..).take(room));
    }
}

/// One group read: its file, number, bytes and proof.
type Read = (u32, u64, Vec<u8>, Vec<u8>);

/// One group's answer: read, or not verified here yet (serving while fetching).
enum Item {
    Read(Read),
    NotYet(u32, u64),
}

/// Serves one request; gives back the reader for the stream's next request, or `None`
/// when the request was refused.
async fn serve_groups(
    inner: &Arc<Inner>,
    stream: &mut Secure,
    peer: PeerId,
    asked: Asked,
    reader: Option<Reader>,
) -> Result<Option<Reader>, WireError> {
    let Asked {
        req,
        content,
        groups,
    } = asked;
    let Some(share) = find_source(inner, &content, &peer) else {
        let msg = refused(req, Refusal::NotFound, format!("{content} is not shared"));
        return wire::send(stream, &msg).await.map(|()| None);
    };
    if groups.len() > MAX_GROUPS_PER_REQUEST {
        let msg = refused(
            req,
            Refusal::Busy,
            format!("at most {MAX_GROUPS_PER_REQUEST} groups per request"),
        );
        return wire::send(stream, &msg).await.map(|()| None);
    }
    let reader = match reader {
        Some(r) if r.content == content => r,
        _ => Reader {
            content,
            file: None,
            spare: Vec::new(),
        },
    };
    let batches = read_batches(&share, groups);
    let read = |mut reader: Reader, batch: Vec<(u32, u64)>| {
        let (share, outboards) = (share.clone(), inner.outboards.clone());
        tokio::task::spawn_blocking(move || {
            let read = read_batch(&share, &outboards, &mut reader, &batch);
            (reader, read)
        })
    };
    let mut batches = batches.into_iter();
    let Some(first) = batches.next() else {
        return Ok(Some(reader));
    };
    let mut reading = Some(read(reader, first));
    let mut kept = None;
    // Buffers of groups sent, for the reader to read into again.
    let mut spent = Vec::new();
    while let Some(handle) = reading.take() {
        let (mut reader, (batch, failed)) = match handle.await {
            Ok(v) => v,
            Err(e) => {
                let msg = refused(req, Refusal::Io, e.to_string());
                return wire::send(stream, &msg).await.map(|()| None);
            }
        };
        // The next batch is read while this one is sent; none after a failure.
        reader.give(&mut spent);
        match (&failed, batches.next()) {
            (None, Some(next)) => reading = Some(read(reader, next)),
            (None, None) => kept = Some(reader),
            (Some(_), _) => {}
        }
        for item in batch {
            let (file, group, data, proof) = match item {
                Item::Read(read) => read,
                Item::NotYet(file, group) => {
                    #[cfg(test)]
                    inner.not_yet_sent.fetch_add(1, Ordering::Relaxed);
                    wire::feed(stream, &Response::NotYet { req, file, group }).await?;
                    continue;
                }
            };
            #[cfg(test)]
            let data = corrupted_if_asked(inner, data);
            let header = Response::Group {
                req,
                file,
                group,
                len: data.len() as u32,
                proof: Blob(proof),
            };
            wire::feed(stream, &header).await?;
            wire::feed_data(stream, &data).await?;
            spent.push(data);
            inner.served_groups.fetch_add(1, Ordering::Relaxed);
        }
        if let Some((refusal, message)) = failed {
            // The groups before it were sent: the refusal covers the rest of the request.
            tracing::debug!(%peer, "cannot serve a group: {message}");
            return wire::send(stream, &refused(req, refusal, message))
                .await
                .map(|()| None);
        }
        stream.flush().await?;
    }
    if let Some(reader) = kept.as_mut() {
        reader.give(&mut spent);
    }
    Ok(kept)
}

/// A test provider configured to lie serves every group with its first bit flipped.
#[cfg(test)]
fn corrupted_if_asked(inner: &Inner, mut data: Vec<u8>) -> Vec<u8> {
    if inner.config.corrupt
        && let Some(b) = data.first_mut()
    {
        *b ^= 1;
    }
    data
}

/// Splits the groups asked for into batches of about [`READ_BYTES`].
fn read_batches(share: &Source, groups: Vec<(u32, u64)>) -> Vec<Vec<(u32, u64)>> {
    let mut batches: Vec<Vec<(u32, u64)>> = Vec::new();
    let mut bytes = READ_BYTES;
    for (file, group) in groups {
        if bytes >= READ_BYTES {
            batches.push(Vec::new());
            bytes = 0;
        }
        // An unknown file or group is refused when read; here it just counts as nothing.
        let len = share
            .entries()
            .get(file as usize)
            .and_then(|&(size, _)| group_range(size, group))
            .map_or(0, |r| r.end - r.start);
        bytes += len.max(1);
        if let Some(b) = batches.last_mut() {
            b.push((file, group));
        }
    }
    batches
}

/// Reads a batch of groups (on a blocking thread), opening each file as it comes: the
/// groups read, and why the one after them could not be (the rest is not read).
fn read_batch(
    share: &Source,
    outboards: &std::path::Path,
    reader: &mut Reader,
    batch: &[(u32, u64)],
) -> (Vec<Item>, Option<(Refusal, String)>) {
    let mut out = Vec::with_capacity(batch.len());
    for &(file, group) in batch {
        if let Source::Partial(p) = share
            && !p.has(crate::GroupRef { file, group })
        {
            out.push(Item::NotYet(file, group));
            continue;
        }
        match read_one(share, outboards, reader, file, group) {
            Ok(read) => out.push(Item::Read(read)),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

fn read_one(
    share: &Source,
    outboards: &std::path::Path,
    reader: &mut Reader,
    file: u32,
    group: u64,
) -> Result<Read, (Refusal, String)> {
    let &(size, root) = share
        .entries()
        .get(file as usize)
        .ok_or((Refusal::BadRequest, "no such file".into()))?;
    if !matches!(&reader.file, Some((f, _)) if *f == file) {
        // The previous file is closed before the next is opened.
        reader.file = None;
        let no_file = || (Refusal::BadRequest, "no such file".to_string());
        let opened = match share {
            Source::Full(share) => {
                let source = share.sources.get(file as usize).ok_or_else(no_file)?;
                open_files(source, &outboards.join(root.to_string()), size)?
            }
            Source::Partial(p) => {
                let part = p.parts.get(file as usize).ok_or_else(no_file)?;
                let fin = p.finals.get(file as usize).ok_or_else(no_file)?;
                // Renamed into place once whole: an open `.part` stays readable, a
                // later open finds the file under its own name.
                match open_files(part, &p.outboard(file), size) {
                    Ok(o) => o,
                    Err(_) => open_files(fin, &p.outboard(file), size)?,
                }
            }
        };
        reader.file = Some((file, opened));
    }
    let buf = reader.spare.pop().unwrap_or_default();
    let Some((_, opened)) = &mut reader.file else {
        return Err((Refusal::Io, "no open file".into()));
    };
    let (data, proof) = read_group(opened, size, group, buf)?;
    Ok((file, group, data, proof))
}

/// A shared file and its outboard, open for reading at offsets.
struct Opened {
    data: std::fs::File,
    /// `None` for content of one group, which has no outboard.
    outboard: Option<(std::fs::File, ProofReader)>,
}

fn open_files(
    source: &std::path::Path,
    outboard: &std::path::Path,
    size: u64,
) -> Result<Opened, (Refusal, String)> {
    let io = |e: std::io::Error| (Refusal::Io, e.to_string());
    let data = std::fs::File::open(source).map_err(io)?;
    // A file changed since it was shared would serve groups that fail verification.
    if data.metadata().map_err(io)?.len() != size {
        return Err((Refusal::Io, "the shared file changed size".into()));
    }
    let outboard = if crate::group_count(size) == 1 {
        None
    } else {
        let file = std::fs::File::open(outboard).map_err(io)?;
        Some((file, ProofReader::new(size)))
    };
    Ok(Opened { data, outboard })
}

/// Reads one group at its offset into `data` (a spare buffer, or an empty one), and its
/// proof from the outboard.
fn read_group(
    f: &mut Opened,
    size: u64,
    group: u64,
    mut data: Vec<u8>,
) -> Result<(Vec<u8>, Vec<u8>), (Refusal, String)> {
    use std::os::unix::fs::FileExt;
    let range = group_range(size, group).ok_or((Refusal::BadRequest, "no such group".into()))?;
    // A spare buffer's bytes are initialised already, so a group no larger is read over
    // them without zeroing them first (3 % of a push's sender CPU went to that). A new one
    // is zeroed, not allocated with `vec![0; len]`: for a 64 KiB block jemalloc's calloc
    // zeroes a recycled extent by dropping its pages (madvise), so the read below faulted
    // every page back in and every other CPU flushed its TLB.
    let len = (range.end - range.start) as usize;
    if data.len() < len {
        data.resize(len, 0);
    } else {
        data.truncate(len);
    }
    f.data
        .read_exact_at(&mut data, range.start)
        .map_err(|e| (Refusal::Io, e.to_string()))?;
    let proof = match &mut f.outboard {
        None => Vec::new(),
        Some((ob, proofs)) => proofs
            .proof(ob, group)
            .map_err(|e| (Refusal::Io, e.to_string()))?
            .to_bytes(),
    };
    Ok((data, proof))
}

/// Takes an offer into the inbox if the peer has the files permission and there is room.
fn take_offer(
    inner: &Inner,
    peer: PeerId,
    decision: TrustDecision,
    content: ContentId,
    name: String,
    files: u64,
    size: u64,
) -> Result<(), (Refusal, String)> {
    if decision != TrustDecision::Allow {
        tracing::info!(%peer, ?decision, "refused a file offer: no files permission");
        return Err((
            Refusal::NotAllowed,
            "offers need the files permission".into(),
        ));
    }
    check_path(&name).map_err(|e| (Refusal::BadRequest, format!("bad name: {e}")))?;
    let mut offers = inner
        .offers
        .lock()
        .map_err(|_| (Refusal::Busy, "inbox unavailable".to_string()))?;
    super::expire_offers(&mut offers, now_ms());
    let from_peer = offers.values().filter(|o| o.peer == peer).count();
    if from_peer >= MAX_OFFERS_PER_PEER || offers.len() >= MAX_OFFERS {
        return Err((Refusal::Busy, "the inbox is full".into()));
    }
    let id = inner.next_id();
    let info = OfferInfo {
        id,
        peer_id: peer.to_string(),
        content_id: content.to_string(),
        name,
        files,
        size,
        received_at: now_ms(),
    };
    tracing::info!(%peer, offer = id, content = %content, files, size, "file offer received");
    inner
        .events
        .send(crate::api::FilesEvent::Offer(info.clone()));
    offers.insert(
        id,
        Offer {
            peer,
            content,
            info,
        },
    );
    Ok(())
}

/// Shares `paths` with `peer` only and offers them to it.
pub(super) async fn send_offer(
    inner: &Arc<Inner>,
    peer: PeerId,
    paths: Vec<PathBuf>,
) -> Result<SendInfo, FilesError> {
    if peer == inner.client.peer_id() {
        return Err(FilesError::Invalid("cannot send to ourselves".into()));
    }
    let info = super::share::share(inner, paths, Some(peer)).await?;
    let content: ContentId = super::parse_content(&info.content_id)?;
    let mut stream = open(inner, peer).await?;
    let req = inner.next_id();
    let offer = Request::Offer {
        req,
        content,
        name: info.name.clone(),
        files: info.files,
        size: info.size,
    };
    let wire_err = |e: WireError| FilesError::NoProvider(format!("offer to {peer}: {e}"));
    wire::send(&mut stream, &offer).await.map_err(wire_err)?;
    match wire::recv::<Response>(&mut stream, ANSWER_TIMEOUT)
        .await
        .map_err(wire_err)?
    {
        Response::OfferTaken { req: r } if r == req => Ok(SendInfo {
            peer_id: peer.to_string(),
            content_id: info.content_id,
            files: info.files,
            size: info.size,
        }),
        Response::Refused { message, .. } => Err(FilesError::Refused(format!(
            "{peer} refused the offer: {message}"
        ))),
        _ => Err(FilesError::Refused(format!(
            "{peer} answered the offer oddly"
        ))),
    }
}

/// Opens a files stream to `peer` through the secure gate.
pub(super) async fn open(inner: &Inner, peer: PeerId) -> Result<Secure, FilesError> {
    let open = inner.client.open_secure(
        peer,
        StreamProtocol::new(crate::STREAM_PROTOCOL),
        crate::PROTOCOL,
    );
    match tokio::time::timeout(OPEN_TIMEOUT, open).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(FilesError::Node(e)),
        Err(_) => Err(FilesError::NoProvider(format!(
            "{peer} did not answer within {} s",
            OPEN_TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests;

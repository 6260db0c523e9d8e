//! Test hook (feature `test-util`): a files peer that sends what it is given, unchecked,
//! so tests can show a real receiver refusing a hostile sender.
//!
//! Every check an honest sender makes (`scan`, [`Manifest::new`](crate::Manifest::new),
//! the offer's name) is skipped here: a [`RawContent`] encodes any paths into the
//! manifest's wire form, and its id is the BLAKE3 root of those bytes, as a real id is.
//! The receiver's own checks are then all that stands between such a manifest and its
//! disk. [`HostileFiles`] serves these manifests and their files (one group each, which
//! needs no proof) to anyone and offers them with any name; nothing in the `p2pnode`
//! binary uses it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use libp2p::{PeerId, StreamProtocol};
use p2pnode_node::control::{ControlReply, ControlRequest};
use p2pnode_node::secure::{Accepted, SecureListener};
use p2pnode_node::{Client, Context, Protocol, ProtocolError, ProtocolHandler};

use super::wire::{self, Blob, Refusal, Request, Response, WireError};
use super::{ANSWER_TIMEOUT, FilesError, IDLE_TIMEOUT};
use crate::manifest::MANIFEST_VERSION;
use crate::{ContentId, GROUP_SIZE};

/// Streams served at once; more are dropped (a test peer has a handful).
const MAX_STREAMS: usize = 16;

/// One file of a [`RawContent`]: any path, and the bytes behind it.
#[derive(Debug, Clone)]
pub struct RawFile {
    /// The path as sent, unchecked.
    pub path: String,
    /// The file's bytes: one group at most.
    pub data: Vec<u8>,
}

/// A manifest encoded without the sender's checks, with its files.
#[derive(Debug, Clone)]
pub struct RawContent {
    manifest: Vec<u8>,
    /// In manifest order, as `Groups` requests number them.
    files: Vec<Vec<u8>>,
    id: ContentId,
}

impl RawContent {
    /// Encodes `files` as a manifest in canonical form (sorted by path bytes, so only the
    /// paths can be what a receiver refuses). Refuses a file larger than one group.
    pub fn new(mut files: Vec<RawFile>) -> Result<Self, FilesError> {
        if let Some(big) = files.iter().find(|f| f.data.len() as u64 > GROUP_SIZE) {
            return Err(FilesError::Invalid(format!(
                "{:?}: a raw file is one group ({GROUP_SIZE} bytes) at most",
                big.path
            )));
        }
        files.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        let roots: Vec<ContentId> = files.iter().map(|f| ContentId::of(&f.data)).collect();
        // The same CBOR as `Manifest::encode`: `[version, [[path, size, root, flags]]]`.
        let entries: Vec<(&str, u64, &ContentId, u64)> = files
            .iter()
            .zip(&roots)
            .map(|(f, root)| (f.path.as_str(), f.data.len() as u64, root, 0))
            .collect();
        let mut manifest = Vec::new();
        ciborium::into_writer(&(MANIFEST_VERSION, entries), &mut manifest)
            .map_err(|e| FilesError::Invalid(e.to_string()))?;
        let id = ContentId::of(&manifest);
        Ok(Self {
            manifest,
            files: files.into_iter().map(|f| f.data).collect(),
            id,
        })
    }

    /// The content id: the BLAKE3 root of the manifest's bytes, as for any share.
    pub fn id(&self) -> ContentId {
        self.id
    }

    /// The encoded manifest.
    pub fn manifest(&self) -> &[u8] {
        &self.manifest
    }

    /// The sum of the files' sizes.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.len() as u64).sum()
    }
}

/// The hostile files protocol, registered under the real one's name and stream protocol:
/// `Node::builder(..).protocol(HostileFiles::new(contents))`.
#[derive(Debug, Clone)]
pub struct HostileFiles {
    contents: Vec<RawContent>,
}

impl HostileFiles {
    /// Serves `contents` to any peer that asks.
    pub fn new(contents: Vec<RawContent>) -> Self {
        Self { contents }
    }
}

/// What the hostile peer shares between its streams and the test.
struct Shared {
    client: Client,
    contents: Vec<RawContent>,
    manifests_served: AtomicU64,
    groups_served: AtomicU64,
}

/// The handle a test drives the hostile peer with.
#[derive(Clone)]
pub struct HostileHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HostileHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostileHandle")
    }
}

impl HostileHandle {
    /// Offers `content` to `peer` under `name`, sent as it is. `Ok` once the peer took
    /// the offer into its inbox; its refusal is [`FilesError::Refused`] with its message.
    pub async fn offer(
        &self,
        peer: PeerId,
        content: &RawContent,
        name: &str,
    ) -> Result<(), FilesError> {
        let mut stream = open_stream(&self.shared.client, peer).await?;
        let req = 1;
        let offer = Request::Offer {
            req,
            content: content.id,
            name: name.to_owned(),
            files: content.files.len() as u64,
            size: content.size(),
        };
        let wire_err = |e: WireError| FilesError::NoProvider(format!("offer to {peer}: {e}"));
        wire::send(&mut stream, &offer).await.map_err(wire_err)?;
        match wire::recv::<Response>(&mut stream, ANSWER_TIMEOUT)
            .await
            .map_err(wire_err)?
        {
            Response::OfferTaken { req: r } if r == req => Ok(()),
            Response::Refused { message, .. } => Err(FilesError::Refused(message)),
            other => Err(FilesError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    /// Manifests sent to peers so far.
    pub fn manifests_served(&self) -> u64 {
        self.shared.manifests_served.load(Ordering::Relaxed)
    }

    /// File groups sent to peers so far.
    pub fn groups_served(&self) -> u64 {
        self.shared.groups_served.load(Ordering::Relaxed)
    }
}

async fn open_stream(client: &Client, peer: PeerId) -> Result<wire::Secure, FilesError> {
    let open = client.open_secure(
        peer,
        StreamProtocol::new(crate::STREAM_PROTOCOL),
        crate::PROTOCOL,
    );
    match tokio::time::timeout(super::OPEN_TIMEOUT, open).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(FilesError::Node(e)),
        Err(_) => Err(FilesError::NoProvider(format!("{peer} did not answer"))),
    }
}

impl Protocol for HostileFiles {
    type Handler = HostileService;

    fn name(&self) -> &'static str {
        crate::PROTOCOL
    }

    fn start(self, ctx: Context) -> Result<HostileService, ProtocolError> {
        let listener = ctx
            .listen(StreamProtocol::new(crate::STREAM_PROTOCOL))
            .map_err(|e| ProtocolError::new(crate::PROTOCOL, e))?;
        let shared = Arc::new(Shared {
            client: ctx.client().clone(),
            contents: self.contents,
            manifests_served: AtomicU64::new(0),
            groups_served: AtomicU64::new(0),
        });
        let task = tokio::spawn(tracing::Instrument::instrument(
            accept_loop(shared.clone(), listener),
            ctx.span().clone(),
        ));
        Ok(HostileService {
            handle: HostileHandle { shared },
            task: Mutex::new(Some(task)),
        })
    }
}

/// The running hostile protocol, as the node keeps it.
pub struct HostileService {
    handle: HostileHandle,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for HostileService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostileService")
    }
}

impl HostileService {
    /// The handle for offers and counters.
    pub fn handle(&self) -> &HostileHandle {
        &self.handle
    }
}

impl ProtocolHandler for HostileService {
    fn route_prefixes(&self) -> &[&'static str] {
        &[]
    }

    fn handle(&self, request: ControlRequest) -> futures::future::BoxFuture<'static, ControlReply> {
        let route = request.route().to_owned();
        Box::pin(async move { ControlReply::unknown(&route) })
    }

    fn shutdown(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            let task = self.task.lock().ok().and_then(|mut t| t.take());
            if let Some(task) = task {
                // Aborting the loop drops its set, which aborts the streams it serves.
                task.abort();
                let _ = task.await;
            }
        })
    }
}

async fn accept_loop(shared: Arc<Shared>, mut listener: SecureListener) {
    let mut streams = tokio::task::JoinSet::new();
    while let Some(accepted) = listener.next().await {
        while streams.try_join_next().is_some() {}
        if streams.len() >= MAX_STREAMS {
            continue;
        }
        let peer = accepted.peer;
        let shared = shared.clone();
        streams.spawn(tracing::Instrument::in_current_span(async move {
            if let Err(e) = serve(&shared, accepted).await {
                tracing::debug!(%peer, "hostile files stream ended: {e}");
            }
        }));
    }
}

/// Answers manifest and group requests for the raw contents; refuses offers.
async fn serve(shared: &Shared, accepted: Accepted) -> Result<(), WireError> {
    let mut stream = accepted.stream;
    loop {
        let request = match wire::recv::<Request>(&mut stream, IDLE_TIMEOUT).await {
            Ok(r) => r,
            Err(WireError::Stream(p2pnode_secure::StreamError::Closed)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let find = |id: &ContentId| shared.contents.iter().find(|c| c.id == *id);
        let refused = |req, refusal, message: &str| Response::Refused {
            req,
            refusal,
            message: message.to_owned(),
        };
        match request {
            Request::Manifest { req, content } => match find(&content) {
                Some(c) => {
                    let len = c.manifest.len() as u64;
                    wire::send(&mut stream, &Response::Manifest { req, len }).await?;
                    wire::send_data(&mut stream, &c.manifest).await?;
                    shared.manifests_served.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    let msg = refused(req, Refusal::NotFound, "not shared");
                    wire::send(&mut stream, &msg).await?;
                }
            },
            Request::Groups {
                req,
                content,
                groups,
            } => {
                let Some(c) = find(&content) else {
                    let msg = refused(req, Refusal::NotFound, "not shared");
                    wire::send(&mut stream, &msg).await?;
                    continue;
                };
                for (file, group) in groups {
                    let Some(data) = c.files.get(file as usize).filter(|_| group == 0) else {
                        let msg = refused(req, Refusal::BadRequest, "no such group");
                        wire::send(&mut stream, &msg).await?;
                        break;
                    };
                    let header = Response::Group {
                        req,
                        file,
                        group,
                        len: data.len() as u32,
                        proof: Blob::default(),
                    };
                    wire::feed(&mut stream, &header).await?;
                    wire::feed_data(&mut stream, data).await?;
                    shared.groups_served.fetch_add(1, Ordering::Relaxed);
                }
                stream.flush().await?;
            }
            Request::Offer { req, .. } => {
                let msg = refused(req, Refusal::NotAllowed, "takes no offers");
                wire::send(&mut stream, &msg).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, Manifest};

    #[test]
    fn a_raw_manifest_of_safe_paths_is_the_real_encoding() {
        let files = vec![
            RawFile {
                path: "b/c.txt".into(),
                data: b"second".to_vec(),
            },
            RawFile {
                path: "a.txt".into(),
                data: b"first".to_vec(),
            },
        ];
        let raw = RawContent::new(files.clone()).unwrap();
        let entries = files
            .iter()
            .map(|f| Entry {
                path: f.path.clone(),
                size: f.data.len() as u64,
                root: ContentId::of(&f.data),
                executable: false,
            })
            .collect();
        let real = Manifest::new(entries).unwrap();
        assert_eq!(raw.manifest(), real.encode());
        assert_eq!(raw.id(), real.id());
        assert_eq!(raw.size(), 11);
    }

    #[test]
    fn a_raw_manifest_carries_any_path() {
        let raw = RawContent::new(vec![RawFile {
            path: "../x".into(),
            data: b"x".to_vec(),
        }])
        .unwrap();
        assert!(matches!(
            Manifest::decode(raw.manifest()),
            Err(crate::ManifestError::Path { .. })
        ));
        assert_eq!(raw.id(), ContentId::of(raw.manifest()));
    }
}

//! Finding a transfer's providers and fetching its manifest from one of them.

use std::sync::Arc;

use libp2p::PeerId;

use super::providers::{busy_pause, turned_away};
use super::{BUSY_TRIES, MANIFEST_TRIES};
use crate::manifest::MAX_MANIFEST_BYTES;
use crate::service::serve::open;
use crate::service::wire::{self, Request, Response, WireError};
use crate::service::{ANSWER_TIMEOUT, FilesError, Inner};
use crate::{ContentId, Manifest};

/// The providers to fetch `content` from: those named, then (for a `get`) the DHT's.
async fn providers_of(
    inner: &Inner,
    content: ContentId,
    from: &[PeerId],
    dht: bool,
) -> Result<Vec<PeerId>, FilesError> {
    let me = inner.client.peer_id();
    let found = if dht {
        match inner
            .client
            .find_providers(content.as_bytes().to_vec())
            .await
        {
            Ok(found) => found,
            Err(e) if from.iter().all(|p| *p == me) => return Err(e.into()),
            Err(e) => {
                tracing::debug!("provider lookup failed: {e}");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let mut providers: Vec<PeerId> = Vec::new();
    for p in from.iter().copied().chain(found) {
        if p != me && !providers.contains(&p) {
            providers.push(p);
        }
    }
    if providers.is_empty() {
        return Err(FilesError::NoProvider(format!(
            "no provider of {content} found"
        )));
    }
    Ok(providers)
}

/// Fetches the manifest from the first provider that has it and checks it against the
/// content id; a manifest that verifies but is refused (an unsafe path) ends the transfer,
/// since every provider would send the same bytes. Returns it with the providers found.
///
/// When every provider asked turned us away as busy (a popular share with many fetchers
/// at once), it looks for providers again after a pause and asks again, up to
/// [`BUSY_TRIES`] rounds: others fetching the same content become providers meanwhile.
pub(super) async fn fetch_manifest(
    inner: &Arc<Inner>,
    content: ContentId,
    from: &[PeerId],
    dht: bool,
) -> Result<(Manifest, Vec<PeerId>), FilesError> {
    let mut round = 0;
    loop {
        let providers = providers_of(inner, content, from, dht).await?;
        let mut last = None;
        let mut all_busy = true;
        for &peer in providers.iter().take(MANIFEST_TRIES) {
            match manifest_from(inner, peer, content).await {
                Ok(bytes) => return Ok((decode_manifest(&bytes)?, providers)),
                Err(e) => {
                    tracing::debug!(%peer, "no manifest: {e}");
                    all_busy &= turned_away(&e);
                    last = Some(e);
                }
            }
        }
        let e = last.unwrap_or_else(|| FilesError::NoProvider("no provider answered".into()));
        round += 1;
        if !all_busy || round >= BUSY_TRIES {
            return Err(e);
        }
        let pause = busy_pause(round);
        tracing::debug!(%content, round, ?pause, "every provider busy; asking again");
        tokio::time::sleep(pause).await;
    }
}

fn decode_manifest(bytes: &[u8]) -> Result<Manifest, FilesError> {
    Manifest::decode(bytes).map_err(|e| FilesError::Invalid(format!("refused the manifest: {e}")))
}

async fn manifest_from(
    inner: &Arc<Inner>,
    peer: PeerId,
    content: ContentId,
) -> Result<Vec<u8>, FilesError> {
    let mut s = open(inner, peer).await?;
    let req = inner.next_id();
    let err = |e: WireError| FilesError::NoProvider(format!("{peer}: {e}"));
    wire::send(&mut s, &Request::Manifest { req, content })
        .await
        .map_err(err)?;
    let len = match wire::recv::<Response>(&mut s, ANSWER_TIMEOUT)
        .await
        .map_err(err)?
    {
        Response::Manifest { req: r, len } if r == req => len,
        Response::Refused { message, .. } => {
            return Err(FilesError::NotFound(format!("{peer}: {message}")));
        }
        _ => return Err(FilesError::NoProvider(format!("{peer}: unexpected answer"))),
    };
    if len > MAX_MANIFEST_BYTES as u64 {
        return Err(FilesError::NoProvider(format!(
            "{peer}: manifest of {len} bytes is too large"
        )));
    }
    let mut bytes = Vec::new();
    wire::recv_data(&mut s, len as usize, &mut bytes, ANSWER_TIMEOUT)
        .await
        .map_err(err)?;
    let _ = s.close().await;
    if ContentId::of(&bytes) != content {
        return Err(FilesError::NoProvider(format!(
            "{peer}: the manifest does not match {content}"
        )));
    }
    Ok(bytes)
}

//! Fetching from a peer that is still fetching the file itself.

use super::*;

/// A seed sharing 4 MiB (64 groups), and a node `b` that fetched part of it from the
/// seed and stopped (its transfer ends as if killed; what it verified stays served).
/// Returns the swarm, `b`, its directory and how many groups it verified.
async fn seed_and_a_partial_peer(b_config: Config) -> (Swarm, Node, tempfile::TempDir, u64) {
    let s = providers_of_one_file(vec![Config::default()], 4 * MIB).await;
    let seed = s.providers[0].client().peer_id();
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        stop_after_groups: Some(24),
        ..b_config
    };
    let b = start(dir.path(), vec![addr_of(&s.boot).await], config).await;
    let to = dir.path().join("out");
    let t = files(&b)
        .get(&s.content, to.clone(), vec![seed])
        .await
        .unwrap();
    let t = finished(&files(&b), t.id).await;
    assert_eq!(t.status, TransferStatus::Failed, "stopped by the hook");
    assert!(
        t.groups_fetched >= 24 && t.groups_fetched < t.groups_total,
        "{t:?}"
    );
    assert!(to.join("big.bin.part").exists());
    (s, b, dir, t.groups_fetched)
}

/// A third node gets the swarm's content from the partial peer and the seed; checks it
/// arrived whole and returns the finished transfer.
async fn get_from_partial_and_seed(s: &Swarm, partial: PeerId, seed: PeerId) -> TransferInfo {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), vec![addr_of(&s.boot).await], Config::default()).await;
    let to = dir.path().join("out");
    let t = files(&c)
        .get(&s.content, to.clone(), vec![partial, seed])
        .await
        .unwrap();
    let t = finished(&files(&c), t.id).await;
    assert_eq!(t.status, TransferStatus::Done, "{:?}", t.error);
    assert_eq!(std::fs::read(to.join("big.bin")).unwrap(), s.data);
    t
}

/// The transfer's entry for provider `peer`.
fn listed(t: &TransferInfo, peer: PeerId) -> &crate::api::ProviderInfo {
    t.providers
        .iter()
        .find(|p| p.peer_id == peer.to_string())
        .unwrap_or_else(|| panic!("{peer} is not listed: {t:?}"))
}

#[tokio::test]
async fn a_fetcher_gets_only_verified_groups_from_a_peer_still_fetching_and_keeps_it() {
    let (s, b, _bdir, b_groups) = seed_and_a_partial_peer(Config::default()).await;
    let (seed, partial) = (s.providers[0].client().peer_id(), b.client().peer_id());
    let t = get_from_partial_and_seed(&s, partial, seed).await;
    // The partial peer served groups it had verified (a group it had not would have
    // failed verification and dropped it), said "not yet" for others, and stayed.
    let from_b = listed(&t, partial);
    assert!(!from_b.dropped, "{t:?}");
    assert!(from_b.groups > 0 && from_b.groups <= b_groups, "{t:?}");
    assert!(files(&b).inner.not_yet_sent.load(Ordering::Relaxed) > 0);
    // The rest came from the seed.
    let from_seed = listed(&t, seed);
    assert_eq!(from_b.groups + from_seed.groups, t.groups_total, "{t:?}");
}

#[tokio::test]
async fn a_partial_peer_serving_a_bad_group_is_dropped_and_the_file_still_arrives() {
    let liar = Config {
        corrupt: true,
        ..Config::default()
    };
    let (s, b, _bdir, _) = seed_and_a_partial_peer(liar).await;
    let (seed, partial) = (s.providers[0].client().peer_id(), b.client().peer_id());
    let t = get_from_partial_and_seed(&s, partial, seed).await;
    let from_b = listed(&t, partial);
    assert!(from_b.dropped, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_partial_withdraws_its_announcement() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), vec![], Config::default()).await;
    let inner = files(&node).inner.clone();
    let provided = || async { node.client().status().await.unwrap().provided_keys };
    // One more `get` than partials are kept, each announced as its first group arrives.
    let n = super::partial::MAX_PARTIALS + 1;
    let mut ids = Vec::new();
    for i in 0..n {
        let manifest = crate::Manifest::new(vec![crate::manifest::Entry {
            path: format!("f{i}"),
            size: 1,
            root: ContentId::from_bytes([i as u8; 32]),
            executable: false,
        }])
        .unwrap();
        let part = dir.path().join(format!("f{i}.part"));
        let fin = dir.path().join(format!("f{i}"));
        super::partial::start_partial(&inner, i as u64, &manifest, vec![part], vec![fin]).unwrap();
        node.client()
            .provide(manifest.id().as_bytes().to_vec())
            .await
            .unwrap();
        ids.push(manifest.id());
    }
    // The first was forgotten, and its announcement with it; the others stay.
    wait_for(|| async { (provided().await == super::partial::MAX_PARTIALS).then_some(()) }).await;
    assert!(partial::find_partial(&inner, &ids[0]).is_none());
    assert!(partial::find_partial(&inner, &ids[n - 1]).is_some());
    node.shutdown().await;
}

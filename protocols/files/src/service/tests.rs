//! The service on real nodes over the memory transport: striping over several providers,
//! a lying provider, a receiver killed and resumed, hostile manifests, and offers.

use std::path::Path;
use std::time::Duration;

use p2pnode_node::{Config as NodeConfig, Multiaddr, Node, TransportKind};
use rand::RngCore;

use super::*;

mod partial_peers;

/// How long a test waits for any one event.
const WAIT: Duration = Duration::from_secs(60);

async fn wait_for<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("condition not reached in time")
}

async fn start(dir: &Path, bootstrap: Vec<Multiaddr>, config: Config) -> Node {
    let cfg = NodeConfig {
        listen: vec!["/memory/0".parse().unwrap()],
        mdns: false,
        bootstrap,
        ..NodeConfig::default()
    };
    Node::builder(dir, cfg)
        .transport(TransportKind::Memory)
        .protocol(Files::new(config))
        .start()
        .await
        .unwrap()
}

fn files(node: &Node) -> FilesHandle {
    node.protocol::<FilesService>().unwrap().handle().clone()
}

async fn addr_of(node: &Node) -> Multiaddr {
    let a = wait_for(|| async {
        node.client()
            .status()
            .await
            .ok()?
            .listen_addrs
            .first()
            .cloned()
    })
    .await;
    format!("{a}/p2p/{}", node.client().peer_id())
        .parse()
        .unwrap()
}

async fn wait_connected(a: &Node, b: PeerId) {
    wait_for(|| async {
        let peers = a.client().peers().await.ok()?;
        peers
            .iter()
            .any(|p| p.peer_id == b.to_string())
            .then_some(())
    })
    .await;
}

async fn finished(files: &FilesHandle, id: u64) -> TransferInfo {
    wait_for(|| async {
        let t = files.transfer(id).ok()?;
        (t.status != TransferStatus::Running).then_some(t)
    })
    .await
}

fn random_file(dir: &Path, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
    let mut data = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut data);
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

/// A bootstrap node and `n` providers of the same file (each its own copy), all
/// announced; returns the nodes, the content id and the bytes.
struct Swarm {
    _dirs: Vec<tempfile::TempDir>,
    boot: Node,
    providers: Vec<Node>,
    content: String,
    data: Vec<u8>,
}

async fn providers_of_one_file(configs: Vec<Config>, len: usize) -> Swarm {
    let mut dirs = vec![tempfile::tempdir().unwrap()];
    let boot = start(dirs[0].path(), vec![], Config::default()).await;
    let boot_addr = addr_of(&boot).await;
    let src = tempfile::tempdir().unwrap();
    let (_, data) = random_file(src.path(), "big.bin", len);
    let mut providers = Vec::new();
    let mut content = String::new();
    for config in configs {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("big.bin");
        std::fs::write(&copy, &data).unwrap();
        let node = start(dir.path(), vec![boot_addr.clone()], config).await;
        wait_connected(&node, boot.client().peer_id()).await;
        let info = files(&node).share(vec![copy]).await.unwrap();
        assert!(
            content.is_empty() || content == info.content_id,
            "same bytes, same id"
        );
        content = info.content_id;
        providers.push(node);
        dirs.push(dir);
    }
    dirs.push(src);
    Swarm {
        _dirs: dirs,
        boot,
        providers,
        content,
        data,
    }
}

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn a_file_shared_by_three_providers_arrives_whole_with_groups_from_several() {
    let s = providers_of_one_file(vec![Config::default(); 3], 4 * MIB + 12_345).await;
    let dir = tempfile::tempdir().unwrap();
    let boot_addr = addr_of(&s.boot).await;
    let r = start(dir.path(), vec![boot_addr], Config::default()).await;
    let key = s.content.parse::<ContentId>().unwrap().as_bytes().to_vec();
    // The DHT names all three once their records are in.
    wait_for(|| async {
        let found = r.client().find_providers(key.clone()).await.ok()?;
        (found.len() == 3).then_some(())
    })
    .await;
    let to = dir.path().join("out");
    let t = files(&r).get(&s.content, to.clone(), vec![]).await.unwrap();
    // A client waiting for the end hears of it when it comes, not after its whole wait.
    let wait = std::time::Duration::from_secs(120);
    let waited = std::time::Instant::now();
    let t = files(&r).transfer_wait(t.id, wait).await.unwrap();
    assert!(waited.elapsed() < wait, "the wait ran out: {t:?}");
    assert_eq!(t.status, TransferStatus::Done, "{:?}", t.error);
    assert_eq!(std::fs::read(to.join("big.bin")).unwrap(), s.data);
    let serving = t.providers.iter().filter(|p| p.groups > 0).count();
    assert!(serving >= 2, "groups came from one provider only: {t:?}");
    let served: u64 = s.providers.iter().map(|p| files(p).served_groups()).sum();
    assert_eq!(t.groups_fetched, t.groups_total);
    assert!(served >= t.groups_total);
    // Nothing but the file is left: no .part, no resume state.
    let names: Vec<_> = std::fs::read_dir(&to)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["big.bin"]);
}

#[tokio::test]
async fn a_provider_serving_a_corrupt_group_is_dropped_and_the_file_completes() {
    let liar = Config {
        corrupt: true,
        ..Config::default()
    };
    let s = providers_of_one_file(vec![liar, Config::default(), Config::default()], 3 * MIB).await;
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path(), vec![addr_of(&s.boot).await], Config::default()).await;
    let from: Vec<PeerId> = s.providers.iter().map(|p| p.client().peer_id()).collect();
    let to = dir.path().join("out");
    let t = files(&r)
        .get(&s.content, to.clone(), from.clone())
        .await
        .unwrap();
    let t = finished(&files(&r), t.id).await;
    assert_eq!(t.status, TransferStatus::Done, "{:?}", t.error);
    assert_eq!(std::fs::read(to.join("big.bin")).unwrap(), s.data);
    let liar_info = t
        .providers
        .iter()
        .find(|p| p.peer_id == from[0].to_string())
        .expect("the liar is listed");
    assert!(liar_info.dropped, "{t:?}");
    assert!(
        files(&s.providers[0]).served_groups() > 0,
        "the liar was asked"
    );
}

#[tokio::test]
async fn a_receiver_stopped_mid_transfer_resumes_without_fetching_verified_groups_again() {
    let s = providers_of_one_file(vec![Config::default(); 2], 4 * MIB).await;
    let dir = tempfile::tempdir().unwrap();
    let boot_addr = addr_of(&s.boot).await;
    let from: Vec<PeerId> = s.providers.iter().map(|p| p.client().peer_id()).collect();
    let to = dir.path().join("out");
    let stopping = Config {
        stop_after_groups: Some(20),
        ..Config::default()
    };
    let r = start(dir.path(), vec![boot_addr.clone()], stopping).await;
    let t = files(&r)
        .get(&s.content, to.clone(), from.clone())
        .await
        .unwrap();
    let first = finished(&files(&r), t.id).await;
    assert_eq!(first.status, TransferStatus::Failed);
    assert!(first.groups_fetched >= 20 && first.groups_fetched < first.groups_total);
    assert!(to.join("big.bin.part").exists());
    assert!(!to.join("big.bin").exists());
    let requested_first = files(&r).inner.requested_groups.load(Ordering::Relaxed);
    r.shutdown().await;

    // No endgame in the second run, so every group asked for is one that was missing.
    let patient = Config {
        endgame_after: Duration::from_secs(600),
        ..Config::default()
    };
    let r = start(dir.path(), vec![boot_addr], patient).await;
    let t = files(&r).get(&s.content, to.clone(), from).await.unwrap();
    let second = finished(&files(&r), t.id).await;
    assert_eq!(second.status, TransferStatus::Done, "{:?}", second.error);
    assert_eq!(std::fs::read(to.join("big.bin")).unwrap(), s.data);
    assert_eq!(second.groups_resumed, first.groups_fetched);
    assert_eq!(
        second.groups_fetched,
        second.groups_total - second.groups_resumed
    );
    // The second run asked only for what was missing, and the providers served no more
    // than the two runs asked for.
    let requested_second = files(&r).inner.requested_groups.load(Ordering::Relaxed);
    assert_eq!(requested_second, second.groups_fetched);
    let served: u64 = s.providers.iter().map(|p| files(p).served_groups()).sum();
    assert!(served <= requested_first + requested_second);
}

/// A manifest with one entry at `path`, encoded as a hostile sender would.
fn raw_manifest(path: &str, size: u64, root: &ContentId) -> Vec<u8> {
    use ciborium::Value;
    let entry = Value::Array(vec![
        Value::Text(path.into()),
        Value::Integer(size.into()),
        Value::Bytes(root.as_bytes().to_vec()),
        Value::Integer(0.into()),
    ]);
    let wire = Value::Array(vec![Value::Integer(1.into()), Value::Array(vec![entry])]);
    let mut out = Vec::new();
    ciborium::into_writer(&wire, &mut out).unwrap();
    out
}

#[tokio::test]
async fn a_manifest_that_escapes_the_target_is_refused_and_nothing_is_written() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let p = start(dirs[0].path(), vec![], Config::default()).await;
    let r = start(dirs[1].path(), vec![addr_of(&p).await], Config::default()).await;
    let pid = p.client().peer_id();
    let (src, data) = random_file(dirs[2].path(), "evil", 1000);
    let root = ContentId::of(&data);
    let outboard = p.data_dir().join("files/outboards").join(root.to_string());
    std::fs::write(outboard, b"").unwrap();
    let id = files(&p).inner.insert_raw_share(
        raw_manifest("../evil", 1000, &root),
        vec![(1000, root)],
        vec![src],
    );
    let base = tempfile::tempdir().unwrap();
    let to = base.path().join("target");
    let t = files(&r)
        .get(&id.to_string(), to.clone(), vec![pid])
        .await
        .unwrap();
    let t = finished(&files(&r), t.id).await;
    assert_eq!(t.status, TransferStatus::Failed);
    assert!(t.error.unwrap().contains("refused the manifest"));
    let names: Vec<_> = std::fs::read_dir(base.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(!names.iter().any(|n| n == "evil"), "{names:?}");

    // A safe path through a symlink the receiver's target holds is refused too.
    let shared = dirs[2].path().join("dir");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("f"), b"data").unwrap();
    let info = files(&p).share(vec![shared]).await.unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(&to).unwrap();
    std::os::unix::fs::symlink(outside.path(), to.join("dir")).unwrap();
    let t = files(&r)
        .get(&info.content_id, to.clone(), vec![pid])
        .await
        .unwrap();
    let t = finished(&files(&r), t.id).await;
    assert_eq!(t.status, TransferStatus::Failed);
    assert!(t.error.unwrap().contains("refused path"));
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn an_offer_needs_the_files_permission_and_an_accepted_one_arrives() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let r = start(dirs[0].path(), vec![], Config::default()).await;
    let r_addr = addr_of(&r).await;
    let s = start(dirs[1].path(), vec![r_addr.clone()], Config::default()).await;
    let x = start(dirs[2].path(), vec![r_addr], Config::default()).await;
    let (rid, sid) = (r.client().peer_id(), s.client().peer_id());
    let (path, data) = random_file(dirs[3].path(), "photo.jpg", 300_000);

    // Without the permission the offer is refused and nothing reaches the inbox.
    let err = files(&s).send(rid, vec![path.clone()]).await.unwrap_err();
    assert!(matches!(err, FilesError::Refused(_)), "{err}");
    assert!(files(&r).inbox().is_empty());

    r.client().allow(sid, &["files".to_string()]).await.unwrap();
    let mut events = files(&r).subscribe();
    let sent = files(&s).send(rid, vec![path]).await.unwrap();
    match tokio::time::timeout(WAIT, events.recv())
        .await
        .unwrap()
        .unwrap()
    {
        crate::api::FilesEvent::Offer(o) => assert_eq!(o.content_id, sent.content_id),
        other => panic!("expected the offer event, got {other:?}"),
    }
    let inbox = files(&r).inbox();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].content_id, sent.content_id);
    assert_eq!(inbox[0].name, "photo.jpg");
    assert_eq!(inbox[0].peer_id, sid.to_string());

    // Offered content is served to the offered peer only.
    let to_x = dirs[2].path().join("out");
    let t = files(&x)
        .get(&sent.content_id, to_x, vec![sid])
        .await
        .unwrap();
    assert_eq!(
        finished(&files(&x), t.id).await.status,
        TransferStatus::Failed
    );

    let to = dirs[0].path().join("inbox");
    let t = files(&r).accept(inbox[0].id, to.clone()).await.unwrap();
    let t = finished(&files(&r), t.id).await;
    assert_eq!(t.status, TransferStatus::Done, "{:?}", t.error);
    assert_eq!(std::fs::read(to.join("photo.jpg")).unwrap(), data);
    assert!(files(&r).inbox().is_empty());
    assert!(
        files(&r).reject(inbox[0].id).is_err(),
        "an accepted offer is gone"
    );
}

#[tokio::test]
async fn unsharing_forgets_the_share_its_outboards_and_its_table_row() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let p = start(dirs[0].path(), vec![], Config::default()).await;
    let (path, data) = random_file(dirs[2].path(), "a.bin", 200_000);
    let info = files(&p).share(vec![path]).await.unwrap();
    let root = ContentId::of(&data);
    let outboard = p.data_dir().join("files/outboards").join(root.to_string());
    assert!(outboard.exists());
    // The share outlives a restart (it is in the table).
    p.shutdown().await;
    let p = start(dirs[0].path(), vec![], Config::default()).await;
    assert_eq!(files(&p).shares(), vec![info.clone()]);
    files(&p).unshare(&info.content_id).await.unwrap();
    assert!(files(&p).shares().is_empty());
    assert!(!outboard.exists());
    let r = start(dirs[1].path(), vec![addr_of(&p).await], Config::default()).await;
    let to = dirs[1].path().join("out");
    let t = files(&r)
        .get(&info.content_id, to, vec![p.client().peer_id()])
        .await
        .unwrap();
    let t = finished(&files(&r), t.id).await;
    assert_eq!(t.status, TransferStatus::Failed);
    assert!(t.error.unwrap().contains("is not shared"));
    p.shutdown().await;
    let p = start(dirs[0].path(), vec![], Config::default()).await;
    assert!(files(&p).shares().is_empty(), "the row is gone too");
}

#[tokio::test]
async fn a_tree_of_many_small_files_empty_ones_and_an_executable_arrives_whole() {
    use std::os::unix::fs::PermissionsExt;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let p = start(dirs[0].path(), vec![], Config::default()).await;
    let r = start(dirs[1].path(), vec![addr_of(&p).await], Config::default()).await;
    let root = dirs[2].path().join("tree");
    let mut expected = Vec::new();
    for i in 0..300 {
        let rel = format!("d{}/f{i}.txt", i % 7);
        let len = (i * 37) % 5000; // some are empty
        let path = root.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut data = vec![0u8; len];
        rand::thread_rng().fill_bytes(&mut data);
        std::fs::write(&path, &data).unwrap();
        expected.push((rel, data));
    }
    let tool = root.join("run.sh");
    std::fs::write(&tool, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let info = files(&p).share(vec![root]).await.unwrap();
    assert_eq!(info.files, 301);
    let to = dirs[1].path().join("out");
    let t = files(&r)
        .get(&info.content_id, to.clone(), vec![p.client().peer_id()])
        .await
        .unwrap();
    let t = finished(&files(&r), t.id).await;
    assert_eq!(t.status, TransferStatus::Done, "{:?}", t.error);
    for (rel, data) in &expected {
        assert_eq!(
            &std::fs::read(to.join("tree").join(rel)).unwrap(),
            data,
            "{rel}"
        );
    }
    let mode = std::fs::metadata(to.join("tree/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "the executable bit is carried");
    let mode = std::fs::metadata(to.join("tree/d0/f0.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0);
}

#[tokio::test]
async fn an_accepted_offer_interrupted_resumes_by_itself_when_the_receiver_restarts() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let s = start(dirs[0].path(), vec![], Config::default()).await;
    let s_addr = addr_of(&s).await;
    let stopping = Config {
        stop_after_groups: Some(8),
        ..Config::default()
    };
    let r = start(dirs[1].path(), vec![s_addr.clone()], stopping).await;
    let (rid, sid) = (r.client().peer_id(), s.client().peer_id());
    r.client().allow(sid, &["files".to_string()]).await.unwrap();
    let (path, data) = random_file(dirs[2].path(), "video.bin", 2 * MIB);
    files(&s).send(rid, vec![path]).await.unwrap();
    let offer = files(&r).inbox()[0].id;
    let to = dirs[1].path().join("in");
    let t = files(&r).accept(offer, to.clone()).await.unwrap();
    let first = finished(&files(&r), t.id).await;
    assert_eq!(first.status, TransferStatus::Failed);
    r.shutdown().await;

    // Restarted, the service takes the accepted offer up again on its own.
    let r = start(dirs[1].path(), vec![s_addr], Config::default()).await;
    let done = wait_for(|| async {
        files(&r)
            .transfers()
            .into_iter()
            .find(|t| t.status == TransferStatus::Done)
    })
    .await;
    assert_eq!(done.groups_resumed, first.groups_fetched);
    assert_eq!(std::fs::read(to.join("video.bin")).unwrap(), data);
    // Done, it is forgotten: a further restart starts nothing.
    r.shutdown().await;
    let r = start(dirs[1].path(), vec![], Config::default()).await;
    let db = files(&r).inner.clone();
    let rows = tokio::task::spawn_blocking(move || super::accepted::unfinished_for_test(&db))
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

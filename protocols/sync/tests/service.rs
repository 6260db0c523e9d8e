//! The sync service on real nodes over the memory transport: two or three nodes in one
//! process, each with its own data directory, trust store and secure streams.
#![allow(clippy::unwrap_used)]

#[path = "../../../node/tests/common/mod.rs"]
mod common;

use common::{addr_of, start_memory_with, wait_for};
use std::time::Duration;

use p2pnode_node::{Node, PeerId, StreamProtocol};
use p2pnode_sync::service::{Sync, SyncHandle, SyncService};
use serde_json::json;

fn db(node: &Node) -> SyncHandle {
    node.protocol::<SyncService>().unwrap().handle().clone()
}

/// Makes `a` create the network `home`, has `b` join it through `a`, and connects them.
async fn pair(a: &Node, b: &Node) {
    a.client().networks().create("home").unwrap();
    join(a, b, "home").await;
}

/// `joiner` joins `network` of `admin` with a fresh ticket (which connects them).
async fn join(admin: &Node, joiner: &Node, network: &str) {
    let ticket = admin
        .client()
        .networks()
        .invite(
            network,
            Duration::from_secs(3600),
            1,
            false,
            &[addr_of(admin).await],
        )
        .unwrap()
        .ticket;
    joiner.client().join_network(&ticket, None).await.unwrap();
}

fn revoked_in(node: &Node, network: &str, peer: PeerId) -> bool {
    node.client()
        .networks()
        .members(network)
        .unwrap()
        .iter()
        .any(|m| m.peer_id == peer.to_string() && m.revoked)
}

/// Waits until both nodes hold `doc` with the same heads, and returns its JSON.
async fn converged(a: &Node, b: &Node, doc: &str) -> serde_json::Value {
    let (da, dbb) = (db(a), db(b));
    wait_for(|| {
        let (da, dbb) = (da.clone(), dbb.clone());
        async move {
            let (ia, ib) = (da.info(doc).await.ok()?, dbb.info(doc).await.ok()?);
            let (ja, jb) = (da.get(doc, "").await.ok()?, dbb.get(doc, "").await.ok()?);
            (ia.heads == ib.heads && ja == jb).then_some(ja)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_on_two_connected_nodes_converge() {
    let (da, dbd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_memory_with(da.path(), Sync).await;
    let b = start_memory_with(dbd.path(), Sync).await;
    pair(&a, &b).await;
    db(&a).create("todo", "home").await.unwrap();
    // b learns the document from a (it never created it).
    let empty = converged(&a, &b, "todo").await;
    assert_eq!(empty, json!({}));
    assert_eq!(db(&b).info("todo").await.unwrap().network, "home");
    // Concurrent edits on both sides, while connected.
    for i in 0..20 {
        db(&a)
            .put("todo", &format!("a{i}"), json!(i))
            .await
            .unwrap();
        db(&b)
            .put("todo", &format!("b{i}"), json!(i))
            .await
            .unwrap();
    }
    let value = converged(&a, &b, "todo").await;
    assert_eq!(value.as_object().unwrap().len(), 40);
    assert_eq!(value["a7"], json!(7));
    assert_eq!(value["b19"], json!(19));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_merge_when_peers_meet_again() {
    let (da, dbd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_memory_with(da.path(), Sync).await;
    let b = start_memory_with(dbd.path(), Sync).await;
    pair(&a, &b).await;
    db(&a).create("notes", "home").await.unwrap();
    db(&a)
        .put("notes", "shared", json!("before"))
        .await
        .unwrap();
    converged(&a, &b, "notes").await;
    // b goes away; both edit, a a key b also edits (a conflict) and keys of its own.
    b.shutdown().await;
    db(&a).put("notes", "from_a", json!(1)).await.unwrap();
    db(&a).put("notes", "shared", json!("a")).await.unwrap();
    let b = start_memory_with(dbd.path(), Sync).await;
    db(&b).put("notes", "from_b", json!(2)).await.unwrap();
    db(&b).put("notes", "shared", json!("b")).await.unwrap();
    assert!(db(&b).get("notes", "from_a").await.is_err(), "b is offline");
    a.client().connect_addr(addr_of(&b).await).await.unwrap();
    let value = converged(&a, &b, "notes").await;
    assert_eq!(value["from_a"], json!(1));
    assert_eq!(value["from_b"], json!(2));
    // Both sides read the same pick, and both keep the conflict for `db conflicts`.
    assert!(value["shared"] == json!("a") || value["shared"] == json!("b"));
    let conflicts = db(&a).conflicts("notes").await.unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].path, "shared");
    assert_eq!(conflicts[0].candidates.len(), 2);
    db(&b)
        .resolve(
            "notes",
            "shared",
            p2pnode_crdt::Keep::Value(json!("agreed")),
        )
        .await
        .unwrap();
    let value = converged(&a, &b, "notes").await;
    assert_eq!(value["shared"], json!("agreed"));
    assert!(db(&a).conflicts("notes").await.unwrap().is_empty());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_receives_nothing_on_the_wire() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start_memory_with(dirs[0].path(), Sync).await;
    let b = start_memory_with(dirs[1].path(), Sync).await;
    let c = start_memory_with(dirs[2].path(), Sync).await;
    pair(&a, &b).await;
    db(&a).create("secret", "home").await.unwrap();
    db(&a).put("secret", "pin", json!(1234)).await.unwrap();
    // c has a network of the same name, but another one: c is no member of a's.
    c.client().networks().create("home").unwrap();
    db(&c).create("bait", "home").await.unwrap();
    db(&c).put("bait", "x", json!(1)).await.unwrap();
    a.client().connect_addr(addr_of(&c).await).await.unwrap();
    // b, a member, gets the document: the service is running and syncing.
    converged(&a, &b, "secret").await;
    // c's side of the connection may come up after a's: c dials nobody.
    let pa = a.client().peer_id().to_string();
    wait_for(|| async {
        let peers = c.client().peers().await.ok()?;
        peers.iter().any(|p| p.peer_id == pa).then_some(())
    })
    .await;
    // c opens a sync stream to a itself: it passes the secure gate (c is a stranger, not
    // revoked), and a closes it unread.
    let protocol = StreamProtocol::new(p2pnode_sync::STREAM_PROTOCOL);
    let mut stream = c
        .client()
        .open_secure(a.client().peer_id(), protocol, "sync")
        .await
        .unwrap();
    let read = tokio::time::timeout(common::WAIT, stream.recv())
        .await
        .expect("a closes the stream");
    assert!(read.is_err(), "a sent c {} bytes", read.unwrap().len());
    let da = db(&a);
    wait_for(|| {
        let da = da.clone();
        async move { (da.stats().await.ok()?.refused_streams > 0).then_some(()) }
    })
    .await;
    // What arrived at c's sync service: not one frame, not one change; nothing of a's
    // went to c, and nothing of c's came to a.
    let sc = db(&c).stats().await.unwrap();
    assert_eq!(sc.frames_in, 0, "{sc:?}");
    assert_eq!(sc.bytes_in, 0);
    assert_eq!(sc.changes_in, 0);
    assert!(db(&c).get("secret", "").await.is_err());
    assert!(db(&a).get("bait", "").await.is_err());
    assert!(db(&c).linked_peers().await.unwrap().is_empty());
    assert!(
        !db(&a)
            .linked_peers()
            .await
            .unwrap()
            .contains(&c.client().peer_id())
    );
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

/// A sync stream from `from` to `to`, opened by the test. Tried up to five times: `from`'s
/// own service may be opening one at the same moment, and `to`'s handshake gate takes one
/// handshake per peer at a time.
async fn open_again(
    from: &Node,
    to: &Node,
    protocol: &StreamProtocol,
) -> p2pnode_secure::SecureStream<libp2p::Stream> {
    let mut pause = Duration::from_millis(50);
    for _ in 0..4 {
        let opened = from
            .client()
            .open_secure(to.client().peer_id(), protocol.clone(), "sync")
            .await;
        match opened {
            Ok(stream) => return stream,
            Err(e) => eprintln!("opening a sync stream failed, trying again: {e}"),
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
    from.client()
        .open_secure(to.client().peer_id(), protocol.clone(), "sync")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_member_receives_no_change_after_its_revocation() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for d in &dirs {
        nodes.push(start_memory_with(d.path(), Sync).await);
    }
    // c has the smallest peer id, so it opens the sync streams to both members at once
    // (the larger id waits 3 s), and its pauses between asking again are what shows.
    nodes.sort_by_key(|n| std::cmp::Reverse(n.client().peer_id()));
    let (c, b, a) = (
        nodes.pop().unwrap(),
        nodes.pop().unwrap(),
        nodes.pop().unwrap(),
    );
    let pc = c.client().peer_id();
    pair(&a, &b).await;
    join(&a, &c, "home").await;
    // b and c are connected too, so either member could leak to c.
    b.client().connect_addr(addr_of(&c).await).await.unwrap();
    db(&a).create("plan", "home").await.unwrap();
    db(&a).put("plan", "v", json!(1)).await.unwrap();
    converged(&a, &b, "plan").await;
    converged(&a, &c, "plan").await;
    wait_for(|| async {
        let linked = db(&b).linked_peers().await.ok()?;
        linked.contains(&pc).then_some(())
    })
    .await;

    let refused_at_revocation = db(&a).stats().await.unwrap().refused_streams;
    a.client().networks().revoke("home", pc).unwrap();
    // Once the revocation reached b, neither a nor b keeps a sync stream with c.
    wait_for(|| async { revoked_in(&b, "home", pc).then_some(()) }).await;
    for n in [&a, &b] {
        let h = db(n);
        wait_for(|| {
            let h = h.clone();
            async move { (!h.linked_peers().await.ok()?.contains(&pc)).then_some(()) }
        })
        .await;
    }
    let before = db(&c).stats().await.unwrap();
    for i in 0..10 {
        db(&a)
            .put("plan", &format!("after{i}"), json!(i))
            .await
            .unwrap();
    }
    let value = converged(&a, &b, "plan").await;
    assert_eq!(value["after9"], json!(9));
    // c asks again, as its own service does (c was not told it is revoked): a and b each
    // close the stream unread and count the refusal. The test opens the streams itself
    // rather than waiting for c's service, whose pauses depend on how the setup went.
    let protocol = StreamProtocol::new(p2pnode_sync::STREAM_PROTOCOL);
    for n in [&a, &b] {
        let refused_before = db(n).stats().await.unwrap().refused_streams;
        let mut stream = open_again(&c, n, &protocol).await;
        let read = tokio::time::timeout(common::WAIT, stream.recv())
            .await
            .expect("the member closes the stream");
        assert!(read.is_err(), "c was sent {} bytes", read.unwrap().len());
        let h = db(n);
        wait_for(|| {
            let h = h.clone();
            async move { (h.stats().await.ok()?.refused_streams > refused_before).then_some(()) }
        })
        .await;
    }
    // c's service asks too, when it sees a connected and when its stream ends, but then
    // only after pauses of 3 s, 6 s, 12 s... (its attempts count on while no frame comes
    // over a stream), not each time a stream it opened is closed unread. Over the 1.5 s
    // watched here (what is checked is how often something happens) and all before it,
    // a refused c's service at most twice, and the test once. When the attempts started
    // afresh with each stream, c asked until a's handshake gate turned it away.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = db(&a).stats().await.unwrap().refused_streams - refused_at_revocation;
    assert!(refused <= 3, "a refused c's streams {refused} times");
    let after = db(&c).stats().await.unwrap();
    assert_eq!(after.frames_in, before.frames_in, "{after:?}");
    assert_eq!(after.changes_in, before.changes_in);
    assert!(db(&c).get("plan", "after0").await.is_err());
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

/// A link the service drops is cut at once. Here c, a member that stopped reading, has a
/// document's whole content queued for it when it is revoked: a resets the stream and
/// sends nothing more, where it used to drain the backlog first (and, over a lossy link,
/// keep a half-dead stream alive meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_link_is_cut_without_sending_its_backlog() {
    const VALUES: usize = 24;
    const VALUE_LEN: usize = 128 * 1024;
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_memory_with(da.path(), Sync).await;
    // c runs no sync service: the test speaks for it, and reads only at the end.
    let c = start_memory_with(dc.path(), common::Named("none")).await;
    let (pa, pc) = (a.client().peer_id(), c.client().peer_id());
    a.client().networks().create("home").unwrap();
    join(&a, &c, "home").await;
    db(&a).create("plan", "home").await.unwrap();
    // Incompressible values, so the backlog is as large on the wire as in the document.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..VALUES {
        let value: String = (0..VALUE_LEN)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect();
        db(&a)
            .put("plan", &format!("k{i}"), json!(value))
            .await
            .unwrap();
    }
    let total = (VALUES * VALUE_LEN) as u64;

    // c asks for the document as a fresh peer would: a answers with all of it, which
    // waits in a's writer once c's stream window is full.
    let protocol = StreamProtocol::new(p2pnode_sync::STREAM_PROTOCOL);
    let mut stream = c
        .client()
        .open_secure(pa, protocol, p2pnode_sync::PROTOCOL)
        .await
        .unwrap();
    let empty = p2pnode_crdt::Document::new(&pc.to_bytes()).unwrap();
    let ask = p2pnode_crdt::SyncSession::new(empty)
        .generate_message(&pa.to_bytes())
        .unwrap();
    let frame = p2pnode_sync::Frame {
        doc: "plan".into(),
        network: "home".into(),
        message: ask,
    };
    stream.send(&frame.encode()).await.unwrap();
    // automerge compresses the changes, to about 60 % of these letters.
    let da_ = db(&a);
    let backlog = wait_for(|| {
        let h = da_.clone();
        async move {
            let out = h.stats().await.ok()?.bytes_out;
            (out > total / 2).then_some(out)
        }
    })
    .await;

    a.client().networks().revoke("home", pc).unwrap();
    wait_for(|| {
        let h = da_.clone();
        async move { (!h.linked_peers().await.ok()?.contains(&pc)).then_some(()) }
    })
    .await;
    // What c can still read: what was in flight when the link was dropped (one stream
    // window, 256 KiB), then the reset.
    let mut received = 0usize;
    let ended = tokio::time::timeout(common::WAIT, async {
        while let Ok(chunk) = stream.recv().await {
            received += chunk.len();
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ended");
    assert!(
        (received as u64) < backlog / 4,
        "c still got {received} bytes of a {backlog}-byte backlog after its link was dropped"
    );
    for n in [a, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_revoked_while_offline_gets_nothing_when_it_comes_back() {
    let (da, dr) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_memory_with(da.path(), Sync).await;
    let r = start_memory_with(dr.path(), Sync).await;
    let pr = r.client().peer_id();
    pair(&a, &r).await;
    db(&a).create("d", "home").await.unwrap();
    db(&a).put("d", "k1", json!(1)).await.unwrap();
    converged(&a, &r, "d").await;
    r.shutdown().await;
    a.client().networks().revoke("home", pr).unwrap();
    db(&a).put("d", "k2", json!(2)).await.unwrap();

    let r = start_memory_with(dr.path(), Sync).await;
    assert!(
        r.client().networks().is_member("home", &pr),
        "r missed its revocation"
    );
    r.client().connect_addr(addr_of(&a).await).await.unwrap();
    // r believes it is a member and opens its sync stream: a refuses it.
    let h = db(&a);
    wait_for(|| {
        let h = h.clone();
        async move { (h.stats().await.ok()?.refused_streams > 0).then_some(()) }
    })
    .await;
    let sr = db(&r).stats().await.unwrap();
    assert_eq!((sr.frames_in, sr.changes_in), (0, 0), "{sr:?}");
    assert!(db(&r).get("d", "k2").await.is_err());
    a.shutdown().await;
    r.shutdown().await;
}

#[test]
fn a_restarted_node_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    // The node runs in its own runtime, dropped without any shutdown: its tasks stop at
    // their next await, as a SIGKILL would stop them (nothing is flushed on the way out).
    let acked = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let acked = rt.block_on(async {
            let a = start_memory_with(&path, Sync).await;
            a.client().networks().create("home").unwrap();
            let h = db(&a);
            h.create("log", "home").await.unwrap();
            let mut acked = Vec::new();
            for i in 0..100 {
                h.put("log", &format!("k{i}"), json!(i)).await.unwrap();
                acked.push(i);
            }
            // Writes in flight when the process dies: never acknowledged.
            for i in 100..110 {
                let h = h.clone();
                tokio::spawn(async move { h.put("log", &format!("k{i}"), json!(i)).await });
            }
            std::mem::forget(a);
            acked
        });
        drop(rt);
        acked
    })
    .join()
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // A real SIGKILL also frees the node's database lock; here the leaked node still holds
    // it, so the node restarts on a copy of the data directory's `sync/` (its documents).
    let again = tempfile::tempdir().unwrap();
    copy_dir(&dir.path().join("sync"), &again.path().join("sync"));
    rt.block_on(async {
        let a = start_memory_with(again.path(), Sync).await;
        let value = db(&a).get("log", "").await.unwrap();
        for i in acked {
            assert_eq!(
                value[format!("k{i}")],
                json!(i),
                "acknowledged write {i} lost"
            );
        }
        assert_eq!(db(&a).info("log").await.unwrap().network, "home");
        a.shutdown().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_stores_nothing() {
    let d = tempfile::tempdir().unwrap();
    let a = start_memory_with(d.path(), Sync).await;
    let h = db(&a);
    assert!(
        h.create("ok", "home").await.is_err(),
        "not a member of `home`"
    );
    a.client().networks().create("home").unwrap();
    assert!(h.create("bad/name", "home").await.is_err());
    assert!(h.create("ok", "bad network").await.is_err());
    assert!(h.put("missing", "x", json!(1)).await.is_err());
    h.create("ok", "home").await.unwrap();
    assert!(h.create("ok", "home").await.is_err(), "exists");
    let before = h.info("ok").await.unwrap();
    assert!(h.put("ok", "a/b/c", json!(1)).await.is_err(), "no parent");
    assert!(h.delete("ok", "nothing").await.is_err());
    assert!(h.import("ok", None, json!([1, 2])).await.is_err());
    assert_eq!(h.info("ok").await.unwrap(), before);
    assert_eq!(h.list().await.unwrap().len(), 1);
    a.shutdown().await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Sends one control request to the node's sync routes: (status, JSON body).
async fn call(
    node: &Node,
    post: bool,
    route: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    use p2pnode_node::ProtocolHandler;
    use p2pnode_node::control::{ControlReply, ControlRequest, Method};
    let (route, query) = route.split_once('?').unwrap_or((route, ""));
    let method = if post { Method::Post } else { Method::Get };
    let body = bytes::Bytes::from(serde_json::to_vec(&body).unwrap());
    let service = node.protocol::<SyncService>().unwrap();
    let request = ControlRequest::new(method, route, query, body);
    match ProtocolHandler::handle(service, request).await {
        ControlReply::Json { status, body } => (status, serde_json::from_slice(&body).unwrap()),
        ControlReply::Lines(_) => panic!("lines where JSON was expected"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_routes_write_read_watch_and_refuse_bad_input() {
    use futures::StreamExt;
    use p2pnode_node::ProtocolHandler;
    use p2pnode_node::control::{ControlReply, ControlRequest, Method};
    let d = tempfile::tempdir().unwrap();
    let a = start_memory_with(d.path(), Sync).await;
    a.client().networks().create("home").unwrap();
    let (s, _) = call(
        &a,
        true,
        "db/create",
        json!({"doc": "t", "network": "home"}),
    )
    .await;
    assert_eq!(s, 200);
    let watch = ProtocolHandler::handle(
        a.protocol::<SyncService>().unwrap(),
        ControlRequest::new(Method::Get, "db/watch", "doc=t", bytes::Bytes::new()),
    )
    .await;
    let ControlReply::Lines(mut lines) = watch else {
        panic!("watch is a stream of lines");
    };
    let (s, w) = call(
        &a,
        true,
        "db/put",
        json!({"doc": "t", "path": "x", "value": {"n": 1}}),
    )
    .await;
    assert_eq!(s, 200, "{w}");
    let line = lines.next().await.unwrap();
    let event: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(event["type"], "changed");
    assert_eq!(event["source"], "local");
    assert_eq!(event["heads"], w["heads"]);
    // Bad input: one clear error each, and nothing stored.
    let before = call(&a, true, "db/export", json!({"doc": "t"})).await.1;
    for (route, body, status) in [
        ("db/put", json!({"doc": "t", "path": "x"}), 400),
        (
            "db/put",
            json!({"doc": "nope", "path": "x", "value": 1}),
            404,
        ),
        (
            "db/put",
            json!({"doc": "t", "path": "a/b", "value": 1}),
            404,
        ),
        (
            "db/create",
            json!({"doc": "../etc", "network": "home"}),
            400,
        ),
        (
            "db/resolve",
            json!({"doc": "t", "path": "x", "keep": "sideways"}),
            400,
        ),
        ("db/import", json!({"doc": "t", "value": [1]}), 400),
    ] {
        let (s, e) = call(&a, true, route, body).await;
        assert_eq!(s, status, "{route}: {e}");
        assert!(!e["error"].as_str().unwrap_or_default().contains('\n'));
    }
    assert_eq!(
        call(&a, true, "db/export", json!({"doc": "t"})).await.1,
        before
    );
    let (s, v) = call(&a, true, "db/get", json!({"doc": "t", "path": "x/n"})).await;
    assert_eq!((s, v), (200, json!(1)));
    // Export, then import as a new document (its network comes along).
    let (s, _) = call(
        &a,
        true,
        "db/import",
        json!({"doc": "t2", "network": before["network"], "value": before["value"]}),
    )
    .await;
    assert_eq!(s, 200);
    let (_, list) = call(&a, false, "db/list", json!(null)).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(
        call(&a, true, "db/get", json!({"doc": "t2"})).await.1,
        json!({"x": {"n": 1}})
    );
    let (s, h) = call(&a, true, "db/history", json!({"doc": "t"})).await;
    assert_eq!(s, 200);
    assert_eq!(h[0]["author"], a.client().peer_id().to_string());
    drop(lines);
    a.shutdown().await;
}

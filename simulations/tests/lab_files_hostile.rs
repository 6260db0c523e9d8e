//! A hostile sender against a real `p2pnode` daemon (issue #19): a manifest with a path
//! escape is refused with one clear line, and nothing is written, outside the target or
//! in it, whether the receiver pulls it (`get`) or accepts it as an offer.
//!
//! The hostile peer is a node of this process running the files hook of
//! `p2pnode_files::service::hostile` (feature `test-util`): it skips every check an honest
//! sender makes, and each manifest's content id is the BLAKE3 root of its bytes, so the
//! receiver's path checks are all that can stop it. Its thread joins the network
//! namespace of a lab host, so its traffic stays in the lab like the daemon's. The same
//! peer delivers a manifest of safe paths, byte for byte: it is a working sender, refused
//! only for its paths.
//!
//! Needs root and the `p2pnode` binary: without them every test fails (they never skip).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{MACHINE, init_tracing};
use libp2p::{Multiaddr, PeerId};
use p2pnode_files::service::FilesError;
use p2pnode_files::service::hostile::{
    HostileFiles, HostileHandle, HostileService, RawContent, RawFile,
};
use p2pnode_sim::lab::poll::{Poll, wait_for};
use p2pnode_sim::lab::{Lab, LabBuilder, Node, NodeSpec};
use serde_json::Value;

/// The listen port of the daemon and of the hostile peer (each on its own host).
const PORT: u16 = 4001;
/// Longest a client command may take; a refusal comes at once.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for the hostile peer to start and reach the daemon.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a handshake gate to let a stream through, and how often to try: the
/// gate admits two handshakes a second from one peer once its burst is spent.
const GATE_TIMEOUT: Duration = Duration::from_secs(30);
const GATE_RETRY: Duration = Duration::from_millis(500);

/// Fails the test when the lab cannot run: these tests must run in CI as root.
fn require_lab() {
    if let Err(err) = p2pnode_sim::lab::require_root() {
        panic!("{err}: the hostile files lab tests need root (CI runs them as root)");
    }
    if let Err(err) = p2pnode_sim::lab::node::p2pnode_binary() {
        panic!("{err}: build it first (`cargo build -p p2pnode`)");
    }
}

/// One hostile manifest, and the words of the refusal it must get.
struct Case {
    label: &'static str,
    content: RawContent,
    refusal: &'static str,
}

fn file(path: &str, data: &[u8]) -> RawFile {
    RawFile {
        path: path.to_owned(),
        data: data.to_vec(),
    }
}

/// Where a write through an absolute path would land if the receiver allowed it: a
/// daemon runs as root, so `/etc` is writable to it.
fn etc_escape() -> PathBuf {
    PathBuf::from(format!("/etc/p2pnode-hostile-{}", std::process::id()))
}

/// The hostile manifests: each climbs out of the target, or names what Windows would
/// misread, in one way. `watched` is the directory whose tree must not change.
fn cases(watched: &Path) -> Vec<Case> {
    let abs = watched.join("absolute-escape.txt");
    let etc = etc_escape();
    let one = |label, path: &str, refusal| Case {
        label,
        content: RawContent::new(vec![file(path, b"written by a hostile sender")]).unwrap(),
        refusal,
    };
    vec![
        one("parent", "../escape.txt", "path goes up"),
        one("nested-parent", "a/../../escape.txt", "path goes up"),
        one("deep-parent", "a/b/../../../../escape.txt", "path goes up"),
        one("absolute", abs.to_str().unwrap(), "absolute path"),
        one("absolute-etc", etc.to_str().unwrap(), "absolute path"),
        one("backslash", "..\\escape.txt", "backslash"),
        one("drive", "C:/escape.txt", "colon"),
        one("device", "CON", "Windows device name"),
        one("device-ext", "sub/nul.txt", "Windows device name"),
        one("nul", "escape.txt\0.jpg", "NUL byte"),
        one("escape-sequence", "\x1b[2Jescape.txt", "control character"),
        one("trailing-dot", "escape.", "ends in a dot or space"),
        one("dot", "./escape.txt", "\".\" component"),
        // A safe file beside an escape: the whole manifest is refused, the safe file too.
        Case {
            label: "mixed",
            content: RawContent::new(vec![
                file("fine.txt", b"harmless"),
                file("../escape.txt", b"written by a hostile sender"),
            ])
            .unwrap(),
            refusal: "path goes up",
        },
    ]
}

/// The manifest of safe paths the hostile peer also offers: it must arrive intact.
fn control_files() -> Vec<RawFile> {
    vec![
        file("album/photo.jpg", &[0xa5; 40_000]),
        file("notes.txt", b"a working sender"),
    ]
}

/// Every path under `root` with its kind and size, not following links.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (String, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            let kind = format!("{:?}", meta.file_type());
            out.insert(
                path.strip_prefix(root).unwrap().to_path_buf(),
                (kind, meta.len()),
            );
        }
    }
    out
}

/// Runs `attempt` until a handshake gate lets it through. A node's gate admits a burst
/// of handshakes from one peer, then two a second; a refused handshake ends the stream
/// (`attempt` gives back what it saw, as `Err`). The cases run faster than that, so some
/// wait for the next slot.
async fn through_the_gate<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    wait_for(what, GATE_TIMEOUT, GATE_RETRY, || {
        let attempt = attempt();
        async move {
            match attempt.await {
                Ok(value) => Poll::Ready(value),
                Err(seen) => Poll::seen(seen),
            }
        }
    })
    .await
    .unwrap()
}

/// `Err` when a client command failed because the other side's gate refused the stream
/// (it drops the stream, which the handshake names as a refusal).
fn gate_refused(out: Output) -> Result<Output, String> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success()
        && stderr.contains("secure handshake with")
        && stderr.contains("closed the stream instead of answering the handshake")
    {
        Err(stderr.into_owned())
    } else {
        Ok(out)
    }
}

/// The hostile peer: a node with [`HostileFiles`] on its own thread, inside a lab host's
/// network namespace.
struct HostilePeer {
    peer_id: PeerId,
    handle: HostileHandle,
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostilePeer {
    /// Starts it in namespace `ns`, listening on `listen`, connected to `receiver`.
    async fn start(
        ns: &str,
        listen: Multiaddr,
        receiver: Multiaddr,
        data_dir: PathBuf,
        contents: Vec<RawContent>,
    ) -> HostilePeer {
        let ns_path = Path::new("/run/netns").join(ns);
        let ns_file = std::fs::File::open(&ns_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", ns_path.display()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("hostile-peer".into())
            .spawn(move || {
                // A socket belongs to the namespace of the thread that makes it, and a
                // thread starts in its parent's: this one and all it spawns are in the lab.
                nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("join the hostile host's network namespace");
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                runtime.block_on(async move {
                    let config = p2pnode_node::Config {
                        listen: vec![listen],
                        bootstrap: vec![receiver.clone()],
                        mdns: false,
                        ..p2pnode_node::Config::default()
                    };
                    let node = p2pnode_node::Node::builder(&data_dir, config)
                        .protocol(HostileFiles::new(contents))
                        .start()
                        .await
                        .expect("the hostile node starts");
                    node.client()
                        .connect_addr(receiver)
                        .await
                        .expect("the hostile node reaches the daemon");
                    let handle = node
                        .protocol::<HostileService>()
                        .expect("the hostile protocol runs")
                        .handle()
                        .clone();
                    let ready = (
                        node.client().peer_id(),
                        handle,
                        tokio::runtime::Handle::current(),
                    );
                    let _ = ready_tx.send(ready);
                    let _ = stop_rx.await;
                    node.shutdown().await;
                });
            })
            .unwrap();
        let (peer_id, handle, runtime) = tokio::time::timeout(START_TIMEOUT, ready_rx)
            .await
            .expect("the hostile peer starts in time")
            .expect("the hostile peer starts (its panic is above)");
        HostilePeer {
            peer_id,
            handle,
            runtime,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Offers `content` to `peer` under `name`, from the peer's own runtime.
    async fn offer(
        &self,
        peer: PeerId,
        content: &RawContent,
        name: &str,
    ) -> Result<(), FilesError> {
        let (handle, content, name) = (self.handle.clone(), content.clone(), name.to_owned());
        self.runtime
            .spawn(async move { handle.offer(peer, &content, &name).await })
            .await
            .unwrap()
    }
}

impl Drop for HostilePeer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A lab with the daemon `b` on one host and the hostile peer on another.
struct Fixture {
    lab: Lab,
    receiver: Node,
    hostile: HostilePeer,
    /// The directory whose tree no hostile manifest may change; every target is in it.
    watched: PathBuf,
    /// Where the control manifest goes, outside `watched`.
    control_dir: tempfile::TempDir,
    _root: tempfile::TempDir,
    cases: Vec<Case>,
    control: RawContent,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("P2PNODE_LAB_KEEP").is_some() {
            let dir = self.lab.keep_workdir();
            eprintln!("lab logs kept in {}", dir.display());
        }
    }
}

impl Fixture {
    async fn start() -> Fixture {
        init_tracing();
        require_lab();
        let root = tempfile::tempdir().unwrap();
        let watched = root.path().join("watched");
        std::fs::create_dir_all(watched.join("inbox")).unwrap();
        let cases = cases(&watched);
        let control = RawContent::new(control_files()).unwrap();
        let lab = LabBuilder::new()
            .public_host("b")
            .public_host("evil")
            .build()
            .await
            .expect("lab builds");
        let b_ip = lab.host("b").unwrap().ip;
        let spec = NodeSpec {
            listen: vec![format!("/ip4/{b_ip}/tcp/{PORT}")],
            ..NodeSpec::default()
        };
        let receiver = lab.start_node("b", "b", spec).await.expect("daemon");
        let evil_ip = lab.host("evil").unwrap().ip;
        let mut contents: Vec<RawContent> = cases.iter().map(|c| c.content.clone()).collect();
        contents.push(control.clone());
        let hostile = HostilePeer::start(
            lab.namespace("evil").unwrap(),
            format!("/ip4/{evil_ip}/tcp/{PORT}").parse().unwrap(),
            receiver
                .addr_with_id(&format!("/ip4/{b_ip}/tcp/{PORT}"))
                .parse()
                .unwrap(),
            lab.workdir().join("evil"),
            contents,
        )
        .await;
        // The daemon sees the connection the hostile peer opened before anything is asked.
        let id = hostile.peer_id.to_string();
        let (receiver_ref, id) = (&receiver, &id);
        wait_for(
            "the daemon to see the hostile peer",
            START_TIMEOUT,
            Duration::from_millis(100),
            move || async move {
                match receiver_ref.peer(id).await {
                    Ok(Some(_)) => Poll::Ready(()),
                    Ok(None) => Poll::pending(),
                    Err(e) => Poll::seen(e),
                }
            },
        )
        .await
        .unwrap();
        Fixture {
            lab,
            receiver,
            hostile,
            watched,
            control_dir: tempfile::tempdir().unwrap(),
            _root: root,
            cases,
            control,
        }
    }

    fn receiver_id(&self) -> PeerId {
        self.receiver.peer_id().parse().unwrap()
    }

    /// Where case `label` is fetched into: a directory that does not exist yet, in the
    /// watched tree.
    fn target(&self, label: &str) -> PathBuf {
        self.watched.join("inbox").join(label)
    }

    /// `p2pnode get <id> --to <to> --from <hostile>` on the daemon.
    async fn get(&self, content: &RawContent, to: PathBuf) -> Output {
        let args = [
            "get".to_string(),
            content.id().to_string(),
            "--to".into(),
            to.to_str().unwrap().into(),
            "--from".into(),
            self.hostile.peer_id.to_string(),
        ];
        let (receiver, args) = (&self.receiver, &args);
        through_the_gate(
            "a get through the hostile peer's gate",
            move || async move {
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = receiver.client_output(&argv, CLIENT_TIMEOUT).await.unwrap();
                gate_refused(out)
            },
        )
        .await
    }

    /// The hostile peer offers `content` under `name`, past the daemon's gate.
    async fn offer(&self, content: &RawContent, name: &str) -> Result<(), FilesError> {
        let (hostile, to) = (&self.hostile, self.receiver_id());
        through_the_gate("an offer through the daemon's gate", move || async move {
            match hostile.offer(to, content, name).await {
                Err(FilesError::Node(e @ p2pnode_node::NodeError::Handshake { .. })) => {
                    Err(e.to_string())
                }
                other => Ok(other),
            }
        })
        .await
    }

    /// The hostile peer offers `content`; the daemon accepts it into `to`.
    async fn offer_and_accept(&self, content: &RawContent, to: PathBuf) -> Output {
        through_the_gate("an accept through the hostile peer's gate", || async {
            self.offer(content, "holiday photos")
                .await
                .expect("the daemon takes the offer into its inbox");
            let inbox: Vec<Value> = self.receiver.client_json(&["inbox"]).await.unwrap();
            let offer = inbox
                .iter()
                .find(|o| o["content_id"] == content.id().to_string())
                .unwrap_or_else(|| panic!("the offer is not in the inbox: {inbox:?}"));
            let offer = offer["id"].as_u64().unwrap().to_string();
            let args = ["accept", &offer, "--to", to.to_str().unwrap()];
            let out = self
                .receiver
                .client_output(&args, CLIENT_TIMEOUT)
                .await
                .unwrap();
            gate_refused(out)
        })
        .await
    }

    /// Lets the daemon take offers from the hostile peer (offers need the permission).
    async fn allow_offers(&self) {
        let id = self.hostile.peer_id.to_string();
        self.receiver
            .client_text(&["trust", "allow", &id, "--protocols", "files"])
            .await
            .unwrap();
    }

    /// Runs every hostile case through `deliver`, then checks what the daemon did: one
    /// clear line per refusal, each manifest fetched (so its paths were what refused it)
    /// but no file, and the watched tree and `/etc` unchanged.
    async fn refuse_every_case<'a, F, Fut>(&'a self, deliver: F)
    where
        F: Fn(&'a RawContent, PathBuf) -> Fut,
        Fut: std::future::Future<Output = Output>,
    {
        let before = snapshot(&self.watched);
        let groups = self.hostile.handle.groups_served();
        for case in &self.cases {
            let served = self.hostile.handle.manifests_served();
            let out = deliver(&case.content, self.target(case.label)).await;
            // Fetched, then refused: the paths refused it, not a failure to reach the peer.
            assert!(
                self.hostile.handle.manifests_served() > served,
                "{}: the daemon did not fetch the manifest: {}",
                case.label,
                String::from_utf8_lossy(&out.stderr)
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "{}: the hostile manifest was accepted: {}",
                case.label,
                String::from_utf8_lossy(&out.stdout)
            );
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            assert!(
                lines.len() == 1
                    && lines[0].contains("refused the manifest")
                    && lines[0].contains(case.refusal),
                "{}: not one clear line: {stderr:?}",
                case.label
            );
        }
        assert_eq!(
            self.hostile.handle.groups_served(),
            groups,
            "the daemon asked for a hostile manifest's files"
        );
        assert_eq!(
            snapshot(&self.watched),
            before,
            "a hostile manifest changed the watched tree"
        );
        let etc = etc_escape();
        if etc.exists() {
            // Not left behind for the next run to trip over.
            let _ = std::fs::remove_file(&etc);
            panic!("{} was written", etc.display());
        }
    }

    /// The control manifest arrived in `to`, byte for byte, from the hostile peer.
    fn assert_control_arrived(&self, out: &Output, to: &Path) {
        assert!(
            out.status.success(),
            "the safe manifest failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for f in control_files() {
            assert_eq!(
                std::fs::read(to.join(&f.path)).unwrap(),
                f.data,
                "{} differs",
                f.path
            );
        }
        assert!(self.hostile.handle.groups_served() > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_manifest_with_path_escapes_is_refused_and_nothing_is_written() {
    let _machine = MACHINE.read().await;
    let f = Fixture::start().await;
    // First, while the hostile peer's gate admits a burst (a transfer opens two streams):
    // the peer is a working sender.
    let to = f.control_dir.path().join("pulled");
    let out = f.get(&f.control, to.clone()).await;
    f.assert_control_arrived(&out, &to);

    f.refuse_every_case(|content, to| f.get(content, to)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offered_manifest_with_path_escapes_is_refused_and_nothing_is_written() {
    let _machine = MACHINE.read().await;
    let f = Fixture::start().await;
    f.allow_offers().await;
    let to = f.control_dir.path().join("accepted");
    let out = f.offer_and_accept(&f.control, to.clone()).await;
    f.assert_control_arrived(&out, &to);

    f.refuse_every_case(|content, to| f.offer_and_accept(content, to))
        .await;
    let inbox: Vec<Value> = f.receiver.client_json(&["inbox"]).await.unwrap();
    assert!(inbox.is_empty(), "offers left in the inbox: {inbox:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_named_with_a_path_escape_is_refused_before_the_inbox() {
    let _machine = MACHINE.read().await;
    let f = Fixture::start().await;
    f.allow_offers().await;
    let manifests = f.hostile.handle.manifests_served();
    let etc = etc_escape();
    for name in [
        "../escape",
        "a/../../escape",
        etc.to_str().unwrap(),
        "..\\escape",
        "CON",
        "escape\0.jpg",
        "\x1b[2Jescape",
    ] {
        match f.offer(&f.control, name).await {
            Err(FilesError::Refused(message)) => assert!(
                message.starts_with("bad name"),
                "{name:?}: unclear refusal {message:?}"
            ),
            other => panic!("{name:?}: the offer was not refused: {other:?}"),
        }
    }
    let inbox: Vec<Value> = f.receiver.client_json(&["inbox"]).await.unwrap();
    assert!(
        inbox.is_empty(),
        "a badly named offer reached the inbox: {inbox:?}"
    );
    assert_eq!(
        f.hostile.handle.manifests_served(),
        manifests,
        "the daemon fetched a badly named offer"
    );
    // The same content under a plain name is taken: the name alone was refused.
    f.offer(&f.control, "holiday photos")
        .await
        .expect("a plainly named offer is taken");
}

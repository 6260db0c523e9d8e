//! Files between real `p2pnode` daemons in lab namespaces (issue #19's "Done when"): a
//! large random file and a tree of 10,000 small files arrive byte-identical, also with
//! 5 % packet loss; a daemon killed with SIGKILL on either side at a random point resumes
//! when the same `get` runs again, with the sender's bytes on the wire within 1.1x the
//! content; a provider whose copy went bad is caught and dropped while the others finish
//! the file; a symlink planted in the target cannot redirect a write outside it; a full
//! disk gives one clear line and the transfer resumes once space is freed.
//!
//! The hosts sit on the lab's public segment (veth into one bridge), so the daemons talk
//! directly; the NAT paths are in `lab_files_nat.rs`. Needs root, the `p2pnode` binary,
//! `diff` and `mount`: without any of them every test fails (they never skip).

#![allow(clippy::unwrap_used)]

mod common;
#[path = "lab_files/resume.rs"]
mod resume;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{MACHINE, init_tracing, report};
use p2pnode_sim::lab::poll::{Poll, wait_for};
use p2pnode_sim::lab::{Lab, LabBuilder, Node, NodeSpec};
use rand::Rng;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

/// The large file: 1 GiB, as the issue asks. A debug build moved 256 MiB at 6.7 to
/// 8.1 MiB/s here, so this takes about two minutes of CI's time.
const LARGE: u64 = 1 << 30;
/// Files in the tree, and their largest size.
const TREE_FILES: usize = 10_000;
const TREE_MAX_FILE: usize = 8 << 10;
/// Content for the loss and kill tests: large enough that a kill lands mid-transfer.
const MEDIUM: u64 = 64 << 20;
/// Percent of packets dropped on each host's way in.
const LOSS_PERCENT: u8 = 5;
/// Longest a whole `get` may take.
const GET_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest wait for a transfer to reach the point where a test kills a daemon.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(300);
/// The listen port of every daemon (each host is its own namespace).
const PORT: u16 = 4001;

/// Fails the test when the lab cannot run: these tests must run in CI as root.
fn require_lab() {
    if let Err(err) = p2pnode_sim::lab::require_root() {
        panic!("{err}: the files lab tests need root (CI runs them as root)");
    }
    if let Err(err) = p2pnode_sim::lab::node::p2pnode_binary() {
        panic!("{err}: build it first (`cargo build -p p2pnode`)");
    }
}

/// Size cap of the tmpfs that holds a test's content: the large test's file, its copy
/// and the tree, with room to spare. A tmpfs takes memory only for what it holds.
const CONTENT_DISK: &str = "3g";

/// Keeps the lab's logs when the test panics (or env `P2PNODE_LAB_KEEP` is set).
/// Fields drop in order: the daemons stop before their content's tmpfs is unmounted,
/// and that before its mount point is removed.
struct Files {
    lab: Lab,
    nodes: Vec<Node>,
    content: Tmpfs,
    _dir: tempfile::TempDir,
}

impl Drop for Files {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("P2PNODE_LAB_KEEP").is_some() {
            let dir = self.lab.keep_workdir();
            eprintln!("lab logs kept in {}", dir.display());
        }
    }
}

impl Files {
    /// Public hosts named `names`, each with a daemon; all bootstrap from the first.
    async fn start(names: &[&str]) -> Files {
        init_tracing();
        require_lab();
        // The content lives in memory: a CI machine's disk can be nearly full (a 1 GiB
        // get once failed there with "disk full" half way). Mounted before the daemons
        // start, for the reason `a_full_disk_gives_one_clear_line...` gives.
        let dir = tempfile::tempdir().unwrap();
        let content = Tmpfs::mount(&dir.path().join("content"), CONTENT_DISK);
        let mut builder = LabBuilder::new();
        for name in names {
            builder = builder.public_host(name);
        }
        let lab = builder.build().await.expect("lab builds");
        let mut nodes: Vec<Node> = Vec::new();
        for name in names {
            let ip = lab.host(name).unwrap().ip;
            let bootstrap = nodes
                .first()
                .map(|first| {
                    let ip = lab.host(first.host()).unwrap().ip;
                    vec![first.addr_with_id(&format!("/ip4/{ip}/tcp/{PORT}"))]
                })
                .unwrap_or_default();
            let spec = NodeSpec {
                listen: vec![format!("/ip4/{ip}/tcp/{PORT}")],
                bootstrap,
                ..NodeSpec::default()
            };
            nodes.push(lab.start_node(name, name, spec).await.expect("daemon"));
        }
        Files {
            lab,
            nodes,
            content,
            _dir: dir,
        }
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name() == name).unwrap()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.content.0.join(rel)
    }

    /// Bytes the host's `eth0` has sent.
    async fn tx_bytes(&self, host: &str) -> u64 {
        let out = self
            .lab
            .exec(host, "ip", &["-j", "-s", "link", "show", "eth0"])
            .await
            .unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        v[0]["stats64"]["tx"]["bytes"].as_u64().unwrap()
    }

    /// Drops `percent` % of the packets arriving at `host` (nftables `numgen`; this
    /// kernel has no netem).
    async fn add_loss(&self, host: &str, percent: u8) {
        let rules = [
            "add table inet loss".to_string(),
            "add chain inet loss input_l { type filter hook input priority -10; policy accept; }"
                .to_string(),
            format!(
                "add rule inet loss input_l iifname eth0 numgen random mod 100 < {percent} drop"
            ),
        ];
        for rule in rules {
            self.lab.exec(host, "nft", &[&rule]).await.unwrap();
        }
    }
}

/// `p2pnode share <path> --json` on `node`: the content id.
async fn share(node: &Node, path: &Path) -> String {
    let v: Value = node
        .client_json(&["share", path.to_str().unwrap()])
        .await
        .unwrap();
    v["content_id"].as_str().unwrap().to_string()
}

/// `p2pnode get <id> --to <to> --from <peer>...` on `node`, to its end.
async fn get(node: &Node, id: &str, to: &Path, from: &[&Node]) -> Output {
    let mut args = vec!["get", id, "--to", to.to_str().unwrap()];
    for p in from {
        args.extend(["--from", p.peer_id()]);
    }
    node.client_output(&args, GET_TIMEOUT).await.unwrap()
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `size` random bytes (from the kernel, fast even in a debug build).
fn random_file(path: &Path, size: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let out = std::process::Command::new("head")
        .args(["-c", &size.to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(path).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "head failed");
}

/// A tree of `files` small files of random sizes (0 to [`TREE_MAX_FILE`]) and bytes,
/// 100 to a directory.
fn random_tree(root: &Path, files: usize) {
    let mut rng = rand::thread_rng();
    for i in 0..files {
        let dir = root.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        let mut bytes = vec![0u8; rng.gen_range(0..=TREE_MAX_FILE)];
        rng.fill(&mut bytes[..]);
        std::fs::write(dir.join(format!("f{i:05}.bin")), bytes).unwrap();
    }
}

/// Whether two files or trees hold the same names and bytes (`diff -r`, which never
/// follows a symlink's target outside the comparison silently: `--no-dereference`).
fn assert_same(a: &Path, b: &Path) {
    let out = std::process::Command::new("diff")
        .args(["-r", "-q", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .expect("diff runs");
    assert!(
        out.status.success(),
        "{} and {} differ: {}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .take(10)
            .collect::<Vec<_>>()
            .join("; ")
    );
}

/// Files and bytes under `dir`, counting every regular file.
fn content_size(dir: &Path) -> (u64, u64) {
    let mut stack = vec![dir.to_path_buf()];
    let (mut files, mut bytes) = (0, 0);
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    (files, bytes)
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    (bytes as f64 / (1 << 20) as f64 / d.as_secs_f64() * 10.0).round() / 10.0
}

/// What one transfer did, printed as a JSON line.
#[derive(Debug, Serialize)]
struct Outcome {
    test: &'static str,
    files: u64,
    bytes: u64,
    seconds: f64,
    mib_per_s: f64,
    /// Bytes the sender's interface sent over the content's bytes.
    wire_ratio: f64,
}

/// Shares `src` on `a`, gets it on `b` and checks it arrived whole; returns the outcome.
async fn share_and_get(f: &Files, test: &'static str, src: &Path) -> Outcome {
    let (a, b) = (f.node("a"), f.node("b"));
    let (files, bytes) = content_size(src);
    let id = share(a, src).await;
    let to = f.path(&format!("{test}-out"));
    let sent_before = f.tx_bytes("a").await;
    let start = Instant::now();
    let out = get(b, &id, &to, &[a]).await;
    let took = start.elapsed();
    assert_ok("get", &out);
    assert_same(src, &to.join(src.file_name().unwrap()));
    let sent = f.tx_bytes("a").await - sent_before;
    let outcome = Outcome {
        test,
        files,
        bytes,
        seconds: secs(took),
        mib_per_s: mib_per_s(bytes, took),
        wire_ratio: sent as f64 / bytes as f64,
    };
    report(&outcome);
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_file_and_ten_thousand_small_files_arrive_identical() {
    let _machine = MACHINE.write().await;
    let f = Files::start(&["a", "b"]).await;
    let big = f.path("big/large.bin");
    random_file(&big, LARGE);
    let big = share_and_get(&f, "large-file", big.parent().unwrap()).await;
    assert_eq!(big.bytes, LARGE);
    let tree = f.path("tree");
    random_tree(&tree, TREE_FILES);
    let tree = share_and_get(&f, "small-files", &tree).await;
    assert_eq!(tree.files, TREE_FILES as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_five_percent_loss_both_arrive_identical() {
    let _machine = MACHINE.write().await;
    let f = Files::start(&["a", "b"]).await;
    f.add_loss("a", LOSS_PERCENT).await;
    f.add_loss("b", LOSS_PERCENT).await;
    let big = f.path("big/medium.bin");
    random_file(&big, MEDIUM);
    share_and_get(&f, "loss-file", big.parent().unwrap()).await;
    let tree = f.path("tree");
    random_tree(&tree, TREE_FILES);
    share_and_get(&f, "loss-small-files", &tree).await;
}

/// The running transfer of `node` once it has verified at least `bytes`.
async fn wait_progress(node: &Node, bytes: u64) -> Value {
    let what = format!("{} to verify {bytes} bytes", node.name());
    wait_for(
        &what,
        PROGRESS_TIMEOUT,
        Duration::from_millis(50),
        || async {
            if let Err(err) = node.check_running() {
                return Poll::Fail(err);
            }
            match node.client_json::<Vec<Value>>(&["transfers"]).await {
                Ok(list) => match list.iter().find(|t| t["status"] == "running") {
                    Some(t) if t["bytes_done"].as_u64().unwrap_or(0) >= bytes => {
                        Poll::Ready(t.clone())
                    }
                    Some(t) => Poll::seen(format!("{} bytes done", t["bytes_done"])),
                    None => Poll::seen(format!("{list:?}")),
                },
                Err(err) => Poll::seen(err),
            }
        },
    )
    .await
    .unwrap()
}

/// Writes `MEDIUM` random bytes to `original` and shares a copy of them under the same
/// name on each of `providers`: the same content id, which is returned.
async fn share_copies(f: &Files, providers: &[&Node], original: &Path) -> String {
    random_file(original, MEDIUM);
    let mut id = None;
    for p in providers {
        // The same name and bytes under each provider: the same content id.
        let copy = f.path(&format!("{}/share/data.bin", p.name()));
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        std::fs::copy(original, &copy).unwrap();
        let shared = share(p, copy.parent().unwrap()).await;
        assert_eq!(*id.get_or_insert(shared.clone()), shared);
    }
    id.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_with_a_corrupt_copy_is_dropped_and_the_others_finish() {
    let _machine = MACHINE.write().await;
    let f = Files::start(&["a", "b", "c", "d"]).await;
    let b = f.node("b");
    let providers = [f.node("a"), f.node("c"), f.node("d")];
    let original = f.path("original.bin");
    let id = share_copies(&f, &providers, &original).await;
    // d's copy rots after it was shared: same size, other bytes, so every group it
    // serves fails verification.
    random_file(&f.path("d/share/data.bin"), MEDIUM);

    let to = f.path("out");
    let out = get(b, &id, &to, &providers).await;
    assert_ok("get", &out);
    let got = to.join("share/data.bin");
    assert_same(&original, &got);
    let list: Vec<Value> = b.client_json(&["transfers"]).await.unwrap();
    let t = &list[0];
    let d_id = providers[2].peer_id();
    let entry = t["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == d_id)
        .unwrap_or_else(|| panic!("d is not among the providers: {t}"));
    assert_eq!(entry["dropped"], true, "d was not dropped: {t}");
    let d_log = std::fs::read_to_string(b.log_path()).unwrap();
    assert!(
        d_log.contains("failed verification"),
        "b's log does not say a group failed verification"
    );
}

/// Longest the transfer may go without verifying a byte after a provider is killed.
const MAX_STALL: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_killed_mid_pull_leaves_the_others_to_finish_with_a_short_stall() {
    let _machine = MACHINE.write().await;
    let f = Files::start(&["a", "b", "c", "d"]).await;
    let b = f.node("b");
    let providers = [f.node("a"), f.node("c"), f.node("d")];
    let original = f.path("original.bin");
    let id = share_copies(&f, &providers, &original).await;
    let to = f.path("out");
    let mut args = vec!["get", id.as_str(), "--to", to.to_str().unwrap()];
    for p in providers {
        args.extend(["--from", p.peer_id()]);
    }
    let mut getter = b.spawn_client(&args).unwrap();
    wait_progress(b, MEDIUM / 4).await;
    providers[1].kill().await.unwrap();
    let killed = Instant::now();

    // Follow the transfer: the longest time between two snapshots that show progress.
    let (mut last_bytes, mut last_change) = (0u64, killed);
    let mut stall = Duration::ZERO;
    loop {
        let list: Vec<Value> = b.client_json(&["transfers"]).await.unwrap();
        let t = list.last().unwrap();
        let done = t["bytes_done"].as_u64().unwrap_or(0);
        if done > last_bytes {
            stall = stall.max(last_change.elapsed());
            (last_bytes, last_change) = (done, Instant::now());
        }
        if t["status"] != "running" {
            assert_eq!(t["status"], "done", "the transfer failed: {t}");
            break;
        }
        assert!(
            killed.elapsed() < GET_TIMEOUT,
            "the transfer did not finish: {t}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = tokio::time::timeout(GET_TIMEOUT, getter.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "get failed after the provider was killed");
    assert_same(&original, &to.join("share/data.bin"));
    report(&serde_json::json!({
        "test": "provider_killed",
        "bytes": MEDIUM,
        "stall_ms": stall.as_millis(),
        "finished_s_after_kill": killed.elapsed().as_secs_f64(),
    }));
    assert!(
        stall < MAX_STALL,
        "the transfer stalled {stall:?} after the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_in_the_target_cannot_redirect_a_write_outside() {
    let _machine = MACHINE.write().await;
    let f = Files::start(&["a", "b"]).await;
    let (a, b) = (f.node("a"), f.node("b"));
    let src = f.path("album");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("photo.jpg"), b"not really a photo").unwrap();
    let id = share(a, &src).await;
    // Someone planted `album` in the target as a link to a directory outside it.
    let outside = f.path("outside");
    let to = f.path("target");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&to).unwrap();
    std::os::unix::fs::symlink(&outside, to.join("album")).unwrap();

    let out = get(b, &id, &to, &[a]).await;
    assert!(!out.status.success(), "a get through a symlink succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("symbolic link") && stderr.lines().count() == 1,
        "unclear error: {stderr}"
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written outside the target"
    );
}

/// A tmpfs mounted by the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let opts = format!("size={size}");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
            .arg(path)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(path.to_path_buf())
    }

    /// Grows it; the daemon sees the same file system (the size is the superblock's).
    fn resize(&self, size: &str) {
        let opts = format!("remount,size={size}");
        let out = std::process::Command::new("mount")
            .args(["-o", &opts])
            .arg(&self.0)
            .output()
            .expect("mount runs");
        assert!(out.status.success(), "remount tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_one_clear_line_and_resumes_once_space_is_freed() {
    let _machine = MACHINE.write().await;
    // Mounted before the daemons start: `ip netns exec` gives each its own mount
    // namespace, which does not see mounts made later where `/` is not shared.
    let mount_dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&mount_dir.path().join("small-disk"), "16m");
    let f = Files::start(&["a", "b"]).await;
    let (a, b) = (f.node("a"), f.node("b"));
    let src = f.path("src/data.bin");
    random_file(&src, 48 << 20);
    let id = share(a, src.parent().unwrap()).await;
    let to = disk.0.join("inbox");

    let out = get(b, &id, &to, &[a]).await;
    assert!(!out.status.success(), "a get onto a full disk succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Progress lines may come first; the error is one line, and it names the cause.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("transfer "))
        .collect();
    assert_eq!(errors.len(), 1, "not one error line: {stderr}");
    let last = errors[0];
    assert!(
        last.contains("disk full") && last.contains("run the same command again"),
        "unclear error: {stderr}"
    );
    let failed: Vec<Value> = b.client_json(&["transfers"]).await.unwrap();
    let verified = failed[0]["bytes_done"].as_u64().unwrap();

    disk.resize("96m");
    let out = get(b, &id, &to, &[a]).await;
    assert_ok("get after freeing space", &out);
    assert_same(src.parent().unwrap(), &to.join("src"));
    let list: Vec<Value> = b.client_json(&["transfers"]).await.unwrap();
    let done = list.iter().find(|t| t["status"] == "done").unwrap();
    report(&serde_json::json!({
        "test": "disk-full",
        "error": last,
        "verified_before_full": verified,
        "groups_resumed": done["groups_resumed"],
        "groups_total": done["groups_total"],
    }));
    assert!(
        done["groups_resumed"].as_u64().unwrap() > 0,
        "the verified part was not kept: {done}"
    );
}

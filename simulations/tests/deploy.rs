//! The files of `deploy/` work as written:
//! - the relay starts in a lab namespace with exactly the systemd unit's command line and
//!   the guide's config file (its placeholder address set to the lab's), and nodes behind
//!   NAT reserve on it over TCP and QUIC, the two ports the guide opens;
//! - `systemd-analyze verify` finds nothing to say about either unit, and the relay unit's
//!   exposure score stays low;
//! - the container file agrees with the unit and the config (port, data directory, user),
//!   and builds where a container engine runs.
//!
//! Needs root for the lab and systemd-analyze for the units; without them the tests fail
//! when env CI is set and otherwise say why and return.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{MACHINE, init_tracing, lab_allowed};
use p2pnode_sim::lab::scenarios::{RELAY_IP, Transport, wait_reservation};
use p2pnode_sim::lab::{LabBuilder, NatKind, NodeSpec};

const SIM_BIN: &str = env!("CARGO_BIN_EXE_p2pnode-sim");
const RELAY_UNIT: &str = include_str!("../../deploy/p2pnode-relay.service");
const USER_UNIT: &str = include_str!("../../deploy/p2pnode.service");
const RELAY_TOML: &str = include_str!("../../deploy/relay.toml");
const DOCKERFILE: &str = include_str!("../../deploy/Dockerfile");

/// The address the guide's config file has for the reader to replace.
const GUIDE_ADDR: &str = "203.0.113.10";
/// Where the unit has the binary, the state and the config.
const UNIT_BINARY: &str = "/usr/local/bin/p2pnode";
const UNIT_STATE: &str = "/var/lib/p2pnode";
const UNIT_CONFIG: &str = "/etc/p2pnode/relay.toml";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The value of `key=` in a unit, if one line sets it.
fn unit_value<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

/// The unit's `ExecStart=` split into words (our unit quotes nothing).
fn exec_start(unit: &str) -> Vec<String> {
    let line = unit_value(unit, "ExecStart").expect("the unit has ExecStart=");
    assert!(
        !line.contains(['"', '\'', '$', '%']),
        "ExecStart needs no quoting or expansion here: {line}"
    );
    line.split_whitespace().map(str::to_string).collect()
}

/// Replaces the value after `flag` in `args`, which must be `expected`.
fn replace_flag_value(args: &mut [String], flag: &str, expected: &str, new: &Path) {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("ExecStart has no {flag}: {args:?}"));
    assert_eq!(args[at + 1], expected, "{flag} of ExecStart");
    args[at + 1] = new.to_string_lossy().into_owned();
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Fails in CI, and otherwise says why and returns false, when `tool` is missing.
fn tool_allowed(tool: &str, package: &str) -> bool {
    if have(tool) {
        return true;
    }
    let reason = format!("{tool} not found (Debian package {package}; scripts/test installs it)");
    assert!(std::env::var_os("CI").is_none(), "{reason}");
    eprintln!("skipping: {reason}");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_runs_with_the_units_command_line_and_nodes_behind_nat_reserve_on_it() {
    if !lab_allowed() {
        return;
    }
    let _machine = MACHINE.read().await;
    init_tracing();
    let lab = LabBuilder::new()
        .public_host("relay")
        .router("r1", NatKind::Cone)
        .host("a", "r1")
        .host("b", "r1")
        .sim_binary(SIM_BIN)
        .build()
        .await
        .expect("lab builds");

    // The guide's config with the lab relay's address where the reader puts theirs.
    assert!(
        RELAY_TOML.contains(GUIDE_ADDR),
        "relay.toml has the placeholder"
    );
    let config = lab.workdir().join("relay.toml");
    std::fs::write(
        &config,
        RELAY_TOML.replace(GUIDE_ADDR, &RELAY_IP.to_string()),
    )
    .expect("write config");

    // The unit's command line with its three paths swapped for the lab's: the binary, the
    // state directory and the config file. Everything else is the unit's.
    let mut args = exec_start(RELAY_UNIT);
    assert_eq!(args.remove(0), UNIT_BINARY);
    replace_flag_value(
        &mut args,
        "--data-dir",
        UNIT_STATE,
        &lab.node_data_dir("relay"),
    );
    replace_flag_value(&mut args, "--config", UNIT_CONFIG, &config);
    let spec = NodeSpec {
        command_line: Some(args),
        ..NodeSpec::default()
    };
    let relay = lab
        .start_node("relay", "relay", spec)
        .await
        .expect("relay starts with the unit's command line");
    let status = relay.status().await.expect("relay status");
    assert!(status.relay_server, "the unit runs a relay: {status:?}");
    for transport in [Transport::Tcp, Transport::Quic] {
        let addr = transport.addr(RELAY_IP, 4701);
        assert!(
            status.external_addrs.contains(&addr),
            "the config's external address {addr} is the relay's: {status:?}"
        );
    }

    // One node behind NAT on each transport, bootstrapping from the relay as the guide says.
    let mut peers = Vec::new();
    for (host, transport) in [("a", Transport::Tcp), ("b", Transport::Quic)] {
        let ip = lab.host(host).expect("host").ip;
        let spec = NodeSpec {
            listen: vec![transport.addr(ip, 4001)],
            bootstrap: vec![relay.addr_with_id(&transport.addr(RELAY_IP, 4701))],
            ..NodeSpec::default()
        };
        let node = lab.start_node(host, host, spec).await.expect("peer starts");
        peers.push((node, transport));
    }
    for (node, transport) in &peers {
        let reservations = wait_reservation(node, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{} reserves: {e}\n{}", node.name(), node.log_tail(4000)));
        let relay_addr = transport.addr(RELAY_IP, 4701);
        assert!(
            reservations.iter().any(|r| r.starts_with(&relay_addr)),
            "{} reserved on {relay_addr}: {reservations:?}",
            node.name()
        );
    }
    relay.check_running().expect("relay still running");
    let status = relay.status().await.expect("relay status");
    for transport in [Transport::Tcp, Transport::Quic] {
        let addr = transport.addr(RELAY_IP, 4701);
        assert!(
            status.listen_addrs.iter().any(|a| a.starts_with(&addr)),
            "the relay listens on {addr} as the config says: {status:?}"
        );
    }
    let log = relay.log_tail(1 << 20);
    assert!(
        !log.contains(" ERROR ") && !log.contains(" WARN "),
        "the guide's relay runs without a warning: {log}"
    );
}

/// `systemd-analyze verify` on a unit file at `path`, with `env`; panics with its output
/// unless it exits 0 and prints nothing (it exits 0 on unknown keys and bad values, and
/// only says so).
fn verify_unit(path: &Path, user: bool, env: &[(&str, &Path)]) {
    let mut cmd = Command::new("systemd-analyze");
    if user {
        cmd.arg("--user");
    }
    // The man page is installed with the binary, not here.
    cmd.args(["verify", "--man=no"]).arg(path);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let out = cmd.output().expect("run systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {}: {said}",
        path.display()
    );
}

#[test]
fn systemd_analyze_verify_passes_on_both_units() {
    if !tool_allowed("systemd-analyze", "systemd") {
        return;
    }
    let binary = p2pnode_sim::lab::node::p2pnode_binary().expect("p2pnode is built");
    let dir = tempfile::tempdir().expect("tempdir");

    // The relay unit as installed, but for where the binary is (verify checks that the
    // command exists and is executable).
    let relay = dir.path().join("p2pnode-relay.service");
    std::fs::write(
        &relay,
        RELAY_UNIT.replace(UNIT_BINARY, &binary.to_string_lossy()),
    )
    .unwrap();
    verify_unit(&relay, false, &[]);

    // The user unit exactly as shipped, with a home whose ~/.cargo/bin holds the binary.
    let home = dir.path().join("home");
    let runtime = dir.path().join("run");
    std::fs::create_dir_all(home.join(".cargo/bin")).unwrap();
    std::fs::create_dir_all(&runtime).unwrap();
    std::os::unix::fs::symlink(&binary, home.join(".cargo/bin/p2pnode")).unwrap();
    verify_unit(
        &deploy_dir().join("p2pnode.service"),
        true,
        &[("HOME", &home), ("XDG_RUNTIME_DIR", &runtime)],
    );

    // systemd's own measure of the relay's sandbox: 0 (locked down) to 10 (exposed).
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&relay)
        .output()
        .expect("run systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for p2pnode-relay.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {text}"));
    assert!(score <= 2.0, "relay unit exposure {score}: {text}");
}

#[test]
fn the_user_unit_runs_an_ordinary_node_on_the_default_data_directory() {
    let args = exec_start(USER_UNIT.replace("%h", "/home/someone").as_str());
    assert_eq!(args, ["/home/someone/.cargo/bin/p2pnode", "start"]);
}

/// The container image and the unit agree: the port the config listens on is the one
/// exposed, the data directory is a volume the node uses, and the node runs as a user.
#[test]
fn the_container_file_agrees_with_the_unit_and_builds_where_an_engine_runs() {
    let port = p2pnode_node::config::DEFAULT_PORT;
    for proto in ["tcp", "udp"] {
        assert!(
            DOCKERFILE.contains(&format!("{port}/{proto}")),
            "EXPOSE {port}/{proto}"
        );
    }
    assert!(RELAY_TOML.contains(&format!("/tcp/{port}\"")));
    assert!(RELAY_TOML.contains(&format!("/udp/{port}/quic-v1\"")));
    let run_stage = DOCKERFILE
        .rsplit_once("\nFROM ")
        .expect("a multi-stage build")
        .1;
    assert!(run_stage.contains("\nUSER p2pnode\n"), "runs as p2pnode");
    assert!(run_stage.contains("ENV P2PNODE_HOME=/data"));
    assert!(run_stage.contains("VOLUME [\"/data\"]"));

    // Building needs a running engine, which CI machines may not have.
    let engine_runs = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !engine_runs {
        eprintln!("no running container engine (docker info fails): the image was not built");
        return;
    }
    let root = deploy_dir().join("..");
    let out = Command::new("docker")
        .args([
            "build",
            "-f",
            "deploy/Dockerfile",
            "-t",
            "p2pnode-test",
            ".",
        ])
        .current_dir(&root)
        .output()
        .expect("run docker build");
    assert!(
        out.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("docker")
        .args(["run", "--rm", "p2pnode-test", "--version"])
        .output()
        .expect("run the image");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("p2pnode "));
}

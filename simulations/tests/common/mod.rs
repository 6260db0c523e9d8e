//! What the NAT lab tests share: the scenarios' gate on root and the binary, tracing,
//! the scenario settings, the JSON report line and the machine lock.

#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::sync::LazyLock;

use p2pnode_sim::lab::node::PathKind;
use p2pnode_sim::lab::scenarios::{
    self, HolePunchLab, PEER_PORT, PeerOptions, ScenarioConfig, Transport,
};
use p2pnode_sim::lab::{NatKind, Node};

pub mod chat;
pub mod sync;
pub mod vpn;
use tokio::sync::RwLock;

const SIM_BIN: &str = env!("CARGO_BIN_EXE_p2pnode-sim");

/// Scenarios that measure how fast something happens run alone (write lock); those
/// that mostly wait for DCUtR to give up share the machine (read lock), which keeps the
/// suite's wall time near the longest of them.
pub static MACHINE: LazyLock<RwLock<()>> = LazyLock::new(|| RwLock::new(()));

/// The machine for a run expecting `path`: to itself when a hole punch must succeed
/// (beside other labs' traffic a punch missed its window), shared when relayed.
pub async fn machine_for(path: PathKind) -> MachineGuard {
    match path {
        PathKind::Direct => MachineGuard::Alone(MACHINE.write().await),
        _ => MachineGuard::Shared(MACHINE.read().await),
    }
}

/// Holds [`MACHINE`] as [`machine_for`] took it.
pub enum MachineGuard {
    Alone(tokio::sync::RwLockWriteGuard<'static, ()>),
    Shared(tokio::sync::RwLockReadGuard<'static, ()>),
}

/// Whether the lab can run here (root and the `p2pnode` binary). Without them the test
/// fails when env CI is set and otherwise says why and returns.
pub fn lab_allowed() -> bool {
    let missing = match p2pnode_sim::lab::require_root() {
        Err(err) => Some(err.to_string()),
        Ok(()) => p2pnode_sim::lab::node::p2pnode_binary()
            .err()
            .map(|err| err.to_string()),
    };
    match missing {
        None => true,
        Some(reason) if std::env::var_os("CI").is_some() => {
            panic!("{reason}: CI must run the NAT lab scenarios")
        }
        Some(reason) => {
            eprintln!("skipping NAT lab scenario: {reason}");
            false
        }
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// The default scenario settings, with the delay links run by this build's helper.
pub fn config() -> ScenarioConfig {
    ScenarioConfig {
        sim_binary: Some(SIM_BIN.into()),
        ..ScenarioConfig::default()
    }
}

/// Writes the outcome as one JSON line straight to stdout (not through `println!`,
/// which the harness captures).
pub fn report<T: serde::Serialize>(outcome: &T) {
    let line = serde_json::to_string(outcome).expect("outcome serialises");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Keeps the lab's logs when the test panics (or env `P2PNODE_LAB_KEEP` is set), and
/// says where they are.
pub struct KeepLogsOnPanic(pub HolePunchLab);

impl Drop for KeepLogsOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("P2PNODE_LAB_KEEP").is_some() {
            let dir = self.0.lab.keep_workdir();
            eprintln!("lab logs kept in {}", dir.display());
        }
    }
}

/// Starts peers `a` and `b` on their hosts behind the lab's routers, on transport `t`,
/// and waits until both hold a relay reservation.
pub async fn two_peers(hp: &HolePunchLab, t: Transport, cfg: &ScenarioConfig) -> (Node, Node) {
    let options = PeerOptions {
        transport: t,
        port: PEER_PORT,
        mdns: false,
        listen_any: false,
        hole_punch: Default::default(),
        metrics: false,
    };
    let (lab, relay) = (&hp.lab, &hp.relay);
    let (a, b) = tokio::try_join!(
        scenarios::start_peer(lab, "a", "a", relay, options),
        scenarios::start_peer(lab, "b", "b", relay, options)
    )
    .expect("peers start");
    tokio::try_join!(
        scenarios::wait_reservation(&a, cfg.setup_timeout),
        scenarios::wait_reservation(&b, cfg.setup_timeout)
    )
    .expect("reservations");
    (a, b)
}

/// Fails the test unless the NAT lab can run here (root and the `p2pnode` binary): the
/// tests that call it never skip. `what` names them in the message.
pub fn require_nat_lab(what: &str) {
    if let Err(err) = p2pnode_sim::lab::require_root() {
        panic!("{err}: the {what} NAT lab tests need root (CI runs them as root)");
    }
    if let Err(err) = p2pnode_sim::lab::node::p2pnode_binary() {
        panic!("{err}: build it first (`cargo build -p p2pnode`)");
    }
}

/// Peers `a` and `b` over TCP behind two NAT routers of kind `nat`, knowing only the
/// relay, with `b` connected to `a` and the connection settled: it must be `expected`
/// (direct behind cone NATs once hole punching worked, relayed behind symmetric ones).
pub async fn nat_pair(
    nat: NatKind,
    expected: PathKind,
    cfg: &ScenarioConfig,
) -> (KeepLogsOnPanic, Node, Node) {
    let t = Transport::Tcp;
    let hp = KeepLogsOnPanic(
        HolePunchLab::new(nat, nat, t, cfg.clone())
            .await
            .expect("the NAT lab builds"),
    );
    let (a, b) = two_peers(&hp.0, t, cfg).await;
    b.connect(a.peer_id()).await.expect("b connects to a");
    let direct = scenarios::wait_direct(&b, &a, t, cfg.direct_window, cfg.poll_interval)
        .await
        .expect("the path settles");
    let path = if direct.is_some() {
        PathKind::Direct
    } else {
        PathKind::Relayed
    };
    assert_eq!(path, expected, "the connection is not {expected:?}");
    (hp, a, b)
}

//! A relay that holds under a reservation flood (issue #22): the relay on the public
//! segment, `p2pnode-sim flood-relay` on a few public hosts whose source addresses sit in
//! two /24s of their own (192.0.2.0/24 and 203.0.113.0/24, away from the NAT routers'
//! 198.51.100.0/24, so the relay's per-network limits never count honest nodes with the
//! flood), 10,000 reservation attempts in 60 s from 1,000 peer ids. Meanwhile A and B,
//! behind two symmetric NATs, chat over their relayed connection, and the relay's live
//! reservations are sampled from its metrics, and once the relay refuses flood
//! connections a fresh node D behind NAT reserves within 2 s. Afterwards the relay is alive, logged no
//! panic, peaked at most 256 MiB resident, and a fresh node C behind a third NAT reserves
//! within 2 s.
//!
//! The flood's size comes from env `P2PNODE_FLOOD_ATTEMPTS`, `P2PNODE_FLOOD_IDENTITIES`
//! and `P2PNODE_FLOOD_SECS` (defaults: the issue's figures). Needs root and the `p2pnode`
//! binary, and fails without them: this test never skips. It prints its outcome as one
//! JSON line on stdout.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::chat::{LineChat, caught_up, of_type, wait_request};
use common::{MACHINE, init_tracing, report};
use p2pnode_sim::flood::Summary;
use p2pnode_sim::lab::node::PathKind;
use p2pnode_sim::lab::poll::{Poll, wait_for};
use p2pnode_sim::lab::scenarios::{self, PEER_PORT, PeerOptions, RELAY_IP, RELAY_PORT, Transport};
use p2pnode_sim::lab::{Lab, LabBuilder, NatKind, Node, NodeSpec};
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

const SIM_BIN: &str = env!("CARGO_BIN_EXE_p2pnode-sim");

/// The flood's networks (TEST-NET-1 and TEST-NET-3); the relay is `.1` in each.
const FLOOD_NETS: [[u8; 3]; 2] = [[192, 0, 2], [203, 0, 113]];
/// Public hosts running a flood process each, spread over [`FLOOD_NETS`].
const FLOOD_HOSTS: usize = 4;

/// The relay's configured limits (its config file).
const MAX_RESERVATIONS: u64 = 128;
const CONNECTIONS_PER_PREFIX: u64 = 32;

/// The relay's peak resident memory, at most.
const RSS_LIMIT_KIB: u64 = 256 * 1024;
/// A fresh honest node's reservation during and after the flood, at most.
const RESERVE_AFTER_FLOOD: Duration = Duration::from_secs(2);
/// How often the relay's live reservations are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// How often A and B exchange a message during the flood.
const CHAT_EVERY: Duration = Duration::from_secs(2);
/// Chat rounds that must complete while the flood runs, at least.
const MIN_CHAT_ROUNDS: usize = 5;
/// Where the relay serves metrics inside its namespace.
const METRICS_ADDR: &str = "127.0.0.1:9464";

/// How the flood went and what the relay did meanwhile, printed as a JSON line.
#[derive(Debug, Serialize)]
struct FloodOutcome {
    /// Attempts asked for, over how many identities and seconds.
    planned_attempts: usize,
    identities: usize,
    flood_secs: f64,
    /// The flood processes' summaries added up.
    attempts: usize,
    accepted: usize,
    denied: usize,
    refused: usize,
    timed_out: usize,
    failed: usize,
    /// From the flood's start until its last process printed its summary, ms.
    flood_elapsed_ms: f64,
    /// Each flood process's summary.
    processes: Vec<Summary>,
    /// The relay's live reservations: the largest sample, the configured limit, and
    /// the bound the per-network cap gives (flood networks x cap + honest nodes).
    live_reservations_max: u64,
    live_reservations_samples: usize,
    max_reservations: u64,
    per_network_bound: u64,
    /// Connections the relay refused at arrival for their network's cap.
    refused_connections_per_prefix: u64,
    /// The relay's peak resident memory (VmHWM), KiB.
    relay_peak_rss_kib: u64,
    /// Chat rounds (one message each way, both delivered) completed during the flood,
    /// their slowest round trip, and the path A's connection to B took.
    chat_rounds_during_flood: usize,
    chat_slowest_round_ms: f64,
    chat_path: Option<PathKind>,
    /// During the flood (once the relay refused flood connections): a fresh node's time
    /// from its daemon's start until it held a reservation, ms, and whether the flood
    /// still ran then.
    newcomer_reservation_ms: f64,
    newcomer_during_flood: bool,
    /// After the flood: a fresh node's time from its daemon's start, and from the daemon
    /// answering, until it held a reservation, ms.
    fresh_reservation_from_spawn_ms: f64,
    fresh_reservation_from_ready_ms: f64,
    /// The whole test, ms.
    wall_ms: f64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("env {name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn flood_host(i: usize) -> String {
    format!("flood{i}")
}

fn flood_net(i: usize) -> [u8; 3] {
    FLOOD_NETS[i % FLOOD_NETS.len()]
}

/// The relay's address in flood network `net`.
fn relay_ip_in(net: [u8; 3]) -> Ipv4Addr {
    Ipv4Addr::new(net[0], net[1], net[2], 1)
}

/// Adds `ip/24` to the host's interface (deleted with its namespace).
async fn add_address(lab: &Lab, host: &str, ip: Ipv4Addr) {
    let cidr = format!("{ip}/24");
    lab.exec(host, "ip", &["addr", "add", cidr.as_str(), "dev", "eth0"])
        .await
        .unwrap();
}

/// Starts the relay listening on the public segment and in each flood network, with
/// the limits under test in its config file and metrics on.
async fn start_relay(lab: &Lab) -> Node {
    let public = format!("/ip4/{RELAY_IP}/tcp/{RELAY_PORT}");
    let mut listen = vec![public.clone()];
    listen.extend(
        FLOOD_NETS
            .iter()
            .map(|net| format!("/ip4/{}/tcp/{RELAY_PORT}", relay_ip_in(*net))),
    );
    let spec = NodeSpec {
        listen,
        bootstrap: vec![],
        relay: true,
        external: vec![public],
        mdns: false,
        extra_args: vec!["--metrics".into(), METRICS_ADDR.into()],
        config_toml: Some(format!(
            "[relay_limits]\nmax_reservations = {MAX_RESERVATIONS}\n\
             max_connections_per_prefix = {CONNECTIONS_PER_PREFIX}\n"
        )),
        command_line: None,
        wrapper: vec![],
    };
    lab.start_node("relay", "relay", spec).await.unwrap()
}

/// The value of the unlabelled metric `name` in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// How many connections the relay refused for their network's cap, from its metrics.
fn refused_per_prefix(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(r#"p2pnode_refusals_total{limit="connections_per_prefix"} "#))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn scrape(lab: &Lab) -> String {
    let url = format!("http://{METRICS_ADDR}/metrics");
    lab.exec("relay", "curl", &["-sS", "--max-time", "5", url.as_str()])
        .await
        .unwrap()
}

/// A value of `VmHWM:` or the like from `/proc/<pid>/status`, in KiB.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Name:") && l.contains("p2pnode")),
        "pid {pid} is the relay daemon: {status}"
    );
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

fn peer_options() -> PeerOptions {
    PeerOptions {
        transport: Transport::Tcp,
        port: PEER_PORT,
        mdns: false,
        listen_any: false,
        hole_punch: Default::default(),
        metrics: false,
    }
}

/// A and B exchange one message each way every [`CHAT_EVERY`] until `stop` is set,
/// each round waiting for both messages and both receipts. Returns the rounds completed
/// before `stop` was set and the slowest round.
async fn chat_during(
    chat_a: &mut LineChat,
    chat_b: &mut LineChat,
    stop: &AtomicBool,
) -> (usize, Duration) {
    let mut tick = tokio::time::interval(CHAT_EVERY);
    let (mut rounds, mut during, mut slowest) = (0, 0, Duration::ZERO);
    loop {
        tick.tick().await;
        if stop.load(Ordering::SeqCst) {
            return (during, slowest);
        }
        let start = Instant::now();
        let (line_a, line_b) = ([format!("a-{rounds}")], [format!("b-{rounds}")]);
        tokio::join!(chat_a.send(&line_a), chat_b.send(&line_b));
        rounds += 1;
        // A's hello came before B's chat opened, so A sent one more.
        tokio::join!(
            chat_a.read_until("B's message and A's receipt", |e| caught_up(
                e,
                rounds,
                rounds + 1
            )),
            chat_b.read_until("A's message and B's receipt", |e| caught_up(
                e, rounds, rounds
            )),
        );
        slowest = slowest.max(start.elapsed());
        if !stop.load(Ordering::SeqCst) {
            during = rounds;
        }
    }
}

/// Samples the relay's live reservations every [`SAMPLE_EVERY`] until `stop` is set:
/// (largest, how many samples).
async fn sample_reservations(lab: &Lab, stop: &AtomicBool) -> (u64, usize) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    let (mut max, mut samples) = (0u64, 0usize);
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let text = scrape(lab).await;
        let live = metric(&text, "p2pnode_reservations_served")
            .unwrap_or_else(|| panic!("p2pnode_reservations_served in {text}"));
        max = max.max(live as u64);
        samples += 1;
    }
    (max, samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_holds_under_a_reservation_flood() {
    init_tracing();
    // Unlike the other lab tests this one never returns early: no root or no binary is
    // a failure, not a skip.
    p2pnode_sim::lab::require_root().expect("the flood test needs root");
    p2pnode_sim::lab::node::p2pnode_binary().expect("the flood test needs the p2pnode binary");
    let _machine = MACHINE.write().await;
    let wall = Instant::now();

    let attempts: usize = env_or("P2PNODE_FLOOD_ATTEMPTS", 10_000);
    let identities: usize = env_or("P2PNODE_FLOOD_IDENTITIES", 1_000);
    let flood_secs: f64 = env_or("P2PNODE_FLOOD_SECS", 60.0);

    let mut builder = LabBuilder::new().sim_binary(SIM_BIN).public_host("relay");
    for i in 0..FLOOD_HOSTS {
        builder = builder.public_host(&flood_host(i));
    }
    let mut lab = builder
        .router("r1", NatKind::Symmetric)
        .router("r2", NatKind::Symmetric)
        .router("r3", NatKind::Symmetric)
        .host("a", "r1")
        .host("b", "r2")
        .host("c", "r3")
        .host("d", "r3")
        .build()
        .await
        .unwrap();
    let result = std::panic::AssertUnwindSafe(run(&lab, attempts, identities, flood_secs, wall));
    let outcome = futures::FutureExt::catch_unwind(result).await;
    if outcome.is_err() || std::env::var_os("P2PNODE_LAB_KEEP").is_some() {
        eprintln!("lab logs kept in {}", lab.keep_workdir().display());
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn run(lab: &Lab, attempts: usize, identities: usize, flood_secs: f64, wall: Instant) {
    for net in FLOOD_NETS {
        add_address(lab, "relay", relay_ip_in(net)).await;
    }
    for i in 0..FLOOD_HOSTS {
        let [a, b, c] = flood_net(i);
        let source = Ipv4Addr::new(a, b, c, 10 + u8::try_from(i).unwrap());
        add_address(lab, &flood_host(i), source).await;
    }
    let relay = start_relay(lab).await;
    let setup = Duration::from_secs(30);

    // A and B reserve, then open their chat (relayed: both NATs are symmetric).
    let (a, b) = tokio::try_join!(
        scenarios::start_peer(lab, "a", "a", &relay, peer_options()),
        scenarios::start_peer(lab, "b", "b", &relay, peer_options())
    )
    .unwrap();
    tokio::try_join!(
        scenarios::wait_reservation(&a, setup),
        scenarios::wait_reservation(&b, setup)
    )
    .unwrap();
    let (a_id, b_id) = (a.peer_id(), b.peer_id());
    let mut chat_a = LineChat::start(&a, b_id);
    chat_a
        .read_until("A's chat to open", |e| of_type(e, "state").count() > 0)
        .await;
    chat_a.send(&["hello".to_string()]).await;
    wait_request(&b, a_id, Duration::from_millis(100)).await;
    let _: Value = b.client_json(&["chat", "accept", a_id]).await.unwrap();
    let mut chat_b = LineChat::start(&b, a_id);
    chat_b
        .read_until("B's chat to open", |e| of_type(e, "state").count() > 0)
        .await;

    // The flood: its attempts and identities split evenly over the flood hosts.
    let flood_start = Instant::now();
    let mut floods = Vec::new();
    for i in 0..FLOOD_HOSTS {
        let share = |n: usize| n / FLOOD_HOSTS + usize::from(i < n % FLOOD_HOSTS);
        let relay_addr = relay.addr_with_id(&format!(
            "/ip4/{}/tcp/{RELAY_PORT}",
            relay_ip_in(flood_net(i))
        ));
        let args = [
            "flood-relay".to_string(),
            "--relay".into(),
            relay_addr,
            "--identities".into(),
            share(identities).max(1).to_string(),
            "--attempts".into(),
            share(attempts).to_string(),
            "--duration-s".into(),
            flood_secs.to_string(),
        ];
        let log = std::fs::File::create(lab.workdir().join(format!("flood{i}.log"))).unwrap();
        let child = lab
            .command(&flood_host(i), SIM_BIN, &args)
            .unwrap()
            .stdout(Stdio::piped())
            .stderr(log)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
        floods.push(child);
    }
    let stop = AtomicBool::new(false);
    let flood = async {
        let limit = Duration::from_secs_f64(flood_secs) + Duration::from_secs(60);
        let outputs = tokio::time::timeout(
            limit,
            futures::future::join_all(floods.into_iter().map(|c| c.wait_with_output())),
        )
        .await
        .expect("the flood processes end in time");
        stop.store(true, Ordering::SeqCst);
        let elapsed = flood_start.elapsed();
        let summaries: Vec<Summary> = outputs
            .into_iter()
            .map(|out| {
                let out = out.unwrap();
                assert!(
                    out.status.success(),
                    "a flood process failed: {}",
                    out.status
                );
                serde_json::from_slice(&out.stdout).unwrap()
            })
            .collect();
        (summaries, elapsed)
    };
    // Once the relay refuses the flood's connections (its networks hold their share), a
    // fresh node D behind NAT asks for a reservation: it must get one during the flood.
    let newcomer = async {
        let wait = Duration::from_secs_f64(flood_secs);
        wait_for(
            "the relay to refuse flood connections",
            wait,
            SAMPLE_EVERY,
            || async {
                match refused_per_prefix(&scrape(lab).await) {
                    0 => Poll::pending(),
                    n => Poll::Ready(n),
                }
            },
        )
        .await
        .unwrap();
        let spawned = Instant::now();
        let d = scenarios::start_peer(lab, "d", "d", &relay, peer_options())
            .await
            .unwrap();
        scenarios::wait_reservation(&d, setup).await.unwrap();
        (spawned.elapsed(), !stop.load(Ordering::SeqCst))
    };
    let (
        (summaries, flood_elapsed),
        (live_max, live_samples),
        (rounds, slowest),
        (newcomer_time, newcomer_during),
    ) = tokio::join!(
        flood,
        sample_reservations(lab, &stop),
        chat_during(&mut chat_a, &mut chat_b, &stop),
        newcomer
    );
    let chat_path = a.peer(b_id).await.unwrap().map(|p| p.path);
    let lagged =
        of_type(chat_a.events(), "lagged").count() + of_type(chat_b.events(), "lagged").count();
    let metrics = scrape(lab).await;
    let pid = relay.pid().expect("the relay runs");
    let peak_rss = proc_status_kib(pid, "VmHWM:");

    // After the flood: a fresh node behind a third NAT reserves.
    let spawned = Instant::now();
    let c = scenarios::start_peer(lab, "c", "c", &relay, peer_options())
        .await
        .unwrap();
    let ready = Instant::now();
    scenarios::wait_reservation(&c, setup).await.unwrap();
    let (from_spawn, from_ready) = (spawned.elapsed(), ready.elapsed());

    relay.check_running().unwrap();
    let log = std::fs::read_to_string(relay.log_path()).unwrap();
    let sum = |f: fn(&Summary) -> usize| summaries.iter().map(f).sum::<usize>();
    let refused_per_prefix = refused_per_prefix(&metrics);
    let per_network_bound = FLOOD_NETS.len() as u64 * CONNECTIONS_PER_PREFIX + 3;
    let outcome = FloodOutcome {
        planned_attempts: attempts,
        identities,
        flood_secs,
        attempts: sum(|s| s.attempts),
        accepted: sum(|s| s.accepted),
        denied: sum(|s| s.denied),
        refused: sum(|s| s.refused),
        timed_out: sum(|s| s.timed_out),
        failed: sum(|s| s.failed),
        flood_elapsed_ms: ms(flood_elapsed),
        processes: summaries.clone(),
        live_reservations_max: live_max,
        live_reservations_samples: live_samples,
        max_reservations: MAX_RESERVATIONS,
        per_network_bound,
        refused_connections_per_prefix: refused_per_prefix,
        relay_peak_rss_kib: peak_rss,
        chat_rounds_during_flood: rounds,
        chat_slowest_round_ms: ms(slowest),
        chat_path,
        newcomer_reservation_ms: ms(newcomer_time),
        newcomer_during_flood: newcomer_during,
        fresh_reservation_from_spawn_ms: ms(from_spawn),
        fresh_reservation_from_ready_ms: ms(from_ready),
        wall_ms: ms(wall.elapsed()),
    };
    report(&outcome);

    assert_eq!(outcome.attempts, attempts, "every planned attempt was made");
    assert!(
        outcome.accepted > 0,
        "the flood reached the relay: {outcome:?}"
    );
    assert!(live_samples > 0, "the relay was sampled during the flood");
    assert!(
        live_max <= MAX_RESERVATIONS && live_max <= per_network_bound,
        "live reservations {live_max} within {MAX_RESERVATIONS} and {per_network_bound}"
    );
    assert!(peak_rss <= RSS_LIMIT_KIB, "relay peak RSS {peak_rss} KiB");
    assert!(
        rounds >= MIN_CHAT_ROUNDS,
        "{rounds} chat rounds completed during the flood"
    );
    assert_eq!(lagged, 0, "the chats missed no event");
    assert!(
        from_spawn <= RESERVE_AFTER_FLOOD,
        "a fresh node reserved {from_spawn:?} after its daemon started"
    );
    assert!(
        newcomer_during && newcomer_time <= RESERVE_AFTER_FLOOD,
        "a fresh node reserved {newcomer_time:?} after its start during the flood \
         (still running: {newcomer_during})"
    );
    assert!(!log.contains("panicked"), "the relay's log has a panic");
    for (name, chat) in [("A", chat_a), ("B", chat_b)] {
        let events = chat.finish().await;
        assert!(!events.is_empty(), "{name}'s chat ended cleanly");
    }
}

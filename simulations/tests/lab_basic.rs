//! Proves the NAT lab with plain tools (ping and a UDP echo) before any p2pnode runs in
//! it: NAT routers let their hosts out and nothing in, `cone` keeps source ports,
//! `symmetric` does not, the delay link adds its delay and loss drops its share.
//!
//! Needs root. Without root the tests fail when env CI is set (CI runs as root, so the
//! lab must be tested there) and otherwise say why and return.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use common::init_tracing;
use p2pnode_sim::lab::{Lab, LabBuilder, LinkFaults, NatKind};

const SIM_BIN: &str = env!("CARGO_BIN_EXE_p2pnode-sim");
const RELAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
const ECHO_PORT: u16 = 7000;
const LOCAL_PORT: u16 = 40000;

fn lab_allowed() -> bool {
    match p2pnode_sim::lab::require_root() {
        Ok(()) => true,
        Err(err) if std::env::var_os("CI").is_some() => {
            panic!("{err}: CI must run the NAT lab tests as root")
        }
        Err(err) => {
            eprintln!("skipping NAT lab test: {err}");
            false
        }
    }
}

/// Two public hosts (relay, other) and one router with host `a` behind it.
async fn one_router(kind: NatKind, faults: LinkFaults) -> Lab {
    init_tracing();
    LabBuilder::new()
        .public_host("relay")
        .public_host("other")
        .router_with_faults("r1", kind, faults)
        .host("a", "r1")
        .sim_binary(SIM_BIN)
        .build()
        .await
        .expect("lab builds")
}

fn echo(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, ECHO_PORT))
}

/// Starts echoes on both public hosts and probes them from `a`, one local socket.
async fn probe_both(lab: &mut Lab) -> Vec<Option<SocketAddr>> {
    lab.start_udp_echo("relay", ECHO_PORT).await.expect("echo");
    lab.start_udp_echo("other", ECHO_PORT).await.expect("echo");
    let results = lab
        .udp_probe(
            "a",
            LOCAL_PORT,
            &[echo(RELAY), echo(OTHER)],
            Duration::from_secs(3),
        )
        .await
        .expect("probe runs");
    results.into_iter().map(|r| r.seen).collect()
}

/// The public side cannot open a flow to `a`: neither to the router's WAN address nor,
/// with a route to the LAN as an ISP could add, to `a` itself.
async fn assert_no_unsolicited_inbound(lab: &mut Lab) {
    let wan = lab.router("r1").expect("router").wan_ip;
    let a_ip = lab.host("a").expect("host").ip;
    // Something listens behind the NAT, so silence means the router dropped the probe.
    lab.start_udp_echo("a", LOCAL_PORT)
        .await
        .expect("echo on a");
    let targets = [
        SocketAddr::V4(SocketAddrV4::new(wan, LOCAL_PORT)),
        SocketAddr::V4(SocketAddrV4::new(a_ip, LOCAL_PORT)),
    ];
    lab.exec(
        "relay",
        "ip",
        &["route", "add", "10.1.0.0/24", "via", &wan.to_string()],
    )
    .await
    .expect("route to the LAN");
    let results = lab
        .udp_probe("relay", 5555, &targets, Duration::from_millis(800))
        .await
        .expect("probe runs");
    for result in results {
        assert_eq!(
            result.seen, None,
            "unsolicited UDP to {} passed",
            result.target
        );
    }
    let ping = lab
        .ping(
            "relay",
            &a_ip.to_string(),
            2,
            Duration::from_millis(200),
            Duration::from_millis(500),
        )
        .await
        .expect("ping runs");
    assert_eq!(ping.received, 0, "unsolicited ping to a passed: {ping:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cone_nat_lets_hosts_out_keeps_ports_and_drops_unsolicited_inbound() {
    if !lab_allowed() {
        return;
    }
    let mut lab = one_router(NatKind::Cone, LinkFaults::none()).await;
    let wan = lab.router("r1").expect("router").wan_ip;

    let ping = lab
        .ping(
            "a",
            &RELAY.to_string(),
            3,
            Duration::from_millis(100),
            Duration::from_secs(2),
        )
        .await
        .expect("ping runs");
    assert_eq!(ping.received, 3, "a reaches the relay host: {ping:?}");

    let seen = probe_both(&mut lab).await;
    let expected = Some(SocketAddr::V4(SocketAddrV4::new(wan, LOCAL_PORT)));
    assert_eq!(
        seen,
        vec![expected, expected],
        "cone NAT keeps the source port"
    );

    assert_no_unsolicited_inbound(&mut lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_nat_maps_each_destination_to_another_port() {
    if !lab_allowed() {
        return;
    }
    let mut lab = one_router(NatKind::Symmetric, LinkFaults::none()).await;
    let wan = lab.router("r1").expect("router").wan_ip;
    let seen = probe_both(&mut lab).await;
    let [Some(to_relay), Some(to_other)] = seen[..] else {
        panic!("both echoes answer: {seen:?}");
    };
    assert_eq!(to_relay.ip(), std::net::IpAddr::V4(wan));
    assert_eq!(to_other.ip(), std::net::IpAddr::V4(wan));
    assert_ne!(
        to_relay.port(),
        to_other.port(),
        "symmetric NAT gives each destination its own port"
    );
    assert_no_unsolicited_inbound(&mut lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_link_adds_the_configured_round_trip_and_keeps_nat_behaviour() {
    if !lab_allowed() {
        return;
    }
    let one_way = Duration::from_millis(20);
    let mut lab = one_router(NatKind::Cone, LinkFaults::none().with_delay(one_way)).await;
    let wan = lab.router("r1").expect("router").wan_ip;

    // a -> relay crosses the router once each way: 2 x 20 ms added.
    let ping = lab
        .ping(
            "a",
            &RELAY.to_string(),
            10,
            Duration::from_millis(50),
            Duration::from_secs(2),
        )
        .await
        .expect("ping runs");
    assert_eq!(ping.received, 10, "no loss configured: {ping:?}");
    let (min, _, _) = ping.rtt_ms.expect("rtt");
    assert!(min >= 40.0, "rtt below the added 40 ms: {ping:?}");
    // On the minimum, not the average: one echo delayed by a busy machine would move the
    // average, while a delay added twice (80 ms) moves every echo.
    assert!(min <= 55.0, "rtt far above the added 40 ms: {ping:?}");

    // The detour through the TUN device must not change what the NAT does.
    let seen = probe_both(&mut lab).await;
    let expected = Some(SocketAddr::V4(SocketAddrV4::new(wan, LOCAL_PORT)));
    assert_eq!(
        seen,
        vec![expected, expected],
        "cone NAT keeps ports with delay"
    );
    assert_no_unsolicited_inbound(&mut lab).await;
    lab.check_helpers().expect("delay link still runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_drops_roughly_the_configured_share() {
    if !lab_allowed() {
        return;
    }
    let lab = one_router(NatKind::Cone, LinkFaults::none().with_loss_percent(20)).await;
    let ping = lab
        .ping(
            "a",
            &RELAY.to_string(),
            400,
            Duration::from_millis(5),
            Duration::from_secs(1),
        )
        .await
        .expect("ping runs");
    // 20% per crossing, two crossings per round trip: 1 - 0.8^2 = 36% expected. With
    // 400 samples the standard deviation is 2.4 points; 5 of them each way.
    let loss = ping.loss();
    assert!(
        (0.24..=0.48).contains(&loss),
        "round-trip loss {loss:.3} not near 0.36: {ping:?}"
    );
}

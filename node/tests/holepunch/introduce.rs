//! Introductions (`/p2pnode/holepunch/introduce/1`): what the relay sends, that a node
//! dials on its relay's word and on nobody else's, and that a relayed connection finishing
//! after the introduction's direct one is closed.

use super::transports::{Stall, recording_transport, stalling_transport};
use super::*;

/// The next stream on `protocol` accepted by the test in place of a node, and its sender.
async fn next_stream(
    incoming: &mut libp2p_stream::IncomingStreams,
) -> (p2pnode_node::PeerId, libp2p::Stream) {
    use futures::StreamExt;
    tokio::time::timeout(crate::common::WAIT, incoming.next())
        .await
        .expect("no stream in time")
        .unwrap()
}

/// The next stream on `protocol` accepted by the test in place of a node, its sender and
/// its one length-prefixed message.
async fn next_message(
    incoming: &mut libp2p_stream::IncomingStreams,
) -> (p2pnode_node::PeerId, Vec<u8>) {
    let (from, mut stream) = next_stream(incoming).await;
    (from, read_length_prefixed(&mut stream, 4096).await.unwrap())
}

/// The address `relay` sees `peer` at (its one direct connection's remote address).
async fn seen_at(relay: &Node, peer: p2pnode_node::PeerId) -> Multiaddr {
    let peers = relay.client().peers().await.unwrap();
    let p = peers
        .iter()
        .find(|p| p.peer_id == peer.to_string())
        .unwrap();
    p.connections[0].address.parse().unwrap()
}

/// When a relay accepts a circuit from A to B it tells each where it sees the other: A to
/// dial B, B to dial A "as listener". A and B run without hole punching, so the test reads
/// the introductions in their place.
#[tokio::test]
async fn the_relay_introduces_the_two_ends_of_a_circuit() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let relay = memory_node(
        dirs[0].path(),
        Config {
            relay: true,
            ..Config::default()
        },
    )
    .await;
    let r = addr_of(&relay).await;
    let end = || Config {
        listen: memory(),
        bootstrap: vec![r.clone()],
        dht_bootstrap_interval_secs: 0,
        hole_punch: HolePunchMode::Off,
        ..Config::default()
    };
    // Neither punches, and neither meets the other but through the relay.
    let only_relay = || TransportKind::Custom(via_relay(port_of(&r), Arc::default()));
    let a = start(dirs[1].path(), end(), only_relay()).await;
    let b = start(dirs[2].path(), end(), only_relay()).await;
    let mut a_intros = a.client().streams().accept(INTRODUCE_PROTOCOL).unwrap();
    let mut b_intros = b.client().streams().accept(INTRODUCE_PROTOCOL).unwrap();
    let (a_id, b_id, r_id) = (
        a.client().peer_id(),
        b.client().peer_id(),
        relay.client().peer_id(),
    );
    reserved(&b).await;

    let circuit: Multiaddr = format!("{r}/p2p-circuit/p2p/{b_id}").parse().unwrap();
    let connected = a.client().connect_addr(circuit).await.unwrap();
    assert_eq!(connected.path, Path::Relayed);

    // B is told first, and A only once B agrees.
    let (from, mut b_stream) = next_stream(&mut b_intros).await;
    assert_eq!(from, r_id);
    let to_b = read_length_prefixed(&mut b_stream, 4096).await.unwrap();
    let to_b = Introduction::decode(&to_b).unwrap();
    b_stream.write_all(&[holepunch::AGREED]).await.unwrap();
    let (from, to_a) = next_message(&mut a_intros).await;
    assert_eq!(from, r_id);
    let to_a = Introduction::decode(&to_a).unwrap();
    assert_eq!(
        to_b,
        Introduction {
            peer: a_id,
            addrs: vec![seen_at(&relay, a_id).await],
            as_listener: true,
        }
    );
    assert_eq!(
        to_a,
        Introduction {
            peer: b_id,
            addrs: vec![seen_at(&relay, b_id).await],
            as_listener: false,
        }
    );

    for n in [a, b, relay] {
        n.shutdown().await;
    }
}

/// X, a relay that introduces nobody itself; A on `a_transport`, reserved on X (its
/// bootstrap peer); C, which punches nothing, and C's own listen address (read before C
/// meets the relay, after which it lists a circuit address too).
///
/// C dials nobody but X and takes no direct connection until `c_open` is set (see
/// [`via_relay`]).
struct Trio {
    x: Node,
    a: Node,
    c: Node,
    c_addr: Multiaddr,
    c_open: Arc<AtomicBool>,
}

async fn relay_and_two(dirs: &[tempfile::TempDir], a_transport: TransportKind) -> Trio {
    let x = relay_node(dirs[0].path()).await;
    let a = start(
        dirs[1].path(),
        Config {
            listen: memory(),
            bootstrap: vec![addr_of(&x).await],
            dht_bootstrap_interval_secs: 0,
            ..Config::default()
        },
        a_transport,
    )
    .await;
    let x_port = port_of(&addr_of(&x).await);
    let c_open = Arc::new(AtomicBool::new(false));
    let c = start(
        dirs[2].path(),
        Config {
            listen: memory(),
            hole_punch: HolePunchMode::Off,
            ..Config::default()
        },
        TransportKind::Custom(via_relay(x_port, c_open.clone())),
    )
    .await;
    reserved(&a).await;
    let mut c_addr = addr_of(&c).await;
    c_addr.pop();
    Trio {
        x,
        a,
        c,
        c_addr,
        c_open,
    }
}

/// C connects to A through X's circuit: the circuit an introduction must name.
async fn c_reaches_a_through_x(c: &Node, x: &Node, a_id: p2pnode_node::PeerId) {
    let circuit: Multiaddr = format!("{}/p2p-circuit/p2p/{a_id}", addr_of(x).await)
        .parse()
        .unwrap();
    let relayed = c.client().connect_addr(circuit).await.unwrap();
    assert_eq!(relayed.path, Path::Relayed);
}

/// A node dials the peer its relay introduces, at once and directly, for a circuit that
/// relay carries: C (which punches nothing itself) reaches A through X, and the test,
/// speaking for X (A's bootstrap peer), introduces C to A, which dials C directly.
#[tokio::test]
async fn an_introduction_from_our_relay_makes_a_direct_dial() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let Trio {
        x,
        a,
        c,
        c_addr,
        c_open,
    } = relay_and_two(&dirs, TransportKind::Memory).await;
    let (a_id, c_id) = (a.client().peer_id(), c.client().peer_id());
    c_reaches_a_through_x(&c, &x, a_id).await;
    c_open.store(true, Ordering::SeqCst);

    let intro = Introduction {
        peer: c_id,
        addrs: vec![c_addr.clone()],
        as_listener: false,
    };
    let mut stream = introduce(&x, a_id, &intro).await;
    // A agrees to the circuit before it dials.
    let mut agreed = [0u8; 1];
    stream.read_exact(&mut agreed).await.unwrap();
    assert_eq!(agreed, [holepunch::AGREED]);

    let conn = wait_for(|| async {
        let peers = a.client().peers().await.ok()?;
        let p = peers.into_iter().find(|p| p.peer_id == c_id.to_string())?;
        p.connections.into_iter().find(|c| c.path == Path::Direct)
    })
    .await;
    assert!(conn.outbound);
    assert_eq!(conn.address, format!("{c_addr}/p2p/{c_id}"));

    for n in [a, c, x] {
        n.shutdown().await;
    }
}

/// A relay that names made-up peers cannot make a node a reflector. X, A's own bootstrap
/// relay (the most a relay can be trusted with), sends 1,000 introductions of peers that
/// have no circuit through it, each with 16 addresses (loopback, private, DNS, global,
/// memory): A dials none of them. Then one for a real circuit (C reaches A through X),
/// with C's address among 15 others: A dials at most
/// [`MAX_PUNCH_ADDRS`](holepunch::MAX_PUNCH_ADDRS), none of them loopback, private or a
/// name, and reaches C. (On the previous code A dialled all 16,000.)
#[tokio::test]
async fn introductions_for_made_up_peers_make_no_dials() {
    use futures::StreamExt;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let dialled = Arc::new(Mutex::new(Vec::<Multiaddr>::new()));
    let recording = TransportKind::Custom(recording_transport(dialled.clone()));
    let Trio {
        x,
        a,
        c,
        c_addr,
        c_open,
    } = relay_and_two(&dirs, recording).await;
    let (a_id, c_id) = (a.client().peer_id(), c.client().peer_id());
    let before = dialled.lock().unwrap().len();
    let junk = |i: usize| -> Vec<Multiaddr> {
        let port = 1000 + i % 60000;
        [
            format!("/ip4/127.0.0.1/tcp/{port}"),
            format!("/ip4/10.0.0.1/tcp/{port}"),
            format!("/ip4/192.168.1.1/udp/{port}/quic-v1"),
            format!("/ip6/::1/tcp/{port}"),
            format!("/ip6/fd00::1/tcp/{port}"),
            format!("/dns4/localhost/tcp/{port}"),
            format!("/dns/internal.example/tcp/{port}"),
            format!("/ip4/169.254.1.1/tcp/{port}"),
            format!("/ip4/198.51.100.9/tcp/{port}"),
            format!("/ip4/203.0.113.9/udp/{port}/quic-v1"),
            format!("/ip6/2001:db8::9/tcp/{port}"),
            format!("/ip4/0.0.0.0/tcp/{port}"),
            format!("/ip4/100.64.0.1/tcp/{port}"),
            format!("/ip4/172.16.0.1/tcp/{port}"),
            format!("/memory/{port}"),
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect()
    };
    let x = &x;
    let answered = futures::stream::iter(0..1000)
        .map(|i| async move {
            let mut addrs = junk(i);
            addrs.push(
                format!("/ip4/198.51.100.10/tcp/{}", 1000 + i)
                    .parse()
                    .unwrap(),
            );
            let intro = Introduction {
                peer: p2pnode_node::PeerId::random(),
                addrs,
                as_listener: i % 2 == 0,
            };
            // A ends the stream once its event loop has refused: the refusal is the event.
            let mut stream = introduce(x, a_id, &intro).await;
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            rest
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    assert!(
        answered.iter().all(Vec::is_empty),
        "A agreed to a made-up circuit"
    );
    let made_up = dialled.lock().unwrap()[before..].to_vec();
    assert!(made_up.is_empty(), "dialled for made-up peers: {made_up:?}");

    // A real circuit: C reaches A through X, and X introduces C with 15 other addresses.
    c_reaches_a_through_x(&c, x, a_id).await;
    c_open.store(true, Ordering::SeqCst);
    let mut addrs = junk(7);
    addrs.insert(6, c_addr.clone());
    let before = dialled.lock().unwrap().len();
    let intro = Introduction {
        peer: c_id,
        addrs,
        as_listener: false,
    };
    let _stream = introduce(x, a_id, &intro).await;
    wait_for(|| async {
        let peers = a.client().peers().await.ok()?;
        let p = peers.into_iter().find(|p| p.peer_id == c_id.to_string())?;
        p.connections.into_iter().find(|c| c.path == Path::Direct)
    })
    .await;
    let real: Vec<Multiaddr> = dialled.lock().unwrap()[before..]
        .iter()
        .map(|a| {
            let mut a = a.clone();
            a.pop(); // the swarm appends the peer id
            a
        })
        .collect();
    assert!(real.len() <= holepunch::MAX_PUNCH_ADDRS, "{real:?}");
    assert!(real.contains(&c_addr), "{real:?}");
    for addr in &real {
        let text = addr.to_string();
        assert!(
            text.starts_with("/memory/")
                || text.starts_with("/ip4/198.51.100.")
                || text.starts_with("/ip4/203.0.113.")
                || text.starts_with("/ip6/2001:db8::"),
            "dialled {text} on a relay's word"
        );
    }

    for n in [a, c] {
        n.shutdown().await;
    }
}

/// The relay tells A where B is only once B agrees to the circuit: B has revoked A, so A,
/// dialling B through the relay, learns nothing from the relay's introduction. (On the
/// previous code the relay told A B's address whatever B thought of A.)
#[tokio::test]
async fn a_peer_we_revoked_does_not_learn_our_address_from_the_relay() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let relay = memory_node(
        dirs[0].path(),
        Config {
            relay: true,
            ..Config::default()
        },
    )
    .await;
    let r = addr_of(&relay).await;
    let end = |hole_punch| Config {
        listen: memory(),
        bootstrap: vec![r.clone()],
        dht_bootstrap_interval_secs: 0,
        hole_punch,
        ..Config::default()
    };
    // A reads its introductions itself; B runs the real code. Neither meets the other
    // but through the relay.
    let only_relay = || TransportKind::Custom(via_relay(port_of(&r), Arc::default()));
    let a = start(dirs[1].path(), end(HolePunchMode::Off), only_relay()).await;
    let b = start(dirs[2].path(), end(HolePunchMode::P2pnode), only_relay()).await;
    let mut a_intros = a.client().streams().accept(INTRODUCE_PROTOCOL).unwrap();
    let (a_id, b_id) = (a.client().peer_id(), b.client().peer_id());
    reserved(&b).await;
    b.client().revoke(a_id).await.unwrap();

    let circuit: Multiaddr = format!("{r}/p2p-circuit/p2p/{b_id}").parse().unwrap();
    let _ = a.client().connect_addr(circuit).await;
    // The relay opens A's stream when the circuit is accepted and ends it without a word
    // once B refuses.
    let (from, mut stream) = next_stream(&mut a_intros).await;
    assert_eq!(from, relay.client().peer_id());
    let mut told = Vec::new();
    let _ = stream.read_to_end(&mut told).await;
    assert!(told.is_empty(), "A learnt where B is: {told:?}");

    for n in [a, b, relay] {
        n.shutdown().await;
    }
}

/// An introduction from a peer that is not our relay makes no dial: Y, connected to A
/// directly, introduces C, and nothing reaches C. (A ends the stream only once its dial's
/// outcome is known, after C would have seen the attempt; fails when A dials for Y.)
#[tokio::test]
async fn an_introduction_from_a_peer_that_is_not_our_relay_dials_nobody() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = memory_node(dirs[0].path(), Config::default()).await;
    let y = memory_node(
        dirs[1].path(),
        Config {
            hole_punch: HolePunchMode::Off,
            ..Config::default()
        },
    )
    .await;
    let (c, reached_c) = counted(dirs[2].path()).await;
    let a_id = a.client().peer_id();
    let mut c_addr = addr_of(&c).await;
    c_addr.pop();

    let connected = y.client().connect_addr(addr_of(&a).await).await.unwrap();
    assert_eq!(connected.path, Path::Direct);
    let intro = Introduction {
        peer: c.client().peer_id(),
        addrs: vec![c_addr],
        as_listener: false,
    };
    let mut stream = introduce(&y, a_id, &intro).await;
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
    assert_eq!(reached_c.load(Ordering::SeqCst), 0);
    assert!(!crate::common::connected(&a, c.client().peer_id()).await);

    for n in [a, c, y] {
        n.shutdown().await;
    }
}

/// A relayed connection that comes after a direct one is closed, and the dial that made it
/// is answered with the direct one. A dials B through relay X while B's link to X is
/// stalled, so the circuit cannot finish; X introduces B to A, whose direct dial does;
/// then the stall ends and the relayed connection arrives second, as it can in the field
/// when an introduction's one-hop dial beats the circuit's handshake. (Fails when the late
/// relayed connection is kept: checked.)
#[tokio::test]
async fn a_relayed_connection_after_a_direct_one_is_closed() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let x = relay_node(dirs[0].path()).await;
    let x_addr = addr_of(&x).await;
    let node = || Config {
        listen: memory(),
        bootstrap: vec![x_addr.clone()],
        dht_bootstrap_interval_secs: 0,
        ..Config::default()
    };
    let a = start(dirs[1].path(), node(), TransportKind::Memory).await;
    let stall = Arc::new(Stall::default());
    let b = start(
        dirs[2].path(),
        node(),
        TransportKind::Custom(stalling_transport(stall.clone())),
    )
    .await;
    let (a_id, b_id) = (a.client().peer_id(), b.client().peer_id());
    reserved(&a).await;
    reserved(&b).await;
    let b_connections = || async {
        let peers = a.client().peers().await.unwrap();
        peers
            .into_iter()
            .find(|p| p.peer_id == b_id.to_string())
            .map(|p| p.connections)
            .unwrap_or_default()
    };
    assert!(b_connections().await.is_empty());

    // B's writes to X wait: the circuit's STOP answer cannot leave B.
    stall.set(true);
    let circuit: Multiaddr = format!("{x_addr}/p2p-circuit/p2p/{b_id}").parse().unwrap();
    let dialing = tokio::spawn({
        let client = a.client().clone();
        async move { client.connect_addr(circuit).await }
    });
    // B's own listener, not its circuit address (which an introduction may not name).
    let b_addr = b
        .client()
        .status()
        .await
        .unwrap()
        .listen_addrs
        .into_iter()
        .find(|a| !a.contains("p2p-circuit"))
        .unwrap();
    let b_addr: Multiaddr = b_addr.parse().unwrap();
    let intro = Introduction {
        peer: b_id,
        addrs: vec![b_addr.clone()],
        as_listener: false,
    };
    let _stream = introduce(&x, a_id, &intro).await;
    let direct = format!("{b_addr}/p2p/{b_id}");
    // The direct connection, first and alone.
    let first = wait_for(|| async {
        let list = b_connections().await;
        list.iter().any(|c| c.path == Path::Direct).then_some(list)
    })
    .await;
    assert_eq!(first.len(), 1, "{first:?}");

    // Now the relayed connection can finish, second.
    stall.set(false);
    let connected = dialing.await.unwrap().unwrap();
    assert_eq!(connected.path, Path::Direct, "{connected:?}");
    assert_eq!(connected.address, direct);
    let only = wait_for(|| async {
        let list = b_connections().await;
        list.iter().all(|c| c.path == Path::Direct).then_some(list)
    })
    .await;
    assert_eq!(only.len(), 1, "{only:?}");
    assert_eq!(only[0].address, direct);

    for n in [a, b, x] {
        n.shutdown().await;
    }
}

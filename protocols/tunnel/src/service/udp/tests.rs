use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

#[test]
fn addresses_go_on_the_wire_in_the_sockets_family() {
    let v4: SocketAddr = "198.51.100.7:4000".parse().unwrap();
    let v6: SocketAddr = "[fd00:7e57::2]:4000".parse().unwrap();
    let mapped: SocketAddr = "[::ffff:198.51.100.7]:4000".parse().unwrap();
    assert_eq!(on_wire(v4, true), Some(mapped));
    assert_eq!(on_wire(v6, true), Some(v6));
    assert_eq!(on_wire(v4, false), Some(v4));
    assert_eq!(on_wire(v6, false), None, "IPv6 cannot leave an IPv4 socket");
}

#[test]
fn offers_name_ipv4_and_routable_ipv6_addresses() {
    let addrs = [
        "/ip4/198.51.100.7/tcp/4001",
        "/ip6/fd00:7e57::2/tcp/4001",
        "/ip6/fe80::1/tcp/4001",
        "/ip4/0.0.0.0/tcp/4001",
        "/ip6/::/tcp/4001",
        "/ip6/2001:db8::9/udp/4001/quic-v1",
        "/ip4/198.51.100.7/udp/4001/quic-v1",
        "/ip4/203.0.113.1/tcp/4001/p2p/12D3KooWCw4MSvkcY9n3s5NEAv5UBUCDjBREC5qzpgpjCQ9RQBob/p2p-circuit",
    ]
    .map(String::from);
    let mut out = Vec::new();
    push_ips(&mut out, addrs.iter());
    let want: Vec<IpAddr> = vec![
        Ipv4Addr::new(198, 51, 100, 7).into(),
        "fd00:7e57::2".parse::<Ipv6Addr>().unwrap().into(),
        "2001:db8::9".parse::<Ipv6Addr>().unwrap().into(),
    ];
    assert_eq!(
        out, want,
        "no link-local, unspecified, repeated or relayed address"
    );
}

#[test]
fn the_dual_stack_socket_hears_ipv4_and_ipv6() {
    let socket = bind_dual_stack(0).unwrap();
    let port = socket.local_addr().unwrap().port();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 8];
    for from in ["127.0.0.1:0", "[::1]:0"] {
        let peer = std::net::UdpSocket::bind(from).unwrap();
        let to = SocketAddr::new(peer.local_addr().unwrap().ip(), port);
        peer.send_to(b"hi", to).unwrap();
        let (n, seen) = socket.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi");
        // What the receive path compares with candidates: the sender's own address.
        assert_eq!(seen.ip().to_canonical(), peer.local_addr().unwrap().ip());
        let back = on_wire(peer.local_addr().unwrap(), true).unwrap();
        socket.send_to(b"ok", back).unwrap();
        peer.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let (n, _) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ok");
    }
}

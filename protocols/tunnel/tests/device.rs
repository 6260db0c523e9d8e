//! The TUN device with the engine, for real: in a network namespace of its own, the
//! kernel's `ping` to another member's tunnel address goes into the device, the engine
//! routes it to that member, and an echo reply written back into the device reaches
//! `ping`, which succeeds.
//!
//! With offloads on, a reply written in place (the device's header over the bytes before
//! the packet) reaches `ping` as well.
//!
//! Needs root (CAP_NET_ADMIN for the namespace and the device) and `ping`; without them
//! the test fails when env CI is set and otherwise says why and returns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use p2pnode_tunnel::device::{PacketDevice, ReadBatch, TunDevice};
use p2pnode_tunnel::icmp::checksum;
use p2pnode_tunnel::{Claim, Engine, MemberId, Outbound, parse};

fn allowed() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if root {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the TUN test needs root: CI must run it"
    );
    eprintln!("skipping the TUN test: not root");
    false
}

/// The echo reply to an IPv4 ICMP echo request: addresses swapped, type 0, checksums anew.
fn echo_reply(request: &[u8]) -> Vec<u8> {
    let h = parse(request).unwrap();
    let mut p = request[..h.total_len].to_vec();
    let (src, dst) = (p[12..16].to_vec(), p[16..20].to_vec());
    p[12..16].copy_from_slice(&dst);
    p[16..20].copy_from_slice(&src);
    p[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum(&p[..h.header_len], 0);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    let icmp = h.header_len;
    p[icmp] = 0;
    p[icmp + 2..icmp + 4].copy_from_slice(&[0, 0]);
    let sum = checksum(&p[icmp..], 0);
    p[icmp + 2..icmp + 4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// Runs `body` on a thread of its own in a new network namespace: the device, its routes
/// and `ping` live there and vanish with it.
fn in_new_namespace<F: std::future::Future<Output = ()>>(
    body: impl FnOnce() -> F + Send + 'static,
) {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(body());
    })
    .join()
    .expect("the namespace thread");
}

#[test]
fn a_ping_through_the_device_is_routed_and_answered() {
    if !allowed() {
        return;
    }
    in_new_namespace(|| async {
        let net = [9; 32];
        let (me, other) = (MemberId(b"me".to_vec()), MemberId(b"other".to_vec()));
        let members = [
            Claim {
                member: me.clone(),
                lease: None,
            },
            Claim {
                member: other.clone(),
                lease: None,
            },
        ];
        let mut engine = Engine::new(net, me.clone(), 1280, &members, BTreeSet::new()).unwrap();
        let ours = engine.our_lease().unwrap();
        let theirs = engine.table().lease(&other).unwrap();
        let device = TunDevice::create("p2pt0", ours, &engine.table().prefixes(), 1280)
            .expect("create the TUN device");

        let mut ping = tokio::process::Command::new("ping")
            .args(["-c", "1", "-W", "10", &theirs.v4.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("run ping (Debian package iputils-ping)");
        let mut buf = vec![0u8; 65536];
        let request = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let n = device.recv(&mut buf).await.unwrap();
                let packet = &buf[..n];
                let Ok(h) = parse(packet) else { continue };
                // The kernel also sends router solicitations and the like: wait for
                // the echo request.
                if h.protocol == 1 && packet.get(h.header_len) == Some(&8) {
                    return packet.to_vec();
                }
            }
        })
        .await
        .expect("ping's echo request comes out of the device");
        let h = parse(&request).unwrap();
        assert_eq!(h.src, IpAddr::V4(ours.v4), "the kernel uses our lease");
        assert_eq!(h.dst, IpAddr::V4(theirs.v4));
        let other_slot = engine.slot(&other);
        assert_eq!(engine.from_tun(&request), Outbound::Send(other_slot));

        // The reply as the other member would send it: checked, then written back.
        let reply = echo_reply(&request);
        assert!(engine.from_peer(other_slot, &reply));
        device.send(&reply).await.unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), ping.wait())
            .await
            .expect("ping ends")
            .unwrap();
        assert!(status.success(), "ping got its reply through the device");

        // The same reply claiming another source is refused before the device.
        let mut forged = reply.clone();
        forged[12..16].copy_from_slice(&Ipv4Addr::new(100, 64, 0, 9).octets());
        assert!(!engine.from_peer(other_slot, &forged));
    });
}

#[test]
fn a_reply_written_in_place_with_offloads_on_reaches_ping() {
    if !allowed() {
        return;
    }
    in_new_namespace(|| async {
        let (me, other) = (MemberId(b"me".to_vec()), MemberId(b"other".to_vec()));
        let members = [me.clone(), other.clone()].map(|member| Claim {
            member,
            lease: None,
        });
        let engine = Engine::new([7; 32], me, 1280, &members, BTreeSet::new()).unwrap();
        let ours = engine.our_lease().unwrap();
        let theirs = engine.table().lease(&other).unwrap();
        let device = TunDevice::create_with("p2pt1", ours, &engine.table().prefixes(), 1280, true)
            .expect("create the TUN device");
        assert!(device.offload(), "this kernel has TUN offloads");

        let mut ping = tokio::process::Command::new("ping")
            .args(["-c", "1", "-W", "10", &theirs.v4.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("run ping (Debian package iputils-ping)");
        let mut reads = ReadBatch::new(1280);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let request = 'found: loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(
                !left.is_zero(),
                "ping's echo request comes out of the device"
            );
            let mut fds = [nix::poll::PollFd::new(
                device.fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).unwrap();
            let n = match device.try_recv_batch(&mut reads) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("read the device: {e}"),
            };
            for i in 0..n {
                let packet = reads.packet(i);
                let Ok(h) = parse(packet) else { continue };
                if h.protocol == 1 && packet.get(h.header_len) == Some(&8) {
                    break 'found packet.to_vec();
                }
            }
        };

        // The reply after 16 bytes of a frame's header, as a datagram lies in the
        // receive buffer: the device's header goes over them.
        let reply = echo_reply(&request);
        let mut buf = vec![0xee; 16];
        buf.extend_from_slice(&reply);
        let n = device.try_send_in_place(&mut buf, 16).unwrap();
        assert_eq!(n, reply.len(), "the packet's bytes, the header not counted");
        let status = tokio::time::timeout(Duration::from_secs(10), ping.wait())
            .await
            .expect("ping ends")
            .unwrap();
        assert!(status.success(), "ping got the reply written in place");
        // A start past the buffer's end is refused, and nothing is written.
        let past = buf.len() + 1;
        let refused = device.try_send_in_place(&mut buf, past).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
    });
}

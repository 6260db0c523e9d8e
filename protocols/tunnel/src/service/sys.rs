//! What `vpn up` checks on the host before it makes a TUN device: the device's name is
//! free, and no route already covers part of the network's prefixes (the kernel would
//! then send some tunnel traffic elsewhere, or ours would shadow a LAN). Read from
//! `/proc/net/route`, `/proc/net/ipv6_route` and `/sys/class/net`, which need no
//! privilege and no netlink code. And moving a device to new addresses when the
//! tie-break moves a running member.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::Lease;
use crate::addr::{Prefixes, V4_PREFIX_LEN, V6_PREFIX_LEN};

/// Longest interface name Linux takes (IFNAMSIZ less the NUL).
const IFNAME_MAX: usize = 15;
const IFNAME_PREFIX: &str = "p2p-";

/// The TUN device's name for a network: `p2p-<network name>` when that fits and is a
/// valid interface name, else `p2p-` and the first bytes of the network id in hex.
pub(super) fn interface_name(network: &str, id: &[u8; 32]) -> String {
    let fits = IFNAME_PREFIX.len() + network.len() <= IFNAME_MAX;
    let valid = network
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
    if fits && valid && !network.is_empty() {
        return format!("{IFNAME_PREFIX}{network}");
    }
    let hex: String = id[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{IFNAME_PREFIX}{hex}")
}

/// A route on the host that overlaps one of a network's prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Overlap {
    /// The route, as `address/length`.
    pub(super) route: String,
    /// Its interface.
    pub(super) interface: String,
}

/// Whether the first `len` bits of `a` and `b` agree.
fn same_prefix(a: IpAddr, b: IpAddr, len: u8) -> bool {
    let (a, b, bits) = match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (
            u128::from(u32::from(a)) << 96,
            u128::from(u32::from(b)) << 96,
            32,
        ),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let len = u32::from(len).min(bits);
    if len == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - len);
    a & mask == b & mask
}

/// The first route in `/proc/net/route` text that overlaps `net`/`len`. Default routes
/// (length 0) cover everything and are no collision.
pub(super) fn overlap_v4(routes: &str, net: Ipv4Addr, len: u8) -> Option<Overlap> {
    routes.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (iface, dest, mask) = (f.first()?, f.get(1)?, f.get(7)?);
        // The kernel prints the address's bytes as a native-endian hex number.
        let dest = Ipv4Addr::from(u32::from_str_radix(dest, 16).ok()?.to_ne_bytes());
        let mask = u32::from_be_bytes(u32::from_str_radix(mask, 16).ok()?.to_ne_bytes());
        let route_len = u8::try_from(mask.leading_ones()).ok()?;
        let shorter = route_len.min(len);
        (route_len > 0 && same_prefix(IpAddr::V4(dest), IpAddr::V4(net), shorter)).then(|| {
            Overlap {
                route: format!("{dest}/{route_len}"),
                interface: iface.to_string(),
            }
        })
    })
}

/// The first route in `/proc/net/ipv6_route` text that overlaps `net`/`len`.
pub(super) fn overlap_v6(routes: &str, net: Ipv6Addr, len: u8) -> Option<Overlap> {
    routes.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dest, plen, iface) = (f.first()?, f.get(1)?, f.get(9)?);
        let dest = Ipv6Addr::from(u128::from_str_radix(dest, 16).ok()?);
        let route_len = u8::from_str_radix(plen, 16).ok()?;
        let shorter = route_len.min(len);
        (route_len > 0 && same_prefix(IpAddr::V6(dest), IpAddr::V6(net), shorter)).then(|| {
            Overlap {
                route: format!("{dest}/{route_len}"),
                interface: iface.to_string(),
            }
        })
    })
}

/// What stands in the way of a network's device on this host, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Taken {
    /// An interface of that name exists.
    Interface(String),
    /// A route overlaps the prefix.
    Route {
        /// The network's prefix, as `address/length`.
        prefix: String,
        /// The route in the way.
        overlap: Overlap,
    },
}

/// Checks the host for `name` and the network's `prefixes`.
pub(super) fn check_free(name: &str, prefixes: &Prefixes) -> Result<(), Taken> {
    if std::path::Path::new("/sys/class/net").join(name).exists() {
        return Err(Taken::Interface(name.to_string()));
    }
    // Unreadable tables (no /proc) check nothing: the device is made and the kernel has
    // the last word.
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    if let Some(overlap) = overlap_v4(&v4, prefixes.v4, V4_PREFIX_LEN) {
        return Err(Taken::Route {
            prefix: format!("{}/{V4_PREFIX_LEN}", prefixes.v4),
            overlap,
        });
    }
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    if let Some(overlap) = overlap_v6(&v6, prefixes.v6, V6_PREFIX_LEN) {
        return Err(Taken::Route {
            prefix: format!("{}/{V6_PREFIX_LEN}", prefixes.v6),
            overlap,
        });
    }
    Ok(())
}

/// Moves interface `interface` from lease `old` to lease `new`, with iproute2 (tun-rs
/// sets a device's addresses only when it is made). IPv4: the old address goes first,
/// since deleting a primary address deletes the secondaries of its subnet with it (the
/// new one would be one). IPv6: the new one first, so the prefix's route stays.
pub(super) async fn readdress(interface: &str, old: Lease, new: Lease) -> Result<(), String> {
    let steps = [
        (IpAddr::V4(old.v4), V4_PREFIX_LEN, "del"),
        (IpAddr::V4(new.v4), V4_PREFIX_LEN, "add"),
        (IpAddr::V6(new.v6), V6_PREFIX_LEN, "add"),
        (IpAddr::V6(old.v6), V6_PREFIX_LEN, "del"),
    ];
    for (addr, len, verb) in steps {
        let unchanged = match addr {
            IpAddr::V4(_) => old.v4 == new.v4,
            IpAddr::V6(_) => old.v6 == new.v6,
        };
        if unchanged {
            continue;
        }
        let cidr = format!("{addr}/{len}");
        ip(&["addr", verb, &cidr, "dev", interface]).await?;
    }
    Ok(())
}

/// Tells the kernel to build no super-packet of more than `segments` segments for
/// `interface` (TCP sizes its own by it; anything larger is split before the device):
/// a read splits one into at most that many buffers (see [`crate::device::MAX_SEGMENTS`]).
pub(super) async fn limit_segments(interface: &str, segments: usize) -> Result<(), String> {
    let n = segments.to_string();
    ip(&["link", "set", "dev", interface, "gso_max_segs", &n]).await
}

/// Runs `ip` with `args`; an error names the command and says what `ip` said.
async fn ip(args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run `ip {}`: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "`ip {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
ts0\t00004064\t00000000\t0001\t0\t0\t0\t0000C0FF\t0\t0\t0
";

    const IPV6_ROUTE: &str = "\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0
fc000000000000000000000000000000 07 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     zt0
";

    /// Byte order is the host's in these files; the fixtures above are little-endian.
    fn little_endian() -> bool {
        cfg!(target_endian = "little")
    }

    #[test]
    fn an_overlapping_v4_route_is_found_and_the_default_route_is_not() {
        if !little_endian() {
            return;
        }
        // 100.64.0.0/10 on ts0 covers every tunnel /16.
        let o = overlap_v4(ROUTE, Ipv4Addr::new(100, 70, 0, 0), 16).unwrap();
        assert_eq!(o.route, "100.64.0.0/10");
        assert_eq!(o.interface, "ts0");
        let only_lan: String = ROUTE.lines().take(3).map(|l| format!("{l}\n")).collect();
        assert_eq!(
            overlap_v4(&only_lan, Ipv4Addr::new(100, 70, 0, 0), 16),
            None
        );
        let lan = overlap_v4(&only_lan, Ipv4Addr::new(192, 0, 2, 0), 16).unwrap();
        assert_eq!(lan.route, "192.0.2.0/24");
    }

    #[test]
    fn an_overlapping_v6_route_is_found() {
        let ours: Ipv6Addr = "fd12:3456:789a::".parse().unwrap();
        let o = overlap_v6(IPV6_ROUTE, ours, 48).unwrap();
        assert_eq!(
            (o.route.as_str(), o.interface.as_str()),
            ("fc00::/7", "zt0")
        );
        let no_zt: String = IPV6_ROUTE
            .lines()
            .take(2)
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(overlap_v6(&no_zt, ours, 48), None);
        let inside: Ipv6Addr = "fd00::".parse().unwrap();
        assert_eq!(overlap_v6(&no_zt, inside, 48).unwrap().route, "fd00::/64");
    }

    #[test]
    fn interface_names_fit_and_stay_valid() {
        let id = [0xab; 32];
        assert_eq!(interface_name("home", &id), "p2p-home");
        assert_eq!(interface_name("a-very-long-network", &id), "p2p-abababab");
        assert_eq!(interface_name("has.dot", &id), "p2p-abababab");
        for n in ["x", "lab", "elevenchars"] {
            assert!(interface_name(n, &id).len() <= IFNAME_MAX);
        }
    }
}

//! A tiny UDP echo and probe for checking how NAT routers map ports.
//!
//! The echo answers each datagram with the source address it saw, so a host behind a
//! NAT learns its public mapping. The probe sends from one local socket to several
//! echoes: behind a cone NAT every echo sees the same public port (the local one), behind
//! a symmetric NAT each destination sees another. Both run inside lab namespaces as
//! `p2pnode-sim udp-echo` and `p2pnode-sim udp-probe`.
//!
//! [`dns_query`] asks a DNS server one question (`p2pnode-sim dns-query`, run in a lab
//! namespace to resolve `<name>.p2p` through a node's tunnel responder).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::{Lab, LabError};

/// How long the probe waits for one answer before it sends again (a lost datagram is
/// resent, so the probe also works over a lossy router).
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// A bound echo socket.
#[derive(Debug)]
pub struct UdpEcho {
    socket: UdpSocket,
}

impl UdpEcho {
    /// Binds the echo.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            socket: UdpSocket::bind(addr).await?,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Answers every datagram with the text of its source address, forever.
    pub async fn run(self) -> std::io::Result<()> {
        let mut buf = [0u8; 1500];
        loop {
            let (_, from) = self.socket.recv_from(&mut buf).await?;
            self.socket
                .send_to(from.to_string().as_bytes(), from)
                .await?;
        }
    }
}

/// What one echo saw of the probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// The echo probed.
    pub target: SocketAddr,
    /// The probe's address as the echo saw it; `None` when no answer came in time.
    pub seen: Option<SocketAddr>,
}

/// Sends from one socket bound to `bind` to each target in turn and collects what each
/// saw; waits at most `timeout` per target.
pub async fn probe(
    bind: SocketAddr,
    targets: &[SocketAddr],
    timeout: Duration,
) -> std::io::Result<Vec<ProbeResult>> {
    let socket = UdpSocket::bind(bind).await?;
    let mut results = Vec::with_capacity(targets.len());
    let mut buf = [0u8; 1500];
    for &target in targets {
        let deadline = Instant::now() + timeout;
        let mut seen = None;
        'target: while Instant::now() < deadline {
            socket.send_to(b"probe", target).await?;
            let wait_until = (Instant::now() + RETRY_AFTER).min(deadline);
            loop {
                match tokio::time::timeout_at(wait_until, socket.recv_from(&mut buf)).await {
                    Err(_) => break,
                    Ok(Err(err)) => {
                        // ICMP errors surface here (unreachable); they mean no answer.
                        tracing::debug!(%target, %err, "probe receive error");
                        break;
                    }
                    Ok(Ok((n, from))) if from == target => {
                        seen = std::str::from_utf8(&buf[..n])
                            .ok()
                            .and_then(|s| s.parse().ok());
                        break 'target;
                    }
                    // A late answer from an earlier target: ignore it.
                    Ok(Ok(_)) => {}
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            // Pace the resend; the wait above ended early only on an error.
            tokio::time::sleep_until(wait_until).await;
        }
        results.push(ProbeResult { target, seen });
    }
    Ok(results)
}

impl Lab {
    /// Starts `p2pnode-sim udp-echo` on `host` at `port` and waits until it is bound.
    /// The process lives until the lab is dropped.
    pub async fn start_udp_echo(&mut self, host: &str, port: u16) -> Result<(), LabError> {
        let bind = format!("0.0.0.0:{port}");
        let sim = self.sim_binary()?;
        let name = format!("udp-echo {host}:{port}");
        self.spawn_helper(&name, host, &sim, &["udp-echo", "--bind", &bind])
            .await
    }

    /// Runs `p2pnode-sim udp-probe` on `host` from local port `port` to `targets`.
    pub async fn udp_probe(
        &self,
        host: &str,
        port: u16,
        targets: &[SocketAddr],
        timeout: Duration,
    ) -> Result<Vec<ProbeResult>, LabError> {
        let sim = self.sim_binary()?;
        let bind = format!("0.0.0.0:{port}");
        let timeout_ms = timeout.as_millis().to_string();
        let mut args = vec![
            "udp-probe".to_string(),
            "--bind".into(),
            bind,
            "--timeout-ms".into(),
            timeout_ms,
        ];
        for target in targets {
            args.push("--to".into());
            args.push(target.to_string());
        }
        let out = self.exec(host, &sim, &args).await?;
        serde_json::from_str(out.trim()).map_err(|err| LabError::Output {
            command: format!("udp-probe on {host}"),
            reason: format!("{err}: {out}"),
        })
    }
}

/// Asks `server` for `name` of type `qtype` (resent every 200 ms, `RETRY_AFTER`, until
/// `timeout`): the answer as JSON, `{"rcode": .., "addrs": [..]}`.
pub async fn dns_query(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    timeout: Duration,
) -> std::io::Result<serde_json::Value> {
    use p2pnode_tunnel::dns;
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).await?;
    let id = rand::random::<u16>();
    let query = dns::query(id, name, qtype);
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; dns::MAX_MESSAGE];
    while Instant::now() < deadline {
        socket.send_to(&query, server).await?;
        let wait = RETRY_AFTER.min(deadline.saturating_duration_since(Instant::now()));
        if let Ok(Ok((n, from))) = tokio::time::timeout(wait, socket.recv_from(&mut buf)).await
            && from == server
            && let Some(r) = dns::read_response(&buf[..n])
            && r.id == id
        {
            return Ok(serde_json::json!({
                "rcode": format!("{:?}", r.rcode),
                "addrs": r.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer from {server} for {name}"),
    ))
}

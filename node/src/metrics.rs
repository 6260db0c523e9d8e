//! Prometheus metrics, served as OpenMetrics text on `--metrics <addr:port>`.
//!
//! Two sets in one registry: libp2p's own (`libp2p_*`: swarm, Kademlia, identify, relay,
//! DCUtR, ping and gossipsub, recorded from the event loop's events by `libp2p-metrics`),
//! and ours (`p2pnode_*`), which say what libp2p cannot see: connections by path,
//! reservations, hole punching by method, the secure gate's streams and refusals, and
//! every limit that refused a peer. The README lists each metric.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use libp2p::PeerId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::api::PunchRecord;

/// Scrapes served at once; more wait in the kernel's accept queue.
const MAX_SCRAPES: usize = 8;
/// A scraper must send its request within this long.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Labels of a connection: `direct` or `relayed`, and the transport.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    /// `direct` or `relayed`.
    pub path: &'static str,
    /// `tcp`, `quic`, `memory`, `relay` or `other`.
    pub transport: &'static str,
}

/// Labels of a hole-punch outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PunchLabels {
    /// `introduction`, `exchange` or `dcutr`.
    pub method: &'static str,
    /// `success`, `failure` or `refused`.
    pub outcome: &'static str,
    /// The transport of the direct connection made, or of the addresses tried: `tcp`,
    /// `quic`, `mixed`, `unknown` (a failure before any address was known).
    pub transport: &'static str,
}

/// Labels of an application stream through the secure gate.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// The protocol's name (`chat`, `verify`, ...).
    pub protocol: &'static str,
    /// `accepted`, `refused` or `failed` (the handshake failed).
    pub outcome: &'static str,
}

/// Labels of a refusal by one of the node's limits.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// Which limit: see `Metrics::refused`.
    pub limit: &'static str,
}

/// Labels of a failed handshake.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A short reason (`timeout`, `malformed`, `authentication`, `io`, ...).
    pub reason: &'static str,
}

/// The node's metrics; cheap to record into, shared by every part of the node.
pub struct Metrics {
    registry: Registry,
    /// libp2p's own recorders.
    pub(crate) libp2p: libp2p::metrics::Metrics,
    connections: Family<PathLabels, Gauge>,
    reservations_held: Gauge,
    reservations_served: Gauge,
    circuits_served: Counter,
    holepunch: Family<PunchLabels, Counter>,
    streams: Family<StreamLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
    refusals: Family<LimitLabels, Counter>,
    stream_bytes: Family<BytesLabels, Counter>,
    frames_rejected: Family<ProtocolLabels, Counter>,
    /// Not a metric: the outcomes behind `holepunch`, which the doctor shows.
    recent_punches: Mutex<VecDeque<PunchRecord>>,
}

/// Labels of a protocol's bytes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    /// The registered protocol's name (`other` for none).
    pub protocol: &'static str,
    /// `sent` or `received`.
    pub direction: &'static str,
}

/// Labels naming a protocol.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    /// The registered protocol's name (`other` for none).
    pub protocol: &'static str,
}

/// Counts one protocol's session traffic into the metrics (see [`p2pnode_secure::Traffic`]).
pub(crate) struct ProtocolTraffic {
    metrics: Arc<Metrics>,
    protocol: &'static str,
}

impl ProtocolTraffic {
    pub(crate) fn new(metrics: Arc<Metrics>, protocol: &'static str) -> Self {
        Self { metrics, protocol }
    }
}

impl p2pnode_secure::Traffic for ProtocolTraffic {
    fn sealed(&self, bytes: usize) {
        self.metrics.stream_bytes(self.protocol, "sent", bytes);
    }

    fn opened(&self, bytes: usize) {
        self.metrics.stream_bytes(self.protocol, "received", bytes);
    }

    fn rejected(&self) {
        self.metrics.frame_rejected(self.protocol);
    }
}

/// How many hole-punch outcomes [`Metrics::recent_punches`] keeps.
pub(crate) const RECENT_PUNCHES: usize = 32;

/// Seconds since the Unix epoch (0 on a clock set before it).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let libp2p = libp2p::metrics::Metrics::new(&mut registry);
        let ours = registry.sub_registry_with_prefix("p2pnode");
        let connections = Family::default();
        ours.register(
            "connections",
            "Open connections by path (direct, relayed) and transport",
            connections.clone(),
        );
        let reservations_held = Gauge::default();
        ours.register(
            "reservations_held",
            "Relay reservations this node holds (accepted)",
            reservations_held.clone(),
        );
        let reservations_served = Gauge::default();
        ours.register(
            "reservations_served",
            "Reservations this relay serves",
            reservations_served.clone(),
        );
        let circuits_served = Counter::default();
        ours.register(
            "circuits_served",
            "Circuits this relay accepted",
            circuits_served.clone(),
        );
        let holepunch = Family::default();
        ours.register(
            "holepunch",
            "Hole-punch outcomes by method (introduction, exchange, dcutr)",
            holepunch.clone(),
        );
        let streams = Family::default();
        ours.register(
            "streams",
            "Application streams through the secure gate, by protocol and outcome",
            streams.clone(),
        );
        let handshake_failures = Family::default();
        ours.register(
            "handshake_failures",
            "Post-quantum handshakes that failed, by reason",
            handshake_failures.clone(),
        );
        let refusals = Family::default();
        ours.register(
            "refusals",
            "Requests refused by one of the node's limits, by limit",
            refusals.clone(),
        );
        let stream_bytes = Family::default();
        ours.register(
            "stream_bytes",
            "Bytes of the secure sessions' frames by protocol and direction (sent, received)",
            stream_bytes.clone(),
        );
        let frames_rejected = Family::default();
        ours.register(
            "frames_rejected",
            "Frames of a protocol's secure sessions that failed to open (forged, replayed, malformed)",
            frames_rejected.clone(),
        );
        Self {
            registry,
            libp2p,
            connections,
            reservations_held,
            reservations_served,
            circuits_served,
            holepunch,
            streams,
            handshake_failures,
            refusals,
            stream_bytes,
            frames_rejected,
            recent_punches: Mutex::new(VecDeque::with_capacity(RECENT_PUNCHES)),
        }
    }

    /// The registry as OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// A connection opened (`+1`) or closed (`-1`).
    pub(crate) fn connection(&self, path: &'static str, transport: &'static str, delta: i64) {
        self.connections
            .get_or_create(&PathLabels { path, transport })
            .inc_by(delta);
    }

    /// The number of accepted reservations we hold.
    pub(crate) fn reservations_held(&self, n: usize) {
        self.reservations_held
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// As a relay: a reservation started (`+1`) or ended (`-1`).
    pub(crate) fn reservation_served(&self, delta: i64) {
        self.reservations_served.inc_by(delta);
    }

    /// As a relay: a circuit accepted.
    pub(crate) fn circuit_served(&self) {
        self.circuits_served.inc();
    }

    /// A hole punch with `peer` (when known) ended. Counted, and kept among the last
    /// [`RECENT_PUNCHES`] for `p2pnode doctor`.
    pub(crate) fn punch(
        &self,
        method: &'static str,
        outcome: &'static str,
        transport: &'static str,
        peer: Option<PeerId>,
    ) {
        self.holepunch
            .get_or_create(&PunchLabels {
                method,
                outcome,
                transport,
            })
            .inc();
        let record = PunchRecord {
            peer_id: peer.map(|p| p.to_string()).unwrap_or_default(),
            method: method.to_string(),
            outcome: outcome.to_string(),
            at: unix_now(),
        };
        if let Ok(mut recent) = self.recent_punches.lock() {
            if recent.len() == RECENT_PUNCHES {
                recent.pop_back();
            }
            recent.push_front(record);
        }
    }

    /// The last hole-punch outcomes, the most recent first.
    pub(crate) fn recent_punches(&self) -> Vec<PunchRecord> {
        self.recent_punches
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// An application stream went through the gate.
    pub(crate) fn stream(&self, protocol: &'static str, outcome: &'static str) {
        self.streams
            .get_or_create(&StreamLabels { protocol, outcome })
            .inc();
    }

    /// Bytes of sealed frames a protocol's sessions sent (`sent`) or opened (`received`).
    pub(crate) fn stream_bytes(&self, protocol: &'static str, direction: &'static str, n: usize) {
        self.stream_bytes
            .get_or_create(&BytesLabels {
                protocol,
                direction,
            })
            .inc_by(n as u64);
    }

    /// A frame of a protocol's session failed to open.
    pub(crate) fn frame_rejected(&self, protocol: &'static str) {
        self.frames_rejected
            .get_or_create(&ProtocolLabels { protocol })
            .inc();
    }

    /// A handshake failed.
    pub(crate) fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A limit refused something: `gate_peer_busy`, `gate_rate`, `gate_full`,
    /// `exchange_budget`, `introduction` (any refused introduction),
    /// `relay_reservation`, `relay_circuit` (the relay's limits, per peer and per
    /// network), `connections_per_prefix` (a relay's inbound connections per network),
    /// `control_connections`.
    pub(crate) fn refused(&self, limit: &'static str) {
        self.refusals.get_or_create(&LimitLabels { limit }).inc();
    }
}

/// Serves `GET /metrics` (any path, in fact: there is nothing else) on `listener` until
/// `stop` is notified.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: Arc<Notify>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, from) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("metrics accept failed: {e}");
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.notified() => break,
        };
        while conns.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.refused("metrics_scrapes");
            continue;
        };
        let metrics = metrics.clone();
        conns.spawn(tracing::Instrument::in_current_span(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(scrape(&req, &metrics)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%from, "metrics connection: {e}");
            }
        }));
    }
    conns.shutdown().await;
}

fn scrape(req: &Request<hyper::body::Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, body) = if req.method() == hyper::Method::GET {
        (StatusCode::OK, metrics.encode())
    } else {
        (StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_string())
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_metrics_are_encoded_with_their_labels() {
        let m = Metrics::new();
        m.connection("direct", "tcp", 1);
        m.punch("introduction", "success", "quic", None);
        m.refused("gate_rate");
        let text = m.encode();
        assert!(
            text.contains(r#"p2pnode_connections{path="direct",transport="tcp"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"p2pnode_holepunch_total{method="introduction",outcome="success",transport="quic"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"p2pnode_refusals_total{limit="gate_rate"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("libp2p_"),
            "libp2p's own metrics are registered"
        );
    }

    #[test]
    fn recent_punches_are_kept_newest_first_and_bounded() {
        let m = Metrics::new();
        let peer = PeerId::random();
        for i in 0..RECENT_PUNCHES + 5 {
            let outcome = if i % 2 == 0 { "success" } else { "failure" };
            m.punch("exchange", outcome, "tcp", Some(peer));
        }
        m.punch("dcutr", "success", "tcp", None);
        let recent = m.recent_punches();
        assert_eq!(recent.len(), RECENT_PUNCHES);
        assert_eq!(recent[0].method, "dcutr");
        assert_eq!(recent[0].peer_id, "");
        assert_eq!(recent[1].peer_id, peer.to_string());
    }
}

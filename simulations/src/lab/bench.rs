//! `bench-holepunch`: hole-punching success and speed over many trials.
//!
//! For each NAT pair and transport one lab is built (routers with a delay link, so the
//! round trip between A and B grows by the configured amount) and one relay started;
//! each trial then starts fresh peers (new identities, new ports, so no conntrack entry
//! or DHT record of an earlier trial helps), connects A to B by peer id, and waits for a
//! direct connection for at most a window. The relay stays up: relayed pairs must keep
//! working through it.

use std::time::Duration;

use serde::Serialize;

use super::scenarios::{
    HolePunchLab, HolePunchOutcome, PEER_PORT, Punch, ScenarioConfig, Transport,
};
use super::{LabError, NatKind};

/// Settings of a benchmark run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Trials per NAT pair and transport.
    pub trials: u32,
    /// Round trip added between A and B (split over the two routers' delay links).
    pub added_rtt: Duration,
    /// NAT pairs to run.
    pub pairs: Vec<(NatKind, NatKind)>,
    /// Transports to run.
    pub transports: Vec<Transport>,
    /// Hole-punching protocols to run (each row once per protocol, so a baseline runs
    /// beside the protocol measured).
    pub protocols: Vec<Punch>,
    /// Longest wait for a direct connection per trial.
    pub window: Duration,
    /// Base settings (binary paths, setup timeout).
    pub scenario: ScenarioConfig,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            trials: 20,
            added_rtt: Duration::from_millis(50),
            pairs: vec![
                (NatKind::Cone, NatKind::Cone),
                (NatKind::Cone, NatKind::Symmetric),
                (NatKind::Symmetric, NatKind::Symmetric),
            ],
            transports: Transport::ALL.to_vec(),
            protocols: vec![Punch::P2pnode],
            window: Duration::from_secs(5),
            scenario: ScenarioConfig::default(),
        }
    }
}

/// Summary of one NAT pair on one transport.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// "cone-cone", ...
    pub pair: String,
    /// Transport.
    pub transport: Transport,
    /// Hole-punching protocol ("p2pnode" or "dcutr").
    pub protocol: &'static str,
    /// Trials run (errors included).
    pub trials: u32,
    /// Trials that ended direct.
    pub direct: u32,
    /// Trials that ended connected (direct or relayed) with a passing ping.
    pub connected: u32,
    /// Trials that failed to run at all (setup errors).
    pub errors: u32,
    /// Share of trials that ended direct.
    pub direct_rate: f64,
    /// Share of trials that ended connected.
    pub connected_rate: f64,
    /// Median app-level round trip between A and B, ms.
    pub rtt_ms: Option<f64>,
    /// Relayed-to-direct time (daemon log), median, ms.
    pub p50_ms: Option<f64>,
    /// Relayed-to-direct time (daemon log), 95th percentile, ms.
    pub p95_ms: Option<f64>,
    /// Relayed-to-direct time, slowest, ms.
    pub max_ms: Option<f64>,
    /// p95 in multiples of the measured round trip.
    pub p95_rtts: Option<f64>,
    /// From `connect` until `peers` showed direct (polled), 95th percentile, ms.
    pub poll_p95_ms: Option<f64>,
    /// Trials whose peers were connected before `connect` (through DHT walks).
    pub already_connected: u32,
}

/// A whole benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// "holepunch".
    pub bench: &'static str,
    /// Round trip added between A and B, ms.
    pub added_rtt_ms: f64,
    /// Trials per row.
    pub trials_per_row: u32,
    /// One row per NAT pair and transport.
    pub rows: Vec<BenchRow>,
    /// Every trial's outcome.
    pub outcomes: Vec<HolePunchOutcome>,
}

/// The `q` quantile (0..=1) of `values` by the nearest-rank method.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Runs the benchmark. `progress` hears of each trial as it ends.
pub async fn run(
    config: &BenchConfig,
    mut progress: impl FnMut(&HolePunchOutcome),
) -> Result<BenchReport, LabError> {
    let mut rows = Vec::new();
    let mut outcomes = Vec::new();
    for &(nat_a, nat_b) in &config.pairs {
        for (&transport, &protocol) in config
            .transports
            .iter()
            .flat_map(|t| config.protocols.iter().map(move |p| (t, p)))
        {
            let scenario = ScenarioConfig {
                // Each router adds a quarter: A->B crosses two routers each way.
                delay: config.added_rtt / 4,
                direct_window: config.window,
                hole_punch: protocol,
                ..config.scenario.clone()
            };
            let mut lab = HolePunchLab::new(nat_a, nat_b, transport, scenario).await?;
            let mut row_outcomes = Vec::new();
            let mut errors = 0;
            for trial in 0..config.trials {
                let port = PEER_PORT + 1 + u16::try_from(trial).unwrap_or(u16::MAX - PEER_PORT - 1);
                match lab.trial(&trial.to_string(), port, false).await {
                    Ok(outcome) => {
                        progress(&outcome);
                        row_outcomes.push(outcome);
                    }
                    Err(err) => {
                        tracing::warn!(%err, trial, %nat_a, %nat_b, ?transport, "trial failed");
                        errors += 1;
                    }
                }
            }
            // The daemons' logs are what tells a failed trial's story.
            if errors > 0 || std::env::var_os("P2PNODE_LAB_KEEP").is_some() {
                let dir = lab.lab.keep_workdir();
                tracing::warn!(logs = %dir.display(), %nat_a, %nat_b, ?transport, "lab logs kept");
            }
            rows.push(summarise(
                nat_a,
                nat_b,
                transport,
                protocol,
                config.trials,
                errors,
                &row_outcomes,
            ));
            outcomes.extend(row_outcomes);
        }
    }
    Ok(BenchReport {
        bench: "holepunch",
        added_rtt_ms: config.added_rtt.as_secs_f64() * 1000.0,
        trials_per_row: config.trials,
        rows,
        outcomes,
    })
}

fn summarise(
    nat_a: NatKind,
    nat_b: NatKind,
    transport: Transport,
    protocol: Punch,
    trials: u32,
    errors: u32,
    outcomes: &[HolePunchOutcome],
) -> BenchRow {
    let count = |f: &dyn Fn(&HolePunchOutcome) -> bool| {
        u32::try_from(outcomes.iter().filter(|o| f(o)).count()).unwrap_or(u32::MAX)
    };
    let direct = count(&|o| o.direct);
    let connected = count(&|o| o.ping_ok && o.still_connected);
    let already_connected = count(&|o| o.already_connected);
    let upgrade: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.direct)
        .filter_map(|o| o.relayed_to_direct_ms)
        .collect();
    let polled: Vec<f64> = outcomes
        .iter()
        .filter_map(|o| o.time_to_direct_ms)
        .collect();
    let rtts: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.ping_ok)
        .filter_map(|o| quantile(&o.ping_rtt_ms, 0.5))
        .collect();
    let rtt_ms = quantile(&rtts, 0.5);
    let p95 = quantile(&upgrade, 0.95);
    let rate = |n: u32| {
        if trials == 0 {
            0.0
        } else {
            f64::from(n) / f64::from(trials)
        }
    };
    BenchRow {
        pair: format!("{nat_a}-{nat_b}"),
        transport,
        protocol: protocol.as_str(),
        trials,
        direct,
        connected,
        errors,
        direct_rate: rate(direct),
        connected_rate: rate(connected),
        rtt_ms: rtt_ms.map(round),
        p50_ms: quantile(&upgrade, 0.5).map(round),
        p95_ms: p95.map(round),
        max_ms: quantile(&upgrade, 1.0).map(round),
        p95_rtts: match (p95, rtt_ms) {
            (Some(p), Some(r)) if r > 0.0 => Some((p / r * 100.0).round() / 100.0),
            _ => None,
        },
        poll_p95_ms: quantile(&polled, 0.95).map(round),
        already_connected,
    }
}

/// The report as a text table.
pub fn table(report: &BenchReport) -> String {
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v}"));
    let mut out = format!(
        "hole punching, {} trials per row, +{} ms RTT between A and B\n",
        report.trials_per_row, report.added_rtt_ms
    );
    out.push_str(&format!(
        "{:<20} {:<5} {:<8} {:>7} {:>10} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9}\n",
        "pair",
        "proto",
        "punch",
        "direct",
        "connected",
        "errors",
        "rtt ms",
        "p50 ms",
        "p95 ms",
        "max ms",
        "p95/RTT",
        "poll p95"
    ));
    for row in &report.rows {
        out.push_str(&format!(
            "{:<20} {:<5} {:<8} {:>7} {:>10} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9}\n",
            row.pair,
            row.transport.name(),
            row.protocol,
            format!("{}/{}", row.direct, row.trials),
            format!("{}/{}", row.connected, row.trials),
            row.errors,
            fmt(row.rtt_ms),
            fmt(row.p50_ms),
            fmt(row.p95_ms),
            fmt(row.max_ms),
            fmt(row.p95_rtts),
            fmt(row.poll_p95_ms),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(10.0));
        assert_eq!(quantile(&v, 0.95), Some(19.0));
        assert_eq!(quantile(&v, 1.0), Some(20.0));
        assert_eq!(quantile(&[3.0], 0.95), Some(3.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}

//! The command line of `p2pnode-sim`: its commands and their arguments.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use p2pnode_sim::lab;

#[derive(Parser, Debug)]
#[command(
    name = "p2pnode-sim",
    about = "p2pnode simulations and the netns NAT lab"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Commands,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Commands {
    /// Runs an in-process simulation (simulations/scenarios/*.toml) and writes
    /// <out>/<name>.json and <out>/<name>.html.
    Run {
        /// The scenario file.
        scenario: std::path::PathBuf,
        /// Directory for the reports.
        #[arg(long, default_value = "sim-reports")]
        out: std::path::PathBuf,
    },
    /// Document convergence under churn: members edit one automerge document in bursts
    /// while a share of them is offline; writes <out>/sync-convergence.json and .html
    /// (time until every member holds the same heads, per burst).
    SyncSim {
        /// Members.
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Bursts of edits.
        #[arg(long, default_value_t = 10)]
        bursts: usize,
        /// Share of members offline during each burst.
        #[arg(long, default_value_t = 0.1)]
        churn: f64,
        /// Members that edit in each burst.
        #[arg(long, default_value_t = 20)]
        editors: usize,
        /// Edits per editing member per burst.
        #[arg(long, default_value_t = 1)]
        edits: usize,
        /// Random links per member beside the ring.
        #[arg(long, default_value_t = 2)]
        extra_links: usize,
        /// The seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Directory for the reports.
        #[arg(long, default_value = "sim-reports")]
        out: std::path::PathBuf,
    },
    /// A files swarm: one node shares a file and many get it at once, with each fetcher
    /// serving what it has verified and with the seed serving all alone; writes
    /// <out>/files-swarm.json and .html (completions over time, groups the seed served).
    FilesSwarm {
        /// Nodes getting the file at once.
        #[arg(long, default_value_t = 50)]
        fetchers: usize,
        /// The file's size, KiB.
        #[arg(long, default_value_t = 4096)]
        size_kib: u64,
        /// Every node's uplink, KiB/s.
        #[arg(long, default_value_t = 8192)]
        uplink_kib_s: u64,
        /// How often a fetcher looks for providers again, ms.
        #[arg(long, default_value_t = 1000)]
        rediscover_ms: u64,
        /// The seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Directory for the reports.
        #[arg(long, default_value = "sim-reports")]
        out: std::path::PathBuf,
    },
    /// NAT lab scenarios and maintenance (needs root).
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
    /// Hole-punching benchmark: time to direct and success per NAT pair and transport,
    /// with added round-trip time (needs root).
    BenchHolepunch {
        /// Trials per NAT pair and transport.
        #[arg(long, default_value_t = 20)]
        trials: u32,
        /// Round trip added between A and B, ms.
        #[arg(long, default_value_t = 50.0)]
        rtt_ms: f64,
        /// Longest wait for a direct connection per trial, seconds.
        #[arg(long, default_value_t = 5)]
        window_s: u64,
        /// Transport: tcp, quic or both.
        #[arg(long, default_value = "both")]
        transport: TransportChoice,
        /// NAT pairs, comma separated (cone-cone, cone-symmetric, symmetric-symmetric).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "cone-cone,cone-symmetric,symmetric-symmetric"
        )]
        pairs: Vec<String>,
        /// Hole-punching set-ups, comma separated: p2pnode (ours, the default: the relay's
        /// introductions, the exchange as fallback), exchange (ours without introductions:
        /// the relay runs with --hole-punch off), dcutr (libp2p's), p2pnode-dcutr and
        /// dcutr-p2pnode (A ours and B DCUtR only, or the other way round); give several
        /// to measure them side by side.
        #[arg(long, value_delimiter = ',', default_value = "p2pnode")]
        hole_punch: Vec<String>,
        /// Also write the full report (every trial) as JSON here.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Floods a relay with reservation requests from many fresh peer ids and prints a
    /// JSON summary of the outcomes (accepted, denied, refused, timed out, failed).
    FloodRelay {
        /// The relay's address, ending in /p2p/<peer-id>.
        #[arg(long)]
        relay: libp2p::Multiaddr,
        /// Fresh peer ids in this process.
        #[arg(long, default_value_t = 1000)]
        identities: usize,
        /// Reservation attempts in all.
        #[arg(long, default_value_t = 10_000)]
        attempts: usize,
        /// Seconds the attempts are spread over.
        #[arg(long, default_value_t = 60.0)]
        duration_s: f64,
        /// Longest wait for one answer, ms.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Attempts running at once, at most.
        #[arg(long, default_value_t = 256)]
        max_in_flight: usize,
    },
    /// Delay link inside a router namespace (started by the lab).
    DelayLink {
        /// TUN device to attach to.
        #[arg(long)]
        tun: String,
        /// Delay per packet, microseconds.
        #[arg(long, conflicts_with = "delay_ms")]
        delay_us: Option<u64>,
        /// Delay per packet, milliseconds.
        #[arg(long)]
        delay_ms: Option<u64>,
        /// Packets held at most; more are dropped.
        #[arg(long, default_value_t = 4096)]
        queue: usize,
    },
    /// UDP echo answering with the source address it saw (started by the lab).
    UdpEcho {
        /// Address to bind.
        #[arg(long)]
        bind: SocketAddr,
    },
    /// Sends from one UDP socket to echoes and prints what each saw, as JSON.
    UdpProbe {
        /// Local address to bind.
        #[arg(long)]
        bind: SocketAddr,
        /// Echo addresses.
        #[arg(long = "to", required = true)]
        targets: Vec<SocketAddr>,
        /// Wait per target.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Asks a DNS server one question over UDP and prints the answer as JSON
    /// (`{"rcode": "NoError", "addrs": [...]}`): the lab resolves `<name>.p2p` with it.
    DnsQuery {
        /// The server.
        #[arg(long)]
        server: SocketAddr,
        /// The name asked for.
        #[arg(long)]
        name: String,
        /// `A` or `AAAA`.
        #[arg(long = "type", default_value = "A")]
        qtype: String,
        /// Wait for the answer.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum LabCommand {
    /// Deletes leftover lab namespaces whose owner process is dead.
    Cleanup,
    /// A and B behind two cone NATs: hole punching must make the connection direct.
    ConeCone(HolePunchArgs),
    /// A and B behind two symmetric NATs: the connection must stay relayed and work.
    SymmetricSymmetric(HolePunchArgs),
    /// A behind a cone NAT, B behind a symmetric one: reports what happens.
    ConeSymmetric(HolePunchArgs),
    /// Two peers behind one router must connect directly over the LAN.
    SameLan(ScenarioArgs),
    /// The relay is killed and restarted; every peer must reserve again within 30 s.
    RelayRestart {
        /// Transport of the reservations.
        #[arg(long, default_value = "tcp")]
        transport: lab::scenarios::Transport,
        #[command(flatten)]
        scenario: ScenarioArgs,
    },
    /// Every scenario in turn (hole punching over both transports).
    All(ScenarioArgs),
    /// Builds a lab (relay and other on the public segment; a behind r1, b behind r2)
    /// and keeps it until Ctrl-C, for poking at it with `ip netns exec`.
    Up {
        /// NAT of r1.
        #[arg(long, default_value = "cone")]
        nat_a: lab::NatKind,
        /// NAT of r2.
        #[arg(long, default_value = "cone")]
        nat_b: lab::NatKind,
        #[command(flatten)]
        faults: FaultArgs,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct HolePunchArgs {
    /// Transport: tcp, quic or both (one run and one JSON line each).
    #[arg(long, default_value = "both")]
    pub(crate) transport: TransportChoice,
    #[command(flatten)]
    pub(crate) scenario: ScenarioArgs,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub(crate) enum TransportChoice {
    Tcp,
    Quic,
    Both,
}

impl TransportChoice {
    pub(crate) fn transports(self) -> Vec<lab::scenarios::Transport> {
        use lab::scenarios::Transport;
        match self {
            TransportChoice::Tcp => vec![Transport::Tcp],
            TransportChoice::Quic => vec![Transport::Quic],
            TransportChoice::Both => Transport::ALL.to_vec(),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ScenarioArgs {
    /// One-way delay each router adds per crossing, ms (a path between two NATed peers
    /// crosses two routers: its round trip grows by 4 x this).
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Longest wait for a direct connection, seconds.
    #[arg(long, default_value_t = 30)]
    direct_window_s: u64,
    /// Keep the lab's logs and data directories (their path is logged).
    #[arg(long)]
    keep_logs: bool,
    /// Peers listen on 0.0.0.0 instead of their LAN address (reproduces the daemon
    /// dialling other peers' 127.0.0.1 addresses and reaching itself).
    #[arg(long)]
    listen_any: bool,
}

impl ScenarioArgs {
    pub(crate) fn config(&self) -> anyhow::Result<lab::scenarios::ScenarioConfig> {
        anyhow::ensure!(
            self.delay_ms.is_finite() && self.delay_ms >= 0.0,
            "--delay-ms must be a non-negative number"
        );
        Ok(lab::scenarios::ScenarioConfig {
            delay: Duration::from_secs_f64(self.delay_ms / 1000.0),
            direct_window: Duration::from_secs(self.direct_window_s),
            keep_logs: self.keep_logs,
            listen_any: self.listen_any,
            ..Default::default()
        })
    }
}

/// Faults applied to every router.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct FaultArgs {
    /// One-way delay per router crossing, ms (fractions allowed).
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Loss per router crossing, percent.
    #[arg(long, default_value_t = 0)]
    loss: u8,
    /// WAN rate limit, kbit/s.
    #[arg(long)]
    rate_kbit: Option<u32>,
}

impl FaultArgs {
    pub(crate) fn faults(&self) -> anyhow::Result<lab::LinkFaults> {
        anyhow::ensure!(
            self.delay_ms.is_finite() && self.delay_ms >= 0.0,
            "--delay-ms must be a non-negative number"
        );
        let mut faults = lab::LinkFaults::none()
            .with_delay(Duration::from_secs_f64(self.delay_ms / 1000.0))
            .with_loss_percent(self.loss);
        if let Some(kbit) = self.rate_kbit {
            faults = faults.with_rate_kbit(kbit);
        }
        Ok(faults)
    }
}

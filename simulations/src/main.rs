//! `p2pnode-sim`: runs the NAT lab's scenarios and benchmark, cleans up after crashed
//! labs, and hosts the helper processes the lab starts inside namespaces.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use p2pnode_sim::lab;

#[derive(Parser, Debug)]
#[command(
    name = "p2pnode-sim",
    about = "p2pnode simulations and the netns NAT lab"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// NAT lab scenarios and maintenance (needs root).
    Lab {
        #[command(subcommand)]
        command: LabCommand,
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
}

#[derive(Subcommand, Debug)]
enum LabCommand {
    /// Deletes leftover lab namespaces whose owner process is dead.
    Cleanup,
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

/// Faults applied to every router.
#[derive(clap::Args, Debug, Clone)]
struct FaultArgs {
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
    fn faults(&self) -> anyhow::Result<lab::LinkFaults> {
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Helpers run one per router or host: one thread is plenty and leaves the cores to
    // the daemons under test.
    let runtime = match &cli.command {
        Commands::Lab { .. } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
    .context("tokio runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Commands::DelayLink {
            tun,
            delay_us,
            delay_ms,
            queue,
        } => {
            let delay = match (delay_us, delay_ms) {
                (Some(us), _) => Duration::from_micros(us),
                (None, Some(ms)) => Duration::from_millis(ms),
                (None, None) => anyhow::bail!("give --delay-us or --delay-ms"),
            };
            let link = lab::delay::DelayLink::open(lab::delay::DelayLinkConfig {
                tun,
                delay,
                queue_packets: queue,
            })?;
            // The lab waits for this line before it relies on the link.
            println!("ready");
            let stats = link.run().await?;
            tracing::info!(?stats, "delay link stopped");
            Ok(())
        }
        Commands::UdpEcho { bind } => {
            let echo = lab::udp::UdpEcho::bind(bind).await?;
            println!("ready");
            echo.run().await?;
            Ok(())
        }
        Commands::UdpProbe {
            bind,
            targets,
            timeout_ms,
        } => {
            let results =
                lab::udp::probe(bind, &targets, Duration::from_millis(timeout_ms)).await?;
            println!("{}", serde_json::to_string(&results)?);
            Ok(())
        }
        Commands::Lab { command } => match command {
            LabCommand::Cleanup => {
                let done = lab::cleanup::cleanup_leftovers()?;
                println!("{}", serde_json::to_string(&done)?);
                Ok(())
            }
            LabCommand::Up {
                nat_a,
                nat_b,
                faults,
            } => {
                let faults = faults.faults()?;
                let lab = lab::LabBuilder::new()
                    .public_host("relay")
                    .public_host("other")
                    .router_with_faults("r1", nat_a, faults.clone())
                    .router_with_faults("r2", nat_b, faults)
                    .host("a", "r1")
                    .host("b", "r2")
                    .build()
                    .await?;
                for ns in lab.namespaces() {
                    println!("{ns}");
                }
                println!("work directory: {}", lab.workdir().display());
                println!("Ctrl-C (or SIGTERM) deletes the lab");
                wait_for_signal().await?;
                drop(lab);
                Ok(())
            }
        },
    }
}

/// Resolves on SIGINT or SIGTERM, so the caller can drop its lab (which deletes it)
/// before exiting.
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}

//! `p2pnode-sim`: runs the NAT lab's scenarios and benchmark, cleans up after crashed
//! labs, and hosts the helper processes the lab starts inside namespaces.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use p2pnode_sim::lab;
use p2pnode_sim::lab::NatKind;

mod args;

use args::{Cli, Commands, HolePunchArgs, LabCommand, TransportChoice};

/// See the `tikv-jemallocator` entry in Cargo.toml: memory per simulated node.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(p2pnode_crdt::quiet_automerge_spans(
                &std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            ))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,automerge=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Helpers run one per router or host: one thread is plenty and leaves the cores to
    // the daemons under test.
    let runtime = match &cli.command {
        Commands::Lab { .. } | Commands::BenchHolepunch { .. } | Commands::FloodRelay { .. } => {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
        }
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
        Commands::SyncSim {
            members,
            bursts,
            churn,
            editors,
            edits,
            extra_links,
            seed,
            out,
        } => {
            let settings = p2pnode_sim::sim::convergence::Settings {
                members,
                bursts,
                churn,
                edits_per_member: edits,
                editors,
                extra_links,
                seed,
                ..Default::default()
            };
            let report = p2pnode_sim::sim::convergence::run(&settings)?;
            let (json, html) = report.write(&out)?;
            for b in &report.bursts {
                println!(
                    "burst {}: {} offline, all {} members on the same heads after {} ms ({} messages, {} bytes)",
                    b.burst, b.offline, members, b.converged_ms, b.messages, b.bytes
                );
            }
            println!("{}\n{}", json.display(), html.display());
            Ok(())
        }
        Commands::FilesSwarm {
            fetchers,
            size_kib,
            uplink_kib_s,
            rediscover_ms,
            seed,
            out,
        } => {
            let settings = p2pnode_sim::sim::swarm::Settings {
                fetchers,
                size: size_kib * 1024,
                uplink_bytes_per_sec: uplink_kib_s * 1024,
                rediscover_ms,
                seed,
                ..Default::default()
            };
            let report = p2pnode_sim::sim::swarm::run(&settings)?;
            let (json, html) = report.write(&out)?;
            for (name, m) in [
                ("seed serves all alone", &report.seed_only),
                ("fetchers serve what they verified", &report.swarm),
            ] {
                let all = m
                    .all_done_ms
                    .map_or_else(|| "not all done".into(), |t| format!("{:.2} s", t / 1000.0));
                println!(
                    "{name}: {}/{fetchers} identical, all done after {all} (virtual), the seed served {} groups, fetchers {} ({} groups per copy; {} gets run again; wall {:.1} s)",
                    m.identical,
                    m.seed_groups,
                    m.fetcher_groups,
                    report.groups,
                    m.retries,
                    m.wall_s
                );
                for f in &m.failed {
                    println!("  {f}");
                }
            }
            println!("{}\n{}", json.display(), html.display());
            Ok(())
        }
        Commands::Run { scenario, out } => {
            let done = p2pnode_sim::sim::run_cli(&scenario, &out)
                .with_context(|| format!("simulation {}", scenario.display()))?;
            println!("{}", done.report.summary());
            println!("{}\n{}", done.json.display(), done.html.display());
            Ok(())
        }
        Commands::FloodRelay {
            relay,
            identities,
            attempts,
            duration_s,
            timeout_ms,
            max_in_flight,
        } => {
            raise_fd_limit();
            let summary = p2pnode_sim::flood::run(p2pnode_sim::flood::FloodConfig {
                relay,
                identities,
                attempts,
                duration: Duration::try_from_secs_f64(duration_s)
                    .context("--duration-s must be a non-negative number")?,
                attempt_timeout: Duration::from_millis(timeout_ms),
                max_in_flight,
            })
            .await?;
            println!("{}", serde_json::to_string(&summary)?);
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
        Commands::DnsQuery {
            server,
            name,
            qtype,
            timeout_ms,
        } => {
            let qtype = match qtype.to_ascii_uppercase().as_str() {
                "A" => p2pnode_tunnel::dns::TYPE_A,
                "AAAA" => p2pnode_tunnel::dns::TYPE_AAAA,
                other => anyhow::bail!("unknown type {other:?} (A, AAAA)"),
            };
            let answer =
                lab::udp::dns_query(server, &name, qtype, Duration::from_millis(timeout_ms))
                    .await?;
            println!("{answer}");
            Ok(())
        }
        Commands::BenchHolepunch {
            trials,
            rtt_ms,
            window_s,
            transport,
            pairs,
            hole_punch,
            out,
        } => {
            anyhow::ensure!(
                rtt_ms.is_finite() && rtt_ms >= 0.0,
                "--rtt-ms must be a non-negative number"
            );
            let pairs = pairs
                .iter()
                .map(|pair| {
                    let (a, b) = pair
                        .split_once('-')
                        .with_context(|| format!("pair {pair:?} is not <nat>-<nat>"))?;
                    Ok((a.parse()?, b.parse()?))
                })
                .collect::<anyhow::Result<Vec<(NatKind, NatKind)>>>()?;
            let config = lab::bench::BenchConfig {
                trials,
                added_rtt: Duration::from_secs_f64(rtt_ms / 1000.0),
                pairs,
                transports: transport.transports(),
                protocols: hole_punch
                    .iter()
                    .map(|p| {
                        lab::scenarios::Punch::parse(p).ok_or_else(|| {
                            anyhow::anyhow!(
                                "--hole-punch takes p2pnode, exchange or dcutr, not {p:?}"
                            )
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
                window: Duration::from_secs(window_s),
                scenario: lab::scenarios::ScenarioConfig::default(),
            };
            let report = until_signal(lab::bench::run(&config, |o| {
                eprintln!(
                    "{} {}: direct={} relayed_to_direct_ms={:?} ping_ok={}",
                    o.scenario,
                    o.transport.name(),
                    o.direct,
                    o.relayed_to_direct_ms,
                    o.ping_ok
                );
            }))
            .await??;
            print!("{}", lab::bench::table(&report));
            let summary = serde_json::json!({
                "bench": report.bench,
                "added_rtt_ms": report.added_rtt_ms,
                "trials_per_row": report.trials_per_row,
                "rows": report.rows,
            });
            println!("{summary}");
            if let Some(path) = out {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Commands::Lab { command } => match command {
            LabCommand::Cleanup => {
                let done = lab::cleanup::cleanup_leftovers()?;
                println!("{}", serde_json::to_string(&done)?);
                Ok(())
            }
            LabCommand::ConeCone(args) => {
                hole_punch_runs(NatKind::Cone, NatKind::Cone, &args).await
            }
            LabCommand::SymmetricSymmetric(args) => {
                hole_punch_runs(NatKind::Symmetric, NatKind::Symmetric, &args).await
            }
            LabCommand::ConeSymmetric(args) => {
                hole_punch_runs(NatKind::Cone, NatKind::Symmetric, &args).await
            }
            LabCommand::SameLan(args) => {
                let config = args.config()?;
                let outcome = until_signal(lab::scenarios::same_lan(config)).await??;
                print_json(&outcome)
            }
            LabCommand::RelayRestart {
                transport,
                scenario,
            } => {
                let config = scenario.config()?;
                let outcome =
                    until_signal(lab::scenarios::relay_restart(transport, config)).await??;
                print_json(&outcome)
            }
            LabCommand::All(args) => {
                let pairs = [
                    (NatKind::Cone, NatKind::Cone),
                    (NatKind::Symmetric, NatKind::Symmetric),
                    (NatKind::Cone, NatKind::Symmetric),
                ];
                let hole_punch = HolePunchArgs {
                    transport: TransportChoice::Both,
                    scenario: args.clone(),
                };
                for (a, b) in pairs {
                    hole_punch_runs(a, b, &hole_punch).await?;
                }
                let outcome = until_signal(lab::scenarios::same_lan(args.config()?)).await??;
                print_json(&outcome)?;
                let outcome = until_signal(lab::scenarios::relay_restart(
                    lab::scenarios::Transport::Tcp,
                    args.config()?,
                ))
                .await??;
                print_json(&outcome)
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

/// Runs the hole-punching scenario for each chosen transport, one JSON line each.
async fn hole_punch_runs(a: NatKind, b: NatKind, args: &HolePunchArgs) -> anyhow::Result<()> {
    for transport in args.transport.transports() {
        let config = args.scenario.config()?;
        let outcome = until_signal(lab::scenarios::hole_punch(a, b, transport, config)).await??;
        print_json(&outcome)?;
    }
    Ok(())
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Runs `work` unless SIGINT or SIGTERM comes first. On a signal `work` is dropped,
/// which drops its lab and so deletes the namespaces, and the error says so.
async fn until_signal<F: std::future::Future>(work: F) -> anyhow::Result<F::Output> {
    tokio::select! {
        output = work => Ok(output),
        signal = wait_for_signal() => {
            signal?;
            anyhow::bail!("interrupted; the lab was deleted")
        }
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

/// Raises the soft limit on open files to the hard one: a flood holds one socket per
/// identity with a reservation, plus those in flight, past the usual soft 1024.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open-file limit from {soft}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
}

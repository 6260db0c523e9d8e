//! `p2pnode`: the command-line face of the node. Stages, as in ripgrep and uv: [`args`]
//! holds what the user typed (clap types), [`settings`] turns it into validated settings,
//! and `commands/<sub>.rs` does the work, most of it by asking the daemon over its control
//! socket.

mod args;
mod commands;
mod output;
mod settings;

use std::process::ExitCode;

use clap::Parser;

/// See the `tikv-jemallocator` entry in Cargo.toml.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let json = cli.json;
    init_tracing(&cli);
    let runtime = match runtime().and_then(|mut b| b.build().map_err(|e| e.to_string())) {
        Ok(rt) => rt,
        Err(e) => return output::fail(json, "runtime", &format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => output::fail_error(json, &e),
    }
}

/// The node's runtime: one async worker unless `TOKIO_WORKER_THREADS` says otherwise.
///
/// Why one: the node's async work is the swarm and its streams, where every yamux frame
/// crosses from a stream's task to its connection's task. With two workers the idle one was
/// woken to steal each such task, a cross-CPU wake-up that costs 300 to 370 µs on a 2-vCPU
/// VM; a 1 GiB push ran at 389 to 414 MiB/s with two workers and 522 to 527 MiB/s with one
/// (2.30 and 1.76 CPU s/GiB on the sender). The work that blocks or needs a core of its own
/// is not on the worker: disk IO and database commits go to the blocking pool (or
/// `block_in_place` where a task must wait for them), the tunnel's packets to its data
/// thread. A relay on a larger machine can raise it with `TOKIO_WORKER_THREADS`.
fn runtime() -> Result<tokio::runtime::Builder, String> {
    let workers = match std::env::var("TOKIO_WORKER_THREADS") {
        Err(std::env::VarError::NotPresent) => 1,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(format!(
                    "TOKIO_WORKER_THREADS={v:?} is not a thread count (1 or more)"
                ));
            }
        },
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err("TOKIO_WORKER_THREADS is not a thread count (1 or more)".into());
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(workers).enable_all();
    Ok(builder)
}

/// Logs go to stderr. The daemon logs at `info`; one-shot commands only warn, so their
/// output stays clean for people and scripts. `--quiet` lowers both to errors, each `-v`
/// raises them a step; `RUST_LOG`, when set, overrides all of it.
fn init_tracing(cli: &args::Cli) {
    let daemon = matches!(cli.command, args::Command::Start(_));
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            tracing_subscriber::EnvFilter::try_new(p2pnode_crdt::quiet_automerge_spans(&v))
                .unwrap_or_else(|e| {
                    // Say so rather than silently logging at some other level.
                    eprintln!("warning: ignoring RUST_LOG={v:?}: {e}");
                    default_filter(daemon, cli)
                })
        }
        _ => default_filter(daemon, cli),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn default_filter(daemon: bool, cli: &args::Cli) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::new(p2pnode_crdt::quiet_automerge_spans(log_level(
        daemon,
        cli.quiet,
        cli.verbose,
    )))
}

/// The log filter for the flags. `-v` opens debug for our crates only, over info for the
/// rest: libp2p's and hyper's debug logs would bury ours.
fn log_level(daemon: bool, quiet: bool, verbose: u8) -> &'static str {
    match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) if daemon => "info",
        (false, 0) => "warn",
        (false, 1) => {
            "info,p2pnode=debug,p2pnode_node=debug,p2pnode_chat=debug,p2pnode_secure=debug"
        }
        (false, 2) => "debug",
        (false, _) => "trace",
    }
}

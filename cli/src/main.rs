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

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let json = cli.json;
    init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return output::fail(json, "runtime", &format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => output::fail_error(json, &e),
    }
}

/// Logs go to stderr. The daemon logs at `info`; one-shot commands only warn, so their
/// output stays clean for people and scripts. `RUST_LOG` overrides both.
fn init_tracing(cli: &args::Cli) {
    let default = match cli.command {
        args::Command::Start(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

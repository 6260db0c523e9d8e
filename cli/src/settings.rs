//! Turns what the user typed into the node's settings: the data directory, and the config
//! file merged under the flags (flags win).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use p2pnode_node::Config;
use p2pnode_node::config::{HolePunchMode, resolve_data_dir};

use crate::args::StartArgs;

/// The data directory from `--data-dir`, `$P2PNODE_HOME` or the platform default.
pub(crate) fn data_dir(flag: Option<&Path>) -> Result<PathBuf> {
    resolve_data_dir(flag).context("cannot determine a data directory; pass --data-dir")
}

/// The configuration for `p2pnode start`.
pub(crate) fn start_config(data_dir: &Path, args: &StartArgs) -> Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => Config::load_file(path)?,
        None => Config::load(data_dir)?,
    };
    if !args.listen.is_empty() {
        cfg.listen = args.listen.clone();
    }
    cfg.bootstrap.extend(args.bootstrap.iter().cloned());
    cfg.external_addresses
        .extend(args.external_address.iter().cloned());
    cfg.relay |= args.relay;
    if args.no_mdns {
        cfg.mdns = false;
    }
    cfg.relay_only |= args.relay_only;
    cfg.pad |= args.pad;
    if args.metrics.is_some() {
        cfg.metrics = args.metrics;
    }
    if let Some(mode) = &args.hole_punch {
        cfg.hole_punch = HolePunchMode::parse(mode)
            .ok_or_else(|| anyhow::anyhow!("unknown hole-punch mode {mode:?}"))?;
    }
    if let Some(secs) = args.max_circuit_duration {
        cfg.relay_limits.max_circuit_duration_secs = secs;
    }
    if let Some(bytes) = args.max_circuit_bytes {
        cfg.relay_limits.max_circuit_bytes = bytes;
    }
    if let Some(n) = args.max_reservations {
        cfg.relay_limits.max_reservations = n;
    }
    Ok(cfg)
}

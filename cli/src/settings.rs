//! Turns what the user typed into the node's settings: the data directory, and the config
//! file merged under the flags (flags win). The file's `[vpn]` table is the binary's own
//! (the node knows no protocol): it is taken out here and the rest goes to the node.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use p2pnode_node::Config;
use p2pnode_node::config::{CONFIG_FILE, HolePunchMode, resolve_data_dir};
use serde::Deserialize;

use crate::args::StartArgs;

/// What `p2pnode start` runs with.
#[derive(Debug, Default)]
pub(crate) struct StartSettings {
    /// The node's configuration.
    pub(crate) node: Config,
    /// The config file's `[vpn]` table.
    pub(crate) vpn: VpnSettings,
}

/// `[vpn]` in the config file.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct VpnSettings {
    /// Networks whose tunnel `start` brings up (as `vpn up` would).
    pub(crate) up: Vec<String>,
    /// Their devices' MTU; the tunnel's default when absent.
    pub(crate) mtu: Option<u16>,
}

/// The data directory from `--data-dir`, `$P2PNODE_HOME` or the platform default.
pub(crate) fn data_dir(flag: Option<&Path>) -> Result<PathBuf> {
    resolve_data_dir(flag).context("cannot determine a data directory; pass --data-dir")
}

/// Reads the config file at `path`; a missing one gives the defaults unless `required`
/// (a file the user named must exist: a typo must not start a default node).
fn read_config(path: &Path, required: bool) -> Result<StartSettings> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(StartSettings::default());
        }
        Err(e) => return Err(anyhow!("cannot read config file {}: {e}", path.display())),
    };
    parse_config(&text, path)
}

fn parse_config(text: &str, path: &Path) -> Result<StartSettings> {
    let invalid = |e: &dyn std::fmt::Display| {
        // toml's messages quote the line over several; one line is what we print.
        let e = e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        anyhow!("invalid config file {}: {e}", path.display())
    };
    let mut table: toml::Table = toml::from_str(text).map_err(|e| invalid(&e))?;
    let vpn = match table.remove("vpn") {
        Some(v) => VpnSettings::deserialize(v).map_err(|e| invalid(&format!("[vpn] {e}")))?,
        None => VpnSettings::default(),
    };
    for network in &vpn.up {
        p2pnode_node::networks::check_name(network)
            .map_err(|e| invalid(&format!("[vpn] up: {e}")))?;
    }
    let node = Config::deserialize(toml::Value::Table(table)).map_err(|e| invalid(&e))?;
    Ok(StartSettings { node, vpn })
}

/// The settings for `p2pnode start`.
pub(crate) fn start_settings(data_dir: &Path, args: &StartArgs) -> Result<StartSettings> {
    let mut settings = match &args.config {
        Some(path) => read_config(path, true)?,
        None => read_config(&data_dir.join(CONFIG_FILE), false)?,
    };
    let cfg = &mut settings.node;
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
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StartSettings> {
        parse_config(text, Path::new("/etc/p2pnode.toml"))
    }

    #[test]
    fn the_vpn_table_is_ours_and_the_rest_the_nodes() {
        let s = parse("relay = true\n[vpn]\nup = [\"home\", \"lab\"]\nmtu = 1400\n").unwrap();
        assert!(s.node.relay);
        assert_eq!(
            s.vpn,
            VpnSettings {
                up: vec!["home".into(), "lab".into()],
                mtu: Some(1400),
            }
        );
        let s = parse("relay = true\n").unwrap();
        assert_eq!(s.vpn, VpnSettings::default());
    }

    /// The shipped relay configuration reads as the node's own parser read it.
    #[test]
    fn the_shipped_relay_config_reads_alike() {
        let text = include_str!("../../deploy/relay.toml");
        let s = parse(text).unwrap();
        assert_eq!(s.node, toml::from_str::<Config>(text).unwrap());
        assert_eq!(s.vpn, VpnSettings::default());
    }

    #[test]
    fn mistakes_are_one_line_naming_the_file() {
        for (text, needle) in [
            ("[vpn]\nupp = [\"home\"]\n", "unknown field `upp`"),
            ("[vpn]\nup = [\"a b\"]\n", "[vpn] up"),
            ("relay = \"yes\"\n", "relay"),
            ("relay = \n", "invalid config file"),
            ("nosuch = 1\n", "unknown field `nosuch`"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.starts_with("invalid config file /etc/p2pnode.toml: ") && e.contains(needle),
                "{text:?}: {e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
    }
}

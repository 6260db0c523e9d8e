//! `p2pnode start`: runs the daemon until Ctrl-C, SIGTERM or `p2pnode stop`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use p2pnode_chat::service::Chat;
use p2pnode_files::service::Files;
use p2pnode_node::{Node, control};
use p2pnode_sync::service::Sync;
use p2pnode_tunnel::service::{Tunnel, TunnelService};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

use crate::args::StartArgs;
use crate::output;
use crate::settings;

pub(crate) async fn run(data_dir: &Path, args: &StartArgs, json: bool) -> Result<()> {
    p2pnode_node::identity::ensure_data_dir(data_dir)?;
    let settings::StartSettings { node: config, vpn } = settings::start_settings(data_dir, args)?;
    // Bind the socket first: a second daemon on the same data directory must fail before it
    // touches the identity or the database.
    let listener = control::bind(data_dir).await?;
    let node = match Node::builder(data_dir, config)
        .protocol(Chat)
        .protocol(Files::default())
        .protocol(Sync)
        .protocol(Tunnel)
        .start()
        .await
    {
        Ok(node) => node,
        Err(e) => {
            let _ = std::fs::remove_file(data_dir.join(control::SOCKET_FILE));
            return Err(e.into());
        }
    };
    let client = node.client().clone();
    let shutdown_requested = Arc::new(Notify::new());
    let stop_server = Arc::new(Notify::new());
    let server = tokio::spawn(tracing::Instrument::instrument(
        control::serve(
            listener,
            client.clone(),
            node.protocols().clone(),
            shutdown_requested.clone(),
            stop_server.clone(),
        ),
        node.span().clone(),
    ));

    let status = client.status().await?;
    output::show(json, &status, |s| {
        println!("p2pnode {} running", s.peer_id);
        println!("data directory: {}", data_dir.display());
        for a in &s.listen_addrs {
            println!("listening on {a}/p2p/{}", s.peer_id);
        }
        if s.relay_server {
            println!("relay server: on");
        }
    });
    if let Some(tunnel) = node.protocol::<TunnelService>() {
        vpn_up(tunnel, &vpn).await;
    }

    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot watch Ctrl-C")?,
        _ = term.recv() => {}
        () = shutdown_requested.notified() => {}
    }
    tracing::info!("shutting down");
    stop_server.notify_one();
    let _ = server.await;
    node.shutdown().await;
    let _ = std::fs::remove_file(data_dir.join(control::SOCKET_FILE));
    Ok(())
}

/// Brings up the tunnels the config file's `[vpn] up` names. One that cannot come up (not
/// a member yet, no CAP_NET_ADMIN, a colliding route) is logged in one line and the daemon
/// runs on: the others and every other protocol do not depend on it.
async fn vpn_up(tunnel: &TunnelService, vpn: &settings::VpnSettings) {
    for network in &vpn.up {
        match tunnel.handle().up(network, vpn.mtu, None).await {
            Ok(n) => tracing::info!(
                network,
                interface = n.interface,
                ipv4 = n.ipv4,
                ipv6 = n.ipv6,
                "vpn up at start (config [vpn] up)"
            ),
            Err(e) => tracing::warn!(network, "vpn up at start (config [vpn] up) failed: {e}"),
        }
    }
}

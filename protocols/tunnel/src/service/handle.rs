//! [`TunnelHandle`]: what the control routes (and tests) call; each call is a command to
//! the owner with a oneshot reply.

use std::collections::HashMap;

use p2pnode_node::Client;
use tokio::sync::{mpsc, oneshot};

use super::{Command, MAX_MTU, TunnelError};
use crate::api::{Down, NetStatus};

/// Asks the owner for `vpn up/down/status`. Cheap to clone.
#[derive(Clone)]
pub struct TunnelHandle {
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) client: Client,
}

impl std::fmt::Debug for TunnelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelHandle")
    }
}

impl TunnelHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, TunnelError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| TunnelError::Stopped)?;
        rx.await.map_err(|_| TunnelError::Stopped)
    }

    /// Brings the tunnel of `network` up (or reports it, if it is up already).
    /// `offload`: the TUN device's offloads (on when `None`).
    pub async fn up(
        &self,
        network: &str,
        mtu: Option<u16>,
        offload: Option<bool>,
    ) -> Result<NetStatus, TunnelError> {
        p2pnode_node::networks::check_name(network)?;
        let mtu = mtu.unwrap_or(crate::DEFAULT_MTU);
        if !(crate::DEFAULT_MTU..=MAX_MTU).contains(&mtu) {
            return Err(TunnelError::Invalid(format!(
                "an MTU of {mtu} is below IPv6's minimum of {}",
                crate::DEFAULT_MTU
            )));
        }
        let network = network.to_string();
        let status = self
            .ask(|reply| Command::Up {
                network,
                mtu,
                offload: offload.unwrap_or(true),
                reply,
            })
            .await??;
        Ok(self.with_paths(vec![status]).await.remove(0))
    }

    /// Takes the tunnel of `network` down: its streams closed, its device removed.
    pub async fn down(&self, network: &str) -> Result<Down, TunnelError> {
        let network = network.to_string();
        self.ask(|reply| Command::Down { network, reply }).await?
    }

    /// Every network whose tunnel is up, with its members and counts.
    pub async fn status(&self) -> Result<Vec<NetStatus>, TunnelError> {
        let list = self.ask(|reply| Command::Status { reply }).await?;
        Ok(self.with_paths(list).await)
    }

    /// Fills in each member's path and round trip from the node's connections.
    async fn with_paths(&self, mut list: Vec<NetStatus>) -> Vec<NetStatus> {
        let peers = self.client.peers().await.unwrap_or_default();
        let by_id: HashMap<&str, _> = peers.iter().map(|p| (p.peer_id.as_str(), p)).collect();
        for m in list.iter_mut().flat_map(|n| n.members.iter_mut()) {
            if let Some(p) = by_id.get(m.peer_id.as_str()) {
                m.path = serde_json::to_value(p.path)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string));
                m.rtt_ms = p.rtt_ms;
            }
        }
        list
    }
}

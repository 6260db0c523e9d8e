//! Bringing a network's tunnel up: the device, its addresses and routes, the data path
//! and its reader, the datagram socket, our lease and name in the network's record, and
//! the DNS responder; and moving to a new address when a tie-break takes ours.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use super::net::{NetTunnel, View};
use super::path::{self, DataPath};
use super::{Service, TunnelError, names, spawn, sys, udp};
use crate::api::NetStatus;
use crate::device::{ReadBatch, TunDevice};
use crate::{Engine, MemberId};

impl Service {
    pub(super) async fn up(
        &mut self,
        network: &str,
        mtu: u16,
        offload: bool,
    ) -> Result<NetStatus, TunnelError> {
        if let Some(t) = self.nets.get(network) {
            return Ok(self.status(network, t));
        }
        if !self.networks.is_in(network) {
            return Err(TunnelError::NotMember(network.to_string()));
        }
        let mut roster = self.networks.roster(network)?;
        // Our name, for `<name>.p2p`: the host name when we have set none.
        // A member's name may arrive between our look and our op: then look again, once.
        for _ in 0..2 {
            if names::own_name(&roster, &self.me).is_some() {
                break;
            }
            let Some(name) = names::default_name(&roster, &self.me) else {
                break;
            };
            let named = self.record_name(network, name).await;
            roster = self.networks.roster(network)?;
            if named {
                break;
            }
        }
        let view = View::of(&roster, &self.me);
        let me = MemberId(self.me.to_bytes());
        let engine = Engine::new(roster.id.0, me, mtu, &view.claims, view.revoked)?;
        let lease = engine
            .our_lease()
            .ok_or_else(|| TunnelError::NotMember(network.to_string()))?;
        let prefixes = engine.table().prefixes();
        let interface = sys::interface_name(network, &roster.id.0);
        sys::check_free(&interface, &prefixes).map_err(|taken| match taken {
            sys::Taken::Interface(name) => TunnelError::InterfaceExists(name),
            sys::Taken::Route { prefix, overlap } => TunnelError::Collision {
                network: network.to_string(),
                prefix,
                route: overlap.route,
                interface: overlap.interface,
            },
        })?;
        if engine.must_record_ours() {
            self.record_lease(network, lease).await;
        }
        let device = Arc::new(TunDevice::create_with(
            &interface, lease, &prefixes, mtu, offload,
        )?);
        if device.offload()
            && let Err(e) = sys::limit_segments(&interface, crate::device::MAX_SEGMENTS).await
        {
            // The reader still drops a super-packet it cannot split, and reads on.
            tracing::warn!(
                interface,
                "tunnel: cannot bound the device's super-packets: {e}"
            );
        }
        self.bind_udp().await;
        let names: names::Names = Arc::new(Mutex::new(names::table_of(&roster, engine.table())));
        let dns = self.start_dns(network, &interface, lease.v4, &names).await;
        let path = DataPath::shared(engine);
        let reader = self
            .data
            .add(Box::new(path::TunReader {
                network: network.to_string(),
                device: device.clone(),
                path: path.clone(),
                reads: ReadBatch::new(mtu),
                batch: self.udp.as_ref().map(|(u, _)| u.batch()),
                last_read: None,
            }))
            .map_err(|e| TunnelError::DataThread(e.to_string()))?;
        tracing::info!(
            network,
            interface,
            ipv4 = %lease.v4,
            ipv6 = %lease.v6,
            "tunnel up"
        );
        let t = NetTunnel {
            id: roster.id.0,
            interface,
            mtu,
            lease,
            path,
            device,
            reader,
            members: view.names,
            links: HashMap::new(),
            opening: BTreeSet::new(),
            waiting: HashMap::new(),
            names,
            dns,
        };
        let status = self.status(network, &t);
        if let Ok(mut up) = self.up_ids.write() {
            up.insert(t.id);
        }
        self.nets.insert(network.to_string(), t);
        self.tick();
        Ok(status)
    }

    /// Our lease moved (another member recorded the same address at the same time, and
    /// won the tie-break): the device takes the new addresses and the DNS responder moves
    /// with them. Connections on the old address end, as they would on any renumbering.
    pub(super) async fn readdress(&mut self, network: &str, new: crate::Lease) {
        let Some(t) = self.nets.get_mut(network) else {
            return;
        };
        let old = t.lease;
        if let Err(e) = sys::readdress(&t.interface, old, new).await {
            tracing::warn!(
                network,
                "tunnel: cannot move to {} / {}: {e}",
                new.v4,
                new.v6
            );
            return;
        }
        t.lease = new;
        tracing::warn!(
            network,
            from = %old.v4,
            to = %new.v4,
            ipv6 = %new.v6,
            "tunnel: the tie-break moved our address"
        );
        if let Some(dns) = t.dns.take() {
            dns.abort();
            let _ = dns.await;
        }
        let (interface, names) = (t.interface.clone(), t.names.clone());
        let dns = self.start_dns(network, &interface, new.v4, &names).await;
        if let Some(t) = self.nets.get_mut(network) {
            t.dns = dns;
        }
    }

    /// Binds the datagram socket, once. Without it every member is reached over streams.
    async fn bind_udp(&mut self) {
        if self.udp.is_some() {
            return;
        }
        let bound = self.data.spawner().and_then(|spawner| {
            let u = udp::Udp::bind(0, spawner.clone())?;
            let reader = spawner.add(Box::new(udp::UdpReader::new(u.clone())))?;
            Ok((u, reader))
        });
        match bound {
            Ok((u, reader)) => {
                tracing::info!(port = u.port(), "tunnel: datagram socket bound");
                self.port
                    .store(u.port(), std::sync::atomic::Ordering::Relaxed);
                self.udp = Some((u, reader));
            }
            Err(e) => tracing::warn!("tunnel: no datagram socket, streams only: {e}"),
        }
    }

    /// Writes our lease into the network's record: the tie-break moved us, and members
    /// that join later must see the address as ours.
    pub(super) async fn record_lease(&self, network: &str, lease: crate::Lease) {
        let networks = self.networks.clone();
        let name = network.to_string();
        let bytes = lease.to_bytes().to_vec();
        let result = tokio::task::spawn_blocking(move || networks.set_lease(&name, bytes)).await;
        match result {
            Ok(Ok(())) => tracing::info!(network, ipv4 = %lease.v4, "tunnel: recorded our lease"),
            Ok(Err(e)) => tracing::warn!(network, "tunnel: cannot record our lease: {e}"),
            Err(e) => tracing::warn!(network, "tunnel: cannot record our lease: {e}"),
        }
    }

    /// Records `name` as ours in `network`; whether it was.
    pub(super) async fn record_name(&self, network: &str, name: String) -> bool {
        let networks = self.networks.clone();
        let net = network.to_string();
        let n = name.clone();
        let result = tokio::task::spawn_blocking(move || networks.set_name(&net, &n)).await;
        match result {
            Ok(Ok(())) => {
                tracing::info!(network, name, "tunnel: recorded our name");
                return true;
            }
            Ok(Err(e)) => tracing::warn!(network, "tunnel: cannot record our name: {e}"),
            Err(e) => tracing::warn!(network, "tunnel: cannot record our name: {e}"),
        }
        false
    }

    /// Starts the DNS responder of `network` on `addr` (the device's address, so the
    /// device is up first), and points systemd-resolved at it where that runs. `None`
    /// when the socket cannot be bound: the tunnel works without names.
    async fn start_dns(
        &self,
        network: &str,
        interface: &str,
        addr: std::net::Ipv4Addr,
        names: &names::Names,
    ) -> Option<JoinHandle<()>> {
        let socket = match names::bind(addr).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(network, "tunnel: no DNS responder on {addr}:53: {e}");
                return None;
            }
        };
        let task = spawn(names::serve(socket, names.clone()));
        let iface = interface.to_string();
        match tokio::task::spawn_blocking(move || names::configure_resolver(&iface, addr)).await {
            Ok(Ok(true)) => tracing::info!(
                network,
                interface,
                "tunnel: systemd-resolved asks {addr} for ~p2p"
            ),
            Ok(Ok(false)) => tracing::debug!(network, "tunnel: no systemd-resolved to configure"),
            Ok(Err(e)) => tracing::warn!(network, "tunnel: cannot configure systemd-resolved: {e}"),
            Err(e) => tracing::warn!(network, "tunnel: cannot configure systemd-resolved: {e}"),
        }
        Some(task)
    }
}

//! The node's listeners at start: the configured addresses, with the fallbacks a default
//! address gets (a free port, or none when its address family is missing).

use libp2p::multiaddr::Protocol as AddrPart;
use libp2p::{Multiaddr, Swarm};

use crate::behaviour::Behaviour;
use crate::config::Config;
use crate::error::NodeError;
use crate::node::StartError;

/// Opens the configured listeners. Default addresses fall back to a free port when the
/// default port is taken and are skipped when their address family is unavailable;
/// explicit addresses must work.
pub(crate) fn open(swarm: &mut Swarm<Behaviour>, config: &Config) -> Result<(), StartError> {
    let (addrs, defaults) = config.listen_addrs();
    let mut opened = 0;
    for addr in addrs {
        match swarm.listen_on(addr.clone()) {
            Ok(_) => opened += 1,
            Err(e) if defaults => {
                let reason = crate::error::transport_reason(&e);
                let fallback = with_port_zero(&addr);
                match swarm.listen_on(fallback.clone()) {
                    Ok(_) => {
                        tracing::info!(%addr, %reason, "default port unavailable; listening on a free port");
                        opened += 1;
                    }
                    Err(e) => tracing::warn!(
                        %addr, "skipping default listener: {}",
                        crate::error::transport_reason(&e)
                    ),
                }
            }
            Err(e) => {
                return Err(StartError::Listen(NodeError::Listen {
                    addr: addr.to_string(),
                    reason: crate::error::transport_reason(&e),
                }));
            }
        }
    }
    if opened == 0 {
        return Err(StartError::NoListener);
    }
    Ok(())
}

fn with_port_zero(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .map(|p| match p {
            AddrPart::Tcp(_) => AddrPart::Tcp(0),
            AddrPart::Udp(_) => AddrPart::Udp(0),
            other => other,
        })
        .collect()
}

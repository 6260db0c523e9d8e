//! The p2pnode scenarios of the NAT lab.
//!
//! - hole punching between two NATed peers ([`hole_punch`]): `cone`-`cone` must end
//!   direct and keep working after the relay dies; `symmetric`-`symmetric` must stay
//!   relayed and keep working; `cone`-`symmetric` is reported as it turns out;
//! - two peers behind one router ([`same_lan`]) must connect directly over the LAN;
//! - a relay killed and restarted ([`relay_restart`]): every peer must hold a
//!   reservation again within 30 s.
//!
//! Each returns a serialisable outcome with its timings; verdicts come from the JSON
//! API (`peers`, `ping`, `status`), precise timings from the daemon logs
//! ([`super::logscan`]).
//!
//! The settings are in `config`, the steps the scenarios share (starting the relay and
//! peers, waiting for reservations and direct connections) in `peers`, and each scenario
//! in a file of its own: `holepunch`, `lan` and `restart`.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::{Lab, LabError};

mod config;
mod holepunch;
mod lan;
mod peers;
mod restart;

pub use config::{CircuitLimits, Punch, ScenarioConfig, Transport};
pub use holepunch::{HolePunchLab, HolePunchOutcome, hole_punch};
pub use lan::{SameLanOutcome, same_lan};
pub use peers::{
    PeerOptions, dcutr_gave_up, direct_connection, is_direct, relay_addr, start_peer, start_relay,
    wait_direct, wait_reservation,
};
pub use restart::{RESERVATION_GOAL, RelayRestartOutcome, relay_restart};

/// The relay host's address on the public segment (the first public host).
pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// Port the relay listens on (TCP and UDP).
pub const RELAY_PORT: u16 = 4001;
/// Port peers listen on (TCP or UDP).
pub const PEER_PORT: u16 = 4001;

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Keeps the lab's work directory (daemon logs) when the scenario failed or when asked,
/// and logs where it is.
fn keep_logs<T>(
    lab: &mut Lab,
    config: &ScenarioConfig,
    outcome: Result<T, LabError>,
) -> Result<T, LabError> {
    if outcome.is_err() || config.keep_logs || std::env::var_os("P2PNODE_LAB_KEEP").is_some() {
        let dir = lab.keep_workdir();
        tracing::warn!(logs = %dir.display(), "lab logs kept");
    }
    outcome
}

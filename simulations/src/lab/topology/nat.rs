//! How a router behaves: its NAT kind, its link faults, and the nftables rules and tc
//! shaper they turn into.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::{DELAY_MARK, DELAY_TUN};
use crate::lab::LabError;

/// How a router maps LAN flows to its WAN address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatKind {
    /// nftables `masquerade`: the source port is kept when free, so one LAN socket has
    /// one public mapping for every destination (hole punching can work).
    Cone,
    /// nftables `masquerade random`: each flow gets a random port, so the port a peer
    /// observes is useless to another peer (hole punching should fail).
    Symmetric,
}

impl NatKind {
    fn masquerade(self) -> &'static str {
        match self {
            NatKind::Cone => "masquerade",
            NatKind::Symmetric => "masquerade random",
        }
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NatKind::Cone => "cone",
            NatKind::Symmetric => "symmetric",
        })
    }
}

impl FromStr for NatKind {
    type Err = LabError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cone" => Ok(NatKind::Cone),
            "symmetric" | "sym" => Ok(NatKind::Symmetric),
            other => Err(LabError::Config(format!(
                "unknown NAT kind {other:?} (cone, symmetric)"
            ))),
        }
    }
}

/// Faults on a router: they apply to every packet the router forwards, in both
/// directions (LAN to WAN and WAN to LAN); traffic between hosts on the same LAN is
/// bridged and not affected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFaults {
    /// Added to each packet crossing the router, in each direction: a host's round trip
    /// to the public side grows by twice this, a round trip between hosts behind two
    /// such routers by four times this.
    pub delay: Duration,
    /// Percent of packets crossing the router dropped, in each direction (0 to 100).
    pub loss_percent: u8,
    /// Rate limit of the WAN link in each direction, kbit/s.
    pub rate_kbit: Option<u32>,
}

impl LinkFaults {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// Sets the one-way delay per router crossing.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sets the loss in percent per router crossing.
    pub fn with_loss_percent(mut self, percent: u8) -> Self {
        self.loss_percent = percent;
        self
    }

    /// Sets the WAN rate limit.
    pub fn with_rate_kbit(mut self, kbit: u32) -> Self {
        self.rate_kbit = Some(kbit);
        self
    }
}

pub(super) fn tbf_args(kbit: u32) -> Vec<String> {
    // Burst: 20 ms worth of the rate, at least two full-size packets, so the shaper
    // neither starves at low rates nor turns bursty at high ones.
    let burst_bytes = (u64::from(kbit) * 1000 / 8 / 50).max(3028);
    vec![
        "tbf".into(),
        "rate".into(),
        format!("{kbit}kbit"),
        "burst".into(),
        burst_bytes.to_string(),
        "latency".into(),
        "200ms".into(),
    ]
}

/// The nftables rules of a router, as in DESIGN.md ("A NAT router's nftables rules that
/// behaved like a home router"), extended for the delay link and loss.
///
/// With a delay link every forwarded packet passes the router twice: first from the LAN
/// or WAN into the TUN device, then from the TUN device out. The first pass is
/// `notrack`ed, so conntrack and NAT see each packet once, on the second pass, as if the
/// TUN device were the input interface; that is why the LAN rules also accept the TUN
/// device for packets from the LAN's addresses.
pub(crate) fn router_ruleset(kind: NatKind, lan_net: &str, faults: &LinkFaults) -> String {
    let masquerade = kind.masquerade();
    let delay = !faults.delay.is_zero();
    let mut rules = format!(
        "table ip lab_nat {{
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"wan\" ip saddr {lan_net} {masquerade}
  }}
}}
table ip lab_filter {{
  chain forward_f {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname \"lan\" oifname \"lan\" accept
    iifname {{ \"lan\", \"{DELAY_TUN}\" }} ip saddr {lan_net} oifname \"wan\" accept
"
    );
    if delay {
        rules.push_str(&format!(
            "    ct state untracked iifname {{ \"lan\", \"wan\" }} oifname \"{DELAY_TUN}\" accept\n"
        ));
    }
    rules.push_str(&format!(
        "  }}
  chain input_f {{
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iifname {{ \"lo\", \"lan\" }} accept
    iifname \"{DELAY_TUN}\" ip saddr {lan_net} accept
  }}
}}
"
    ));
    if delay || faults.loss_percent > 0 {
        rules.push_str("table ip lab_faults {\n");
        if faults.loss_percent > 0 {
            // Before conntrack (priority -200) and before the notrack chain, so a lost
            // packet leaves no trace, as on a lossy wire.
            rules.push_str(&format!(
                "  chain loss {{
    type filter hook prerouting priority -310; policy accept;
    iifname {{ \"lan\", \"wan\" }} numgen random mod 100 < {} drop
  }}
",
                faults.loss_percent
            ));
        }
        if delay {
            rules.push_str(&format!(
                "  chain first_pass {{
    type filter hook prerouting priority raw; policy accept;
    iifname {{ \"lan\", \"wan\" }} notrack meta mark set {DELAY_MARK}
  }}
"
            ));
        }
        rules.push_str("}\n");
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cone_ruleset_matches_the_design_rules() {
        let rules = router_ruleset(NatKind::Cone, "10.1.0.0/24", &LinkFaults::none());
        assert!(rules.contains("oifname \"wan\" ip saddr 10.1.0.0/24 masquerade\n"));
        assert!(rules.contains("policy drop;\n    ct state established,related accept"));
        assert!(!rules.contains("lab_faults"));
        assert!(!rules.contains("notrack"));
    }

    #[test]
    fn symmetric_uses_random_ports() {
        let rules = router_ruleset(NatKind::Symmetric, "10.2.0.0/24", &LinkFaults::none());
        assert!(rules.contains("masquerade random\n"));
    }

    #[test]
    fn faults_add_loss_and_first_pass_notrack() {
        let faults = LinkFaults::none()
            .with_delay(Duration::from_millis(5))
            .with_loss_percent(7);
        let rules = router_ruleset(NatKind::Cone, "10.1.0.0/24", &faults);
        assert!(rules.contains("numgen random mod 100 < 7 drop"));
        assert!(rules.contains("iifname { \"lan\", \"wan\" } notrack meta mark set 0x1d"));
        assert!(rules.contains("ct state untracked"));
    }

    #[test]
    fn nat_kind_round_trips() {
        for kind in [NatKind::Cone, NatKind::Symmetric] {
            assert_eq!(kind.to_string().parse::<NatKind>().ok(), Some(kind));
        }
        assert!("full-cone".parse::<NatKind>().is_err());
    }

    #[test]
    fn tbf_burst_has_a_floor() {
        let args = tbf_args(64);
        assert_eq!(args[4], "3028");
    }
}

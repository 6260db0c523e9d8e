//! ICMP ping (iputils `ping`) between lab hosts, parsed.

use std::time::Duration;

use super::{Lab, LabError};

/// What one `ping` run reported.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PingStats {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// Round-trip times of the replies: min, avg, max in ms; `None` without replies.
    pub rtt_ms: Option<(f64, f64, f64)>,
}

impl PingStats {
    /// Share of requests without a reply, 0.0 to 1.0.
    pub fn loss(&self) -> f64 {
        if self.transmitted == 0 {
            return 1.0;
        }
        1.0 - f64::from(self.received) / f64::from(self.transmitted)
    }

    /// Parses iputils ping's summary lines.
    pub fn parse(output: &str) -> Option<Self> {
        // "5 packets transmitted, 5 received, 0% packet loss, time 804ms"
        let summary = output.lines().find(|l| l.contains("packets transmitted"))?;
        let mut numbers = summary
            .split(',')
            .filter_map(|part| part.split_whitespace().next()?.parse::<u32>().ok());
        let transmitted = numbers.next()?;
        let received = numbers.next()?;
        // "rtt min/avg/max/mdev = 0.041/0.052/0.067/0.010 ms"
        let rtt_ms = output
            .lines()
            .find(|l| l.starts_with("rtt ") || l.starts_with("round-trip"))
            .and_then(|line| {
                let values = line.split('=').nth(1)?.split_whitespace().next()?;
                let mut v = values.split('/').filter_map(|x| x.parse::<f64>().ok());
                Some((v.next()?, v.next()?, v.next()?))
            });
        Some(Self {
            transmitted,
            received,
            rtt_ms,
        })
    }
}

impl Lab {
    /// Pings `target` from `host`: `count` requests `interval` apart, each waiting at
    /// most `wait` for its reply. A ping without any reply is a result, not an error.
    pub async fn ping(
        &self,
        host: &str,
        target: &str,
        count: u32,
        interval: Duration,
        wait: Duration,
    ) -> Result<PingStats, LabError> {
        let args = [
            "-n".to_string(),
            "-q".into(),
            "-c".into(),
            count.to_string(),
            "-i".into(),
            format!("{:.3}", interval.as_secs_f64()),
            "-W".into(),
            format!("{:.3}", wait.as_secs_f64()),
            target.to_string(),
        ];
        let output = self.exec_output(host, "ping", &args).await?;
        let text = String::from_utf8_lossy(&output.stdout);
        PingStats::parse(&text).ok_or_else(|| LabError::Output {
            command: format!("ping {target} on {host}"),
            reason: format!(
                "no summary in: {} {}",
                text.trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iputils_summary() {
        let out = "PING 198.51.100.2 (198.51.100.2) 56(84) bytes of data.\n\n\
            --- 198.51.100.2 ping statistics ---\n\
            10 packets transmitted, 7 received, 30% packet loss, time 904ms\n\
            rtt min/avg/max/mdev = 40.211/41.052/43.067/0.910 ms\n";
        let stats = PingStats::parse(out).expect("summary");
        assert_eq!(stats.transmitted, 10);
        assert_eq!(stats.received, 7);
        assert_eq!(stats.rtt_ms, Some((40.211, 41.052, 43.067)));
        assert!((stats.loss() - 0.3).abs() < 1e-9);
    }

    #[test]
    fn parses_total_loss() {
        let out = "--- 10.1.0.2 ping statistics ---\n\
            2 packets transmitted, 0 received, 100% packet loss, time 1010ms\n";
        let stats = PingStats::parse(out).expect("summary");
        assert_eq!(stats.received, 0);
        assert_eq!(stats.rtt_ms, None);
        assert_eq!(stats.loss(), 1.0);
    }

    #[test]
    fn parses_errors_in_summary() {
        let out = "3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2ms\n";
        let stats = PingStats::parse(out).expect("summary");
        assert_eq!((stats.transmitted, stats.received), (3, 0));
    }
}

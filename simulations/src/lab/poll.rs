//! Waiting for a condition by polling it, with a time limit: tests never sleep for a
//! fixed time hoping that something has happened.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::LabError;

/// Polls `check` every `interval` until it returns `Ok(Some(value))`, and gives up after
/// `timeout`. `Ok(None)` means "not yet"; an `Err` also means "not yet" (a daemon that is
/// still starting refuses its control socket), and the last one is kept for the timeout
/// error. A check that must stop the wait at once returns [`Poll::Fail`].
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: F,
) -> Result<T, LabError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Poll<T>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let attempt = Instant::now();
        let last = match check().await {
            Poll::Ready(value) => {
                tracing::debug!(what, elapsed = ?start.elapsed(), "condition met");
                return Ok(value);
            }
            Poll::Pending(observation) => observation,
            Poll::Fail(err) => return Err(err),
        };
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: what.to_string(),
                after: timeout,
                last,
            });
        }
        // The interval counts from the start of the attempt, so slow checks (a process
        // spawn) do not stretch it.
        tokio::time::sleep_until((attempt + interval).min(deadline)).await;
    }
}

/// The outcome of one check in [`wait_for`].
#[derive(Debug)]
pub enum Poll<T> {
    /// The condition holds.
    Ready(T),
    /// Not yet; what was seen, for the timeout message.
    Pending(Option<String>),
    /// The condition can no longer hold (a process died); stop waiting.
    Fail(LabError),
}

impl<T> Poll<T> {
    /// Not yet, with nothing to report.
    pub fn pending() -> Self {
        Poll::Pending(None)
    }

    /// Not yet, with what was seen.
    pub fn seen(observation: impl std::fmt::Display) -> Self {
        Poll::Pending(Some(observation.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_once_the_condition_holds() {
        let mut calls = 0;
        let value = wait_for(
            "third call",
            Duration::from_secs(5),
            Duration::from_millis(100),
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n == 3 {
                        Poll::Ready(n)
                    } else {
                        Poll::pending()
                    }
                }
            },
        )
        .await;
        assert_eq!(value.ok(), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_with_the_last_observation() {
        let result: Result<(), _> = wait_for(
            "never",
            Duration::from_millis(350),
            Duration::from_millis(100),
            || async { Poll::seen("still relayed") },
        )
        .await;
        match result {
            Err(LabError::Timeout { last, .. }) => {
                assert_eq!(last.as_deref(), Some("still relayed"));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fail_stops_at_once() {
        let start = Instant::now();
        let result: Result<(), _> = wait_for(
            "a dead process",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async { Poll::Fail(LabError::Config("gone".into())) },
        )
        .await;
        assert!(matches!(result, Err(LabError::Config(_))));
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}

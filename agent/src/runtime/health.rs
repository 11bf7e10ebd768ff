//! Health checks of one instance, with Docker's and Kubernetes' probe semantics: an HTTP `GET` answered 2xx or
//! 3xx, a TCP connection accepted, or a command exiting 0, each within the check's timeout. The counting of
//! consecutive results into a phase is [`Checks`]: pure, so it is tested without processes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use gantry_proto::platform::{HealthCheck, Probe};

/// Runs one probe against an instance listening on `address`.
///
/// # Errors
/// Why the check failed, in words.
pub async fn probe(
    probe: &Probe,
    address: SocketAddr,
    timeout: Duration,
    client: &reqwest::Client,
    working_dir: &Path,
) -> Result<(), String> {
    match probe {
        Probe::Http { path } => {
            let url = format!("http://{address}{path}");
            let response = client
                .get(&url)
                .timeout(timeout)
                .send()
                .await
                .map_err(|error| format!("GET {url}: {error}"))?;
            let status = response.status();
            if status.is_success() || status.is_redirection() {
                Ok(())
            } else {
                Err(format!("GET {url} answered {status}"))
            }
        }
        Probe::Tcp => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(format!("TCP connect to {address}: {error}")),
                Err(_) => Err(format!(
                    "TCP connect to {address}: no answer in {} ms",
                    timeout.as_millis()
                )),
            }
        }
        Probe::Command { command, args } => {
            let mut child = tokio::process::Command::new(command);
            child
                .args(args)
                .current_dir(working_dir)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            match tokio::time::timeout(timeout, child.status()).await {
                Ok(Ok(status)) if status.success() => Ok(()),
                Ok(Ok(status)) => Err(format!("`{command}` ended with {status}")),
                Ok(Err(error)) => Err(format!("`{command}` could not run: {error}")),
                Err(_) => Err(format!(
                    "`{command}` took longer than {} ms",
                    timeout.as_millis()
                )),
            }
        }
    }
}

/// Consecutive results of an instance's checks, and what they make of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checks {
    successes: u32,
    failures: u32,
    /// Whether the instance has been healthy since its start.
    healthy: bool,
    /// Whether it has ever been healthy since its start.
    ever_healthy: bool,
}

/// What one result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Healthy now (it was not).
    BecameHealthy,
    /// Unhealthy now (it was healthy, or its start period is over without it becoming healthy).
    BecameUnhealthy,
    /// No change.
    Same,
}

impl Checks {
    /// Whether the instance counts as healthy.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Counts one result; `in_start_period` failures do not count against an instance not yet healthy.
    pub fn record(&mut self, check: &HealthCheck, passed: bool, in_start_period: bool) -> Verdict {
        if passed {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.healthy && self.successes >= check.healthy_threshold {
                self.healthy = true;
                self.ever_healthy = true;
                return Verdict::BecameHealthy;
            }
            return Verdict::Same;
        }
        self.successes = 0;
        if in_start_period && !self.ever_healthy {
            return Verdict::Same;
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures == check.unhealthy_threshold && (self.healthy || !self.ever_healthy) {
            self.healthy = false;
            return Verdict::BecameUnhealthy;
        }
        Verdict::Same
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(healthy: u32, unhealthy: u32) -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp,
            interval_ms: 1000,
            timeout_ms: 100,
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
            start_period_ms: 0,
        }
    }

    #[test]
    fn thresholds_and_the_start_period() {
        let policy = check(2, 3);
        let mut checks = Checks::default();
        assert_eq!(
            checks.record(&policy, false, true),
            Verdict::Same,
            "start period"
        );
        assert_eq!(checks.record(&policy, true, true), Verdict::Same);
        assert_eq!(checks.record(&policy, true, true), Verdict::BecameHealthy);
        assert_eq!(checks.record(&policy, false, false), Verdict::Same);
        assert_eq!(checks.record(&policy, false, false), Verdict::Same);
        assert_eq!(
            checks.record(&policy, false, false),
            Verdict::BecameUnhealthy
        );
        assert!(!checks.healthy());
        assert_eq!(
            checks.record(&policy, false, false),
            Verdict::Same,
            "reported once"
        );
        assert_eq!(checks.record(&policy, true, false), Verdict::Same);
        assert_eq!(checks.record(&policy, true, false), Verdict::BecameHealthy);
        // Never healthy and past the start period: unhealthy after the threshold.
        let mut fresh = Checks::default();
        for _ in 0..2 {
            assert_eq!(fresh.record(&policy, false, false), Verdict::Same);
        }
        assert_eq!(
            fresh.record(&policy, false, false),
            Verdict::BecameUnhealthy
        );
    }

    #[tokio::test]
    async fn probes_against_a_real_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = reqwest::Client::new();
        let dir = std::env::temp_dir();
        let timeout = Duration::from_millis(500);
        assert!(
            probe(&Probe::Tcp, address, timeout, &client, &dir)
                .await
                .is_ok()
        );
        let ok = Probe::Command {
            command: "/bin/true".into(),
            args: vec![],
        };
        let bad = Probe::Command {
            command: "/bin/false".into(),
            args: vec![],
        };
        assert!(probe(&ok, address, timeout, &client, &dir).await.is_ok());
        assert!(
            probe(&bad, address, timeout, &client, &dir)
                .await
                .unwrap_err()
                .contains("/bin/false")
        );
        drop(listener);
        // A port bound but not listening refuses connections, and stays ours: a port merely freed may be taken by
        // another process's listener before the probe (a flaky failure seen in CI).
        let closed = tokio::net::TcpSocket::new_v4().unwrap();
        closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let closed_address = closed.local_addr().unwrap();
        assert!(
            probe(&Probe::Tcp, closed_address, timeout, &client, &dir)
                .await
                .is_err()
        );
        drop(closed);
    }
}

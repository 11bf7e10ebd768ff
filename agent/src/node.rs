//! Registration and heartbeat: the agent tells the plane who its node is (facts) and how its shipping goes, every
//! `heartbeat_interval`; the first heartbeat registers the node.
//!
//! Heartbeats are best effort: a missed one only makes the plane count it; the agent logs the first failure of an
//! outage and the recovery, not every attempt.

use gantry_support::CancellationToken;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gantry_proto::{HEARTBEAT_PATH, HeartbeatAck, NodeFacts, NodeHeartbeat, NodeShipping};

use crate::telemetry::Telemetry;

/// Deadline of one heartbeat request.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the heartbeat task needs.
#[derive(Clone)]
pub struct Heartbeat {
    /// The plane's base URL.
    pub plane: String,
    /// The ingest token.
    pub token: String,
    /// How often to beat.
    pub interval: Duration,
    /// The node's facts, except the runtimes (filled in each time).
    pub facts: NodeFacts,
    /// Whether the Docker daemon answers (the `docker` runtime is offered then).
    pub docker_reachable: Arc<AtomicBool>,
}

/// Gathers the node's facts from `/proc` and the agent's config.
pub fn facts(agent_id: &str, labels: BTreeMap<String, String>) -> NodeFacts {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let release = read("/etc/os-release");
    let pretty = release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned());
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    let os = match pretty {
        Some(pretty) => format!("linux {kernel} ({pretty})"),
        None => format!("linux {kernel}"),
    };
    NodeFacts {
        agent_id: agent_id.to_owned(),
        hostname: crate::sources::host_name(),
        addresses: local_addresses(&read("/proc/net/fib_trie"), &read("/proc/net/if_inet6")),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: mem_total(&read("/proc/meminfo")),
        os,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        labels,
        runtimes: Vec::new(),
    }
}

/// `MemTotal` of `/proc/meminfo`, bytes.
fn mem_total(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// The machine's own non-loopback addresses: IPv4 from `/proc/net/fib_trie` (`/32 host LOCAL` entries), IPv6
/// from `/proc/net/if_inet6` (global scope only).
fn local_addresses(fib_trie: &str, if_inet6: &str) -> Vec<String> {
    let mut out: Vec<IpAddr> = Vec::new();
    let mut last: Option<IpAddr> = None;
    for line in fib_trie.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ") {
            last = addr.parse().ok();
        } else if line == "/32 host LOCAL"
            && let Some(addr) = last
            && !addr.is_loopback()
            && !out.contains(&addr)
        {
            out.push(addr);
        }
    }
    for line in if_inet6.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // address, ifindex, prefix length, scope (00: global), flags, name
        if fields.len() < 6 || fields[3] != "00" || fields[0].len() != 32 {
            continue;
        }
        let Ok(bits) = u128::from_str_radix(fields[0], 16) else {
            continue;
        };
        let addr = IpAddr::V6(bits.into());
        if !addr.is_loopback() && !out.contains(&addr) {
            out.push(addr);
        }
    }
    out.iter().map(IpAddr::to_string).collect()
}

/// Beats until `stop` turns true.
pub async fn run(
    heartbeat: Heartbeat,
    client: reqwest::Client,
    telemetry: Arc<Telemetry>,
    stop: CancellationToken,
) {
    let url = format!("{}{HEARTBEAT_PATH}", heartbeat.plane);
    let mut failing = false;
    let mut registered = false;
    let mut previous = (
        Instant::now(),
        telemetry.sent_records.get(),
        telemetry.sent_bytes.get(),
    );
    let mut ticker = tokio::time::interval(heartbeat.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let now = (
            Instant::now(),
            telemetry.sent_records.get(),
            telemetry.sent_bytes.get(),
        );
        let secs = now.0.duration_since(previous.0).as_secs_f64().max(1e-3);
        let shipping = NodeShipping {
            sent_records: now.1,
            sent_bytes: now.2,
            records_per_sec: (now.1 - previous.1) as f64 / secs,
            bytes_per_sec: (now.2 - previous.2) as f64 / secs,
            buffer_bytes: telemetry.buffer_bytes(),
            buffer_max_bytes: telemetry.buffer_max_bytes(),
            oldest_unshipped_secs: telemetry.oldest_unshipped_age().as_secs_f64(),
            dropped_records: telemetry.dropped.snapshot().values().sum(),
        };
        previous = now;
        let mut facts = heartbeat.facts.clone();
        if heartbeat.docker_reachable.load(Ordering::Relaxed) {
            facts.runtimes.push("docker".to_owned());
        }
        let body = NodeHeartbeat {
            facts,
            shipping,
            interval_ms: heartbeat.interval.as_millis() as u64,
        };
        let attempt = async {
            let response = client
                .post(&url)
                .bearer_auth(&heartbeat.token)
                .timeout(HEARTBEAT_TIMEOUT)
                .json(&body)
                .send()
                .await
                .map_err(|error| error.to_string())?;
            let status = response.status();
            let body = crate::shipper::read_capped(response, crate::shipper::MAX_RESPONSE_BYTES)
                .await
                .map_err(|error| error.to_string())?;
            if status.is_success() {
                serde_json::from_slice::<HeartbeatAck>(&body)
                    .map_err(|error| format!("unreadable answer: {error}"))
            } else {
                let text = String::from_utf8_lossy(&body);
                Err(format!(
                    "HTTP {status}: {}",
                    text.chars().take(300).collect::<String>()
                ))
            }
        };
        // A slow plane must not hold up the agent's shutdown.
        let outcome = tokio::select! {
            outcome = attempt => outcome,
            () = stop.cancelled() => return,
        };
        match outcome {
            Ok(ack) => {
                if ack.registered || !registered {
                    tracing::info!(
                        node = %heartbeat.facts.hostname,
                        agent_id = %heartbeat.facts.agent_id,
                        "registered with the plane"
                    );
                } else if failing {
                    tracing::info!("heartbeats reach the plane again");
                }
                registered = true;
                failing = false;
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(
                        error,
                        "heartbeat failed; retrying every interval (shipping is not affected)"
                    );
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_loopback_and_broadcast() {
        let fib = "Main:\n  +-- 0.0.0.0/0 3 0 4\n     |-- 127.0.0.1\n        /32 host LOCAL\n     |-- 10.1.2.3\n        /32 host LOCAL\n     |-- 10.1.255.255\n        /32 link BROADCAST\nLocal:\n     |-- 10.1.2.3\n        /32 host LOCAL\n";
        let inet6 = "00000000000000000000000000000001 01 80 10 80       lo\n20010db8000000000000000000000001 02 40 00 80     eth0\nfe800000000000000000000000000001 02 40 20 80     eth0\n";
        assert_eq!(
            local_addresses(fib, inet6),
            vec!["10.1.2.3".to_owned(), "2001:db8::1".to_owned()]
        );
    }

    #[test]
    fn facts_of_this_machine_are_plausible() {
        let facts = facts("abc", BTreeMap::from([("zone".into(), "z1".into())]));
        assert!(facts.cpus >= 1);
        assert!(facts.memory_bytes > 0);
        assert!(facts.os.starts_with("linux "), "{}", facts.os);
        assert!(!facts.hostname.is_empty());
        assert_eq!(mem_total("MemTotal:       1024 kB\n"), 1 << 20);
    }
}

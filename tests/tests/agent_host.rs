//! The agent's host metrics end to end: a real agent collecting every second reaches the real plane, and what the
//! metrics API returns for this machine is plausible (CPU shares in [0, 1], memory states within MemTotal).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::agent::Agent;
use common::*;
use serde_json::Value;

/// Deadline for the first collections to travel agent → buffer → plane → query API.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The host name the agent reports (`/proc/sys/kernel/hostname`, as the agent reads it first).
fn host_name() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .context("reading the host name")?;
    Ok(name.trim().to_owned())
}

/// `MemTotal` of this machine in bytes.
fn mem_total_bytes() -> Result<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no MemTotal in /proc/meminfo")?;
    Ok(kib * 1024.0)
}

/// `GET /api/v1/metrics` for `name` on this host, grouped by `group_by` (may be empty).
async fn query(
    plane: &Plane,
    token: &str,
    host: &str,
    name: &str,
    agg: &str,
    group_by: &str,
) -> Result<Vec<Series>> {
    let filter = format!("host.name:\"{host}\"");
    let mut params = vec![("name", name), ("filter", filter.as_str()), ("agg", agg)];
    if !group_by.is_empty() {
        params.push(("group_by", group_by));
    }
    let (status, body) = plane
        .api_get_query("/api/v1/metrics", &params, token)
        .await?;
    ensure!(
        status == 200,
        "GET /api/v1/metrics {params:?} -> {status}: {body}"
    );
    series(&body)
}

/// The value of `key` in a series' labels.
fn label<'a>(labels: &'a BTreeMap<String, Value>, key: &str) -> &'a str {
    labels.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Host metrics with a 1 s interval reach the plane: CPU utilization per mode stays within [0, 1], the memory
/// states add up to no more than MemTotal at every step, load averages are not negative, and SIGTERM exits 0.
#[tokio::test]
async fn host_metrics_reach_the_plane_and_are_plausible() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (plane, [ingest, viewer]) =
        start_with_tokens(&tmp.path().join("plane"), &[], &[], ["ingest", "viewer"]).await?;
    let config = tmp.path().join("agent.toml");
    std::fs::write(&config, "metrics_interval_ms = 1000\n")?;
    let config = config.to_str().context("utf-8 temp path")?;
    let mut agent = Agent::start_with(
        &tmp.path().join("agent"),
        &plane.endpoints.http_url(),
        &ingest,
        &[],
        &[
            "--no-docker",
            "--otlp-grpc-addr",
            "127.0.0.1:0",
            "--otlp-http-addr",
            "127.0.0.1:0",
            "--config",
            config,
        ],
    )
    .await?;
    let host = host_name()?;

    // CPU utilization needs two collections; memory comes with the first.
    let (cpu_max, memory) = wait_until(
        DELIVERY_TIMEOUT,
        "system.cpu.utilization and system.memory.usage of this host",
        || async {
            let cpu = query(
                &plane,
                &viewer,
                &host,
                "system.cpu.utilization",
                "max",
                "cpu.mode",
            )
            .await?;
            let memory = query(
                &plane,
                &viewer,
                &host,
                "system.memory.usage",
                "max",
                "system.memory.state",
            )
            .await?;
            Ok((!cpu.is_empty() && memory.len() == 4).then_some((cpu, memory)))
        },
    )
    .await
    .with_context(|| agent.stderr())?;

    let modes: Vec<&str> = cpu_max.iter().map(|(l, _)| label(l, "cpu.mode")).collect();
    for mode in [
        "user", "system", "idle", "iowait", "nice", "irq", "softirq", "steal",
    ] {
        ensure!(modes.contains(&mode), "no cpu.mode {mode} in {modes:?}");
    }
    let cpu_min = query(
        &plane,
        &viewer,
        &host,
        "system.cpu.utilization",
        "min",
        "cpu.mode",
    )
    .await?;
    for (labels, points) in cpu_max.iter().chain(&cpu_min) {
        for (ts, value) in points {
            ensure!(
                (0.0..=1.0).contains(value),
                "system.cpu.utilization {labels:?} at {ts} is {value}, outside [0, 1]"
            );
        }
    }

    let states: Vec<&str> = memory
        .iter()
        .map(|(l, _)| label(l, "system.memory.state"))
        .collect();
    for state in ["used", "free", "buffers", "cached"] {
        ensure!(
            states.contains(&state),
            "no system.memory.state {state} in {states:?}"
        );
    }
    // Each step's value is the last reading in it, and a reading holds every state: per step they partition
    // the machine's memory.
    let mut per_step: BTreeMap<i64, f64> = BTreeMap::new();
    for (_, points) in &memory {
        for (ts, value) in points {
            ensure!(*value >= 0.0, "negative memory usage {value} at {ts}");
            *per_step.entry(*ts).or_default() += value;
        }
    }
    let mem_total = mem_total_bytes()?;
    for (ts, total) in &per_step {
        ensure!(
            *total > 0.0 && *total <= mem_total,
            "memory states add up to {total} at {ts}, MemTotal is {mem_total}: {memory:?}"
        );
    }

    let load = wait_until(
        DELIVERY_TIMEOUT,
        "system.cpu.load_average.1m of this host",
        || async {
            let load = query(
                &plane,
                &viewer,
                &host,
                "system.cpu.load_average.1m",
                "min",
                "",
            )
            .await?;
            Ok((!load.is_empty()).then_some(load))
        },
    )
    .await?;
    for (labels, points) in &load {
        for (ts, value) in points {
            ensure!(*value >= 0.0, "load average {labels:?} at {ts} is {value}");
        }
    }

    let produced = agent
        .metrics()
        .await?
        .get("gantry_agent_source_records_total{source=\"host_metrics\"}")
        .copied()
        .unwrap_or(0.0);
    ensure!(produced > 0.0, "the agent counts no host_metrics records");

    let status = agent.terminate().await?;
    ensure!(
        status.success(),
        "agent exited with {status}\n{}",
        agent.stderr()
    );
    Ok(())
}

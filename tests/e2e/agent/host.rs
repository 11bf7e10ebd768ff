//! The agent's host metrics end to end: a real agent collecting every second reaches the real plane, and what the
//! metrics API returns for this machine is plausible (CPU shares in [0, 1], memory states within MemTotal).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::{host_name, mem_total_bytes};
use crate::harness::api::{Series, wait_until};
use crate::harness::process::{Agent, Plane, fresh_plane};

/// Deadline for the first collections to travel agent → buffer → plane → query API.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

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
    plane.query_metrics(token, &params).await
}

/// The value of `key` in a series' labels.
fn label<'a>(labels: &'a BTreeMap<String, Value>, key: &str) -> &'a str {
    labels.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Host metrics with a 1 s interval reach the plane: CPU utilization per mode stays within [0, 1], the memory
/// states add up to no more than MemTotal at every step, load averages are not negative, and SIGTERM exits 0.
#[tokio::test]
async fn host_metrics_reach_the_plane_and_are_plausible() -> Result<()> {
    let (tmp, plane, ingest, viewer) = fresh_plane().await?;
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
    let mem_total = mem_total_bytes()? as f64;
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

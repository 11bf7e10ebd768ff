//! The node agent end to end, one module per source or concern, and the helpers they share: numbered lines
//! appended to log files and found again in the plane, and facts about this machine.

mod bank;
mod dashboard;
mod docker;
mod files;
mod host;
mod instances;
mod node;
mod node_loss;
mod otlp;
mod rollouts;
mod routing;
mod shipping;

use std::fs::OpenOptions;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::harness::api::{json_i64, wait_until};
use crate::harness::process::Plane;

/// Deadline for the agent to deliver lines (covers a retry backoff of a few seconds after an outage).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(45);

/// Creates `<tmp>/logs`; returns it and the glob of its `*.log` files, for the agent's `--file`.
fn log_dir(tmp: &Path) -> Result<(PathBuf, String)> {
    let logs = tmp.join("logs");
    std::fs::create_dir_all(&logs)?;
    let glob = format!("{}/*.log", logs.display());
    Ok((logs, glob))
}

fn append(path: &Path, text: &str) -> Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Lines `"{run} {tag} {seq:05}"` for `range`.
fn numbered(run: &str, tag: &str, range: Range<u32>) -> String {
    range.map(|i| format!("{run} {tag} {i:05}\n")).collect()
}

/// (tag, seq, timestamp_unix_nano, body) of hits whose body is `"{run} {tag} {seq} ..."`.
fn parse_hits(run: &str, hits: &[Value]) -> Vec<(String, u32, i64, String)> {
    hits.iter()
        .filter_map(|h| {
            let body = h.get("body")?.as_str()?.to_owned();
            let mut words = body.split_whitespace();
            (words.next()? == run).then_some(())?;
            let tag = words.next()?.to_owned();
            let seq = words.next()?.parse().ok()?;
            let ts = json_i64(h.get("timestamp_unix_nano")?)?;
            Some((tag, seq, ts, body))
        })
        .collect()
}

/// Waits until paging through `q` finds at least `n` hits; returns them all.
async fn wait_for_at_least(plane: &Plane, token: &str, q: &str, n: usize) -> Result<Vec<Value>> {
    wait_until(DELIVERY_TIMEOUT, &format!("{n} hits for {q}"), || async {
        let all = plane.all_logs(token, q, "-1h").await?;
        Ok((all.len() >= n).then_some(all))
    })
    .await
}

/// The host name the agent reports (`/proc/sys/kernel/hostname`, as the agent reads it first).
fn host_name() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .context("reading the host name")?;
    Ok(name.trim().to_owned())
}

/// `MemTotal` of this machine in bytes.
fn mem_total_bytes() -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no MemTotal in /proc/meminfo")?;
    Ok(kib * 1024)
}

/// Starts one agent per node on the loopback addresses 127.0.0.2, .3, ... (`nodes` of them, each with its own data
/// directory under `tmp`), with a `node` token, and waits until the plane sees every node up and offering the
/// process runtime. The agents stop their instances when they stop (as the demo's does), unless `leave_running`.
async fn start_nodes(
    plane: &Plane,
    node_token: &str,
    viewer: &str,
    tmp: &Path,
    nodes: usize,
) -> Result<Vec<crate::harness::process::Agent>> {
    start_nodes_with(plane, node_token, viewer, tmp, nodes, false).await
}

/// [`start_nodes`], with agents that leave their instances running when they stop when `leave_running`.
async fn start_nodes_with(
    plane: &Plane,
    node_token: &str,
    viewer: &str,
    tmp: &Path,
    nodes: usize,
    leave_running: bool,
) -> Result<Vec<crate::harness::process::Agent>> {
    let mut agents = Vec::new();
    for n in 2..2 + nodes {
        let address = format!("127.0.0.{n}");
        let mut args: Vec<&str> = crate::harness::process::Agent::QUIET.to_vec();
        args.extend([
            "--heartbeat-interval-ms",
            "500",
            "--service-addr",
            &address,
            "--stop-instances-on-exit",
            if leave_running { "false" } else { "true" },
        ]);
        let dir = tmp.join(format!("agent{n}"));
        let url = plane.endpoints.http_url();
        agents.push(
            crate::harness::process::Agent::start_with(&dir, &url, node_token, &[], &args).await?,
        );
    }
    wait_until(
        INSTANCES_WAIT,
        "every node up and offering the process runtime",
        || async {
            let (_, body) = plane.api_get("/api/v1/nodes", viewer).await?;
            let ready = body["nodes"].as_array().map_or(0, |n| {
                n.iter()
                    .filter(|n| {
                        n["status"] == "up"
                            && n["facts"]["runtimes"].to_string().contains("process")
                    })
                    .count()
            });
            Ok((ready == nodes).then_some(()))
        },
    )
    .await?;
    Ok(agents)
}

/// Deadline for instances to start, turn healthy or stop.
const INSTANCES_WAIT: Duration = Duration::from_secs(60);

/// Applies a platform spec through the API; it must be accepted.
async fn apply(plane: &Plane, token: &str, spec: &str) -> Result<()> {
    let body = serde_json::json!({"file": "platform.yaml", "content": spec});
    let (status, answer) = plane
        .api_send(reqwest::Method::POST, "/api/v1/apply", Some(body), token)
        .await?;
    anyhow::ensure!(status == 200, "apply: {status} {answer}");
    Ok(())
}

/// The instances of `GET /api/v1/services/{service}`.
async fn instances(plane: &Plane, token: &str, service: &str) -> Result<Vec<Value>> {
    let (status, body) = plane
        .api_get(&format!("/api/v1/services/{service}"), token)
        .await?;
    anyhow::ensure!(status == 200, "{status} {body}");
    Ok(body["instances"].as_array().cloned().unwrap_or_default())
}

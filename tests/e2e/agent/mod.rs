//! The node agent end to end, one module per source or concern, and the helpers they share: numbered lines
//! appended to log files and found again in the plane, and facts about this machine.

mod bank;
mod docker;
mod files;
mod host;
mod instances;
mod node;
mod otlp;
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

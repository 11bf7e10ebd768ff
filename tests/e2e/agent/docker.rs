//! The agent's Docker source end to end against the real engine: every stdout and stderr line of a container started before the agent and of one started after reaches the real plane once, with the container's resource attributes; container metrics arrive; lines written while the agent is down arrive after its restart, and nothing read before is read again.
//!
//! The engine here cannot pull images, so the test imports its own `gantry-test-busybox:latest` from the host's
//! static busybox (Debian package `busybox-static`). It needs a reachable Docker engine: without one it is skipped
//! loudly, and under `CI=true` it fails.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::parse_hits;
use crate::harness::api::wait_until;
use crate::harness::process::{Agent, Plane, fresh_plane};
use crate::harness::{skip_unless_ci, unique};

/// The image the test containers run, built locally when missing.
const IMAGE: &str = "gantry-test-busybox:latest";
/// The static busybox the image is made of.
const BUSYBOX: &str = "/bin/busybox";
/// Deadline for lines and metrics to travel container → agent → plane → query API.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the docker CLI; its trimmed stdout on success.
fn docker(args: &[&str]) -> Result<String> {
    let output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running the docker CLI (is it installed?)")?;
    ensure!(
        output.status.success(),
        "docker {args:?} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Imports [`IMAGE`] (busybox with `sh`, `echo`, `seq` and `sleep`) unless the engine has it.
fn ensure_image() -> Result<()> {
    let present = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success();
    if present {
        return Ok(());
    }
    let busybox = std::fs::read(BUSYBOX).with_context(|| {
        format!("reading {BUSYBOX}: install it with `apt-get install -y busybox-static`")
    })?;
    ensure!(
        !has_interpreter(&busybox),
        "{BUSYBOX} is dynamically linked and cannot run in an empty image: install `busybox-static` instead of `busybox`"
    );
    let work = tempfile::tempdir()?;
    let root = work.path().join("root");
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::create_dir_all(root.join("tmp"))?;
    std::fs::write(root.join("bin/busybox"), &busybox)?;
    std::fs::set_permissions(
        root.join("bin/busybox"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    for applet in ["sh", "echo", "seq", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    let tar = work.path().join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .context("running tar")?;
    ensure!(status.success(), "tar failed: {status}");
    docker(&["import", path_str(&tar)?, IMAGE])?;
    Ok(())
}

/// Whether a 64-bit little-endian ELF file asks for a dynamic loader (has a `PT_INTERP` program header).
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    let (offset, size, count) = (
        u64_at(0x20) as usize,
        usize::from(u16_at(0x36)),
        u16_at(0x38),
    );
    (0..usize::from(count))
        .any(|i| elf.get(offset + i * size..offset + i * size + 4) == Some(&3u32.to_le_bytes()[..]))
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("a temp path that is not UTF-8")
}

/// A container of this test; removed (`docker rm -f`) on drop, also when the test fails.
struct TestContainer {
    name: String,
}

impl TestContainer {
    /// Starts `script` in a new container named `name`, labelled with `service` and version 1.2.3.
    fn run(name: String, service: &str, script: &str) -> Result<TestContainer> {
        let container = TestContainer { name };
        docker(&[
            "run",
            "-d",
            "--name",
            &container.name,
            "--label",
            &format!("gantry.service={service}"),
            "--label",
            "gantry.version=1.2.3",
            IMAGE,
            "sh",
            "-c",
            script,
        ])?;
        Ok(container)
    }

    /// Writes `script`'s output to the container's stdout (the one its log is made of).
    fn exec_to_stdout(&self, script: &str) -> Result<()> {
        docker(&[
            "exec",
            &self.name,
            "sh",
            "-c",
            &format!("exec >/proc/1/fd/1; {script}"),
        ])?;
        Ok(())
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A script printing `"{run} {tag} {i}"` to stdout for `i` in `range`.
fn print_lines(run: &str, tag: &str, range: Range<u32>) -> String {
    format!(
        "for i in $(seq {} {}); do echo \"{run} {tag} $i\"; done",
        range.start,
        range.end - 1
    )
}

/// Every tag has each seq of `0..n` exactly once, and nothing else is there.
fn check_once(run: &str, hits: &[Value], expected: &[(&str, u32)]) -> Result<()> {
    let mut by_tag: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (tag, seq, _, _) in parse_hits(run, hits) {
        by_tag.entry(tag).or_default().push(seq);
    }
    for (tag, n) in expected {
        let mut seqs = by_tag.remove(*tag).unwrap_or_default();
        seqs.sort_unstable();
        ensure!(
            seqs == (0..*n).collect::<Vec<_>>(),
            "{tag}: expected lines 0..{n} once each, got {} lines: {seqs:?}",
            seqs.len()
        );
    }
    ensure!(by_tag.is_empty(), "unexpected lines: {by_tag:?}");
    ensure!(
        hits.len() == expected.iter().map(|(_, n)| *n as usize).sum::<usize>(),
        "{} hits, some are not numbered lines of this run",
        hits.len()
    );
    Ok(())
}

/// Waits until the plane has at least `n` log records of `service`; returns them all.
async fn wait_for_lines(
    plane: &Plane,
    token: &str,
    service: &str,
    n: usize,
    agent: &Agent,
) -> Result<Vec<Value>> {
    let q = format!("service:{service}");
    wait_until(
        DELIVERY_TIMEOUT,
        &format!("{n} log records of {service}"),
        || async {
            let hits = plane.all_logs(token, &q, "-1h").await?;
            Ok((hits.len() >= n).then_some(hits))
        },
    )
    .await
    .with_context(|| agent.stderr())
}

/// The points of metric `name` for `service` (all series together).
async fn metric_points(
    plane: &Plane,
    token: &str,
    service: &str,
    name: &str,
) -> Result<Vec<(i64, f64)>> {
    let filter = format!("service:{service}");
    let params = [
        ("name", name),
        ("filter", filter.as_str()),
        ("agg", "max"),
        ("from", "-1h"),
    ];
    let series = plane.query_metrics(token, &params).await?;
    Ok(series.into_iter().flat_map(|(_, points)| points).collect())
}

/// A container started before the agent (stdout and stderr) and one started after are read whole, once each,
/// with their labels as `service.name`/`service.version`; their metrics arrive; lines written while the agent is
/// stopped arrive after its restart, and nothing is read twice.
#[tokio::test]
async fn container_logs_and_metrics_reach_the_plane_once() -> Result<()> {
    // Like the Python SDK: without an engine, say so loudly and skip, except in CI (`CI=true`), where it must run.
    if let Err(error) = docker(&["version", "--format", "{{.Server.Version}}"]) {
        return skip_unless_ci(
            "container_logs_and_metrics_reach_the_plane_once",
            error.context("this test needs a reachable Docker engine"),
        );
    }
    ensure_image().context(
        "building the test image (it needs busybox-static: apt-get install busybox-static)",
    )?;

    let (tmp, plane, ingest, viewer) = fresh_plane().await?;
    let run = unique("dockerrun");
    let service = unique("dockersvc");

    // Written before the agent starts: read from the beginning of the container's log.
    let early = TestContainer::run(
        unique("gantry-test-early-"),
        &service,
        &format!(
            "{}; for i in 0 1 2; do echo \"{run} early-err $i\" >&2; done; exec sleep 300",
            print_lines(&run, "early", 0..100)
        ),
    )?;
    wait_until(DELIVERY_TIMEOUT, "the early container's lines", || async {
        let logs = Command::new("docker")
            .args(["logs", &early.name])
            .output()?;
        Ok(String::from_utf8_lossy(&logs.stderr)
            .contains(&format!("{run} early-err 2"))
            .then_some(()))
    })
    .await?;

    let config = tmp.path().join("agent.toml");
    std::fs::write(&config, "metrics_interval_ms = 1000\n")?;
    let mut agent = Agent::start_with(
        &tmp.path().join("agent"),
        &plane.endpoints.http_url(),
        &ingest,
        &[],
        &[
            "--no-host-metrics",
            "--otlp-grpc-addr",
            "127.0.0.1:0",
            "--otlp-http-addr",
            "127.0.0.1:0",
            "--config",
            path_str(&config)?,
        ],
    )
    .await?;

    // Started while the agent runs: found through the event stream.
    let late = TestContainer::run(
        unique("gantry-test-late-"),
        &service,
        &format!("{}; exec sleep 300", print_lines(&run, "late", 0..100)),
    )?;

    let hits = wait_for_lines(&plane, &viewer, &service, 103 + 100, &agent).await?;
    check_once(
        &run,
        &hits,
        &[("early", 100), ("early-err", 3), ("late", 100)],
    )?;
    for hit in &hits {
        let tag = parse_hits(&run, std::slice::from_ref(hit))
            .pop()
            .map(|(tag, ..)| tag)
            .unwrap_or_default();
        let (container, iostream) = match tag.as_str() {
            "early" => (&early.name, "stdout"),
            "early-err" => (&early.name, "stderr"),
            _ => (&late.name, "stdout"),
        };
        let resource = &hit["resource"];
        ensure!(
            resource["service.name"] == service.as_str()
                && resource["service.version"] == "1.2.3"
                && resource["container.name"] == container.as_str()
                && resource["container.runtime"] == "docker"
                && resource["container.image.name"] == "gantry-test-busybox"
                && resource["container.id"]
                    .as_str()
                    .is_some_and(|id| id.len() == 64)
                && hit["attributes"]["log.iostream"] == iostream,
            "attributes of a {tag} line: {hit}"
        );
        ensure!(
            hit["timestamp_unix_nano"].as_i64().is_some_and(|t| t > 0),
            "a {tag} line has no time: {hit}"
        );
    }

    // Memory and CPU time of a running container are positive; an idle container may use no CPU and move no bytes
    // in a sample, so those must arrive, not be positive.
    for (name, positive) in [
        ("container.memory.usage", true),
        ("container.cpu.time", true),
        ("container.cpu.usage", false),
        ("container.network.io", false),
    ] {
        let points = wait_until(
            DELIVERY_TIMEOUT,
            &format!("{name} of {service}"),
            || async {
                let points = metric_points(&plane, &viewer, &service, name).await?;
                Ok((!points.is_empty()).then_some(points))
            },
        )
        .await
        .with_context(|| agent.stderr())?;
        ensure!(
            points.iter().all(|(_, v)| v.is_finite() && *v >= 0.0)
                && (!positive || points.iter().any(|(_, v)| *v > 0.0)),
            "{name} of {service}: {points:?}"
        );
    }

    // Lines written while the agent is down arrive after its restart; what was read before is skipped.
    let status = agent.terminate().await?;
    ensure!(
        status.success(),
        "agent exit status after SIGTERM: {status}"
    );
    late.exec_to_stdout(&print_lines(&run, "late", 100..150))?;
    agent.spawn().await?;
    let hits = wait_for_lines(&plane, &viewer, &service, 103 + 150, &agent).await?;
    check_once(
        &run,
        &hits,
        &[("early", 100), ("early-err", 3), ("late", 150)],
    )?;

    let metrics = agent.metrics().await?;
    ensure!(
        metrics
            .get("gantry_agent_source_records_total{source=\"docker_logs\"}")
            .is_some_and(|n| *n >= 50.0),
        "docker_logs records after the restart: {metrics:?}"
    );
    let status = agent.terminate().await?;
    ensure!(
        status.success(),
        "agent exit status after SIGTERM: {status}"
    );
    drop((early, late));
    Ok(())
}

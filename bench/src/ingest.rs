//! `gantry bench ingest`: starts a plane as a child process, sends it generated logs and spans over OTLP/HTTP
//! protobuf from this process, and prints throughput per CPU-second of the plane, the raw tantivy indexing rate of
//! the same documents in the same run (the ceiling), ack-to-searchable latency, query latencies, disk use and RSS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gantry_proto::{Endpoints, HistogramResponse, LogsResponse, Role};
use prost::Message;

use gantry_proto::Signal;
use gantry_store::embedded::schema::{Fields, log_document};
use gantry_store::model::rfc3339;

use crate::generate::{Generator, raw_len, rows};

/// Options of `gantry bench ingest`.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestBench {
    /// Log records to send.
    #[arg(long, default_value_t = 2_000_000)]
    pub logs: u64,
    /// Records per OTLP batch.
    #[arg(long, default_value_t = 2_000)]
    pub batch: usize,
    /// Concurrent senders.
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Distinct services in the generated data.
    #[arg(long, default_value_t = 40)]
    pub services: usize,
    /// One trace (3-6 spans) is sent per this many log records.
    #[arg(long, default_value_t = 20)]
    pub logs_per_trace: u64,
    /// Records indexed straight into tantivy for the ceiling figure.
    #[arg(long, default_value_t = 500_000)]
    pub ceiling_logs: usize,
    /// Timed runs of each query.
    #[arg(long, default_value_t = 100)]
    pub queries: usize,
    /// Where the plane keeps its data (default: a fresh directory under the system temp dir, removed after).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// A `gantry plane` child process on ephemeral loopback ports, stopped with SIGTERM when dropped.
pub(crate) struct PlaneProcess {
    child: Child,
    pub(crate) endpoints: Endpoints,
}

impl PlaneProcess {
    fn start(data_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(data_dir, &[])
    }

    /// Starts the plane on `data_dir` with `extra` flags and waits for its `endpoints.json`.
    pub(crate) fn start_with(data_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let _ = std::fs::remove_file(data_dir.join("endpoints.json"));
        let exe = std::env::current_exe()?;
        let child = Command::new(exe)
            .args(["plane", "--data-dir"])
            .arg(data_dir)
            .args(crate::node::LOOPBACK_LISTENERS)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start the plane")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(bytes) = std::fs::read(data_dir.join("endpoints.json"))
                && let Ok(endpoints) = serde_json::from_slice(&bytes)
            {
                return Ok(Self { child, endpoints });
            }
            if Instant::now() > deadline {
                bail!("the plane did not start within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// CPU seconds (user + system) the plane has used.
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }

    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

impl Drop for PlaneProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

pub(crate) fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// The p50 and p99 of `samples` (nearest rank).
pub(crate) fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at =
        |q: f64| samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    (at(0.5), at(0.99))
}

/// Creates a token in `data_dir` with `gantry token create` (this process's own binary), the way an operator does.
pub(crate) fn create_token(data_dir: &Path, role: Role, name: &str) -> anyhow::Result<String> {
    let output = Command::new(std::env::current_exe()?)
        .args(["token", "create", "--data-dir"])
        .arg(data_dir)
        .args(["--role", role.as_str(), "--name", name])
        .stderr(Stdio::inherit())
        .output()
        .context("run `gantry token create`")?;
    anyhow::ensure!(output.status.success(), "`gantry token create` failed");
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// A benchmark's data directory: `given`, or a fresh one under the system temp dir (then `temporary`), with an
/// ingest and a viewer token made in it.
pub(crate) struct BenchDir {
    pub(crate) path: PathBuf,
    pub(crate) temporary: bool,
    pub(crate) ingest: String,
    pub(crate) viewer: String,
}

impl BenchDir {
    /// Creates the directory and the tokens.
    pub(crate) fn prepare(given: Option<&Path>, bench: &str) -> anyhow::Result<Self> {
        let path = given.map(Path::to_path_buf).unwrap_or_else(|| {
            std::env::temp_dir().join(format!("gantry-bench-{bench}-{}", std::process::id()))
        });
        std::fs::create_dir_all(&path)?;
        let stamp = chrono::Utc::now().timestamp_millis();
        Ok(Self {
            ingest: create_token(&path, Role::Ingest, &format!("bench-ingest-{stamp}"))?,
            viewer: create_token(&path, Role::Viewer, &format!("bench-read-{stamp}"))?,
            temporary: given.is_none(),
            path,
        })
    }
}

/// Runs the ingest benchmark and prints its report.
pub fn run_ingest(options: IngestBench) -> anyhow::Result<()> {
    let dir = BenchDir::prepare(options.data_dir.as_deref(), "ingest")?;
    let (temporary, data_dir) = (dir.temporary, dir.path.clone());
    let (ingest_token, read_token) = (dir.ingest.clone(), dir.viewer.clone());
    let stamp = chrono::Utc::now().timestamp_millis();

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    println!(
        "gantry bench ingest: {} logs in batches of {}, {} senders, {} services",
        options.logs, options.batch, options.senders, options.services
    );
    println!("machine: {cores} cores, {cpu}");

    // The ceilings first, while the machine is quiet: the same kind of documents into a bare tantivy index, once
    // with a single commit at the end (no merges), once committing as often as the plane does (with its merges).
    let ceiling = ceiling(&options, None)?;
    println!(
        "ceiling (tantivy alone, same schema, settings and documents, 1 indexing thread, one commit): {:.1} MiB/s and {:.0} records per CPU-second",
        ceiling.0, ceiling.1
    );
    let fresh = ceiling_fresh_commits(&options)?;
    println!(
        "ceiling with a commit every {FRESH_COMMIT_DOCS} documents (the plane's segment sizes, merges included): {:.1} MiB/s and {:.0} records per CPU-second",
        fresh.0, fresh.1
    );

    let plane = PlaneProcess::start(&data_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let base = format!("http://{}", plane.endpoints.http);
    let client = reqwest::Client::new();
    runtime.block_on(wait_ready(&client, &base))?;

    // Phase 1: throughput until everything is searchable.
    let raw_bytes = Arc::new(AtomicU64::new(0));
    let started_cpu = plane.cpu_seconds();
    let started = Instant::now();
    let from = rfc3339(now_ns() - 60_000_000_000);
    let trace_ids = runtime.block_on(send_all(
        &options,
        &client,
        &base,
        &ingest_token,
        raw_bytes.clone(),
    ))?;
    let acked = started.elapsed();
    let total = options.logs;
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let count = count_logs(&client, &base, &read_token, &from)
                .await
                .unwrap_or(0);
            if count >= total {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {count} of {total} records searchable after 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })?;
    let searchable = started.elapsed();
    let plane_cpu = plane.cpu_seconds() - started_cpu;
    let raw = raw_bytes.load(Ordering::Relaxed) as f64;
    let mib = raw / (1 << 20) as f64;
    let per_cpu = mib / plane_cpu.max(1e-9);
    println!();
    println!(
        "ingest: {} log records ({mib:.0} MiB raw), {} traces",
        total,
        trace_ids.len()
    );
    println!(
        "  all acknowledged after {:.1} s, all searchable after {:.1} s",
        acked.as_secs_f64(),
        searchable.as_secs_f64()
    );
    println!(
        "  end to end: {:.1} MiB/s and {:.0} records/s wall clock; plane used {plane_cpu:.1} CPU-seconds",
        mib / searchable.as_secs_f64(),
        total as f64 / searchable.as_secs_f64()
    );
    println!(
        "  per core: {per_cpu:.1} MiB/s and {:.0} records/s per CPU-second of the plane; {:.0}% of the one-commit ceiling, {:.0}% of the frequent-commit ceiling",
        total as f64 / plane_cpu.max(1e-9),
        100.0 * per_cpu / ceiling.0,
        100.0 * per_cpu / fresh.0
    );

    // Phase 2: acknowledgement to searchable, one small batch at a time.
    let mut generator = Generator::new(7, options.services);
    let latencies = runtime.block_on(async {
        let mut samples = Vec::new();
        for _ in 0..20 {
            let marker = format!("marker{}x{}", stamp, generator.next_id());
            let mut request = generator.logs(1, now_ns());
            if let Some(log) = request.resource_logs[0].scope_logs[0]
                .log_records
                .first_mut()
            {
                log.body = Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                    value: Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                            format!("latency probe {marker}"),
                        ),
                    ),
                });
            }
            post(
                &client,
                &format!("{base}/v1/logs"),
                &ingest_token,
                request.encode_to_vec(),
            )
            .await?;
            let acked = Instant::now();
            loop {
                let response: LogsResponse = client
                    .get(format!("{base}/api/v1/logs"))
                    .bearer_auth(&read_token)
                    .query(&[("q", marker.as_str()), ("from", "-5m"), ("limit", "1")])
                    .send()
                    .await?
                    .json()
                    .await?;
                if !response.hits.is_empty() {
                    samples.push(acked.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                if acked.elapsed() > Duration::from_secs(30) {
                    bail!("a probe was not searchable after 30 s");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok::<_, anyhow::Error>(samples)
    })?;
    let (p50, p99) = percentiles(latencies);
    println!("ack to searchable: p50 {p50:.0} ms, p99 {p99:.0} ms (20 probes, polling every 5 ms)");

    // Phase 3: query latency over everything ingested.
    let trace_sample: Vec<String> = trace_ids
        .iter()
        .step_by((trace_ids.len() / 50).max(1))
        .cloned()
        .collect();
    println!(
        "queries over {total} log records ({} runs each, newest 100 hits, range: everything sent):",
        options.queries
    );
    let queries = [
        ("term", "refused"),
        ("phrase", "\"connection refused\""),
        ("field", "service:payments"),
        ("attribute", "http.status_code:503"),
        (
            "boolean",
            "service:checkout AND severity:>=warn AND NOT timeout",
        ),
    ];
    runtime.block_on(async {
        for (kind, q) in queries {
            let mut samples = Vec::new();
            let mut hits = 0;
            for _ in 0..options.queries {
                let started = Instant::now();
                let response: LogsResponse = client
                    .get(format!("{base}/api/v1/logs"))
                    .bearer_auth(&read_token)
                    .query(&[("q", q), ("from", from.as_str()), ("limit", "100")])
                    .send()
                    .await?
                    .json()
                    .await?;
                samples.push(started.elapsed().as_secs_f64() * 1000.0);
                hits = response.hits.len();
            }
            let (p50, p99) = percentiles(samples);
            println!(
                "  {kind:<9} {q:<55} p50 {p50:>7.2} ms  p99 {p99:>7.2} ms  ({hits} hits/page)"
            );
        }
        let mut samples = Vec::new();
        for i in 0..options.queries {
            let id = &trace_sample[i % trace_sample.len().max(1)];
            let started = Instant::now();
            let response = client
                .get(format!("{base}/api/v1/traces/{id}"))
                .bearer_auth(&read_token)
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("trace {id} not found: {}", response.status());
            }
            response.bytes().await?;
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        let (p50, p99) = percentiles(samples);
        println!(
            "  {:<9} {:<55} p50 {p50:>7.2} ms  p99 {p99:>7.2} ms",
            "trace id", "GET /api/v1/traces/{id}, no time range"
        );
        Ok::<_, anyhow::Error>(())
    })?;

    let logs_bytes = gantry_store::embedded::disk_bytes(&data_dir.join("index/logs"));
    let spans_bytes = gantry_store::embedded::disk_bytes(&data_dir.join("index/spans"));
    let wal_bytes = gantry_store::embedded::disk_bytes(&data_dir.join("wal"));
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    println!(
        "disk: logs index {:.0} MiB ({:.3} bytes per raw log byte), spans index {:.0} MiB, WAL not yet cut {:.0} MiB",
        mib(logs_bytes),
        logs_bytes as f64 / raw,
        mib(spans_bytes),
        mib(wal_bytes)
    );
    for (kind, bytes) in file_kinds(&data_dir.join("index/logs")) {
        println!(
            "  logs {kind:<10} {:>8.1} MiB  {:.3} bytes per raw byte",
            mib(bytes),
            bytes as f64 / raw
        );
    }
    println!("plane peak RSS: {:.0} MiB", plane.peak_rss_mib());
    drop(plane);
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(())
}

/// Bytes per tantivy file kind (doc store, postings, positions, terms, fast fields) below a directory.
fn file_kinds(dir: &Path) -> Vec<(String, u64)> {
    let mut kinds: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(path),
                Ok(meta) => {
                    let kind = path
                        .extension()
                        .and_then(|e| e.to_str())
                        .unwrap_or("other")
                        .to_owned();
                    *kinds.entry(kind).or_default() += meta.len();
                }
                Err(_) => {}
            }
        }
    }
    kinds.into_iter().filter(|(_, bytes)| *bytes > 0).collect()
}

pub(crate) async fn wait_ready(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the plane was not ready within 60 s")
}

pub(crate) async fn count_logs(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    from: &str,
) -> anyhow::Result<u64> {
    let response: HistogramResponse = client
        .get(format!("{base}/api/v1/logs/histogram"))
        .bearer_auth(token)
        .query(&[("from", from), ("buckets", "1")])
        .send()
        .await?
        .json()
        .await?;
    Ok(response.buckets.iter().map(|b| b.count).sum())
}

/// Posts one protobuf batch, retrying on 429/503 as told.
pub(crate) async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: Vec<u8>,
) -> anyhow::Result<()> {
    loop {
        let response = client
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/x-protobuf")
            .body(body.clone())
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status.as_u16() == 429 || status.as_u16() == 503 {
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(1u64);
            tokio::time::sleep(Duration::from_millis(wait * 200)).await;
            continue;
        }
        bail!(
            "the plane answered {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
}

async fn send_all(
    options: &IngestBench,
    client: &reqwest::Client,
    base: &str,
    token: &str,
    raw_bytes: Arc<AtomicU64>,
) -> anyhow::Result<Vec<String>> {
    let batches = options.logs.div_ceil(options.batch as u64);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for sender in 0..options.senders {
        let (client, next, raw_bytes) = (client.clone(), next.clone(), raw_bytes.clone());
        let (logs_url, traces_url, token) = (
            format!("{base}/v1/logs"),
            format!("{base}/v1/traces"),
            token.to_owned(),
        );
        let options = options.clone();
        tasks.push(tokio::spawn(async move {
            let mut generator = Generator::new(sender as u64 + 1, options.services);
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= batches {
                    break;
                }
                let records = (options.logs - index * options.batch as u64)
                    .min(options.batch as u64) as usize;
                let now = now_ns();
                // Generating is the sender's CPU, not the plane's: keep it off the async workers.
                let (logs, traces, bytes, generator_back) =
                    tokio::task::spawn_blocking(move || {
                        let logs = generator.logs(records, now);
                        let bytes: usize = rows(&logs, now).iter().map(raw_len).sum();
                        let traces = generator.traces(
                            (records as u64 / options.logs_per_trace.max(1)) as usize,
                            now,
                        );
                        (
                            logs.encode_to_vec(),
                            traces.encode_to_vec(),
                            bytes,
                            generator,
                        )
                    })
                    .await?;
                generator = generator_back;
                post(&client, &logs_url, &token, logs).await?;
                post(&client, &traces_url, &token, traces).await?;
                raw_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(generator.trace_ids)
        }));
    }
    let mut trace_ids = Vec::new();
    for task in tasks {
        trace_ids.extend(task.await??);
    }
    Ok(trace_ids)
}

/// Documents between commits in the frequent-commit ceiling: about what the plane commits every 500 ms at the rates
/// measured here.
const FRESH_COMMIT_DOCS: usize = 8_192;

fn ceiling_fresh_commits(options: &IngestBench) -> anyhow::Result<(f64, f64)> {
    ceiling(options, Some(FRESH_COMMIT_DOCS))
}

/// Indexes generated records straight into a tantivy index with the plane's schema, settings and merge policy;
/// commits every `commit_every` documents (or once); returns MiB/s and records/s per CPU-second of this process.
fn ceiling(options: &IngestBench, commit_every: Option<usize>) -> anyhow::Result<(f64, f64)> {
    let fields = Fields::new(Signal::Logs);
    let dir = std::env::temp_dir().join(format!("gantry-bench-ceiling-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let index = tantivy::Index::builder()
        .schema(fields.schema.clone())
        .settings(gantry_store::embedded::index_settings())
        .create_in_dir(&dir)?;
    let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(1, 64 << 20)?;
    writer.set_merge_policy(Box::new(gantry_store::embedded::merge_policy()));
    let mut generator = Generator::new(99, options.services);
    let now = now_ns();
    let mut records = Vec::with_capacity(options.ceiling_logs);
    while records.len() < options.ceiling_logs {
        records.extend(rows(
            &generator.logs(options.batch.min(options.ceiling_logs - records.len()), now),
            now,
        ));
    }
    let raw: usize = records.iter().map(raw_len).sum();
    let cpu_before = process_cpu_seconds();
    for (i, record) in records.iter().enumerate() {
        writer.add_document(log_document(&fields, record, None))?;
        if commit_every.is_some_and(|every| (i + 1) % every == 0) {
            writer.commit()?;
        }
    }
    writer.commit()?;
    writer.wait_merging_threads()?;
    let cpu = process_cpu_seconds() - cpu_before;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((
        raw as f64 / (1 << 20) as f64 / cpu,
        records.len() as f64 / cpu,
    ))
}

fn process_cpu_seconds() -> f64 {
    cpu_seconds("/proc/self/stat")
}

/// User + system CPU seconds from a `/proc/PID/stat` file.
pub(crate) fn cpu_seconds(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields after the command: state is index 0, utime 11, stime 12; clock ticks are 100 per second on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

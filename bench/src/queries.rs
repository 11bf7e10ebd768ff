//! `gantry bench queries`: what expensive queries cost everyone else. A plane (child process) is loaded with
//! records that each carry a distinct float attribute `f` (the shape of the attack in issue 9); then a cheap query
//! and an ingest batch are timed over and over in three conditions, in the same run:
//!
//! 1. **idle**: nothing else runs;
//! 2. **gated**: four clients each run an expensive query (many range clauses on `f`, each examining every `f=`
//!    term) in a loop, against the plane as configured (`query_max_expensive`: half the cores);
//! 3. **ungated**: the same four, against the same data with the gate opened wide (`--query-max-expensive 1024`),
//!    the behaviour before the query budget: the peer the gate is measured against.
//!
//! It prints the p50 and p99 of the cheap query and of the ingest batch in each condition, their ratio to idle, and
//! how many expensive queries completed and how long they took.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use crate::ingest::{BenchDir, PlaneProcess, count_logs, now_ns, percentiles, post, wait_ready};

/// Options of `gantry bench queries`.
#[derive(Debug, Clone, clap::Args)]
pub struct QueryBench {
    /// Records loaded, each with its own value of `f`.
    #[arg(long, default_value_t = 300_000)]
    pub records: usize,
    /// Range clauses in each expensive query (each examines every `f=` term).
    #[arg(long, default_value_t = 30)]
    pub clauses: usize,
    /// Clients running expensive queries at once.
    #[arg(long, default_value_t = 4)]
    pub expensive: usize,
    /// Seconds of timed cheap queries and ingest batches per condition.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Where the plane keeps its data (default: a fresh directory under the system temp dir, removed after).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Latencies of one condition, ms.
struct Figures {
    cheap: (f64, f64),
    ingest: (f64, f64),
    expensive_done: u64,
    expensive_refused: u64,
    /// Mean latency of the completed expensive queries, ms.
    expensive_mean: f64,
}

/// A batch of `count` records of `service` numbered from `from`; each carries its own `f` when `with_f` (the timed
/// ingest batches do not, so that the expensive queries cost the same throughout).
fn batch(service: &str, from: usize, count: usize, now: i64, with_f: bool) -> Vec<u8> {
    let records = (from..from + count)
        .map(|i| LogRecord {
            time_unix_nano: (now - i as i64 * 1_000) as u64,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(format!("request {i} served"))),
            }),
            attributes: if with_f {
                vec![KeyValue {
                    key: "f".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::DoubleValue(-(i as f64) / 100.0)),
                    }),
                    ..Default::default()
                }]
            } else {
                Vec::new()
            },
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(service.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// `clauses` one-unit ranges on `f`, OR'd.
fn expensive_query(clauses: usize) -> String {
    (0..clauses)
        .map(|i| format!("f:[-{} TO -{i}]", i + 1))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// Runs the benchmark and prints its report.
pub fn run_queries(options: QueryBench) -> anyhow::Result<()> {
    let dir = BenchDir::prepare(options.data_dir.as_deref(), "queries")?;
    let (temporary, data_dir, ingest, viewer) = (dir.temporary, dir.path, dir.ingest, dir.viewer);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "gantry bench queries: {} records with a distinct `f`; {} clients each looping a query of {} ranges on `f`; {} s of timed cheap queries and ingest batches per condition; {cores} cores",
        options.records, options.expensive, options.clauses, options.seconds
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = reqwest::Client::new();

    let mut rows = Vec::new();
    for (name, extra) in [
        ("idle", vec![]),
        ("gated (default query_max_expensive)", vec![]),
        (
            "ungated (--query-max-expensive 1024)",
            vec!["--query-max-expensive", "1024"],
        ),
    ] {
        let plane = PlaneProcess::start_with(&data_dir, &extra)?;
        let base = format!("http://{}", plane.endpoints.http);
        runtime.block_on(wait_ready(&client, &base))?;
        if rows.is_empty() {
            let started = Instant::now();
            runtime.block_on(load(&client, &base, &ingest, &viewer, options.records))?;
            println!(
                "loaded {} records in {:.1} s",
                options.records,
                started.elapsed().as_secs_f64()
            );
        }
        if name == "idle" {
            // The attack of issue 9 as it was sent: 60 ranges (18 million terms at 300,000 records).
            let started = Instant::now();
            let response = client
                .get(format!("{base}/api/v1/logs"))
                .bearer_auth(&viewer)
                .query(&[("q", expensive_query(60).as_str()), ("from", "-1h")])
                .send();
            let status = runtime.block_on(response)?.status();
            println!(
                "60 ranges on `f`, alone: {status} in {:.0} ms",
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        let heavy = if name == "idle" { 0 } else { options.expensive };
        let figures =
            runtime.block_on(measure(&client, &base, &ingest, &viewer, &options, heavy))?;
        println!(
            "{name}: cheap query p50 {:.1} ms, p99 {:.1} ms; ingest batch p50 {:.1} ms, p99 {:.1} ms; expensive queries completed {} (mean {:.0} ms), refused {}",
            figures.cheap.0,
            figures.cheap.1,
            figures.ingest.0,
            figures.ingest.1,
            figures.expensive_done,
            figures.expensive_mean,
            figures.expensive_refused
        );
        rows.push((name, figures));
        drop(plane);
    }
    let idle = &rows[0].1;
    println!();
    println!(
        "| condition | cheap query p50 / p99 (ms) | p99 vs idle | ingest batch p50 / p99 (ms) | p99 vs idle | expensive completed (mean ms) / refused |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, f) in &rows {
        println!(
            "| {name} | {:.1} / {:.1} | {:.1}x | {:.1} / {:.1} | {:.1}x | {} ({:.0}) / {} |",
            f.cheap.0,
            f.cheap.1,
            f.cheap.1 / idle.cheap.1,
            f.ingest.0,
            f.ingest.1,
            f.ingest.1 / idle.ingest.1,
            f.expensive_done,
            f.expensive_mean,
            f.expensive_refused
        );
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(())
}

async fn load(
    client: &reqwest::Client,
    base: &str,
    ingest: &str,
    viewer: &str,
    records: usize,
) -> anyhow::Result<()> {
    let now = now_ns();
    let url = format!("{base}/v1/logs");
    for from in (0..records).step_by(5_000) {
        let count = 5_000.min(records - from);
        post(
            client,
            &url,
            ingest,
            batch("loaded", from, count, now, true),
        )
        .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while count_logs(client, base, viewer, "-1h").await? < records as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the records were not searchable within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Times cheap queries and ingest batches (one after the other) for `options.seconds` while `heavy` clients loop the
/// expensive query.
async fn measure(
    client: &reqwest::Client,
    base: &str,
    ingest: &str,
    viewer: &str,
    options: &QueryBench,
    heavy: usize,
) -> anyhow::Result<Figures> {
    let stop = Arc::new(AtomicBool::new(false));
    let (done, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let spent_us = Arc::new(AtomicU64::new(0));
    let query = expensive_query(options.clauses);
    let mut loops = Vec::new();
    for _ in 0..heavy {
        let (client, url, viewer, query) = (
            client.clone(),
            format!("{base}/api/v1/logs"),
            viewer.to_owned(),
            query.clone(),
        );
        let (stop, done, refused, spent_us) = (
            stop.clone(),
            done.clone(),
            refused.clone(),
            spent_us.clone(),
        );
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let response = client
                    .get(&url)
                    .bearer_auth(&viewer)
                    .query(&[("q", query.as_str()), ("from", "-1h"), ("limit", "10")])
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        if !stop.load(Ordering::Relaxed) {
                            done.fetch_add(1, Ordering::Relaxed);
                            spent_us
                                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        }
                    }
                    Ok(r) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "expensive query: {} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        );
                    }
                    Err(error) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        eprintln!("expensive query: {error}");
                    }
                }
            }
        }));
    }
    // Let the expensive queries get going before timing.
    if heavy > 0 {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (mut cheap, mut ingest_ms) = (Vec::new(), Vec::new());
    let now = now_ns();
    let until = Instant::now() + Duration::from_secs(options.seconds);
    let mut i = 0;
    while Instant::now() < until {
        i += 1;
        let started = Instant::now();
        let response = client
            .get(format!("{base}/api/v1/logs"))
            .bearer_auth(viewer)
            .query(&[
                ("q", "service:loaded served"),
                ("from", "-1h"),
                ("limit", "20"),
            ])
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 200,
            "cheap query: {}",
            response.status()
        );
        response.bytes().await?;
        cheap.push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        post(
            client,
            &format!("{base}/v1/logs"),
            ingest,
            batch("probe", i * 100, 100, now, false),
        )
        .await?;
        ingest_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    stop.store(true, Ordering::Relaxed);
    for task in loops {
        task.abort();
    }
    let expensive_done = done.load(Ordering::Relaxed);
    Ok(Figures {
        cheap: percentiles(cheap),
        ingest: percentiles(ingest_ms),
        expensive_done,
        expensive_refused: refused.load(Ordering::Relaxed),
        expensive_mean: spent_us.load(Ordering::Relaxed) as f64
            / 1e3
            / expensive_done.max(1) as f64,
    })
}

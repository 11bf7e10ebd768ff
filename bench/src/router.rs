//! `gantry bench router`: what a node's service router adds to a request, against a direct connection to the same
//! instance in the same run. A plane and a real `gantry-agent` process run one instance of a tiny upstream
//! (`gantry demo-service --role echo`); requests go to it directly and through the agent's router, interleaved:
//!
//! 1. at a fixed rate (`--rate`, 2,000 requests/s by default), latency per request of each path: the added p50 and
//!    p99 are the router's cost per hop;
//! 2. at full speed (`--connections` concurrent clients), requests/s through the router against direct, and
//!    requests per CPU-second of the agent (its `/proc` user + system time over the run);
//!
//! and the agent's resident memory with routing on (VmRSS at the end, VmHWM the peak). The load generator shares the
//! machine with both, alike for both paths.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::ingest::percentiles;
use crate::node::{Platform, apply_when_up, free_port};

/// Options of `gantry bench router`.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterBench {
    /// Requests per second of the paced phase, split evenly between the two paths.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Seconds of each phase and path.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent clients of the full-speed phase.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Where the plane and the agent keep their data (default: a fresh directory, removed after).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Runs the benchmark and prints its figures.
///
/// # Errors
/// The plane, the agent or the instance could not be started, or a request failed.
pub fn run_router(options: RouterBench) -> anyhow::Result<()> {
    crate::node::in_data_dir(options.data_dir.as_deref(), "router", |root| {
        run_in(&options, root)
    })
}

fn run_in(options: &RouterBench, root: &Path) -> anyhow::Result<()> {
    let platform = Platform::start(root)?;
    let (base, deployer, agent) = (
        platform.base.clone(),
        platform.deployer.clone(),
        &platform.agent,
    );
    let exe = std::env::current_exe()?;
    let port = free_port()?;
    let spec = format!(
        "services:\n  echo:\n    runtime: {{process: {{command: '{}', args: [demo-service, --role, echo]}}}}\n    port: {port}\n    health: {{http: {{path: /}}, interval: 500ms}}\n",
        exe.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::new();
        apply_when_up(&client, &base, &deployer, &spec).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let direct = loop {
            anyhow::ensure!(Instant::now() < deadline, "the echo instance did not become healthy in 60 s");
            let status: serde_json::Value = client
                .get(format!("{base}/api/v1/services/echo"))
                .bearer_auth(&deployer)
                .send()
                .await?
                .json()
                .await?;
            let instance = &status["instances"][0]["actual"];
            if instance["phase"] == "healthy" {
                break instance["address"].as_str().context("address")?.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let direct = format!("http://{direct}/");
        let routed = format!("http://127.0.0.1:{port}/");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !client.get(&routed).send().await.is_ok_and(|r| r.status().is_success()) {
            anyhow::ensure!(Instant::now() < deadline, "the router never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let paced = paced(&direct, &routed, options.rate, Duration::from_secs(options.seconds)).await?;
        let seconds = Duration::from_secs(options.seconds);
        let direct_speed = full_speed(&direct, options.connections, seconds).await?;
        let cpu_before = agent.cpu_seconds();
        let routed_speed = full_speed(&routed, options.connections, seconds).await?;
        let agent_cpu = agent.cpu_seconds() - cpu_before;
        let rss = agent.memory_mib("VmRSS:");
        let peak = agent.memory_mib("VmHWM:");

        let (d50, d99) = paced.0;
        let (r50, r99) = paced.1;
        println!("gantry bench router: {} requests/s paced for {} s per path, {} connections at full speed", options.rate, options.seconds, options.connections);
        println!();
        println!("| figure | direct | through the router | added per hop | target |");
        println!("|---|---|---|---|---|");
        println!("| p50 latency at {} req/s | {d50:.3} ms | {r50:.3} ms | {:.3} ms | at most 0.2 ms |", options.rate, r50 - d50);
        println!("| p99 latency at {} req/s | {d99:.3} ms | {r99:.3} ms | {:.3} ms | at most 1 ms |", options.rate, r99 - d99);
        println!(
            "| requests/s at full speed | {direct_speed:.0} | {routed_speed:.0} ({:.2} of direct) | | |",
            routed_speed / direct_speed.max(1.0)
        );
        println!(
            "| requests per agent CPU-second | | {:.0} | | at least 20,000 |",
            routed_speed * seconds.as_secs_f64() / agent_cpu.max(1e-6)
        );
        println!("| agent RSS with routing on | | {rss:.1} MiB now, {peak:.1} MiB peak | | at most 30 MiB |");
        Ok::<_, anyhow::Error>(())
    })?;
    drop(platform);
    Ok(())
}

/// Requests at `rate` per second for `duration`, alternating between the two URLs; the p50 and p99 latency of each,
/// ms.
async fn paced(
    direct: &str,
    routed: &str,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<((f64, f64), (f64, f64))> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + duration * 2;
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while Instant::now() < end {
        ticker.tick().await;
        n += 1;
        let (client, url, routed_path) = if n.is_multiple_of(2) {
            (client.clone(), direct.to_owned(), false)
        } else {
            (client.clone(), routed.to_owned(), true)
        };
        tasks.spawn(async move {
            let started = Instant::now();
            let ok = client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            (routed_path, ok, started.elapsed().as_secs_f64() * 1000.0)
        });
    }
    let (mut direct_ms, mut routed_ms) = (Vec::new(), Vec::new());
    let mut failed = 0;
    while let Some(done) = tasks.join_next().await {
        let (routed_path, ok, ms) = done?;
        if !ok {
            failed += 1;
        } else if routed_path {
            routed_ms.push(ms);
        } else {
            direct_ms.push(ms);
        }
    }
    anyhow::ensure!(failed == 0, "{failed} paced requests failed");
    Ok((percentiles(direct_ms), percentiles(routed_ms)))
}

/// Requests per second to `url` from `connections` clients asking back to back for `duration`.
async fn full_speed(url: &str, connections: usize, duration: Duration) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (url, done, failed) = (url.to_owned(), done.clone(), failed.clone());
        tasks.spawn(async move {
            let client = reqwest::Client::new();
            while Instant::now() < end {
                match client.get(&url).send().await {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    anyhow::ensure!(
        failed.load(Ordering::Relaxed) == 0,
        "{} requests failed at full speed",
        failed.load(Ordering::Relaxed)
    );
    Ok(done.load(Ordering::Relaxed) as f64 / duration.as_secs_f64())
}

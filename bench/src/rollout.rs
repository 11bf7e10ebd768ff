//! `gantry bench rollout` and `gantry bench judge`.
//!
//! `rollout` runs a plane and a real `gantry-agent` with two services of `gantry demo-service --role echo`, and
//! measures in the same run:
//! 1. the wall time of a rolling rollout of `--replicas` instances (the plane's own start and end) against its
//!    inherent time: each new instance's process start (`/proc`) to its healthy report, plus `min_healthy_time`,
//!    scheduled as the planner does (`max_surge` under way, the next begun as one completes);
//! 2. the detection of a bad canary (20% errors at 10% of `--rate` requests/s): canary requests and seconds from
//!    its first request to the verdict, and seconds until the routers send it nothing more, as the load generator
//!    sees it (the last answer from the canary: the echo names its version).
//!
//! `judge` prints the judge's simulation study (the same seeded scenarios as its tests).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use gantry_judge::JudgeConfig;
use gantry_judge::sim::{
    Scenario, Summary, fisher_limit, scenarios, study, study_logs, study_mirrored,
};
use serde_json::Value;

use crate::node::{Platform, apply_when_up, free_port};

/// Options of `gantry bench rollout`.
#[derive(Debug, Clone, clap::Args)]
pub struct RolloutBench {
    /// Instances of the rolled-out service.
    #[arg(long, default_value_t = 10)]
    pub replicas: u32,
    /// Requests per second to the canaried service.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Bad canaries to deploy, one after the other.
    #[arg(long, default_value_t = 5)]
    pub repeats: u32,
    /// Where the plane and the agent keep their data (default: a fresh directory, removed after).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// `min_healthy_time` of the rolled-out service, ms.
const MIN_HEALTHY_MS: u64 = 1000;

/// Runs `gantry bench judge`: the simulation study, printed.
pub fn run_judge() -> anyhow::Result<()> {
    let config = JudgeConfig::default();
    println!(
        "gantry bench judge: seeded simulated canaries (10% of requests, stable 1% errors, log-normal latency), α = {}",
        config.alpha
    );
    println!();
    println!(
        "| scenario | rollouts | failed by the judge | canary requests to the verdict: median | p90 |"
    );
    println!("|---|---|---|---|---|");
    let row = |name: &str, scenario: &Scenario, summary: Summary| {
        let shown = |requests: u64| {
            if requests > scenario.max_canary_requests {
                "not caught".to_owned()
            } else {
                requests.to_string()
            }
        };
        println!(
            "| {name} | {} | {} ({:.2}%) | {} | {} |",
            summary.runs,
            summary.detected,
            100.0 * summary.detected as f64 / summary.runs as f64,
            shown(summary.median_requests),
            shown(summary.p90_requests)
        );
    };
    for (name, scenario, runs) in scenarios() {
        row(name, &scenario, study(&scenario, config, runs, 1));
    }
    println!();
    println!("Blue-green previews: every request mirrored, both versions answer it.");
    println!();
    println!(
        "| scenario | previews | failed by the judge | mirrored requests to the verdict: median | p90 |"
    );
    println!("|---|---|---|---|---|");
    let same = Scenario::same(2_000);
    let mirrored = [
        (
            "A/A: identical versions, 2,000 mirrored requests each",
            same,
            1_000,
        ),
        (
            "new version 20% errors (live 1%)",
            Scenario {
                canary_error: 0.2,
                ..same
            },
            400,
        ),
        (
            "new version 2x errors (2%, live 1%)",
            Scenario {
                canary_error: 0.02,
                max_canary_requests: 20_000,
                ..same
            },
            200,
        ),
        (
            "new version +50% latency at every quantile",
            Scenario {
                canary_latency_factor: 1.5,
                ..same
            },
            400,
        ),
    ];
    for (name, scenario, runs) in mirrored {
        row(name, &scenario, study_mirrored(&scenario, config, runs, 1));
    }
    println!();
    println!("The log rule (α split 80/10/10): error log records per request, no failed requests.");
    println!();
    println!(
        "| scenario | rollouts | failed by the judge | canary requests to the verdict: median | p90 |"
    );
    println!("|---|---|---|---|---|");
    let quiet = Scenario {
        stable_error: 0.0,
        canary_error: 0.0,
        ..same
    };
    row(
        "A/A: 5% of requests log an error on both",
        &quiet,
        study_logs(&quiet, (0.05, 0.05), 1_000, 1),
    );
    row(
        "canary logs an error on 20% of requests (stable 2%)",
        &quiet,
        study_logs(&quiet, (0.02, 0.2), 400, 1),
    );
    let (_, crash, _) = scenarios()[1];
    let alpha = config.alpha * gantry_judge::ERROR_SHARE;
    println!();
    for n in [5, 7, 12] {
        println!(
            "fixed-sample Fisher exact test (not sequential, α = {alpha:.3}) on the crash after exactly {n} canary requests: rejects in {:.0}%",
            100.0 * fisher_limit(&crash, n, alpha, 2_000, 1)
        );
    }
    Ok(())
}

/// Runs `gantry bench rollout` and prints its figures.
///
/// # Errors
/// The plane, the agent or an instance could not be started, or a rollout did not end.
pub fn run_rollout(options: RolloutBench) -> anyhow::Result<()> {
    crate::node::in_data_dir(options.data_dir.as_deref(), "rollout", |root| {
        run_in(&options, root)
    })
}

fn spec(exe: &Path, replicas: u32, web: u16, pay: u16) -> String {
    format!(
        "services:
  web:
    version: '1'
    runtime: {{process: {{command: '{exe}', args: [demo-service, --role, echo]}}}}
    replicas: {replicas}
    port: {web}
    health: {{http: {{path: /}}, interval: 100ms, timeout: 100ms}}
    kill_timeout: 2s
    rollout: {{strategy: rolling, max_surge: 25%, max_unavailable: 0, min_healthy_time: {MIN_HEALTHY_MS}ms}}
  pay:
    version: '1'
    runtime: {{process: {{command: '{exe}', args: [demo-service, --role, echo]}}}}
    replicas: 2
    port: {pay}
    health: {{http: {{path: /}}, interval: 100ms, timeout: 100ms}}
    kill_timeout: 2s
    rollout:
      strategy: canary
      min_healthy_time: 500ms
      steps: [{{weight: 10, min_requests: 500, min_duration: 60s}}]
",
        exe = exe.display()
    )
}

struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?
            .json()
            .await?)
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "POST {path}: {}",
            response.text().await?
        );
        Ok(response.json().await.unwrap_or(Value::Null))
    }

    /// Healthy instances of `service`.
    async fn healthy(&self, service: &str) -> anyhow::Result<usize> {
        let status = self.get(&format!("/api/v1/services/{service}")).await?;
        Ok(status["instances"].as_array().map_or(0, |i| {
            i.iter()
                .filter(|i| i["actual"]["phase"] == "healthy")
                .count()
        }))
    }

    async fn wait_healthy(&self, service: &str, n: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while self.healthy(service).await? != n {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(120),
                "{service}: {n} healthy instances not reached"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(started.elapsed())
    }

    /// Starts a deployment and waits for its end; returns it.
    async fn deploy(&self, body: Value) -> anyhow::Result<Value> {
        let created = self.post("/api/v1/deployments", &body).await?;
        let id = created["id"].as_u64().context("deployment id")?;
        let started = Instant::now();
        loop {
            let deployment = self.get(&format!("/api/v1/deployments/{id}")).await?;
            if deployment["finished"].is_string() {
                return Ok(deployment);
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(300),
                "deployment {id} did not end: {deployment}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// When process `pid` started, seconds since the Unix epoch: its start in clock ticks since boot (`/proc/PID/stat`,
/// the usual 100 ticks per second) against the time since boot now (`/proc/uptime`), both to 10 ms.
fn process_start_secs(pid: u64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks: f64 = stat
        .rsplit(')')
        .next()?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(now - uptime + ticks / 100.0)
}

fn millis(rfc3339: &Value) -> f64 {
    rfc3339
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(0.0, |t| t.timestamp_millis() as f64)
}

fn run_in(options: &RolloutBench, root: &Path) -> anyhow::Result<()> {
    let platform = Platform::start(root)?;
    let (base, deployer) = (platform.base.clone(), platform.deployer.clone());
    let (web_port, pay_port) = (free_port()?, free_port()?);
    let exe = std::env::current_exe()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let api = Api { client: reqwest::Client::new(), base: base.clone(), token: deployer.clone() };
        apply_when_up(&api.client, &base, &deployer, &spec(&exe, options.replicas, web_port, pay_port)).await?;
        let replicas = options.replicas as usize;
        api.wait_healthy("web", replicas).await?;
        api.wait_healthy("pay", 2).await?;

        // 1. The rolling rollout against its inherent time: what no control plane can take away, measured on the
        // new instances themselves: each process's start (from /proc) to its healthy report (the agent's `since`),
        // then `min_healthy_time`.
        let rolled = api.deploy(serde_json::json!({"service": "web", "version": "2"})).await?;
        anyhow::ensure!(rolled["status"] == "succeeded", "the rolling rollout: {rolled}");
        let status = api.get("/api/v1/services/web").await?;
        let mut spans: Vec<(f64, f64)> = status["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| {
                let pid = i["actual"]["pid"].as_u64()?;
                let healthy = millis(&i["actual"]["since"]) / 1000.0;
                Some((process_start_secs(pid)?, healthy))
            })
            .collect();
        anyhow::ensure!(spans.len() == replicas, "the new instances' pids and health times: {status}");
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        // The planner keeps `max_surge` replacements under way and begins the next as soon as one completes: the
        // inherent time is the makespan of the new instances, in start order, on `max_surge` lanes, each taking its
        // start to healthy plus `min_healthy_time`.
        let surge = (f64::from(options.replicas) * 0.25).ceil() as usize;
        let mut lanes = vec![0.0f64; surge.max(1)];
        for (start, healthy) in &spans {
            let lane = lanes
                .iter_mut()
                .min_by(|a, b| a.total_cmp(b))
                .context("a lane")?;
            *lane += (healthy - start) + MIN_HEALTHY_MS as f64 / 1000.0;
        }
        let inherent = lanes.iter().copied().fold(0.0, f64::max);
        // The rollout's own start and end, as the plane recorded them.
        let wall_time = (millis(&rolled["finished"]) - millis(&rolled["started"])) / 1000.0;
        let start_to_healthy = {
            let mut each: Vec<f64> = spans.iter().map(|(start, healthy)| healthy - start).collect();
            each.sort_by(f64::total_cmp);
            each[each.len() / 2]
        };

        // 2. Bad canaries under load, one after the other (each its own version, rolled back by the judge).
        // (when, which version answered)
        let answers: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = {
            let (answers, stop) = (answers.clone(), stop.clone());
            let url = format!("http://127.0.0.1:{pay_port}/");
            let period = Duration::from_secs_f64(1.0 / options.rate.max(1.0));
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut ticker = tokio::time::interval(period);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    ticker.tick().await;
                    let (client, url, answers) = (client.clone(), url.clone(), answers.clone());
                    tokio::spawn(async move {
                        if let Ok(response) = client.get(&url).timeout(Duration::from_secs(5)).send().await {
                            let body = response.text().await.unwrap_or_default();
                            let version = body.trim_end().rsplit(' ').next().unwrap_or_default().to_owned();
                            answers.lock().unwrap_or_else(|e| e.into_inner()).push((Instant::now(), version));
                        }
                    });
                }
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Wall clock of `Instant`s: the plane's verdict times are wall-clock milliseconds.
        let (origin, origin_ms) = (Instant::now(), chrono::Utc::now().timestamp_millis() as f64);
        let wall = |at: Instant| origin_ms + at.duration_since(origin).as_secs_f64() * 1000.0;
        let mut runs = Vec::new();
        for repeat in 0..options.repeats {
            let version = format!("bad-{}", repeat + 2);
            let bad = api
                .deploy(serde_json::json!({"service": "pay", "version": version, "set": {"ERROR_RATE": "0.2"}}))
                .await?;
            anyhow::ensure!(bad["outcome"] == "rolled_back_by_judge", "the bad canary: {bad}");
            let decision = &bad["decisions"][0];
            let record = &decision["record"];
            let first_ms = record["canary_first_ns"].as_f64().unwrap_or(0.0) / 1e6;
            let verdict_ms = millis(&decision["time"]);
            // Let answers in flight come back, then: the last answer from the canary the client got.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let last_canary_ms = answers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(_, answered)| *answered == version)
                .map(|(at, _)| wall(*at))
                .fold(0.0, f64::max);
            runs.push((
                record["errors"]["canary"]["requests"].as_u64().unwrap_or(0) as f64,
                (verdict_ms - first_ms) / 1000.0,
                ((last_canary_ms - verdict_ms) / 1000.0).max(0.0),
            ));
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.await?;
        let median = |pick: fn(&(f64, f64, f64)) -> f64| {
            let mut values: Vec<f64> = runs.iter().map(pick).collect();
            values.sort_by(f64::total_cmp);
            let max = values.last().copied().unwrap_or(0.0);
            (values.get(values.len() / 2).copied().unwrap_or(0.0), max)
        };

        println!(
            "gantry bench rollout: one node, {} instances rolled (max_surge 25%, min_healthy_time {} ms); {} canaries with 20% errors at 10% of {} requests/s",
            options.replicas, MIN_HEALTHY_MS, options.repeats, options.rate
        );
        println!();
        println!("| figure | measured | inherent / reference | ratio | target |");
        println!("|---|---|---|---|---|");
        println!(
            "| rolling rollout of {} instances, wall time | {wall:.2} s | {inherent:.2} s ({} lanes; an instance's start to healthy, median {start_to_healthy:.3} s, + {:.1} s) | {:.3} ({:+.1}% overhead) | under 5% overhead |",
            options.replicas,
            surge,
            MIN_HEALTHY_MS as f64 / 1000.0,
            wall_time / inherent,
            100.0 * (wall_time / inherent - 1.0),
            wall = wall_time
        );
        let (requests, requests_max) = median(|r| r.0);
        let (seconds, seconds_max) = median(|r| r.1);
        let (cut, cut_max) = median(|r| r.2);
        println!("| bad canary: canary requests to the verdict (median, max) | {requests:.0}, {requests_max:.0} | | | |");
        println!("| bad canary: its first request to the verdict (median, max) | {seconds:.2} s, {seconds_max:.2} s | | | |");
        println!(
            "| bad canary: verdict to the last answer from it the client got, i.e. weight at 0 (median, max) | {cut:.2} s, {cut_max:.2} s | | | within 1 s |"
        );
        Ok::<_, anyhow::Error>(())
    })?;
    drop(platform);
    Ok(())
}

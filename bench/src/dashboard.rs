//! `gantry bench dashboard`: the dashboard at the size of Gantry's origin story (2,300 services, 10,000 instances).
//!
//! A real plane (a child process) gets a spec of `--services` services with `--instances` instances between them,
//! placed on `--nodes` nodes that this bench plays (heartbeats, and a report of every assigned instance as healthy:
//! no process runs), an hour of server spans for every service, and 10,000 log lines. Then, logged in as a dashboard
//! user, it times the overview, the logs page with 100 hits, and beside each the API call that reads the same data
//! (`GET /api/v1/red`, `GET /api/v1/logs`), in the same run. Server render time is the figure the page prints of
//! itself; the request time is measured by this client over loopback.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use gantry_proto::Role;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use serde_json::{Value, json};

use crate::ingest::{PlaneProcess, create_token};

/// Options of `gantry bench dashboard`.
#[derive(Debug, Clone, clap::Args)]
pub struct DashboardBench {
    /// Services in the spec.
    #[arg(long, default_value_t = 2300)]
    pub services: usize,
    /// Instances, spread over the services.
    #[arg(long, default_value_t = 10_000)]
    pub instances: usize,
    /// Nodes the bench plays.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Server spans per service over the last hour.
    #[arg(long, default_value_t = 30)]
    pub spans_per_service: usize,
    /// Timed requests per page.
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
    /// Where the plane keeps its data (default: a fresh directory, removed after).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

const PASSWORD: &str = "bench password, long enough";

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn service_name(i: usize) -> String {
    format!("svc-{i:04}")
}

/// The spec: `services` services, the first `instances % services` with one instance more.
fn spec(services: usize, instances: usize) -> String {
    let mut text = String::from("services:\n");
    for i in 0..services {
        let replicas = instances / services + usize::from(i < instances % services);
        text.push_str(&format!(
            "  {}:\n    version: '1.0.{}'\n    runtime: {{process: {{command: /bin/true}}}}\n    replicas: {replicas}\n    resources: {{cpu: 10m, memory: 8Mi}}\n",
            service_name(i),
            i % 7
        ));
    }
    text
}

/// Median and maximum of durations, ms.
fn summary(mut times: Vec<f64>) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[times.len() - 1])
}

/// Runs `gantry bench dashboard`.
///
/// # Errors
/// The plane did not start, or refused the spec, the telemetry or the login.
pub fn run_dashboard(options: DashboardBench) -> anyhow::Result<()> {
    crate::node::in_data_dir(options.data_dir.as_deref(), "dashboard", |root| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(run_in(&options, root))
    })
}

async fn run_in(options: &DashboardBench, root: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(root)?;
    let admin = create_token(root, Role::Admin, "bench-admin")?;
    let node_token = create_token(root, Role::Node, "bench-nodes")?;
    let plane = PlaneProcess::start_with(root, &[])?;
    let base = format!("http://{}", plane.endpoints.http);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;

    // The nodes, then the spec.
    let heartbeat = move |n: usize| {
        json!({
            "facts": {
                "agent_id": format!("bench-node-{n:03}"), "hostname": format!("host-{n:03}"),
                "addresses": [format!("10.0.{}.{}", n / 250, n % 250 + 1)], "cpus": 64,
                "memory_bytes": 256u64 << 30, "os": "linux", "agent_version": "bench",
                "labels": {}, "runtimes": ["process"]
            },
            "shipping": {
                "sent_records": 0, "sent_bytes": 0, "records_per_sec": 0.0, "bytes_per_sec": 0.0,
                "buffer_bytes": 0, "buffer_max_bytes": 268435456, "oldest_unshipped_secs": 0.0,
                "dropped_records": 0
            },
            "interval_ms": 5000
        })
    };
    for n in 0..options.nodes {
        let answer = client
            .post(format!("{base}/api/v1/nodes/heartbeat"))
            .bearer_auth(&node_token)
            .json(&heartbeat(n))
            .send()
            .await?;
        anyhow::ensure!(
            answer.status().is_success(),
            "heartbeat: {}",
            answer.text().await?
        );
    }
    let started = Instant::now();
    let applied = client
        .post(format!("{base}/api/v1/apply"))
        .bearer_auth(&admin)
        .json(&json!({"file": "bench.yaml", "content": spec(options.services, options.instances)}))
        .send()
        .await?;
    anyhow::ensure!(
        applied.status().is_success(),
        "apply: {}",
        applied.text().await?
    );
    let apply_s = started.elapsed().as_secs_f64();

    // Every node reports its instances healthy, and heartbeats and reports on every 2 s until the end (a node that
    // stops heartbeating is marked down, and its instances move).
    let started = Instant::now();
    let reports: std::sync::Arc<std::sync::Mutex<Vec<Value>>> =
        std::sync::Arc::new(std::sync::Mutex::new(vec![
            json!({"instances": []});
            options.nodes
        ]));
    let keep_alive = {
        let (client, base, node_token, reports) = (
            client.clone(),
            base.clone(),
            node_token.clone(),
            reports.clone(),
        );
        let nodes = options.nodes;
        tokio::spawn(async move {
            loop {
                for n in 0..nodes {
                    let agent = format!("bench-node-{n:03}");
                    let _ = client
                        .post(format!("{base}/api/v1/nodes/heartbeat"))
                        .bearer_auth(&node_token)
                        .json(&heartbeat(n))
                        .send()
                        .await;
                    let report = reports.lock().map(|r| r[n].clone()).unwrap_or_default();
                    let _ = client
                        .post(format!("{base}/api/v1/nodes/{agent}/instances"))
                        .bearer_auth(&node_token)
                        .json(&report)
                        .send()
                        .await;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    let mut placed = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while placed < options.instances {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {placed} instances placed in 300 s"
        );
        placed = 0;
        for n in 0..options.nodes {
            let agent = format!("bench-node-{n:03}");
            let work: Value = client
                .get(format!("{base}/api/v1/nodes/{agent}/assignments"))
                .bearer_auth(&node_token)
                .send()
                .await?
                .json()
                .await?;
            let now = chrono::Utc::now().to_rfc3339();
            let instances: Vec<Value> = work["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    json!({"instance_id": a["instance_id"], "phase": "healthy", "pid": 1, "address": null,
                           "restarts": 0, "last_exit": null, "reason": "", "last_lines": [], "since": now})
                })
                .collect();
            placed += instances.len();
            let report = json!({"instances": instances});
            client
                .post(format!("{base}/api/v1/nodes/{agent}/instances"))
                .bearer_auth(&node_token)
                .json(&report)
                .send()
                .await?;
            if let Ok(mut reports) = reports.lock() {
                reports[n] = report;
            }
        }
        if placed < options.instances {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let report_s = started.elapsed().as_secs_f64();

    // An hour of server spans of every service, and 10,000 log lines.
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64;
    let hour_ns = 3_600_000_000_000u64;
    let mut sent_spans = 0;
    for chunk in (0..options.services).collect::<Vec<_>>().chunks(100) {
        let resource_spans = chunk
            .iter()
            .map(|&i| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", &service_name(i)),
                        kv("service.version", &format!("1.0.{}", i % 7)),
                    ],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: (0..options.spans_per_service)
                        .map(|k| {
                            // Spread over the last 55 minutes: inside the pages' default hour while the bench runs.
                            let start = now_ns - hour_ns * 11 / 12
                                + (k as u64 * hour_ns * 5 / 6 / options.spans_per_service as u64);
                            let mut trace_id = rand::random::<[u8; 16]>().to_vec();
                            trace_id[0] |= 1;
                            Span {
                                trace_id,
                                span_id: rand::random::<[u8; 8]>().to_vec(),
                                name: "GET /api".to_owned(),
                                kind: 2,
                                start_time_unix_nano: start,
                                end_time_unix_nano: start + 1_000_000 * (1 + (k as u64 % 50)),
                                status: Some(Status {
                                    code: if k % 17 == 0 { 2 } else { 0 },
                                    ..Status::default()
                                }),
                                ..Span::default()
                            }
                        })
                        .collect(),
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            })
            .collect();
        let body = ExportTraceServiceRequest { resource_spans }.encode_to_vec();
        sent_spans += chunk.len() * options.spans_per_service;
        let answer = client
            .post(format!("{base}/v1/traces"))
            .bearer_auth(&admin)
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(answer.status().is_success(), "spans: {}", answer.status());
    }
    for batch in 0..10u64 {
        let records = (0..1000u64)
            .map(|k| LogRecord {
                time_unix_nano: now_ns - (batch * 1000 + k) * 300_000_000,
                severity_number: 9,
                severity_text: "INFO".to_owned(),
                body: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(format!(
                        "request {k} of batch {batch} served in {} ms",
                        k % 90
                    ))),
                }),
                attributes: vec![kv("http.route", "/api"), kv("user.id", &k.to_string())],
                ..LogRecord::default()
            })
            .collect();
        let body = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", &service_name(batch as usize))],
                    ..Resource::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            }],
        }
        .encode_to_vec();
        let answer = client
            .post(format!("{base}/v1/logs"))
            .bearer_auth(&admin)
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(answer.status().is_success(), "logs: {}", answer.status());
    }
    // Searchable: every service's RED, and the logs.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let red: Value = client
            .get(format!("{base}/api/v1/red?by=service&buckets=1"))
            .bearer_auth(&admin)
            .send()
            .await?
            .json()
            .await?;
        let requests: u64 = red["series"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["total"]["requests"].as_u64())
            .sum();
        if requests as usize >= sent_spans {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "spans not searchable in 120 s ({requests} of {sent_spans})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A dashboard user, logged in.
    let created = client
        .post(format!("{base}/api/v1/users"))
        .bearer_auth(&admin)
        .json(&json!({"name": "bench", "role": "viewer", "password": PASSWORD}))
        .send()
        .await?;
    anyhow::ensure!(
        created.status().is_success(),
        "user: {}",
        created.text().await?
    );
    let login_page = client.get(format!("{base}/login")).send().await?;
    let login_cookie = login_page
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("the login form's cookie")?
        .to_owned();
    let form = login_page.text().await?;
    let csrf = form
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("the login form's token")?
        .to_owned();
    let logged_in = client
        .post(format!("{base}/login"))
        .header("cookie", login_cookie)
        .form(&[
            ("name", "bench"),
            ("password", PASSWORD),
            ("csrf", &csrf),
            ("next", "/"),
        ])
        .send()
        .await?;
    let session = logged_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("gantry_session="))
        .and_then(|v| v.split(';').next())
        .context("no session: the login failed")?
        .to_owned();

    // Timed: each page, and the API call that reads the same data.
    let time = |url: String, auth: Option<String>, cookie: Option<String>| {
        let client = client.clone();
        async move {
            let mut times = Vec::new();
            let mut server = Vec::new();
            let mut bytes = 0;
            for _ in 0..options.repeats {
                let mut request = client.get(&url);
                if let Some(token) = &auth {
                    request = request.bearer_auth(token);
                }
                if let Some(cookie) = &cookie {
                    request = request.header("cookie", cookie);
                }
                let started = Instant::now();
                let response = request.send().await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "{url}: {}",
                    response.status()
                );
                let body = response.text().await?;
                times.push(started.elapsed().as_secs_f64() * 1000.0);
                bytes = body.len();
                if let Some(ms) = body
                    .split("Rendered in ")
                    .nth(1)
                    .or_else(|| body.split("newest first · ").nth(1))
                    .and_then(|rest| rest.split(" ms").next())
                    .and_then(|ms| ms.trim().rsplit(' ').next())
                    .and_then(|ms| ms.parse::<f64>().ok())
                {
                    server.push(ms);
                }
            }
            Ok::<_, anyhow::Error>((summary(times), server, bytes))
        }
    };
    let ((overview_med, overview_max), overview_server, overview_bytes) =
        time(format!("{base}/"), None, Some(session.clone())).await?;
    let ((red_med, red_max), _, red_bytes) = time(
        format!("{base}/api/v1/red?by=service&buckets=30"),
        Some(admin.clone()),
        None,
    )
    .await?;
    let ((logs_med, logs_max), logs_server, logs_bytes) = time(
        format!("{base}/logs?q=served&from=-2h"),
        None,
        Some(session.clone()),
    )
    .await?;
    let ((api_logs_med, api_logs_max), _, _) = time(
        format!("{base}/api/v1/logs?q=served&from=-2h&limit=100"),
        Some(admin.clone()),
        None,
    )
    .await?;
    let server = |v: Vec<f64>| if v.is_empty() { f64::NAN } else { summary(v).0 };
    let overview_server = server(overview_server);
    let logs_server = server(logs_server);
    println!();
    println!(
        "gantry bench dashboard: {} services, {} instances on {} nodes, {} spans, 10000 log lines; {} timed requests per page",
        options.services, options.instances, options.nodes, sent_spans, options.repeats
    );
    println!("  setup: apply {apply_s:.1} s, placement and reports {report_s:.1} s");
    println!(
        "  overview      request median {overview_med:.0} ms (max {overview_max:.0}), server render {overview_server:.0} ms, {:.0} KB   budget 300 ms / 500 KB: {:.2}× / {:.2}× of budget",
        overview_bytes as f64 / 1024.0,
        overview_server / 300.0,
        overview_bytes as f64 / 1024.0 / 500.0
    );
    println!(
        "    its data    GET /api/v1/red (30 buckets, every service): median {red_med:.0} ms (max {red_max:.0}), {:.0} KB; the page costs {:.2}× its data",
        red_bytes as f64 / 1024.0,
        overview_med / red_med.max(0.001)
    );
    println!(
        "  logs, 100 hits request median {logs_med:.0} ms (max {logs_max:.0}), server {logs_server:.0} ms, {:.0} KB   budget 150 ms: {:.2}× of budget",
        logs_bytes as f64 / 1024.0,
        logs_med / 150.0
    );
    println!(
        "    its data    GET /api/v1/logs (limit 100): median {api_logs_med:.0} ms (max {api_logs_max:.0}); the page costs {:.2}× its data",
        logs_med / api_logs_med.max(0.001)
    );
    keep_alive.abort();
    drop(plane);
    Ok(())
}

//! The node agent end to end: files tailed through rotation and multi-line records reach the real plane, an outage with an agent crash loses and repeats nothing, and 429 + Retry-After is retried with the same batch id.

mod common;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::agent::*;
use common::*;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;

/// Every tag has seqs 0..expected[tag] exactly once, and its timestamps increase with seq.
fn check_complete_in_order(
    hits: &[(String, u32, i64, String)],
    expected: &[(&str, u32)],
) -> Result<()> {
    for (tag, n) in expected {
        let mut rows: Vec<(u32, i64)> = hits
            .iter()
            .filter(|h| h.0 == *tag)
            .map(|h| (h.1, h.2))
            .collect();
        rows.sort();
        let seqs: Vec<u32> = rows.iter().map(|r| r.0).collect();
        ensure!(
            seqs == (0..*n).collect::<Vec<_>>(),
            "file {tag}: expected seqs 0..{n} once each, got {} rows: {seqs:?}",
            seqs.len()
        );
        for pair in rows.windows(2) {
            ensure!(
                pair[0].1 <= pair[1].1,
                "file {tag}: line {} has a later timestamp than line {} (read out of order)",
                pair[0].0,
                pair[1].0
            );
        }
    }
    Ok(())
}

/// Lines appended to files arrive through a rename rotation, a copy-truncate rotation and a
/// multi-line stack trace, each once and in order per file; SIGTERM exits 0.
#[tokio::test]
async fn file_lines_arrive_through_rotations_in_order() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (plane, [ingest, viewer]) =
        start_with_tokens(&tmp.path().join("plane"), &[], &[], ["ingest", "viewer"]).await?;
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let run = unique("agentrun");
    let (a, b, c) = (logs.join("a.log"), logs.join("b.log"), logs.join("c.log"));
    append(&a, &numbered(&run, "a", 0..100))?;
    append(&b, &numbered(&run, "b", 0..50))?;
    let mut agent = Agent::start(
        &tmp.path().join("agent"),
        &plane.endpoints.http_url(),
        &ingest,
        &[format!("{}/*.log", logs.display())],
    )
    .await?;
    wait_for_at_least(&plane, &viewer, &run, 150).await?;

    // Rename rotation: the tail of the old file, then the new file from 0.
    append(&a, &numbered(&run, "a", 100..150))?;
    std::fs::rename(&a, logs.join("a.log.1"))?;
    append(&a, &numbered(&run, "a", 150..200))?;
    // A new file picked up while running, with a multi-line stack trace.
    append(
        &c,
        &format!(
            "{run} c 00000 Exception in thread main java.lang.IllegalStateException: boom\n\
             \tat com.example.Foo.bar(Foo.java:10)\n\
             \tat com.example.Main.main(Main.java:3)\n\
             Caused by: java.io.IOException: disk\n\
             \t... 2 more\n\
             {run} c 00001 after the trace\n"
        ),
    )?;
    // Copy-truncate, once the agent has read the file (lines written between the copy and the
    // truncation are lost by design of copy-truncate, so none are).
    wait_for_at_least(&plane, &viewer, &run, 200).await?;
    std::fs::copy(&b, logs.join("b.log.1"))?;
    OpenOptions::new().write(true).open(&b)?.set_len(0)?;
    append(&b, &numbered(&run, "b", 50..60))?;

    let hits = wait_for_at_least(&plane, &viewer, &run, 262).await?;
    let parsed = parse_hits(&run, &hits);
    check_complete_in_order(&parsed, &[("a", 200), ("b", 60), ("c", 2)])?;
    ensure!(
        hits.len() == 262,
        "expected 262 records, got {}",
        hits.len()
    );
    let trace = parsed
        .iter()
        .find(|h| h.0 == "c" && h.1 == 0)
        .context("trace record")?;
    ensure!(
        trace
            .3
            .contains("\n\tat com.example.Foo.bar(Foo.java:10)\n")
            && trace
                .3
                .ends_with("Caused by: java.io.IOException: disk\n\t... 2 more"),
        "the stack trace must be one record: {:?}",
        trace.3
    );
    let any = hits
        .iter()
        .find(|h| h["body"].as_str().is_some_and(|b| b.ends_with(" a 00199")))
        .context("a 00199")?;
    ensure!(
        any["resource"]["service.name"] == "a"
            && any["resource"]["log.file.path"] == a.to_string_lossy().as_ref()
            && !any["resource"]["host.name"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
        "resource attributes: {any}"
    );

    let metrics = agent.metrics().await?;
    let lines_read = metrics
        .iter()
        .find(|(k, _)| k.starts_with("gantry_agent_lines_read_total{"))
        .map(|(_, v)| *v)
        .unwrap_or(0.0);
    ensure!(
        lines_read >= 266.0,
        "lines read: {lines_read} in {metrics:?}"
    );
    let status = agent.terminate().await?;
    ensure!(
        status.success(),
        "agent exit status after SIGTERM: {status}"
    );
    Ok(())
}

/// The plane goes away for a minute while lines keep coming, the agent is SIGKILLed and restarted during the
/// outage, the plane comes back on the same data dir and address: every line arrives once.
#[tokio::test]
async fn outage_and_agent_crash_lose_and_repeat_nothing() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let (mut plane, [ingest, viewer]) = start_with_tokens(
        &tmp.path().join("plane"),
        &["--http-addr", &addr],
        &[],
        ["ingest", "viewer"],
    )
    .await?;
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let run = unique("outage");
    let file = logs.join("svc.log");
    append(&file, &numbered(&run, "s", 0..100))?;
    let files = [format!("{}/*.log", logs.display())];
    let mut agent = Agent::start(
        &tmp.path().join("agent"),
        &format!("http://{addr}"),
        &ingest,
        &files,
    )
    .await?;
    wait_for_at_least(&plane, &viewer, &run, 100).await?;

    // The outage: a minute without the plane while a line arrives every 100 ms; the agent is SIGKILLed 20 s in
    // and restarted 5 s later.
    plane.terminate().await?;
    let outage_started = std::time::Instant::now();
    let writer = {
        let (file, run) = (file.clone(), run.clone());
        tokio::spawn(async move {
            for i in 100..700 {
                append(&file, &numbered(&run, "s", i..i + 1))?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        })
    };
    let appends_before = agent
        .metrics()
        .await?
        .get("gantry_agent_buffer_appends_total")
        .copied()
        .unwrap_or(0.0);
    wait_until(
        DELIVERY_TIMEOUT,
        "the agent to buffer lines during the outage",
        || async {
            let m = agent.metrics().await?;
            Ok((m
                .get("gantry_agent_buffer_appends_total")
                .copied()
                .unwrap_or(0.0)
                > appends_before)
                .then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(outage_started.elapsed())).await;
    agent.kill9()?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    agent.spawn().await?;
    writer.await??;
    append(&file, &numbered(&run, "s", 700..800))?;
    eprintln!(
        "outage test: the plane was down for {:?}",
        outage_started.elapsed()
    );
    plane.restart().await?;
    ensure!(
        plane.endpoints.http == addr,
        "the plane moved to {}",
        plane.endpoints.http
    );

    wait_for_at_least(&plane, &viewer, &run, 800).await?;
    // Duplicates could still be on their way: count only once the agent has nothing left unshipped.
    wait_until(
        DELIVERY_TIMEOUT,
        "the agent to have shipped everything",
        || async {
            let m = agent.metrics().await?;
            Ok(
                (m.get("gantry_agent_buffer_unshipped_batches").copied() == Some(0.0))
                    .then_some(()),
            )
        },
    )
    .await?;
    let hits = wait_for_at_least(&plane, &viewer, &run, 800).await?;
    let parsed = parse_hits(&run, &hits);
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for h in &parsed {
        *counts.entry(h.1).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "outage test: {} records, {duplicates} duplicates",
        parsed.len()
    );
    let missing: Vec<u32> = (0..800).filter(|i| !counts.contains_key(i)).collect();
    ensure!(missing.is_empty(), "missing lines: {missing:?}");
    ensure!(
        duplicates == 0,
        "{duplicates} duplicate records: {counts:?}"
    );
    let metrics = agent.metrics().await?;
    ensure!(
        metrics
            .get("gantry_agent_sent_batches_total")
            .copied()
            .unwrap_or(0.0)
            >= 1.0,
        "{metrics:?}"
    );
    Ok(())
}

/// A fake plane's answer: `status` with an empty OTLP response, and `Retry-After: retry_after_secs` on a 429.
fn fake_answer(status: u16, retry_after_secs: u64) -> impl axum::response::IntoResponse {
    use prost::Message;
    let mut headers = axum::http::HeaderMap::new();
    if status == 429 {
        headers.insert("retry-after", retry_after_secs.into());
    }
    (
        axum::http::StatusCode::from_u16(status).expect("status"),
        headers,
        ExportLogsServiceResponse::default().encode_to_vec(),
    )
}

/// Serves a fake plane on a free loopback port.
async fn serve_fake_plane(
    app: axum::Router,
) -> Result<(
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((
        addr,
        tokio::spawn(async move { axum::serve(listener, app).await }),
    ))
}

/// What the fake plane saw: (batch id, status answered, decoded request).
type Seen = Arc<Mutex<Vec<(String, u16, ExportLogsServiceRequest)>>>;

/// A 429 with `Retry-After: 1` is retried with the same batch id until accepted, and counted.
#[tokio::test]
async fn too_many_requests_is_retried_with_the_same_batch_id() -> Result<()> {
    use axum::http::HeaderMap;
    use prost::Message;

    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/logs",
            axum::routing::post(
                |axum::extract::State(seen): axum::extract::State<Seen>,
                 headers: HeaderMap,
                 body: axum::body::Bytes| async move {
                    let id = headers
                        .get("gantry-batch-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let gzip = headers.get("content-encoding").is_some_and(|v| v == "gzip");
                    let auth_ok = headers
                        .get("authorization")
                        .is_some_and(|v| v == "Bearer gty_fake");
                    let mut raw = Vec::new();
                    if gzip {
                        let _ = flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut raw);
                    }
                    let request =
                        ExportLogsServiceRequest::decode(raw.as_slice()).unwrap_or_default();
                    let mut seen = seen.lock().expect("lock");
                    let status = if !gzip || !auth_ok || id.is_empty() {
                        400
                    } else if seen.len() < 2 {
                        429
                    } else {
                        200
                    };
                    seen.push((id, status, request));
                    fake_answer(status, 1)
                },
            ),
        )
        .with_state(seen.clone());
    let (addr, server) = serve_fake_plane(app).await?;

    let tmp = tempfile::tempdir()?;
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    append(&logs.join("x.log"), "only line of the 429 test\n")?;
    let agent = Agent::start(
        &tmp.path().join("agent"),
        &format!("http://{addr}"),
        "gty_fake",
        &[format!("{}/*.log", logs.display())],
    )
    .await?;
    wait_until(DELIVERY_TIMEOUT, "a 200 from the fake plane", || async {
        Ok(seen
            .lock()
            .expect("lock")
            .iter()
            .any(|s| s.1 == 200)
            .then_some(()))
    })
    .await?;
    let seen = seen.lock().expect("lock").clone();
    let statuses: Vec<u16> = seen.iter().map(|s| s.1).collect();
    ensure!(statuses == [429, 429, 200], "statuses: {statuses:?}");
    let agent_id = std::fs::read_to_string(tmp.path().join("agent/agent-id"))?;
    let epoch = std::fs::read_to_string(tmp.path().join("agent/buffer/epoch"))?;
    let expected_id = format!("{}-{}-1", agent_id.trim(), epoch.trim());
    ensure!(
        seen.iter().all(|s| s.0 == expected_id),
        "every attempt must carry batch id {expected_id}: {:?}",
        seen.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    let body = seen[2].2.resource_logs[0].scope_logs[0].log_records[0]
        .body
        .as_ref()
        .and_then(|b| b.value.as_ref());
    ensure!(
        matches!(body, Some(any_value::Value::StringValue(s)) if s == "only line of the 429 test"),
        "delivered body: {body:?}"
    );
    let metrics = wait_until(DELIVERY_TIMEOUT, "sent batches in /metrics", || async {
        let m = agent.metrics().await?;
        Ok((m.get("gantry_agent_sent_batches_total").copied() == Some(1.0)).then_some(m))
    })
    .await?;
    ensure!(
        metrics.get("gantry_agent_retries_total").copied() == Some(2.0),
        "retries: {metrics:?}"
    );
    server.abort();
    Ok(())
}

/// What the overloaded fake plane saw: (arrival, batch id, status answered, records in the batch).
type Attempts = Arc<Mutex<Vec<(std::time::Instant, String, u16, usize)>>>;

/// The plane answers 429 with `Retry-After: 2` to the first four requests while a backlog of 50 000 lines waits:
/// the agent waits as told before every retry, delivers every line once, and its memory stays bounded.
#[tokio::test]
async fn overload_is_waited_out_as_told_with_bounded_memory() -> Result<()> {
    use axum::http::HeaderMap;
    use prost::Message;

    const RETRY_AFTER_SECS: u64 = 2;
    const REFUSALS: usize = 4;
    let attempts: Attempts = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/logs",
            axum::routing::post(
                |axum::extract::State(attempts): axum::extract::State<Attempts>,
                 headers: HeaderMap,
                 body: axum::body::Bytes| async move {
                    let id = headers
                        .get("gantry-batch-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let mut raw = Vec::new();
                    let _ = flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut raw);
                    let records: usize = ExportLogsServiceRequest::decode(raw.as_slice())
                        .map(|r| {
                            r.resource_logs
                                .iter()
                                .flat_map(|r| &r.scope_logs)
                                .map(|s| s.log_records.len())
                                .sum()
                        })
                        .unwrap_or(0);
                    let mut attempts = attempts.lock().expect("lock");
                    let status = if attempts.len() < REFUSALS { 429 } else { 200 };
                    attempts.push((std::time::Instant::now(), id, status, records));
                    fake_answer(status, RETRY_AFTER_SECS)
                },
            ),
        )
        .with_state(attempts.clone());
    let (addr, server) = serve_fake_plane(app).await?;

    let tmp = tempfile::tempdir()?;
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let lines = 50_000u32;
    append(
        &logs.join("backlog.log"),
        &numbered("overload", "b", 0..lines),
    )?;
    let agent = Agent::start(
        &tmp.path().join("agent"),
        &format!("http://{addr}"),
        "gty_fake",
        &[format!("{}/*.log", logs.display())],
    )
    .await?;
    let peak = std::sync::atomic::AtomicU64::new(0);
    wait_until(Duration::from_secs(120), "every line delivered", || {
        let attempts = attempts.clone();
        let (agent, peak) = (&agent, &peak);
        async move {
            peak.fetch_max(
                agent.proc_status_kib("VmHWM")?,
                std::sync::atomic::Ordering::Relaxed,
            );
            let delivered: usize = attempts
                .lock()
                .expect("lock")
                .iter()
                .filter(|a| a.2 == 200)
                .map(|a| a.3)
                .sum();
            Ok((delivered >= lines as usize).then_some(()))
        }
    })
    .await?;
    let attempts = attempts.lock().expect("lock").clone();
    let delivered: usize = attempts.iter().filter(|a| a.2 == 200).map(|a| a.3).sum();
    ensure!(
        delivered == lines as usize,
        "{delivered} records delivered for {lines} lines (duplicates?)"
    );
    // The refused batch is retried with its own id, and never before the plane said it may be.
    for pair in attempts[..=REFUSALS].windows(2) {
        ensure!(
            pair[0].1 == pair[1].1,
            "a retry changed the batch id: {pair:?}"
        );
        let waited = pair[1].0.duration_since(pair[0].0);
        ensure!(
            waited >= Duration::from_millis(RETRY_AFTER_SECS * 1000 - 50),
            "the agent retried after {waited:?}, before the {RETRY_AFTER_SECS} s Retry-After"
        );
    }
    let peak_rss_kib = peak.into_inner();
    eprintln!(
        "overload test: {} attempts, peak RSS {peak_rss_kib} KiB",
        attempts.len()
    );
    ensure!(
        peak_rss_kib < 64 * 1024,
        "the agent's peak RSS was {peak_rss_kib} KiB with a backlog"
    );
    server.abort();
    Ok(())
}

/// The agent registers its node with the plane and heartbeats: the node list shows its facts, its labels and its
/// shipping figures; SIGKILLed, it turns down; restarted, it is up again under the same agent id.
#[tokio::test]
async fn agent_registers_its_node_and_heartbeats() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (plane, [ingest, viewer]) = start_with_tokens(
        &tmp.path().join("plane"),
        &[],
        &[("GANTRY_NODE_DOWN_AFTER_MISSED_HEARTBEATS", "2")],
        ["ingest", "viewer"],
    )
    .await?;
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let run = unique("node");
    append(&logs.join("a.log"), &numbered(&run, "n", 0..10))?;
    let config = tmp.path().join("agent.toml");
    std::fs::write(
        &config,
        "heartbeat_interval_ms = 200\n[labels]\nzone = \"eu-1\"\n",
    )?;
    let config = config.display().to_string();
    let mut args: Vec<&str> = Agent::QUIET.to_vec();
    args.extend(["--config", &config, "--label", "rack=r7"]);
    let mut agent = Agent::start_with(
        &tmp.path().join("agent"),
        &format!("http://{}", plane.endpoints.http),
        &ingest,
        &[format!("{}/*.log", logs.display())],
        &args,
    )
    .await?;
    let agent_id = std::fs::read_to_string(tmp.path().join("agent/agent-id"))?
        .trim()
        .to_owned();
    wait_for_at_least(&plane, &viewer, &run, 10).await?;
    let node_path = format!("/api/v1/nodes/{agent_id}");
    let node = wait_until(
        DELIVERY_TIMEOUT,
        "the node up with its shipped records",
        || async {
            let (status, node) = plane.api_get(&node_path, &viewer).await?;
            Ok((status == 200
                && node["status"] == "up"
                && node["shipping"]["sent_records"].as_u64() >= Some(10))
            .then_some(node))
        },
    )
    .await?;
    let facts = &node["facts"];
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    ensure!(facts["hostname"] == hostname.trim(), "{node}");
    ensure!(
        facts["labels"]["zone"] == "eu-1" && facts["labels"]["rack"] == "r7",
        "{node}"
    );
    ensure!(facts["cpus"].as_u64() >= Some(1), "{node}");
    let mem_total_kib: u64 = std::fs::read_to_string("/proc/meminfo")?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("MemTotal")?;
    ensure!(
        facts["memory_bytes"].as_u64() == Some(mem_total_kib * 1024),
        "{node}"
    );
    ensure!(
        facts["os"]
            .as_str()
            .is_some_and(|os| os.starts_with("linux ")),
        "{node}"
    );
    ensure!(node["interval_ms"] == 200, "{node}");
    ensure!(
        node["shipping"]["buffer_max_bytes"].as_u64() > Some(0),
        "{node}"
    );

    agent.kill9()?;
    wait_until(DELIVERY_TIMEOUT, "the node to turn down", || async {
        let (_, list) = plane.api_get("/api/v1/nodes", &viewer).await?;
        Ok(list["nodes"]
            .as_array()
            .is_some_and(|nodes| {
                nodes
                    .iter()
                    .any(|n| n["facts"]["agent_id"] == agent_id.as_str() && n["status"] == "down")
            })
            .then_some(()))
    })
    .await?;
    agent.spawn().await?;
    wait_until(DELIVERY_TIMEOUT, "the node up again", || async {
        let (_, list) = plane.api_get("/api/v1/nodes", &viewer).await?;
        let nodes = list["nodes"].as_array().cloned().unwrap_or_default();
        Ok((nodes.len() == 1
            && nodes[0]["facts"]["agent_id"] == agent_id.as_str()
            && nodes[0]["status"] == "up")
            .then_some(()))
    })
    .await?;
    Ok(())
}

//! The agent's shipper against a fake plane that pushes back: a 429 with Retry-After is retried with the same batch
//! id, and an overload is waited out as told, with every line delivered once and memory bounded.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use tokio::task::JoinHandle;

use super::{DELIVERY_TIMEOUT, append, log_dir, numbered};
use crate::harness::api::wait_until;
use crate::harness::process::Agent;

/// A fake plane's answer: `status` with an empty OTLP response, and `Retry-After: retry_after_secs` on a 429.
fn fake_answer(status: u16, retry_after_secs: u64) -> impl IntoResponse {
    let mut headers = HeaderMap::new();
    if status == 429 {
        headers.insert("retry-after", retry_after_secs.into());
    }
    (
        StatusCode::from_u16(status).expect("status"),
        headers,
        ExportLogsServiceResponse::default().encode_to_vec(),
    )
}

/// Serves a fake plane on a free loopback port.
async fn serve_fake_plane(app: Router) -> Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((
        addr,
        tokio::spawn(async move { axum::serve(listener, app).await }),
    ))
}

/// An agent tailing one file, `file` in a fresh logs directory holding `text`, shipping to a fake plane serving
/// `app`: (its temp dir, the agent, the fake plane's task).
async fn agent_against(
    app: Router,
    file: &str,
    text: &str,
) -> Result<(tempfile::TempDir, Agent, JoinHandle<std::io::Result<()>>)> {
    let (addr, server) = serve_fake_plane(app).await?;
    let tmp = tempfile::tempdir()?;
    let (logs, glob) = log_dir(tmp.path())?;
    append(&logs.join(file), text)?;
    let agent = Agent::start(
        &tmp.path().join("agent"),
        &format!("http://{addr}"),
        "gty_fake",
        &[glob],
    )
    .await?;
    Ok((tmp, agent, server))
}

/// The `Gantry-Batch-Id` of a request to the fake plane (empty without one).
fn batch_id(headers: &HeaderMap) -> String {
    headers
        .get("gantry-batch-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// A gzip-compressed protobuf body decoded (an empty request if it is not one).
fn gunzip_request(body: &[u8]) -> ExportLogsServiceRequest {
    let mut raw = Vec::new();
    let _ = flate2::read::GzDecoder::new(body).read_to_end(&mut raw);
    ExportLogsServiceRequest::decode(raw.as_slice()).unwrap_or_default()
}

/// What the fake plane saw: (batch id, status answered, decoded request).
type Seen = Arc<Mutex<Vec<(String, u16, ExportLogsServiceRequest)>>>;

/// A 429 with `Retry-After: 1` is retried with the same batch id until accepted, and counted.
#[tokio::test]
async fn too_many_requests_is_retried_with_the_same_batch_id() -> Result<()> {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/v1/logs",
            post(
                |State(seen): State<Seen>, headers: HeaderMap, body: Bytes| async move {
                    let id = batch_id(&headers);
                    let gzip = headers.get("content-encoding").is_some_and(|v| v == "gzip");
                    let auth_ok = headers
                        .get("authorization")
                        .is_some_and(|v| v == "Bearer gty_fake");
                    let request = if gzip {
                        gunzip_request(&body)
                    } else {
                        ExportLogsServiceRequest::default()
                    };
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
    let (tmp, agent, server) = agent_against(app, "x.log", "only line of the 429 test\n").await?;
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
type Attempts = Arc<Mutex<Vec<(Instant, String, u16, usize)>>>;

/// The plane answers 429 with `Retry-After: 2` to the first four requests while a backlog of 50 000 lines waits:
/// the agent waits as told before every retry, delivers every line once, and its memory stays bounded.
#[tokio::test]
async fn overload_is_waited_out_as_told_with_bounded_memory() -> Result<()> {
    const RETRY_AFTER_SECS: u64 = 2;
    const REFUSALS: usize = 4;
    let attempts: Attempts = Arc::default();
    let app = Router::new()
        .route(
            "/v1/logs",
            post(
                |State(attempts): State<Attempts>, headers: HeaderMap, body: Bytes| async move {
                    let id = batch_id(&headers);
                    let records: usize = gunzip_request(&body)
                        .resource_logs
                        .iter()
                        .flat_map(|r| &r.scope_logs)
                        .map(|s| s.log_records.len())
                        .sum();
                    let mut attempts = attempts.lock().expect("lock");
                    let status = if attempts.len() < REFUSALS { 429 } else { 200 };
                    attempts.push((Instant::now(), id, status, records));
                    fake_answer(status, RETRY_AFTER_SECS)
                },
            ),
        )
        .with_state(attempts.clone());
    let lines = 50_000u32;
    let (_tmp, agent, server) =
        agent_against(app, "backlog.log", &numbered("overload", "b", 0..lines)).await?;
    let peak = AtomicU64::new(0);
    wait_until(Duration::from_secs(120), "every line delivered", || {
        let attempts = attempts.clone();
        let (agent, peak) = (&agent, &peak);
        async move {
            peak.fetch_max(agent.proc_status_kib("VmHWM")?, Ordering::Relaxed);
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

/// Records in a decoded request.
fn records_in(request: &ExportLogsServiceRequest) -> usize {
    request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum()
}

/// The bodies of a request's records.
fn bodies_in(request: &ExportLogsServiceRequest) -> Vec<String> {
    request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
        .filter_map(|r| match r.body.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// The plane refuses any batch of more than 3 records with 413: the agent splits a batch in halves (ids `.1`, `.2`,
/// recursively) until each part fits, and every line arrives exactly once.
#[tokio::test]
async fn a_batch_too_large_is_split_until_it_fits() -> Result<()> {
    const MAX_RECORDS: usize = 3;
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/v1/logs",
            post(
                |State(seen): State<Seen>, headers: HeaderMap, body: Bytes| async move {
                    let request = gunzip_request(&body);
                    let status = if records_in(&request) > MAX_RECORDS {
                        413
                    } else {
                        200
                    };
                    seen.lock()
                        .expect("lock")
                        .push((batch_id(&headers), status, request));
                    fake_answer(status, 0)
                },
            ),
        )
        .with_state(seen.clone());
    let lines = 20u32;
    let (_tmp, _agent, server) =
        agent_against(app, "big.log", &numbered("split", "s", 0..lines)).await?;
    let delivered = wait_until(
        DELIVERY_TIMEOUT,
        "every line delivered in parts",
        || async {
            let seen = seen.lock().expect("lock");
            let delivered: Vec<String> = seen
                .iter()
                .filter(|s| s.1 == 200)
                .flat_map(|s| bodies_in(&s.2))
                .collect();
            Ok((delivered.len() >= lines as usize).then_some(delivered))
        },
    )
    .await?;
    let mut unique = delivered.clone();
    unique.sort();
    unique.dedup();
    ensure!(
        delivered.len() == lines as usize && unique.len() == lines as usize,
        "{} records delivered, {} distinct, for {lines} lines",
        delivered.len(),
        unique.len()
    );
    let seen = seen.lock().expect("lock").clone();
    ensure!(
        seen.iter().any(|s| s.1 == 413),
        "the first batch should have been refused as too large"
    );
    for (id, status, request) in &seen {
        if *status == 200 {
            ensure!(
                id.contains('.'),
                "a part carries its own id derived from the batch's: {id}"
            );
            ensure!(records_in(request) <= MAX_RECORDS);
        }
    }
    server.abort();
    Ok(())
}

/// The plane (or something pretending to be it) answers 200 with a 300 MiB body: the agent reads a few KiB of it,
/// delivers its batches, and its memory stays flat.
#[tokio::test]
async fn a_huge_answer_does_not_grow_the_agent() -> Result<()> {
    const ANSWER_BYTES: usize = 300 << 20;
    let delivered = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route(
            "/v1/logs",
            post(
                |State(delivered): State<Arc<AtomicU64>>, body: Bytes| async move {
                    delivered
                        .fetch_add(records_in(&gunzip_request(&body)) as u64, Ordering::Relaxed);
                    // Streamed, so the fake plane itself does not hold 300 MiB.
                    let chunk = Bytes::from(vec![b'x'; 1 << 20]);
                    let stream = tokio_stream::iter(
                        (0..ANSWER_BYTES >> 20)
                            .map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                    );
                    (
                        StatusCode::OK,
                        [("content-type", "application/x-protobuf")],
                        axum::body::Body::from_stream(stream),
                    )
                },
            ),
        )
        .with_state(delivered.clone());
    let lines = 10u32;
    let (_tmp, agent, server) =
        agent_against(app, "a.log", &numbered("huge", "h", 0..lines)).await?;
    wait_until(DELIVERY_TIMEOUT, "the batch delivered", || async {
        Ok((delivered.load(Ordering::Relaxed) >= lines as u64).then_some(()))
    })
    .await?;
    wait_until(
        DELIVERY_TIMEOUT,
        "the agent to count the batch as sent",
        || async {
            let m = agent.metrics().await?;
            Ok((m.get("gantry_agent_sent_batches_total").copied() >= Some(1.0)).then_some(()))
        },
    )
    .await?;
    let peak_kib = agent.proc_status_kib("VmHWM")?;
    ensure!(
        peak_kib < 100 * 1024,
        "the agent's peak RSS reached {peak_kib} KiB reading a {ANSWER_BYTES}-byte answer"
    );
    server.abort();
    Ok(())
}

/// A `Retry-After` of 999 999 999 s does not stall shipping for days: the agent waits its 60 s cap and says so.
#[tokio::test]
async fn an_absurd_retry_after_is_capped_and_logged() -> Result<()> {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/v1/logs",
            post(
                |State(seen): State<Seen>, headers: HeaderMap, body: Bytes| async move {
                    seen.lock().expect("lock").push((
                        batch_id(&headers),
                        429,
                        gunzip_request(&body),
                    ));
                    let mut answer = HeaderMap::new();
                    answer.insert("retry-after", "999999999".parse().expect("a header value"));
                    (StatusCode::TOO_MANY_REQUESTS, answer)
                },
            ),
        )
        .with_state(seen.clone());
    let (_tmp, agent, server) = agent_against(app, "a.log", "one line\n").await?;
    wait_until(DELIVERY_TIMEOUT, "the cap to be logged", || async {
        let log = agent.stderr();
        Ok((log.contains("waiting the cap") && log.contains("cap_s=60")).then_some(()))
    })
    .await?;
    ensure!(
        seen.lock().expect("lock").len() == 1,
        "the agent retried before the capped wait"
    );
    server.abort();
    Ok(())
}

//! The agent's local OTLP receiver end to end: the OpenTelemetry Python SDK sends to the agent over HTTP and gRPC,
//! and its logs, traces and metrics reach the plane with the host's attributes added; with the plane down and the
//! disk buffer full, the file source pauses and the receiver answers 503 with `Retry-After`, and everything
//! arrives once the plane is back.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;

use super::{DELIVERY_TIMEOUT, append, host_name, log_dir, parse_hits};
use crate::harness::api::{CT_PROTOBUF, SEARCH_TIMEOUT, http_client, values, wait_until};
use crate::harness::otlp::{log_record, logs_request, now_nanos};
use crate::harness::process::{Agent, free_port, fresh_plane, start_with_tokens};
use crate::harness::sdk::{Protocol, python_or_skip, send_sdk};
use crate::harness::unique;

async fn sdk_through_the_agent(protocol: Protocol) -> Result<()> {
    let Some(python) = python_or_skip(&format!("sdk_through_the_agent({protocol:?})"))? else {
        return Ok(());
    };
    let (tmp, plane, ingest, viewer) = fresh_plane().await?;
    let agent = Agent::start(
        &tmp.path().join("agent"),
        &format!("http://{}", plane.endpoints.http),
        &ingest,
        &[],
    )
    .await?;
    let endpoint = protocol.endpoint(agent.endpoint("otlp_http")?, agent.endpoint("otlp_grpc")?);
    let run = unique("relay");
    let trace_id = send_sdk(&python, protocol, &endpoint, "unused-by-the-agent", &run).await?;
    let host = host_name()?;

    let hits = plane
        .wait_for_logs(&viewer, &format!("sdkword{run}"), 1)
        .await?;
    let hit = &hits[0];
    ensure!(hit["service"] == format!("checkout-{run}"), "{hit}");
    ensure!(
        hit["resource"]["host.name"] == host,
        "the agent adds host.name: {hit}"
    );
    ensure!(
        hit["resource"]["service.version"] == "1.2.3",
        "the app's own attributes stay: {hit}"
    );
    ensure!(hit["trace_id"] == trace_id.as_str(), "{hit}");

    let trace = plane.wait_for_trace(&viewer, &trace_id, 4).await?;
    ensure!(
        trace["spans"]
            .as_array()
            .context("spans")?
            .iter()
            .all(|s| s["resource"]["host.name"] == host || s["resource"].is_null()),
        "spans carry host.name: {trace}"
    );
    let name = format!("orders_{run}");
    let query = [("name", name.as_str()), ("agg", "sum"), ("from", "-1h")];
    let series = wait_until(SEARCH_TIMEOUT, "the relayed counter", || async {
        let totals = values(&plane.query_metrics(&viewer, &query).await?);
        Ok(totals.iter().any(|v| *v >= 7.0).then_some(totals))
    })
    .await?;
    ensure!(
        !series.is_empty(),
        "the counter's total reaches 7: {series:?}"
    );
    let metrics = agent.metrics().await?;
    ensure!(
        metrics
            .get("gantry_agent_source_records_total{source=\"otlp_logs\"}")
            .copied()
            == Some(1.0),
        "{metrics:?}"
    );
    Ok(())
}

#[tokio::test]
async fn python_sdk_through_the_agent_over_http() -> Result<()> {
    sdk_through_the_agent(Protocol::Http).await
}

#[tokio::test]
async fn python_sdk_through_the_agent_over_grpc() -> Result<()> {
    sdk_through_the_agent(Protocol::Grpc).await
}

/// A small OTLP/HTTP protobuf log request for the receiver.
fn one_log(body: &str) -> Vec<u8> {
    let request: ExportLogsServiceRequest = logs_request(
        "relay-full",
        vec![log_record(body, now_nanos(), Vec::new())],
    );
    request.encode_to_vec()
}

/// The plane is down and the 1 MiB disk buffer fills with file lines: the file source pauses, the receiver answers
/// 503 with Retry-After, memory stays bounded; when the plane is back every line arrives and the receiver accepts.
#[tokio::test]
async fn full_buffer_pauses_files_and_refuses_otlp_until_the_plane_is_back() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let (mut plane, [ingest, viewer]) = start_with_tokens(
        &tmp.path().join("plane"),
        &["--http-addr", &addr],
        &[],
        ["ingest", "viewer"],
    )
    .await?;
    plane.terminate().await?;

    let (logs, glob) = log_dir(tmp.path())?;
    let config = tmp.path().join("agent.toml");
    std::fs::write(
        &config,
        "buffer_max_bytes = 1048576\nbatch_max_lines = 500\n",
    )?;
    let config = config.display().to_string();
    let mut args: Vec<&str> = Agent::QUIET.to_vec();
    args.extend(["--config", &config]);
    let agent = Agent::start_with(
        &tmp.path().join("agent"),
        &format!("http://{addr}"),
        &ingest,
        &[glob],
        &args,
    )
    .await?;
    let run = unique("full");
    // About 3 MiB of lines against a 1 MiB buffer.
    let pad = "x".repeat(200);
    let lines = 12_000u32;
    let text: String = (0..lines)
        .map(|i| format!("{run} f {i:05} {pad}\n"))
        .collect();
    append(&logs.join("big.log"), &text)?;
    wait_until(
        DELIVERY_TIMEOUT,
        "the file source to pause on the full buffer",
        || async {
            let m = agent.metrics().await?;
            Ok((m.get("gantry_agent_sources_paused").copied() == Some(1.0)).then_some(()))
        },
    )
    .await?;
    let receiver = format!("http://{}/v1/logs", agent.endpoint("otlp_http")?);
    let refused = http_client()
        .post(&receiver)
        .header("content-type", CT_PROTOBUF)
        .body(one_log(&format!("{run} refused")))
        .send()
        .await?;
    ensure!(
        refused.status() == 503,
        "a full buffer answers 503, got {}",
        refused.status()
    );
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .context("503 without Retry-After")?
        .to_str()?
        .parse()?;
    ensure!(retry_after >= 1, "Retry-After {retry_after}");
    let rss_kib = agent.proc_status_kib("VmRSS")?;
    ensure!(
        rss_kib < 100 * 1024,
        "agent RSS {rss_kib} KiB while paused on a full buffer"
    );

    plane.restart().await?;
    ensure!(
        plane.endpoints.http == addr,
        "the plane moved to {}",
        plane.endpoints.http
    );
    let accepted = wait_until(DELIVERY_TIMEOUT, "the receiver to accept again", || async {
        let response = http_client()
            .post(&receiver)
            .header("content-type", CT_PROTOBUF)
            .body(one_log(&format!("{run} accepted")))
            .send()
            .await?;
        Ok((response.status() == 200).then_some(()))
    })
    .await;
    accepted?;
    let hits = wait_until(
        Duration::from_secs(120),
        "every file line in the plane",
        || async {
            let all = plane
                .all_logs(&viewer, &format!("{run} AND f"), "-1h")
                .await?;
            Ok((all.len() >= lines as usize).then_some(all))
        },
    )
    .await?;
    let parsed = parse_hits(&run, &hits);
    let mut seqs: Vec<u32> = parsed.iter().map(|h| h.1).collect();
    seqs.sort_unstable();
    seqs.dedup();
    ensure!(
        seqs.len() == lines as usize,
        "{} distinct of {lines} lines",
        seqs.len()
    );
    plane
        .wait_for_logs(&viewer, &format!("{run} AND accepted"), 1)
        .await?;
    let m = agent.metrics().await?;
    ensure!(
        m.get("gantry_agent_sources_paused").copied() == Some(0.0),
        "{m:?}"
    );
    ensure!(
        m.get("gantry_agent_receiver_refused_total{reason=\"buffer_full\"}")
            .copied()
            .unwrap_or(0.0)
            >= 1.0,
        "{m:?}"
    );
    Ok(())
}

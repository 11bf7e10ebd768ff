//! Overload on the OTLP/HTTP port: 300 clients each send a 2 MiB batch at once. The plane reads at most its
//! admission limit (32) of bodies at a time and answers the rest 429 with `Retry-After` before reading them, so
//! its memory stays bounded; every batch it acknowledged is stored exactly once, and no refused one is.

use std::sync::Arc;

use anyhow::{Result, ensure};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;

use crate::harness::api::{CT_PROTOBUF, Port, SEARCH_TIMEOUT, wait_until};
use crate::harness::otlp::{kv, log_record, logs_request, now_nanos};
use crate::harness::process::{Plane, fresh_plane};

const CLIENTS: usize = 300;
const RECORDS: usize = 16;
/// About 128 KiB of body per record: 2 MiB per batch.
const BODY_BYTES: usize = 128 << 10;

fn batch(client: usize, filler: &str) -> ExportLogsServiceRequest {
    let now = now_nanos();
    let records = (0..RECORDS)
        .map(|i| {
            log_record(
                filler,
                now + i as u64,
                vec![kv("flood", &client.to_string())],
            )
        })
        .collect();
    logs_request("flood", records)
}

#[tokio::test]
async fn a_flood_of_large_bodies_is_refused_early_and_nothing_acknowledged_is_lost() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let rss_before = plane.proc_status_kib("VmRSS")?;
    let filler = "x".repeat(BODY_BYTES);
    let url = plane.url(Port::OtlpHttp, "/v1/logs");
    // One connection per client, as independent senders have.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let ingest = Arc::new(ingest);
    let mut sends = Vec::new();
    for i in 0..CLIENTS {
        let body = prost::Message::encode_to_vec(&batch(i, &filler));
        let (client, url, token) = (client.clone(), url.clone(), ingest.clone());
        sends.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(token.as_str())
                .header("content-type", CT_PROTOBUF)
                .header("gantry-batch-id", format!("flood-{i}"))
                .body(body)
                .send()
                .await?;
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            anyhow::Ok((i, response.status().as_u16(), retry_after))
        }));
    }
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for send in sends {
        let (i, status, retry_after) = send.await??;
        match status {
            200 => acknowledged.push(i),
            429 => {
                ensure!(
                    retry_after.is_some_and(|s| s >= 1),
                    "a 429 without a Retry-After of at least 1 s"
                );
                refused += 1;
            }
            other => anyhow::bail!("client {i} got {other}: only 200 and 429 are right"),
        }
    }
    ensure!(
        refused > 0,
        "300 simultaneous 2 MiB bodies were all read at once"
    );
    ensure!(!acknowledged.is_empty(), "nothing was accepted");

    eprintln!(
        "flood: {} acknowledged, {refused} refused, peak RSS grew by {} MiB",
        acknowledged.len(),
        plane.proc_status_kib("VmHWM")?.saturating_sub(rss_before) / 1024
    );
    // Bounded by the limits, not by the clients: 32 requests in flight (2 MiB read + 2 MiB decoded each: 128 MiB),
    // the write queue (64 batches, decoded and encoded: 256 MiB) and the indexers' memory (64 MiB for logs, 32
    // each for the others: 128 MiB) make 512 MiB; reading all 300 bodies at once took the plane before this limit
    // past 1.1 GiB. VmHWM is the peak resident set size.
    let peak_kib = plane.proc_status_kib("VmHWM")?;
    let grown_mib = peak_kib.saturating_sub(rss_before) / 1024;
    ensure!(
        grown_mib < 640,
        "the plane's peak RSS grew by {grown_mib} MiB under the flood (acknowledged {}, refused {refused})",
        acknowledged.len()
    );

    // Every acknowledged batch is stored once; no refused one is (counted per client, without fetching bodies).
    let expected = (acknowledged.len() * RECORDS) as u64;
    wait_until(
        SEARCH_TIMEOUT,
        "every acknowledged record to be searchable",
        || {
            let (plane, viewer) = (&plane, &viewer);
            async move {
                let stored = log_count(plane, viewer, "service:flood").await?;
                ensure!(
                    stored <= expected,
                    "{stored} records stored, {expected} acknowledged"
                );
                Ok((stored == expected).then_some(()))
            }
        },
    )
    .await?;
    for i in 0..CLIENTS {
        let stored = log_count(&plane, &viewer, &format!("service:flood AND flood:{i}")).await?;
        let want = if acknowledged.contains(&i) {
            RECORDS as u64
        } else {
            0
        };
        ensure!(
            stored == want,
            "client {i}: {stored} records stored, {want} expected"
        );
    }
    Ok(())
}

/// Records matching `q` in the last hour, from the histogram endpoint.
async fn log_count(plane: &Plane, token: &str, q: &str) -> Result<u64> {
    let (status, body) = plane
        .api_get_query(
            "/api/v1/logs/histogram",
            &[("q", q), ("from", "-1h"), ("buckets", "1")],
            token,
        )
        .await?;
    ensure!(status == 200, "histogram {q:?}: {status} {body}");
    Ok(body["buckets"]
        .as_array()
        .map(|b| b.iter().filter_map(|b| b["count"].as_u64()).sum())
        .unwrap_or(0))
}

/// 1 000 000 empty log records: 2 MB of protobuf (under the agent's 4 MiB cap), 4 KB gzipped, a few hundred MiB
/// once decoded.
fn bomb() -> ExportLogsServiceRequest {
    logs_request(
        "bomb",
        vec![opentelemetry_proto::tonic::logs::v1::LogRecord::default(); 1_000_000],
    )
}

/// A request that expands past the decode limits is refused before it is decoded, over OTLP/HTTP (three at once)
/// and OTLP/gRPC, naming the limit; the plane's memory does not follow the expansion.
#[tokio::test]
async fn a_decompression_bomb_of_records_is_refused_before_decoding() -> Result<()> {
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let rss_before = plane.proc_status_kib("VmRSS")?;
    let request = bomb();
    let body = crate::harness::otlp::gzip(&prost::Message::encode_to_vec(&request));
    ensure!(
        body.len() < 64 << 10,
        "the bomb should be small on the wire: {} bytes",
        body.len()
    );
    let mut sends = Vec::new();
    for _ in 0..3 {
        let (client, url, token, body) = (
            plane.client.clone(),
            plane.url(Port::OtlpHttp, "/v1/logs"),
            ingest.clone(),
            body.clone(),
        );
        sends.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(token)
                .header("content-type", CT_PROTOBUF)
                .header("content-encoding", "gzip")
                .body(body)
                .send()
                .await?;
            anyhow::Ok((response.status().as_u16(), response.text().await?))
        }));
    }
    for send in sends {
        let (status, text) = send.await??;
        ensure!(
            status == 413 && text.contains("1000000 log records"),
            "the bomb got {status}: {text}"
        );
    }
    let mut grpc = LogsServiceClient::new(plane.grpc_channel().await?)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_encoding_message_size(64 << 20);
    let refused = grpc
        .export(crate::harness::api::grpc_request(request, &ingest))
        .await
        .expect_err("the gRPC bomb must be refused");
    ensure!(
        refused.code() == tonic::Code::ResourceExhausted
            && refused.message().contains("log records"),
        "gRPC: {refused:?}"
    );
    let grown_mib = plane.proc_status_kib("VmHWM")?.saturating_sub(rss_before) / 1024;
    ensure!(
        grown_mib < 200,
        "the plane's peak RSS grew by {grown_mib} MiB refusing bombs"
    );
    // A normal batch still goes through.
    let (status, _) = send_small(&plane, &ingest).await?;
    ensure!(status == 200, "after the bombs: {status}");
    plane.wait_for_logs(&viewer, "service:small", 1).await?;
    Ok(())
}

async fn send_small(plane: &Plane, token: &str) -> Result<(u16, String)> {
    let body = prost::Message::encode_to_vec(&logs_request(
        "small",
        vec![log_record("fine", now_nanos(), vec![])],
    ));
    let response = plane
        .post_otlp(Port::OtlpHttp, "/v1/logs", CT_PROTOBUF, body, token, &[])
        .await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// The agent's local receiver refuses the same bomb before decoding it.
#[tokio::test]
async fn the_agent_refuses_a_decompression_bomb_before_decoding() -> Result<()> {
    let (tmp, plane, ingest, _viewer) = fresh_plane().await?;
    let agent = crate::harness::process::Agent::start(
        &tmp.path().join("agent"),
        &plane.endpoints.http_url(),
        &ingest,
        &[],
    )
    .await?;
    let rss_before = agent.proc_status_kib("VmRSS")?;
    let body = crate::harness::otlp::gzip(&prost::Message::encode_to_vec(&bomb()));
    let response = plane
        .client
        .post(format!("http://{}/v1/logs", agent.endpoint("otlp_http")?))
        .header("content-type", CT_PROTOBUF)
        .header("content-encoding", "gzip")
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    ensure!(
        status == 413 && text.contains("log records"),
        "the agent answered {status}: {text}"
    );
    let grown_mib = agent.proc_status_kib("VmHWM")?.saturating_sub(rss_before) / 1024;
    ensure!(
        grown_mib < 64,
        "the agent's peak RSS grew by {grown_mib} MiB refusing a bomb"
    );
    Ok(())
}

//! OTLP wire-protocol tests: JSON with hex ids, gzip, malformed bodies, size limits, partial success, backpressure, idempotency and gRPC.

mod common;

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, Result, ensure};
use common::*;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::{Value, json};
use tonic::codec::CompressionEncoding;

/// `google.rpc.Status` (only the fields we look at; `details` is skipped when decoding).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// Bytes that are not a valid protobuf message: field 1, length-delimited, claiming far more
/// bytes than follow.
const BAD_PROTOBUF: &[u8] = &[0x0a, 0xff, 0xff, 0xff, 0x7f, 0x01, 0x02];

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// A plane in a fresh temp dir with an ingest and a viewer token: (dir, plane, ingest, viewer).
async fn plane() -> Result<(tempfile::TempDir, Plane, String, String)> {
    let tmp = tempfile::tempdir()?;
    let (plane, [ingest, viewer]) =
        start_with_tokens(&tmp.path().join("data"), &[], &[], ["ingest", "viewer"]).await?;
    Ok((tmp, plane, ingest, viewer))
}

/// Hand-written OTLP JSON (hex ids, int64 as strings, enums as ints) for traces and logs; the
/// trace is then fetched by its hex id and the log by `trace_id:`.
#[tokio::test]
async fn otlp_json_with_hex_ids_round_trips() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = plane().await?;

    let svc = unique("jsonsvc");
    let word = unique("jsonword");
    let trace_id = hex(&random_trace_id());
    let root = hex(&random_span_id());
    let child = hex(&random_span_id());
    let end = now_nanos();
    let start = end - 5_000_000; // 5 ms

    let traces = json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": svc}},
            {"key": "service.version", "value": {"stringValue": "9.9.9"}}
        ]},
        "scopeSpans": [{"scope": {"name": "e2e"}, "spans": [
            {"traceId": trace_id, "spanId": root, "name": "GET /json", "kind": 2,
             "startTimeUnixNano": start.to_string(), "endTimeUnixNano": end.to_string(),
             "attributes": [
                {"key": "http.route", "value": {"stringValue": "/json"}},
                {"key": "retries", "value": {"intValue": "3"}}
             ],
             "status": {"code": 2, "message": "exploded"}},
            {"traceId": trace_id, "spanId": child, "parentSpanId": root, "name": "SELECT orders",
             "kind": 3, "startTimeUnixNano": (start + 1_000_000).to_string(),
             "endTimeUnixNano": (start + 2_000_000).to_string(), "status": {}}
        ]}]
    }]});
    let resp = plane
        .post_otlp(
            Port::Http,
            "/v1/traces",
            CT_JSON,
            serde_json::to_vec(&traces)?,
            &ingest,
            &[],
        )
        .await?;
    let ct = content_type(&resp);
    let (status, body) = json_response(resp).await?;
    ensure!(status == 200, "JSON traces -> {status}: {body}");
    ensure!(
        ct.starts_with(CT_JSON),
        "a JSON request must get a JSON response, got content-type {ct:?}"
    );
    ensure!(
        body.is_object(),
        "response is not an OTLP JSON object: {body}"
    );
    if let Some(ps) = field(&body, "partialSuccess", "partial_success") {
        let rejected = field(ps, "rejectedSpans", "rejected_spans").and_then(json_i64);
        ensure!(
            rejected.unwrap_or(0) == 0,
            "nothing should be rejected: {body}"
        );
    }

    let log_time = end - 1_000_000;
    let logs = json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": svc}}]},
        "scopeLogs": [{"scope": {"name": "e2e"}, "logRecords": [{
            "timeUnixNano": log_time.to_string(),
            "observedTimeUnixNano": log_time.to_string(),
            "severityNumber": 17,
            "severityText": "ERROR",
            "body": {"stringValue": format!("json body {word} here")},
            "attributes": [{"key": "user_id", "value": {"intValue": "42"}}],
            "traceId": trace_id,
            "spanId": root
        }]}]
    }]});
    let resp = plane
        .post_otlp(
            Port::OtlpHttp,
            "/v1/logs",
            CT_JSON,
            serde_json::to_vec(&logs)?,
            &ingest,
            &[],
        )
        .await?;
    let ct = content_type(&resp);
    let (status, body) = json_response(resp).await?;
    ensure!(status == 200, "JSON logs -> {status}: {body}");
    ensure!(
        ct.starts_with(CT_JSON),
        "content-type {ct:?} for a JSON request"
    );

    // The trace, by its hex id.
    let path = format!("/api/v1/traces/{trace_id}");
    let trace = wait_until(SEARCH_TIMEOUT, "the JSON trace with 2 spans", || async {
        let (status, body) = plane.api_get(&path, &viewer).await?;
        let n = body["spans"].as_array().map_or(0, Vec::len);
        Ok((status == 200 && n == 2).then_some(body))
    })
    .await?;
    ensure!(trace["trace_id"] == json!(trace_id), "trace_id: {trace}");
    let spans = trace["spans"].as_array().context("spans")?;
    let by_id: BTreeMap<&str, &Value> = spans
        .iter()
        .map(|s| (s["span_id"].as_str().unwrap_or(""), s))
        .collect();
    let r = by_id
        .get(root.as_str())
        .with_context(|| format!("root span {root} in {trace}"))?;
    let c = by_id
        .get(child.as_str())
        .with_context(|| format!("child span {child} in {trace}"))?;
    ensure!(
        r["name"] == "GET /json" && r["kind"] == "server",
        "root: {r}"
    );
    ensure!(r["status"] == "error", "root status must be error: {r}");
    ensure!(r["service"] == json!(svc), "root service: {r}");
    ensure!(r["trace_id"] == json!(trace_id), "span trace_id: {r}");
    ensure!(
        json_i64(&r["start_unix_nano"]) == Some(start as i64)
            && json_i64(&r["end_unix_nano"]) == Some(end as i64),
        "root start/end must be exactly what was sent ({start}, {end}): {r}"
    );
    let dur = r["duration_ms"].as_f64().context("duration_ms number")?;
    ensure!(
        (dur - 5.0).abs() < 0.01,
        "root duration_ms should be 5: {r}"
    );
    ensure!(
        r["attributes"]["http.route"] == "/json",
        "root attributes: {r}"
    );
    ensure!(
        json_i64(&r["attributes"]["retries"]) == Some(3),
        "intValue attribute: {r}"
    );
    ensure!(
        r["parent_span_id"].is_null() || r["parent_span_id"] == "",
        "root has no parent: {r}"
    );
    ensure!(c["parent_span_id"] == json!(root), "child parent: {c}");
    ensure!(
        c["kind"] == "client" && c["status"] == "unset",
        "child: {c}"
    );

    // The log, by the hex trace id.
    let hits = plane
        .wait_for_logs(&viewer, &format!("trace_id:{trace_id}"), 1)
        .await?;
    let h = &hits[0];
    ensure!(
        h["body"].as_str().is_some_and(|b| b.contains(&word)),
        "log body: {h}"
    );
    ensure!(
        h["trace_id"] == json!(trace_id) && h["span_id"] == json!(root),
        "ids: {h}"
    );
    ensure!(h["service"] == json!(svc), "service: {h}");
    ensure!(h["severity_number"] == 17, "severity_number: {h}");
    ensure!(
        json_i64(&h["timestamp_unix_nano"]) == Some(log_time as i64),
        "timestamp_unix_nano must be exactly {log_time}: {h}"
    );
    let nanos = format!(".{:09}", log_time % 1_000_000_000);
    ensure!(
        h["timestamp"].as_str().is_some_and(|t| t.contains(&nanos)),
        "timestamp should be RFC3339 with nanoseconds (containing {nanos}): {h}"
    );
    ensure!(
        json_i64(&h["attributes"]["user_id"]) == Some(42),
        "log attribute user_id: {h}"
    );
    // And by the free word.
    plane.wait_for_logs(&viewer, &word, 1).await?;
    Ok(())
}

/// gzip-compressed protobuf and JSON on both ports; the response content type follows the
/// request's; the data is searchable afterwards.
#[tokio::test]
async fn gzip_bodies_and_response_content_type() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = plane().await?;
    let svc = unique("gzsvc");
    let pb_word = unique("gzpbword");
    let json_word = unique("gzjsonword");

    // gzip protobuf logs, on the OTLP/HTTP port.
    let req = logs_request(
        &svc,
        vec![log_record(
            &format!("{pb_word} compressed"),
            now_nanos(),
            vec![],
        )],
    );
    let body = gzip(&prost::Message::encode_to_vec(&req));
    let resp = plane
        .post_otlp(
            Port::OtlpHttp,
            "/v1/logs",
            CT_PROTOBUF,
            body,
            &ingest,
            &[("Content-Encoding", "gzip")],
        )
        .await?;
    let ct = content_type(&resp);
    let bytes = expect_200(resp).await?;
    ensure!(
        ct.starts_with(CT_PROTOBUF),
        "protobuf request must get a protobuf response, got {ct:?}"
    );
    let decoded: ExportLogsServiceResponse =
        prost::Message::decode(bytes.as_slice()).context("protobuf ExportLogsServiceResponse")?;
    ensure!(
        decoded
            .partial_success
            .as_ref()
            .is_none_or(|p| p.rejected_log_records == 0),
        "nothing should be rejected: {decoded:?}"
    );

    // gzip JSON logs, on the API port.
    let json_body = json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": svc}}]},
        "scopeLogs": [{"logRecords": [{
            "timeUnixNano": now_nanos().to_string(),
            "severityNumber": 9,
            "body": {"stringValue": format!("{json_word} compressed json")}
        }]}]
    }]});
    let resp = plane
        .post_otlp(
            Port::Http,
            "/v1/logs",
            CT_JSON,
            gzip(&serde_json::to_vec(&json_body)?),
            &ingest,
            &[("Content-Encoding", "gzip")],
        )
        .await?;
    let ct = content_type(&resp);
    let (status, body) = json_response(resp).await?;
    ensure!(status == 200, "gzip JSON logs -> {status}: {body}");
    ensure!(
        ct.starts_with(CT_JSON),
        "JSON request got content-type {ct:?}"
    );
    ensure!(body.is_object(), "JSON response body: {body}");

    // gzip protobuf traces, on the API port.
    let tid = random_trace_id();
    let sid = random_span_id();
    let now = now_nanos();
    let treq = traces_request(
        &svc,
        vec![make_span(
            &tid,
            &sid,
            &[],
            "gz-op",
            SpanKind::Server,
            now - 2_000_000,
            now,
            1,
        )],
    );
    let resp = plane
        .post_otlp(
            Port::Http,
            "/v1/traces",
            CT_PROTOBUF,
            gzip(&prost::Message::encode_to_vec(&treq)),
            &ingest,
            &[("Content-Encoding", "gzip")],
        )
        .await?;
    let ct = content_type(&resp);
    expect_200(resp).await?;
    ensure!(
        ct.starts_with(CT_PROTOBUF),
        "traces response content-type {ct:?}"
    );

    plane.wait_for_logs(&viewer, &pb_word, 1).await?;
    plane.wait_for_logs(&viewer, &json_word, 1).await?;
    let path = format!("/api/v1/traces/{}", hex(&tid));
    let trace = wait_until(SEARCH_TIMEOUT, "the gzip trace", || async {
        let (status, body) = plane.api_get(&path, &viewer).await?;
        Ok((status == 200).then_some(body))
    })
    .await?;
    ensure!(
        trace["spans"][0]["name"] == "gz-op" && trace["spans"][0]["status"] == "ok",
        "{trace}"
    );
    Ok(())
}

/// Metrics over protobuf: a gauge with a label is queryable by name, `agg=max` and `group_by`.
#[tokio::test]
async fn metrics_protobuf_query_group_by() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = plane().await?;
    let svc = unique("metsvc");
    let gauge = unique("queue_depth_");
    let counter = unique("requests_total_");
    let now = now_nanos();
    let s = 1_000_000_000u64;
    let req = metrics_request(
        &svc,
        vec![
            gauge_metric(
                &gauge,
                vec![
                    number_point(1.0, now - 30 * s, vec![kv("host", "a")]),
                    number_point(5.0, now - 20 * s, vec![kv("host", "a")]),
                    number_point(3.0, now - 10 * s, vec![kv("host", "a")]),
                    number_point(10.0, now - 10 * s, vec![kv("host", "b")]),
                ],
            ),
            counter_metric(
                &counter,
                vec![
                    number_point(10.0, now - 20 * s, vec![]),
                    number_point(30.0, now - 10 * s, vec![]),
                ],
            ),
        ],
    );
    let resp: ExportMetricsServiceResponse =
        plane.send_metrics(Port::OtlpHttp, &ingest, &req).await?;
    ensure!(
        resp.partial_success
            .as_ref()
            .is_none_or(|p| p.rejected_data_points == 0),
        "nothing should be rejected: {resp:?}"
    );

    let q = [
        ("name", gauge.as_str()),
        ("agg", "max"),
        ("group_by", "host"),
        ("from", "-1h"),
    ];
    let got = wait_until(SEARCH_TIMEOUT, "2 gauge series", || async {
        let (status, body) = plane.api_get_query("/api/v1/metrics", &q, &viewer).await?;
        ensure!(
            status == 200,
            "GET /api/v1/metrics {q:?} -> {status}: {body}"
        );
        let s = series(&body)?;
        Ok((s.len() == 2).then_some(s))
    })
    .await?;
    let mut max_by_host = BTreeMap::new();
    for (labels, points) in &got {
        let host = labels
            .get("host")
            .and_then(Value::as_str)
            .with_context(|| format!("series labels without host: {labels:?}"))?;
        let max = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        max_by_host.insert(host.to_string(), max);
    }
    ensure!(
        max_by_host.get("a") == Some(&5.0) && max_by_host.get("b") == Some(&10.0),
        "max per host should be a=5, b=10: {got:?}"
    );

    let q = [("name", counter.as_str()), ("agg", "max"), ("from", "-1h")];
    let got = wait_until(SEARCH_TIMEOUT, "the counter series", || async {
        let (status, body) = plane.api_get_query("/api/v1/metrics", &q, &viewer).await?;
        ensure!(
            status == 200,
            "GET /api/v1/metrics {q:?} -> {status}: {body}"
        );
        let s = series(&body)?;
        Ok((!s.is_empty()).then_some(s))
    })
    .await?;
    let max = got
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(f64::NEG_INFINITY, f64::max);
    ensure!(max == 30.0, "max of the counter should be 30: {got:?}");
    Ok(())
}

/// A query that does not parse → 400 `{"error": "... at position N ...", "position": N}`.
#[tokio::test]
async fn bad_query_is_400_with_position() -> Result<()> {
    let (_tmp, plane, _ingest, viewer) = plane().await?;
    for q in [
        "(service:api AND body:x",
        "body:\"unterminated",
        "service:api AND",
        "severity:>=",
    ] {
        let (status, body) = plane
            .api_get_query("/api/v1/logs", &[("q", q), ("from", "-1h")], &viewer)
            .await?;
        ensure!(
            status == 400,
            "q={q:?} should be a 400, got {status}: {body}"
        );
        let pos = body["position"]
            .as_u64()
            .with_context(|| format!("q={q:?}: no numeric position in {body}"))?;
        ensure!(
            pos as usize <= q.len(),
            "q={q:?}: position {pos} past the end"
        );
        let err = body["error"]
            .as_str()
            .with_context(|| format!("q={q:?}: no error string in {body}"))?;
        ensure!(
            err.contains(&format!("position {pos}")),
            "q={q:?}: error should say `at position {pos}`: {body}"
        );

        let (status, body) = plane
            .api_get_query(
                "/api/v1/logs/histogram",
                &[("q", q), ("from", "-1h")],
                &viewer,
            )
            .await?;
        ensure!(
            status == 400,
            "histogram q={q:?} should be a 400, got {status}: {body}"
        );
    }
    Ok(())
}

/// Malformed OTLP bodies → 400 with a `google.rpc.Status` in the request's content type.
#[tokio::test]
async fn malformed_otlp_is_400_with_rpc_status() -> Result<()> {
    let (_tmp, plane, ingest, _viewer) = plane().await?;
    for port in BOTH_PORTS {
        for path in ["/v1/logs", "/v1/traces", "/v1/metrics"] {
            let what = format!("{port:?} {path}");
            // JSON
            let resp = plane
                .post_otlp(
                    port,
                    path,
                    CT_JSON,
                    br#"{"resourceLogs": [ {"#.to_vec(),
                    &ingest,
                    &[],
                )
                .await?;
            let ct = content_type(&resp);
            let (status, body) = json_response(resp).await?;
            ensure!(status == 400, "{what}: broken JSON -> {status}: {body}");
            ensure!(
                ct.starts_with(CT_JSON),
                "{what}: JSON error content-type {ct:?}"
            );
            ensure!(
                body["code"] == 3 && body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: body should be google.rpc.Status {{code: 3, message}}: {body}"
            );
            // protobuf
            let resp = plane
                .post_otlp(port, path, CT_PROTOBUF, BAD_PROTOBUF.to_vec(), &ingest, &[])
                .await?;
            let ct = content_type(&resp);
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await?;
            ensure!(
                status == 400,
                "{what}: broken protobuf -> {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
            ensure!(
                ct.starts_with(CT_PROTOBUF),
                "{what}: protobuf error content-type {ct:?}"
            );
            let st: RpcStatus = prost::Message::decode(bytes.as_ref()).with_context(|| {
                format!("{what}: 400 body is not a protobuf google.rpc.Status: {bytes:?}")
            })?;
            ensure!(
                st.code == 3 && !st.message.is_empty(),
                "{what}: Status should be code 3 with a message: {st:?}"
            );
        }
    }
    // A body that claims to be gzip but is not.
    let resp = plane
        .post_otlp(
            Port::OtlpHttp,
            "/v1/logs",
            CT_PROTOBUF,
            b"definitely not gzip".to_vec(),
            &ingest,
            &[("Content-Encoding", "gzip")],
        )
        .await?;
    let status = resp.status().as_u16();
    ensure!(
        status == 400,
        "bad gzip -> {status}: {}",
        resp.text().await?
    );
    Ok(())
}

/// 200 MiB of zeros gzip-compressed to ~200 KiB → 413, without the plane buffering it all.
#[tokio::test]
async fn gzip_bomb_is_413() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = plane().await?;
    let bomb = tokio::task::spawn_blocking(|| -> std::io::Result<Vec<u8>> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..200 {
            enc.write_all(&chunk)?;
        }
        enc.finish()
    })
    .await??;
    ensure!(bomb.len() < 1 << 20, "bomb is {} bytes", bomb.len());

    let rss_before = plane.peak_rss_kib()?;
    for port in BOTH_PORTS {
        for (path, ct) in [("/v1/logs", CT_PROTOBUF), ("/v1/traces", CT_JSON)] {
            let resp = plane
                .post_otlp(
                    port,
                    path,
                    ct,
                    bomb.clone(),
                    &ingest,
                    &[("Content-Encoding", "gzip")],
                )
                .await?;
            let status = resp.status().as_u16();
            ensure!(
                status == 413,
                "{port:?} {path}: gzip bomb should be 413, got {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
    }
    let rss_after = plane.peak_rss_kib()?;
    ensure!(
        rss_after.saturating_sub(rss_before) < 100 * 1024,
        "peak RSS grew from {rss_before} KiB to {rss_after} KiB on 200 MiB gzip bombs: the \
         body is being decompressed without a limit"
    );

    // Still healthy afterwards.
    let word = unique("afterbomb");
    plane
        .send_logs(
            Port::OtlpHttp,
            &ingest,
            &logs_request("bombsvc", vec![log_record(&word, now_nanos(), vec![])]),
        )
        .await?;
    plane.wait_for_logs(&viewer, &word, 1).await?;
    Ok(())
}

/// Records older than the retention (default 7 days) are rejected one by one; the rest are stored.
#[tokio::test]
async fn partial_success_on_old_records() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = plane().await?;
    let now = now_nanos();
    let old = now - 30 * DAY_NANOS;
    let svc = unique("oldsvc");
    let word = unique("partialword");

    // Logs, protobuf.
    let req = logs_request(
        &svc,
        vec![
            log_record(
                &format!("{word} new one"),
                now - 1_000,
                vec![kv("age", "new")],
            ),
            log_record(&format!("{word} ancient"), old, vec![kv("age", "old")]),
            log_record(
                &format!("{word} new two"),
                now - 2_000,
                vec![kv("age", "new")],
            ),
        ],
    );
    let resp = plane.send_logs(Port::OtlpHttp, &ingest, &req).await?;
    let ps = resp
        .partial_success
        .clone()
        .with_context(|| format!("expected partial_success: {resp:?}"))?;
    ensure!(
        ps.rejected_log_records == 1 && !ps.error_message.is_empty(),
        "expected 1 rejected log record with a message: {ps:?}"
    );

    // Spans, JSON.
    let tid = hex(&random_trace_id());
    let spans = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": svc}}]},
        "scopeSpans": [{"spans": [
            {"traceId": tid, "spanId": hex(&random_span_id()), "name": "fresh", "kind": 2,
             "startTimeUnixNano": (now - 1_000_000).to_string(), "endTimeUnixNano": now.to_string()},
            {"traceId": tid, "spanId": hex(&random_span_id()), "name": "stale", "kind": 1,
             "startTimeUnixNano": (old - 1_000_000).to_string(), "endTimeUnixNano": old.to_string()}
        ]}]
    }]});
    let resp = plane
        .post_otlp(
            Port::Http,
            "/v1/traces",
            CT_JSON,
            serde_json::to_vec(&spans)?,
            &ingest,
            &[],
        )
        .await?;
    let (status, body) = json_response(resp).await?;
    ensure!(status == 200, "JSON spans -> {status}: {body}");
    let ps = field(&body, "partialSuccess", "partial_success")
        .with_context(|| format!("expected partialSuccess: {body}"))?;
    ensure!(
        field(ps, "rejectedSpans", "rejected_spans").and_then(json_i64) == Some(1),
        "expected rejectedSpans = 1: {body}"
    );
    ensure!(
        field(ps, "errorMessage", "error_message")
            .and_then(Value::as_str)
            .is_some_and(|m| !m.is_empty()),
        "expected a non-empty errorMessage: {body}"
    );

    // Data points, protobuf.
    let metric = unique("stale_gauge_");
    let req = metrics_request(
        &svc,
        vec![gauge_metric(
            &metric,
            vec![
                number_point(1.0, now, vec![]),
                number_point(2.0, old, vec![]),
            ],
        )],
    );
    let resp = plane.send_metrics(Port::Http, &ingest, &req).await?;
    let ps = resp
        .partial_success
        .clone()
        .with_context(|| format!("expected partial_success: {resp:?}"))?;
    ensure!(
        ps.rejected_data_points == 1 && !ps.error_message.is_empty(),
        "expected 1 rejected data point with a message: {ps:?}"
    );

    // The fresh records are stored, the old one is not.
    plane.wait_for_logs(&viewer, &word, 2).await?;
    let (status, body) = plane
        .api_get_query(
            "/api/v1/logs",
            &[("q", &word), ("from", "-60d"), ("limit", "10")],
            &viewer,
        )
        .await?;
    ensure!(status == 200, "from=-60d -> {status}: {body}");
    let all = hits(&body)?;
    ensure!(
        all.len() == 2 && all.iter().all(|h| h["attributes"]["age"] == "new"),
        "only the 2 fresh records may be stored: {body}"
    );
    let path = format!("/api/v1/traces/{tid}");
    let trace = wait_until(SEARCH_TIMEOUT, "the fresh span", || async {
        let (status, body) = plane.api_get(&path, &viewer).await?;
        Ok((status == 200).then_some(body))
    })
    .await?;
    let names: Vec<&str> = trace["spans"]
        .as_array()
        .context("spans")?
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    ensure!(
        names == ["fresh"],
        "only the fresh span may be stored: {trace}"
    );
    Ok(())
}

/// With a write queue of 1 batch, a burst of concurrent large batches gets 429/503 with
/// Retry-After for some, never a 500, and every batch that got a 200 is searchable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_write_queue_pushes_back() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (plane, [ingest, viewer]) = start_with_tokens(
        &tmp.path().join("data"),
        &[],
        &[("GANTRY_MAX_QUEUE_BATCHES", "1")],
        ["ingest", "viewer"],
    )
    .await?;
    let run = unique("q");
    const BATCHES: usize = 48;
    const PER_BATCH: usize = 200;
    let filler = "x".repeat(2_000);

    let mut set = tokio::task::JoinSet::new();
    for i in 0..BATCHES {
        let tag = format!("{run}b{i}");
        let now = now_nanos();
        let records = (0..PER_BATCH)
            .map(|j| {
                log_record(
                    &format!("burst {j} {filler}"),
                    now - j as u64,
                    vec![kv("batch", &tag)],
                )
            })
            .collect();
        let body = prost::Message::encode_to_vec(&logs_request("burstsvc", records));
        let client = plane.client.clone();
        let url = plane.url(Port::OtlpHttp, "/v1/logs");
        let token = ingest.clone();
        set.spawn(async move {
            let resp = client
                .post(url)
                .header("Content-Type", CT_PROTOBUF)
                .bearer_auth(token)
                .body(body)
                .send()
                .await?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let text = String::from_utf8_lossy(&resp.bytes().await?).into_owned();
            anyhow::Ok((i, tag, status, retry_after, text))
        });
    }
    let mut results = Vec::new();
    while let Some(r) = set.join_next().await {
        results.push(r??);
    }
    results.sort_by_key(|r| r.0);
    let summary: Vec<(usize, u16, Option<String>)> =
        results.iter().map(|r| (r.0, r.2, r.3.clone())).collect();
    for (i, _, status, retry_after, text) in &results {
        ensure!(
            matches!(status, 200 | 429 | 503),
            "batch {i} got {status} (only 200/429/503 are allowed): {text}\nall: {summary:?}"
        );
        if *status != 200 {
            ensure!(
                retry_after.is_some(),
                "batch {i} got {status} without a Retry-After header\nall: {summary:?}"
            );
        }
    }
    let pushed_back = results.iter().filter(|r| r.2 != 200).count();
    eprintln!(
        "write queue of 1: {} of {BATCHES} batches accepted, {pushed_back} pushed back",
        BATCHES - pushed_back
    );
    ensure!(
        pushed_back > 0,
        "none of {BATCHES} concurrent batches was pushed back with a queue of 1 batch: {summary:?}"
    );
    let accepted: Vec<&String> = results
        .iter()
        .filter(|r| r.2 == 200)
        .map(|r| &r.1)
        .collect();
    ensure!(
        !accepted.is_empty(),
        "no batch was accepted at all: {summary:?}"
    );
    for tag in accepted {
        plane
            .wait_for_all_logs(&viewer, &format!("attributes.batch:{tag}"), PER_BATCH)
            .await
            .with_context(|| format!("batch {tag} got a 200 but is not fully searchable"))?;
    }
    Ok(())
}

/// The same batch sent twice with the same `Gantry-Batch-Id` is stored once.
#[tokio::test]
async fn batch_id_makes_retries_idempotent() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = plane().await?;
    let word = unique("idemword");
    let req = logs_request(
        "idemsvc",
        vec![
            log_record(&format!("{word} first"), now_nanos(), vec![]),
            log_record(&format!("{word} second"), now_nanos(), vec![]),
        ],
    );
    let body = prost::Message::encode_to_vec(&req);
    let batch_id = unique("batch-");
    for (port, attempt) in [(Port::OtlpHttp, 1), (Port::Http, 2)] {
        let resp = plane
            .post_otlp(
                port,
                "/v1/logs",
                CT_PROTOBUF,
                body.clone(),
                &ingest,
                &[("Gantry-Batch-Id", &batch_id)],
            )
            .await?;
        let status = resp.status().as_u16();
        ensure!(
            status == 200,
            "attempt {attempt} with the same batch id -> {status}: {}",
            resp.text().await?
        );
    }
    // A marker batch sent afterwards: once it is visible, both earlier sends are indexed too.
    let marker = unique("idemmarker");
    plane
        .send_logs(
            Port::OtlpHttp,
            &ingest,
            &logs_request("idemsvc", vec![log_record(&marker, now_nanos(), vec![])]),
        )
        .await?;
    plane.wait_for_logs(&viewer, &marker, 1).await?;
    let all = plane.all_logs(&viewer, &word, "-1h").await?;
    ensure!(
        all.len() == 2,
        "the batch was sent twice with one Gantry-Batch-Id: expected its 2 records once, got {} \
         hits: {all:?}",
        all.len()
    );

    // A different batch id is a different batch.
    let resp = plane
        .post_otlp(
            Port::OtlpHttp,
            "/v1/logs",
            CT_PROTOBUF,
            body,
            &ingest,
            &[("Gantry-Batch-Id", &unique("batch-"))],
        )
        .await?;
    expect_200(resp).await?;
    plane.wait_for_all_logs(&viewer, &word, 4).await?;
    Ok(())
}

/// OTLP/gRPC with gzip for all three signals; the data shows up in the API.
#[tokio::test]
async fn grpc_gzip_all_signals() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = plane().await?;
    let channel = plane.grpc_channel().await?;
    let svc = unique("grpcsvc");
    let word = unique("grpcword");
    let now = now_nanos();

    let mut logs = LogsServiceClient::new(channel.clone())
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let resp = logs
        .export(grpc_request(
            logs_request(
                &svc,
                vec![log_record(
                    &format!("{word} over grpc"),
                    now,
                    vec![kv("via", "grpc")],
                )],
            ),
            &ingest,
        ))
        .await
        .context("gRPC logs export")?
        .into_inner();
    ensure!(
        resp.partial_success
            .as_ref()
            .is_none_or(|p| p.rejected_log_records == 0),
        "{resp:?}"
    );

    let tid = random_trace_id();
    let root = random_span_id();
    let child = random_span_id();
    let mut traces = TraceServiceClient::new(channel.clone())
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    traces
        .export(grpc_request(
            traces_request(
                &svc,
                vec![
                    make_span(
                        &tid,
                        &root,
                        &[],
                        "rpc Checkout",
                        SpanKind::Server,
                        now - 9_000_000,
                        now,
                        2,
                    ),
                    make_span(
                        &tid,
                        &child,
                        &root,
                        "rpc Pay",
                        SpanKind::Client,
                        now - 8_000_000,
                        now - 1_000_000,
                        0,
                    ),
                ],
            ),
            &ingest,
        ))
        .await
        .context("gRPC traces export")?;

    let metric = unique("grpc_gauge_");
    let mut metrics = MetricsServiceClient::new(channel)
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    metrics
        .export(grpc_request(
            metrics_request(
                &svc,
                vec![gauge_metric(&metric, vec![number_point(7.5, now, vec![])])],
            ),
            &ingest,
        ))
        .await
        .context("gRPC metrics export")?;

    let hits = plane
        .wait_for_logs(&viewer, &format!("via:grpc AND {word}"), 1)
        .await?;
    ensure!(hits[0]["service"] == json!(svc), "{hits:?}");
    let path = format!("/api/v1/traces/{}", hex(&tid));
    let trace = wait_until(SEARCH_TIMEOUT, "the gRPC trace", || async {
        let (status, body) = plane.api_get(&path, &viewer).await?;
        let n = body["spans"].as_array().map_or(0, Vec::len);
        Ok((status == 200 && n == 2).then_some(body))
    })
    .await?;
    ensure!(
        trace["spans"]
            .as_array()
            .context("spans")?
            .iter()
            .any(|s| s["name"] == "rpc Checkout"
                && s["status"] == "error"
                && s["kind"] == "server"),
        "{trace}"
    );
    let q = [("name", metric.as_str()), ("agg", "max"), ("from", "-1h")];
    wait_until(SEARCH_TIMEOUT, "the gRPC gauge = 7.5", || async {
        let (status, body) = plane.api_get_query("/api/v1/metrics", &q, &viewer).await?;
        ensure!(status == 200, "{status}: {body}");
        let s = series(&body)?;
        Ok(s.iter()
            .any(|s| s.1.iter().any(|p| p.1 == 7.5))
            .then_some(()))
    })
    .await?;
    Ok(())
}

/// gRPC status codes: UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT.
#[tokio::test]
async fn grpc_error_codes() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = plane().await?;
    let channel = plane.grpc_channel().await?;
    let req = || logs_request("grpcerr", vec![log_record("x", now_nanos(), vec![])]);
    let mut client = LogsServiceClient::new(channel.clone());

    for (token, want, label) in [
        ("", tonic::Code::Unauthenticated, "no token"),
        (
            "gty_thisisnotarealtoken0000",
            tonic::Code::Unauthenticated,
            "bad token",
        ),
        (
            viewer.as_str(),
            tonic::Code::PermissionDenied,
            "viewer token",
        ),
    ] {
        let err = client
            .export(grpc_request(req(), token))
            .await
            .err()
            .with_context(|| format!("{label}: gRPC export should fail"))?;
        ensure!(
            err.code() == want,
            "{label}: expected {want:?}, got {err:?}"
        );
    }
    client
        .export(grpc_request(req(), &ingest))
        .await
        .context("ingest token must work over gRPC")?;

    // Bytes that are not a valid ExportLogsServiceRequest.
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.context("gRPC channel ready")?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    );
    let err = grpc
        .unary(grpc_request(BAD_PROTOBUF.to_vec(), &ingest), path, RawCodec)
        .await
        .err()
        .context("malformed protobuf over gRPC should fail")?;
    ensure!(
        err.code() == tonic::Code::InvalidArgument,
        "malformed protobuf over gRPC: expected InvalidArgument, got {err:?}"
    );
    Ok(())
}

/// A gRPC message over 20 MiB (plain, and gzip-compressed) → RESOURCE_EXHAUSTED.
#[tokio::test]
async fn grpc_oversized_is_resource_exhausted() -> Result<()> {
    let (_tmp, plane, ingest, _viewer) = plane().await?;
    let channel = plane.grpc_channel().await?;
    let huge = "a".repeat(25 << 20);
    let req = logs_request("bigsvc", vec![log_record(&huge, now_nanos(), vec![])]);
    for gz in [false, true] {
        let mut client = LogsServiceClient::new(channel.clone());
        if gz {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let err = client
            .export(grpc_request(req.clone(), &ingest))
            .await
            .err()
            .with_context(|| format!("25 MiB gRPC message (gzip: {gz}) should be refused"))?;
        ensure!(
            err.code() == tonic::Code::ResourceExhausted,
            "25 MiB gRPC message (gzip: {gz}): expected ResourceExhausted, got {:?}: {}",
            err.code(),
            err.message()
        );
    }
    // Still serving.
    LogsServiceClient::new(channel)
        .export(grpc_request(
            logs_request("bigsvc", vec![log_record("small", now_nanos(), vec![])]),
            &ingest,
        ))
        .await
        .context("a small message after the oversized ones")?;
    Ok(())
}

/// A tonic codec that sends raw bytes (to put invalid protobuf on the wire).
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

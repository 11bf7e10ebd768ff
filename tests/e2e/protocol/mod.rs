//! OTLP wire-protocol tests: JSON with hex ids, gzip, malformed bodies, size limits, partial success, backpressure,
//! idempotency, gRPC ([`grpc`]), and the values inside OTLP/JSON ([`json`]).
//!
//! Every OTLP/HTTP exchange is one line of a table: `check(plane, token, Post::..., Reply::...)` sends the body
//! with its content type and encoding, and checks the status, the reply's content type and body (the signal's
//! export response, or a `google.rpc.Status`).

mod grpc;
mod json;

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::{Value, json};

use crate::harness::api::Port::{Http, OtlpHttp};
use crate::harness::api::Signal::{Logs, Metrics, Traces};
use crate::harness::api::{
    BOTH_PORTS, CT_JSON, CT_PROTOBUF, SEARCH_TIMEOUT, SIGNALS, hits, json_i64, values, wait_until,
};
use crate::harness::exchange::Reply::{Accepted, InvalidArgument, Rejected, Status};
use crate::harness::exchange::{Post, check};
use crate::harness::otlp::{
    BAD_PROTOBUF, DAY_NANOS, counter_metric, gauge_metric, hex, kv, log_record, logs_request,
    make_span, metrics_request, now_nanos, number_point, random_span_id, random_trace_id,
    traces_request,
};
use crate::harness::process::{fresh_plane, start_with_tokens};
use crate::harness::unique;

/// Not JSON: cut off in the middle.
const BROKEN_JSON: &[u8] = br#"{"resourceLogs": [ {"#;

/// Hand-written OTLP JSON (hex ids, int64 as strings, enums as ints) for traces and logs; the
/// trace is then fetched by its hex id and the log by `trace_id:`.
#[tokio::test]
async fn otlp_json_with_hex_ids_round_trips() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;

    let svc = unique("jsonsvc");
    let word = unique("jsonword");
    let trace_id = hex(&random_trace_id());
    let root = hex(&random_span_id());
    let child = hex(&random_span_id());
    let end = now_nanos();
    let start = end - 5_000_000; // 5 ms
    let log_time = end - 1_000_000;

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
    for (post, want) in [
        (Post::json(Http, Traces, &traces), Accepted),
        (Post::json(OtlpHttp, Logs, &logs), Accepted),
    ] {
        check(&plane, &ingest, post, want).await?;
    }

    // The trace, by its hex id.
    let trace = plane.wait_for_trace(&viewer, &trace_id, 2).await?;
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
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let svc = unique("gzsvc");
    let pb_word = unique("gzpbword");
    let json_word = unique("gzjsonword");

    let pb_logs = logs_request(
        &svc,
        vec![log_record(
            &format!("{pb_word} compressed"),
            now_nanos(),
            vec![],
        )],
    );
    let json_logs = json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": svc}}]},
        "scopeLogs": [{"logRecords": [{
            "timeUnixNano": now_nanos().to_string(),
            "severityNumber": 9,
            "body": {"stringValue": format!("{json_word} compressed json")}
        }]}]
    }]});
    let tid = random_trace_id();
    let now = now_nanos();
    let pb_traces = traces_request(
        &svc,
        vec![make_span(
            &tid,
            &random_span_id(),
            &[],
            "gz-op",
            SpanKind::Server,
            now - 2_000_000,
            now,
            1,
        )],
    );
    for (post, want) in [
        (Post::protobuf(OtlpHttp, Logs, &pb_logs).gzip(), Accepted),
        (Post::json(Http, Logs, &json_logs).gzip(), Accepted),
        (Post::protobuf(Http, Traces, &pb_traces).gzip(), Accepted),
    ] {
        check(&plane, &ingest, post, want).await?;
    }

    plane.wait_for_logs(&viewer, &pb_word, 1).await?;
    plane.wait_for_logs(&viewer, &json_word, 1).await?;
    let trace = plane.wait_for_trace(&viewer, &hex(&tid), 1).await?;
    ensure!(
        trace["spans"][0]["name"] == "gz-op" && trace["spans"][0]["status"] == "ok",
        "{trace}"
    );
    Ok(())
}

/// Metrics over protobuf: a gauge with a label is queryable by name, `agg=max` and `group_by`.
#[tokio::test]
async fn metrics_protobuf_query_group_by() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
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
    check(
        &plane,
        &ingest,
        Post::protobuf(OtlpHttp, Metrics, &req),
        Accepted,
    )
    .await?;

    let q = [
        ("name", gauge.as_str()),
        ("agg", "max"),
        ("group_by", "host"),
        ("from", "-1h"),
    ];
    let got = wait_until(SEARCH_TIMEOUT, "2 gauge series", || async {
        let s = plane.query_metrics(&viewer, &q).await?;
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
        let s = plane.query_metrics(&viewer, &q).await?;
        Ok((!s.is_empty()).then_some(s))
    })
    .await?;
    let max = values(&got).into_iter().fold(f64::NEG_INFINITY, f64::max);
    ensure!(max == 30.0, "max of the counter should be 30: {got:?}");
    Ok(())
}

/// A query that does not parse → 400 `{"error": "... at position N ...", "position": N}`.
#[tokio::test]
async fn bad_query_is_400_with_position() -> Result<()> {
    let (_tmp, plane, _ingest, viewer) = fresh_plane().await?;
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
    let (_tmp, plane, ingest, _viewer) = fresh_plane().await?;
    let mut cases = Vec::new();
    for port in BOTH_PORTS {
        for signal in SIGNALS {
            for (ct, body) in [(CT_JSON, BROKEN_JSON), (CT_PROTOBUF, BAD_PROTOBUF)] {
                cases.push((Post::new(port, signal, ct, body), InvalidArgument));
            }
        }
    }
    // A body that claims to be gzip but is not.
    let not_gzip = Post::new(OtlpHttp, Logs, CT_PROTOBUF, b"definitely not gzip");
    cases.push((not_gzip.header("Content-Encoding", "gzip"), Status(400)));
    for (post, want) in cases {
        check(&plane, &ingest, post, want).await?;
    }
    Ok(())
}

/// 200 MiB of zeros gzip-compressed to ~200 KiB → 413, without the plane buffering it all.
#[tokio::test]
async fn gzip_bomb_is_413() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
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

    let rss_before = plane.proc_status_kib("VmHWM")?;
    for port in BOTH_PORTS {
        for (signal, ct) in [(Logs, CT_PROTOBUF), (Traces, CT_JSON)] {
            let post = Post::new(port, signal, ct, &bomb).header("Content-Encoding", "gzip");
            check(&plane, &ingest, post, Status(413)).await?;
        }
    }
    let rss_after = plane.proc_status_kib("VmHWM")?;
    ensure!(
        rss_after.saturating_sub(rss_before) < 100 * 1024,
        "peak RSS grew from {rss_before} KiB to {rss_after} KiB on 200 MiB gzip bombs: the \
         body is being decompressed without a limit"
    );

    // Still healthy afterwards.
    let word = unique("afterbomb");
    plane
        .send_logs(
            OtlpHttp,
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
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let now = now_nanos();
    let old = now - 30 * DAY_NANOS;
    let svc = unique("oldsvc");
    let word = unique("partialword");

    let logs = logs_request(
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
    let metrics = metrics_request(
        &svc,
        vec![gauge_metric(
            &unique("stale_gauge_"),
            vec![
                number_point(1.0, now, vec![]),
                number_point(2.0, old, vec![]),
            ],
        )],
    );
    for (post, want) in [
        (Post::protobuf(OtlpHttp, Logs, &logs), Rejected(1)),
        (Post::json(Http, Traces, &spans), Rejected(1)),
        (Post::protobuf(Http, Metrics, &metrics), Rejected(1)),
    ] {
        check(&plane, &ingest, post, want).await?;
    }

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
    let trace = plane.wait_for_trace(&viewer, &tid, 1).await?;
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
        let url = plane.url(OtlpHttp, "/v1/logs");
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
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let word = unique("idemword");
    let req = logs_request(
        "idemsvc",
        vec![
            log_record(&format!("{word} first"), now_nanos(), vec![]),
            log_record(&format!("{word} second"), now_nanos(), vec![]),
        ],
    );
    let batch_id = unique("batch-");
    for (port, attempt) in [(OtlpHttp, 1), (Http, 2)] {
        let post = Post::protobuf(port, Logs, &req).header("Gantry-Batch-Id", &batch_id);
        check(&plane, &ingest, post, Accepted)
            .await
            .with_context(|| format!("attempt {attempt} with the same batch id"))?;
    }
    // A marker batch sent afterwards: once it is visible, both earlier sends are indexed too.
    let marker = unique("idemmarker");
    plane
        .send_logs(
            OtlpHttp,
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
    let post = Post::protobuf(OtlpHttp, Logs, &req).header("Gantry-Batch-Id", &unique("batch-"));
    check(&plane, &ingest, post, Accepted).await?;
    plane.wait_for_all_logs(&viewer, &word, 4).await?;
    Ok(())
}

//! The read API on known data: the log query language, time windows, paging, the histogram, trace search, the services RED table, metric aggregations and /metrics.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::{Value, json};

use crate::harness::api::{Port, SEARCH_TIMEOUT, content_type, hits, json_i64, values, wait_until};
use crate::harness::otlp::{
    HOUR_NANOS, counter_metric, gauge_metric, hex, kv, kv_int, log_record, log_with_severity,
    logs_request, logs_request_multi, make_span, metrics_request, now_nanos, number_point,
    random_span_id, random_trace_id, rfc3339, traces_request,
};
use crate::harness::process::fresh_plane;
use crate::harness::unique;

/// The `doc` attribute of every hit, as a set.
fn docs(hits: &[Value]) -> BTreeSet<i64> {
    hits.iter()
        .filter_map(|h| json_i64(&h["attributes"]["doc"]))
        .collect()
}

/// A table of queries over five known records, each with its expected result set.
#[tokio::test]
async fn log_query_language() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let now = now_nanos();
    let trace_id = random_trace_id();
    let res = |svc: &str, region: &str| vec![kv("service.name", svc), kv("region", region)];
    let doc = |n: i64, sev: i32, text: &str, body: &str, user: &str| {
        log_with_severity(
            body,
            now - (n as u64) * 1_000_000,
            sev,
            text,
            vec![kv_int("doc", n), kv("user", user)],
        )
    };
    let mut third = doc(3, 17, "ERROR", "the quick brown fox", "bob");
    third.trace_id = trace_id.clone();
    third.span_id = random_span_id();
    let req = logs_request_multi(vec![
        (
            res("svc-a", "eu"),
            vec![
                doc(1, 9, "INFO", "alpha beta payment ok", "bob"),
                doc(2, 13, "WARN", "alpha gamma payout", "alice"),
            ],
        ),
        (
            res("svc-b", "us"),
            vec![
                third,
                doc(4, 5, "DEBUG", "beta only here", "carol"),
                doc(5, 9, "INFO", "gamma brown quick", "dave"),
            ],
        ),
    ]);
    plane.send_logs(Port::OtlpHttp, &ingest, &req).await?;
    plane.wait_for_logs(&viewer, "", 5).await?;

    let tid = hex(&trace_id);
    let trace_q = format!("trace_id:{tid}");
    let cases: Vec<(&str, Vec<i64>)> = vec![
        ("alpha", vec![1, 2]),
        ("beta", vec![1, 4]),
        ("body:gamma", vec![2, 5]),
        ("service:svc-a", vec![1, 2]),
        ("service:svc-b", vec![3, 4, 5]),
        ("severity:error", vec![3]),
        ("severity:>=warn", vec![2, 3]),
        ("severity:>=info", vec![1, 2, 3, 5]),
        ("attributes.user:bob", vec![1, 3]),
        ("user:bob", vec![1, 3]),
        ("resource.region:us", vec![3, 4, 5]),
        ("region:eu", vec![1, 2]),
        ("alpha AND beta", vec![1]),
        ("alpha OR fox", vec![1, 2, 3]),
        ("alpha AND NOT beta", vec![2]),
        ("NOT service:svc-b", vec![1, 2]),
        ("(alpha OR fox) AND service:svc-b", vec![3]),
        ("\"quick brown\"", vec![3]),
        ("pay*", vec![1, 2]),
        (trace_q.as_str(), vec![3]),
    ];
    let mut failures = Vec::new();
    for (q, want) in &cases {
        let (status, body) = plane
            .api_get_query(
                "/api/v1/logs",
                &[("q", q), ("from", "-1h"), ("limit", "100")],
                &viewer,
            )
            .await?;
        if status != 200 {
            failures.push(format!("{q:<40} -> HTTP {status}: {body}"));
            continue;
        }
        let got = docs(&hits(&body)?);
        let want: BTreeSet<i64> = want.iter().copied().collect();
        if got != want {
            failures.push(format!("{q:<40} -> docs {got:?}, expected {want:?}"));
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} queries gave the wrong records:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Hits carry the documented fields.
    let body = plane.search_logs(&viewer, &trace_q, 10).await?;
    let h = &hits(&body)?[0];
    ensure!(
        h["service"] == "svc-b"
            && h["severity"]
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("error"))
            && h["severity_number"] == 17
            && h["body"] == "the quick brown fox"
            && h["attributes"]["user"] == "bob"
            && h["resource"]["region"] == "us"
            && h["trace_id"] == json!(tid)
            && h["span_id"].as_str().is_some_and(|s| s.len() == 16),
        "hit fields: {h}"
    );
    ensure!(body["took_ms"].is_number(), "took_ms: {body}");
    Ok(())
}

/// `from`/`to` as relative times and as RFC3339; records outside the window are not returned.
#[tokio::test]
async fn log_time_windows() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let now = now_nanos();
    let old = now - 2 * HOUR_NANOS;
    let recent = now - 10 * 60 * 1_000_000_000;
    let req = logs_request(
        "windowsvc",
        vec![
            log_record("windowed old", old, vec![kv_int("doc", 1)]),
            log_record("windowed recent", recent, vec![kv_int("doc", 2)]),
        ],
    );
    plane.send_logs(Port::OtlpHttp, &ingest, &req).await?;
    plane.wait_for_logs(&viewer, "windowed", 1).await?; // -1h: only the recent one

    let from_abs = rfc3339(now - 3 * HOUR_NANOS);
    let to_abs = rfc3339(now - HOUR_NANOS);
    type Window<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(Window, Vec<i64>)> = vec![
        (vec![("from", "-1h")], vec![2]),
        (vec![("from", "-3h")], vec![1, 2]),
        (vec![("from", "-7d"), ("to", "now")], vec![1, 2]),
        (vec![("from", "-3h"), ("to", "-1h")], vec![1]),
        (vec![("from", "-15m"), ("to", "now")], vec![2]),
        (vec![("from", &from_abs), ("to", &to_abs)], vec![1]),
    ];
    for (window, want) in cases {
        let mut q = vec![("q", "windowed")];
        q.extend(window.iter().copied());
        let (status, body) = plane.api_get_query("/api/v1/logs", &q, &viewer).await?;
        ensure!(status == 200, "{q:?} -> {status}: {body}");
        let got = docs(&hits(&body)?);
        ensure!(
            got == want.iter().copied().collect(),
            "{q:?}: got docs {got:?}, expected {want:?}"
        );
    }
    Ok(())
}

/// `limit` + `next_cursor` page through everything newest first, each record once, and the last
/// page has no `next_cursor`.
#[tokio::test]
async fn log_paging_newest_first() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let now = now_nanos();
    let records = (0..25)
        .map(|i| {
            log_record(
                &format!("paged {i}"),
                now - (25 - i) * 1_000_000,
                vec![kv_int("doc", i as i64)],
            )
        })
        .collect();
    plane
        .send_logs(Port::OtlpHttp, &ingest, &logs_request("pagesvc", records))
        .await?;
    plane.wait_for_all_logs(&viewer, "paged", 25).await?;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let mut q = vec![("q", "paged"), ("from", "-1h"), ("limit", "10")];
        if let Some(c) = cursor.as_deref() {
            q.push(("cursor", c));
        }
        let (status, body) = plane.api_get_query("/api/v1/logs", &q, &viewer).await?;
        ensure!(status == 200, "{q:?} -> {status}: {body}");
        let page = hits(&body)?;
        pages.push(page.len());
        seen.extend(
            page.iter()
                .filter_map(|h| json_i64(&h["attributes"]["doc"])),
        );
        match body.get("next_cursor").and_then(Value::as_str) {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        ensure!(pages.len() < 10, "the cursor never ends: pages {pages:?}");
    }
    ensure!(pages == [10, 10, 5], "page sizes with limit=10: {pages:?}");
    let want: Vec<i64> = (0..25).rev().collect();
    ensure!(seen == want, "records newest first, each once: {seen:?}");
    Ok(())
}

/// The histogram counts records in the bucket that contains them.
#[tokio::test]
async fn log_histogram() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let now = now_nanos();
    let t1 = now - 5 * 60 * 1_000_000_000;
    let t2 = now - 35 * 60 * 1_000_000_000;
    let mut records: Vec<_> = (0..10)
        .map(|i| log_record("histo near", t1 + i, vec![]))
        .collect();
    records.extend((0..5).map(|i| log_record("histo far", t2 + i, vec![])));
    records.push(log_record("other", t1, vec![]));
    plane
        .send_logs(Port::OtlpHttp, &ingest, &logs_request("histsvc", records))
        .await?;
    plane.wait_for_all_logs(&viewer, "histo", 15).await?;

    let q = [
        ("q", "histo"),
        ("from", "-1h"),
        ("to", "now"),
        ("buckets", "6"),
    ];
    let (status, body) = plane
        .api_get_query("/api/v1/logs/histogram", &q, &viewer)
        .await?;
    ensure!(status == 200, "{q:?} -> {status}: {body}");
    let interval = json_i64(&body["interval_ms"]).context("interval_ms")?;
    ensure!(interval > 0, "interval_ms: {body}");
    let buckets = body["buckets"].as_array().context("buckets array")?;
    ensure!(
        (1..=13).contains(&buckets.len()),
        "asked for about 6 buckets over 1h, got {}: {body}",
        buckets.len()
    );
    let mut total = 0;
    let mut prev = i64::MIN;
    let count_at = |t: u64| -> i64 {
        let ms = (t / 1_000_000) as i64;
        buckets
            .iter()
            .find(|b| json_i64(&b["start_unix_ms"]).is_some_and(|s| s <= ms && ms < s + interval))
            .and_then(|b| json_i64(&b["count"]))
            .unwrap_or(-1)
    };
    for b in buckets {
        let start = json_i64(&b["start_unix_ms"]).with_context(|| format!("bucket {b}"))?;
        ensure!(start > prev, "buckets must ascend: {body}");
        prev = start;
        total += json_i64(&b["count"]).with_context(|| format!("bucket {b}"))?;
    }
    ensure!(
        total == 15,
        "15 records match `histo`, buckets sum to {total}: {body}"
    );
    ensure!(
        count_at(t1) == 10,
        "bucket holding the 10 recent records: {body}"
    );
    ensure!(
        count_at(t2) == 5,
        "bucket holding the 5 older records: {body}"
    );
    Ok(())
}

/// Trace search by service, operation, minimum duration, error status and limit.
#[tokio::test]
async fn trace_search_filters() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let svc = unique("tsvc");
    let other = unique("osvc");
    let now = now_nanos();
    let ms = 1_000_000u64;
    let mut ids = BTreeMap::new();
    let mut spans = Vec::new();
    for (label, op, dur_ms, root_status, children) in [
        ("t1", "GET /a", 10, 1, 1),
        ("t2", "GET /b", 200, 2, 0),
        ("t3", "GET /a", 50, 0, 0),
    ] {
        let tid = random_trace_id();
        let root = random_span_id();
        let end = now - ms;
        spans.push(make_span(
            &tid,
            &root,
            &[],
            op,
            SpanKind::Server,
            end - dur_ms * ms,
            end,
            root_status,
        ));
        for _ in 0..children {
            spans.push(make_span(
                &tid,
                &random_span_id(),
                &root,
                "db",
                SpanKind::Client,
                end - 2 * ms,
                end - ms,
                0,
            ));
        }
        ids.insert(label, hex(&tid));
    }
    plane
        .send_traces(Port::OtlpHttp, &ingest, &traces_request(&svc, spans))
        .await?;
    let tid4 = random_trace_id();
    plane
        .send_traces(
            Port::OtlpHttp,
            &ingest,
            &traces_request(
                &other,
                vec![make_span(
                    &tid4,
                    &random_span_id(),
                    &[],
                    "GET /c",
                    SpanKind::Server,
                    now - 5 * ms,
                    now,
                    0,
                )],
            ),
        )
        .await?;

    let search = |extra: Vec<(&'static str, &'static str)>| {
        let (plane, viewer, svc) = (&plane, &viewer, &svc);
        async move {
            let mut q = vec![("service", svc.as_str()), ("from", "-1h")];
            q.extend(extra);
            plane.search_traces(viewer, &q).await
        }
    };
    let label_of = |t: &Value| -> String {
        ids.iter()
            .find(|(_, id)| t["trace_id"] == json!(id))
            .map_or_else(
                || format!("unknown {}", t["trace_id"]),
                |(l, _)| l.to_string(),
            )
    };
    let all = wait_until(SEARCH_TIMEOUT, "3 traces for the service", || async {
        let t = search(vec![]).await?;
        Ok((t.len() == 3).then_some(t))
    })
    .await?;
    let t1 = all
        .iter()
        .find(|t| label_of(t) == "t1")
        .with_context(|| format!("t1 in {all:?}"))?;
    ensure!(
        t1["root_service"] == json!(svc)
            && t1["root_name"] == "GET /a"
            && t1["span_count"] == 2
            && t1["error"] == false
            && t1["duration_ms"]
                .as_f64()
                .is_some_and(|d| (d - 10.0).abs() < 0.01)
            && json_i64(&t1["start_unix_nano"]).is_some(),
        "summary of t1: {t1}"
    );

    for (extra, want) in [
        (vec![("operation", "GET /a")], vec!["t1", "t3"]),
        (vec![("min_duration_ms", "100")], vec!["t2"]),
        (vec![("min_duration_ms", "20")], vec!["t2", "t3"]),
        (vec![("status", "error")], vec!["t2"]),
        (
            vec![("operation", "GET /a"), ("min_duration_ms", "20")],
            vec!["t3"],
        ),
    ] {
        let got: BTreeSet<String> = search(extra.clone()).await?.iter().map(label_of).collect();
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        ensure!(got == want, "{extra:?}: got {got:?}, expected {want:?}");
    }
    let limited = search(vec![("limit", "2")]).await?;
    ensure!(limited.len() == 2, "limit=2 returned {}", limited.len());

    // Unknown trace → 404.
    let (status, body) = plane
        .api_get(
            &format!("/api/v1/traces/{}", hex(&random_trace_id())),
            &viewer,
        )
        .await?;
    ensure!(status == 404, "unknown trace -> {status}: {body}");
    Ok(())
}

/// RED metrics per service from server and consumer spans only.
#[tokio::test]
async fn services_red_table() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let svc = unique("redsvc");
    let now = now_nanos();
    let ms = 1_000_000u64;
    let mut spans = Vec::new();
    // 8 server + 2 consumer spans of 1..=10 ms, 2 of them errors; 5 client spans (not requests).
    for i in 1..=10u64 {
        let kind = if i <= 8 {
            SpanKind::Server
        } else {
            SpanKind::Consumer
        };
        let status = if i == 3 || i == 9 { 2 } else { 1 };
        let end = now - i * ms;
        spans.push(make_span(
            &random_trace_id(),
            &random_span_id(),
            &[],
            "handle",
            kind,
            end - i * ms,
            end,
            status,
        ));
    }
    for i in 0..5u64 {
        let end = now - i * ms;
        spans.push(make_span(
            &random_trace_id(),
            &random_span_id(),
            &[],
            "call",
            SpanKind::Client,
            end - 500 * ms,
            end,
            2,
        ));
    }
    plane
        .send_traces(Port::OtlpHttp, &ingest, &traces_request(&svc, spans))
        .await?;

    let row = plane
        .wait_for_service(&viewer, &svc, |s| json_i64(&s["requests"]) == Some(10))
        .await?;
    let num = |k: &str| row[k].as_f64().with_context(|| format!("{k} in {row}"));
    ensure!(
        num("errors")? == 2.0,
        "2 errored server/consumer spans: {row}"
    );
    ensure!(
        (num("error_ratio")? - 0.2).abs() < 1e-9,
        "error_ratio 2/10: {row}"
    );
    ensure!(num("request_rate")? > 0.0, "request_rate: {row}");
    let (p50, p95, p99) = (num("p50_ms")?, num("p95_ms")?, num("p99_ms")?);
    ensure!(
        (1.0..=10.0).contains(&p50) && p50 <= p95 && p95 <= p99 && p99 <= 11.0,
        "latencies of 1..=10 ms (client spans of 500 ms excluded): p50 {p50} p95 {p95} p99 {p99}"
    );
    ensure!(row["version"] == "0.0.1-test", "version: {row}");
    ensure!(!row["last_seen"].is_null(), "last_seen: {row}");
    Ok(())
}

/// `agg` across the series of a `group_by` group, and `filter`.
#[tokio::test]
async fn metric_aggregations() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let name = unique("temp_");
    let counter = unique("hits_total_");
    let now = now_nanos();
    let s = 1_000_000_000u64;
    let points = [("a", 2.0), ("b", 4.0), ("c", 6.0)]
        .iter()
        .map(|(host, v)| number_point(*v, now - s, vec![kv("host", host), kv("region", "eu")]))
        .collect();
    let req = metrics_request(
        "aggsvc",
        vec![
            gauge_metric(&name, points),
            counter_metric(
                &counter,
                vec![
                    number_point(0.0, now - 120 * s, vec![]),
                    number_point(60.0, now - 60 * s, vec![]),
                    number_point(120.0, now - s, vec![]),
                ],
            ),
        ],
    );
    plane.send_metrics(Port::OtlpHttp, &ingest, &req).await?;

    let query = |agg: &'static str, extra: Vec<(&'static str, &'static str)>| {
        let (plane, viewer, name) = (&plane, &viewer, &name);
        async move {
            let mut q = vec![("name", name.as_str()), ("agg", agg), ("from", "-1h")];
            q.extend(extra);
            plane.query_metrics(viewer, &q).await
        }
    };
    wait_until(SEARCH_TIMEOUT, "the gauge series", || async {
        Ok((!query("max", vec![]).await?.is_empty()).then_some(()))
    })
    .await?;
    for (agg, want) in [("avg", 4.0), ("sum", 12.0), ("min", 2.0), ("max", 6.0)] {
        let got = query(agg, vec![("group_by", "region")]).await?;
        ensure!(
            got.len() == 1 && got[0].0.get("region") == Some(&json!("eu")),
            "agg={agg} group_by=region: one series {{region: eu}} expected: {got:?}"
        );
        let values: Vec<f64> = got[0].1.iter().map(|p| p.1).collect();
        ensure!(
            values.contains(&want),
            "agg={agg} over 2, 4, 6 at one instant should give {want}: {got:?}"
        );
    }
    let by_host = query("max", vec![("group_by", "host")]).await?;
    ensure!(
        by_host.len() == 3,
        "group_by=host: 3 series expected: {by_host:?}"
    );
    let filtered = query("max", vec![("filter", "host:b")]).await?;
    let filtered_values = values(&filtered);
    ensure!(
        !filtered_values.is_empty() && filtered_values.iter().all(|v| *v == 4.0),
        "filter=host:b keeps only host b (4.0): {filtered:?}"
    );

    // rate of a counter that grows by 1 per second.
    let q = [("name", counter.as_str()), ("agg", "rate"), ("from", "-1h")];
    let rate = plane.query_metrics(&viewer, &q).await?;
    let rates = values(&rate);
    ensure!(
        rates.iter().any(|r| (r - 1.0).abs() < 0.05),
        "rate of a counter growing 60 per 60 s should be 1/s somewhere: {rates:?}\n{rate:?}"
    );
    ensure!(
        rates.iter().all(|r| *r >= 0.0),
        "a counter's rate is never negative: {rates:?}"
    );
    Ok(())
}

/// `GET /metrics` serves Prometheus text about the plane itself.
#[tokio::test]
async fn self_metrics_are_prometheus_text() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    plane
        .send_logs(
            Port::OtlpHttp,
            &ingest,
            &logs_request("selfsvc", vec![log_record("self", now_nanos(), vec![])]),
        )
        .await?;
    let resp = plane
        .client
        .get(plane.url(Port::Http, "/metrics"))
        .bearer_auth(&viewer)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let ct = content_type(&resp);
    let text = resp.text().await?;
    ensure!(status == 200, "/metrics -> {status}: {text}");
    ensure!(ct.starts_with("text/plain"), "/metrics content-type {ct:?}");
    ensure!(
        text.lines().any(|l| l.starts_with("# TYPE ")),
        "/metrics should be Prometheus text exposition:\n{text}"
    );
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap_or("");
        ensure!(
            value.parse::<f64>().is_ok() || matches!(value, "NaN" | "+Inf" | "-Inf"),
            "not a Prometheus sample line: {line:?}"
        );
    }
    Ok(())
}

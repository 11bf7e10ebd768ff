//! Real OpenTelemetry Python SDK → plane over OTLP/HTTP and OTLP/gRPC, then everything is found again through the HTTP API.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::harness::api::{SEARCH_TIMEOUT, values, wait_until};
use crate::harness::process::fresh_plane;
use crate::harness::sdk::{Protocol, python_or_skip, send_sdk};
use crate::harness::unique;

async fn sdk_round_trip(protocol: Protocol) -> Result<()> {
    let test = format!("sdk_round_trip({protocol:?})");
    let Some(python) = python_or_skip(&test)? else {
        return Ok(());
    };
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let run = unique("r");

    let endpoints = &plane.endpoints;
    let endpoint = protocol.endpoint(&endpoints.otlp_http, &endpoints.otlp_grpc);
    let trace_id = send_sdk(&python, protocol, &endpoint, &ingest, &run)
        .await
        .with_context(|| plane.stderr_tail(40))?;
    let service = format!("checkout-{run}");
    let order = format!("order-{run}");

    // Logs: by the unique word, and by the order_id attribute.
    let hits = plane
        .wait_for_logs(&viewer, &format!("sdkword{run}"), 1)
        .await?;
    let h = &hits[0];
    ensure!(h["service"] == json!(service), "log service: {h}");
    ensure!(
        h["attributes"]["order_id"] == json!(order),
        "log order_id: {h}"
    );
    ensure!(
        h["severity_number"] == 13,
        "a Python WARNING is OTel severity 13: {h}"
    );
    ensure!(
        h["trace_id"] == json!(trace_id),
        "the log was emitted inside the server span, so it carries its trace id: {h}"
    );
    ensure!(
        h["resource"]["service.version"] == "1.2.3",
        "log resource service.version: {h}"
    );
    let by_attr = plane
        .wait_for_logs(&viewer, &format!("order_id:{order}"), 1)
        .await?;
    ensure!(by_attr[0]["body"] == h["body"], "{by_attr:?} vs {h}");
    plane
        .wait_for_logs(
            &viewer,
            &format!("service:{service} AND severity:>=warn"),
            1,
        )
        .await?;

    // The trace with all its spans.
    let trace = plane.wait_for_trace(&viewer, &trace_id, 4).await?;
    let spans = trace["spans"].as_array().context("spans")?;
    let find = |name: &str| -> Result<&Value> {
        spans
            .iter()
            .find(|s| s["name"] == name)
            .with_context(|| format!("no span {name:?} in {trace}"))
    };
    let server = find("POST /checkout")?;
    ensure!(
        server["kind"] == "server" && server["status"] == "error",
        "server span: {server}"
    );
    ensure!(
        server["service"] == json!(service),
        "server span service: {server}"
    );
    ensure!(
        server["parent_span_id"].is_null() || server["parent_span_id"] == "",
        "server span is the root: {server}"
    );
    let server_id = server["span_id"].clone();
    for (name, kind, status) in [
        ("reserve-stock", "internal", "ok"),
        ("charge-card", "client", "error"),
        ("publish-order", "producer", "unset"),
    ] {
        let s = find(name)?;
        ensure!(
            s["kind"] == kind && s["status"] == status && s["parent_span_id"] == server_id,
            "span {name}: expected kind {kind}, status {status}, parent {server_id}: {s}"
        );
        ensure!(
            s["trace_id"] == json!(trace_id),
            "span {name} trace id: {s}"
        );
    }
    ensure!(
        find("reserve-stock")?["attributes"]["order_id"] == json!(order),
        "span attribute order_id: {trace}"
    );

    // The trace search finds it as an errored trace of this service.
    let q = [
        ("service", service.as_str()),
        ("from", "-1h"),
        ("status", "error"),
    ];
    let found = wait_until(SEARCH_TIMEOUT, "the trace in /api/v1/traces", || async {
        let traces = plane.search_traces(&viewer, &q).await?;
        Ok(traces
            .into_iter()
            .find(|t| t["trace_id"] == json!(trace_id)))
    })
    .await?;
    ensure!(
        found["root_service"] == json!(service)
            && found["root_name"] == "POST /checkout"
            && found["span_count"] == 4
            && found["error"] == true,
        "trace summary: {found}"
    );

    // Metrics: the counter (3 + 4), the up-down counter (5 - 2), the histogram (1..=100 ms).
    let metric = |name: String, agg: &'static str| {
        let plane = &plane;
        let viewer = &viewer;
        async move {
            let q = [("name", name.as_str()), ("agg", agg), ("from", "-1h")];
            wait_until(
                SEARCH_TIMEOUT,
                &format!("metric {name} agg={agg}"),
                || async {
                    let series = plane.query_metrics(viewer, &q).await?;
                    let finite: Vec<f64> = values(&series)
                        .into_iter()
                        .filter(|v| v.is_finite())
                        .collect();
                    Ok((!finite.is_empty()).then_some(finite))
                },
            )
            .await
        }
    };
    let orders = metric(format!("orders_{run}"), "sum").await?;
    ensure!(
        orders.iter().any(|v| *v >= 7.0),
        "sum of the orders counter should reach 7: {orders:?}"
    );
    let inflight = metric(format!("inflight_{run}"), "max").await?;
    ensure!(
        inflight.contains(&3.0),
        "max of the inflight up-down counter should be 3: {inflight:?}"
    );
    let p95 = metric(format!("latency_{run}"), "p95").await?;
    ensure!(
        p95.iter().any(|v| (50.0..=250.0).contains(v)),
        "p95 of latencies 1..=100 ms should be roughly 95 (within the SDK's default buckets): \
         {p95:?}"
    );

    // The RED row for the service.
    let row = plane.wait_for_service(&viewer, &service, |_| true).await?;
    let num = |k: &str| {
        row[k]
            .as_f64()
            .with_context(|| format!("{k} not a number: {row}"))
    };
    ensure!(num("requests")? >= 1.0, "requests: {row}");
    ensure!(num("errors")? >= 1.0, "errors: {row}");
    ensure!(num("error_ratio")? > 0.0, "the server span errored: {row}");
    ensure!(num("request_rate")? > 0.0, "request_rate: {row}");
    ensure!(
        num("p95_ms")? >= 0.0 && num("p50_ms")? >= 0.0,
        "latencies: {row}"
    );
    ensure!(row["version"] == "1.2.3", "version: {row}");
    Ok(())
}

#[tokio::test]
async fn python_sdk_over_otlp_http() -> Result<()> {
    sdk_round_trip(Protocol::Http).await
}

#[tokio::test]
async fn python_sdk_over_otlp_grpc() -> Result<()> {
    sdk_round_trip(Protocol::Grpc).await
}

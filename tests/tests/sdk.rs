//! Real OpenTelemetry Python SDK → plane over OTLP/HTTP and OTLP/gRPC, then everything is found again through the HTTP API.

mod common;

use anyhow::{Context, Result, ensure};
use common::*;
use serde_json::{Value, json};

/// Which OTLP transport the SDK uses.
#[derive(Clone, Copy, Debug)]
enum Protocol {
    Http,
    Grpc,
}

async fn sdk_round_trip(protocol: Protocol) -> Result<()> {
    let test = format!("sdk_round_trip({protocol:?})");
    let Some(python) = python_or_skip(&test)? else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let (plane, [ingest, viewer]) =
        start_with_tokens(&tmp.path().join("data"), &[], &[], ["ingest", "viewer"]).await?;
    let run = unique("r");

    let (endpoint, proto) = match protocol {
        Protocol::Http => (plane.endpoints.otlp_http_url(), "http"),
        Protocol::Grpc => (plane.endpoints.otlp_grpc.clone(), "grpc"),
    };
    let mut cmd = send_sdk_command(&python, &endpoint, proto, &ingest, &run);
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .context("send_sdk.py did not finish within 120 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "send_sdk.py --protocol {proto} failed ({}):\nstdout: {stdout}\nstderr: {stderr}\n{}",
        out.status,
        plane.stderr_tail(40)
    );
    let trace_id = stdout
        .lines()
        .last()
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    ensure!(
        trace_id.len() == 32 && trace_id.chars().all(|c| c.is_ascii_hexdigit()),
        "send_sdk.py should print a 32-hex-digit trace id, printed {stdout:?}"
    );
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
    let path = format!("/api/v1/traces/{trace_id}");
    let trace = wait_until(SEARCH_TIMEOUT, "the SDK trace with 4 spans", || async {
        let (status, body) = plane.api_get(&path, &viewer).await?;
        let n = body["spans"].as_array().map_or(0, Vec::len);
        Ok((status == 200 && n == 4).then_some(body))
    })
    .await?;
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
        let (status, body) = plane.api_get_query("/api/v1/traces", &q, &viewer).await?;
        ensure!(
            status == 200,
            "GET /api/v1/traces {q:?} -> {status}: {body}"
        );
        let t = body["traces"]
            .as_array()
            .with_context(|| format!("no traces array: {body}"))?
            .iter()
            .find(|t| t["trace_id"] == json!(trace_id))
            .cloned();
        Ok(t)
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
                    let (status, body) = plane.api_get_query("/api/v1/metrics", &q, viewer).await?;
                    ensure!(
                        status == 200,
                        "GET /api/v1/metrics {q:?} -> {status}: {body}"
                    );
                    let values: Vec<f64> = series(&body)?
                        .into_iter()
                        .flat_map(|s| s.1.into_iter().map(|p| p.1))
                        .filter(|v| v.is_finite())
                        .collect();
                    Ok((!values.is_empty()).then_some(values))
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
    let row = wait_until(
        SEARCH_TIMEOUT,
        "the service in /api/v1/services",
        || async {
            let (status, body) = plane
                .api_get_query("/api/v1/services", &[("from", "-1h")], &viewer)
                .await?;
            ensure!(status == 200, "GET /api/v1/services -> {status}: {body}");
            Ok(body["services"]
                .as_array()
                .with_context(|| format!("no services array: {body}"))?
                .iter()
                .find(|s| s["service"] == json!(service))
                .cloned())
        },
    )
    .await?;
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

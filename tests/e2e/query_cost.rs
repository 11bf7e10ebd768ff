//! Query cost is bounded: every query runs under a budget (a cap on the index terms it may examine expanding ranges
//! and prefixes, and a deadline); a query past it ends with a 422 naming the clause and how to narrow it; a query
//! whose caller hangs up stops working; and expensive queries run a few at a time, so that ingest and cheap queries
//! are answered meanwhile.
//!
//! The attack (issue 9): records each carrying a distinct float attribute `f`, and many range clauses on `f`, each
//! of which examines every `f=` term of the index.

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

use crate::harness::api::{Port, SEARCH_TIMEOUT, wait_until};
use crate::harness::otlp::{log_record, logs_request, now_nanos};
use crate::harness::process::{Plane, start_with_tokens};
use crate::harness::unique;

/// Records, each with its own value of `f`.
const RECORDS: usize = 20_000;
const BATCH: usize = 5_000;

fn f(value: f64) -> KeyValue {
    KeyValue {
        key: "f".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::DoubleValue(value)),
        }),
        ..Default::default()
    }
}

/// Sends [`RECORDS`] log records of service `svc`, record `i` with `f = -i / 100`, and waits until all are
/// searchable.
async fn load(plane: &Plane, ingest: &str, viewer: &str, svc: &str) -> Result<()> {
    let now = now_nanos();
    for start in (0..RECORDS).step_by(BATCH) {
        let records = (start..start + BATCH)
            .map(|i| {
                log_record(
                    "attack record",
                    now - i as u64,
                    vec![f(-(i as f64) / 100.0)],
                )
            })
            .collect();
        plane
            .send_logs(Port::OtlpHttp, ingest, &logs_request(svc, records))
            .await
            .context("loading")?;
    }
    wait_until(SEARCH_TIMEOUT, "every record searchable", || async {
        let (status, body) = plane
            .api_get_query(
                "/api/v1/logs/histogram",
                &[
                    ("q", &format!("service:{svc}")),
                    ("from", "-1h"),
                    ("buckets", "1"),
                ],
                viewer,
            )
            .await?;
        let total: u64 = body["buckets"]
            .as_array()
            .map(|b| b.iter().filter_map(|b| b["count"].as_u64()).sum())
            .unwrap_or(0);
        Ok((status == 200 && total == RECORDS as u64).then_some(()))
    })
    .await
}

/// `clauses` ranges on `f`, one unit wide each, OR'd: `f:[-1 TO -0] OR f:[-2 TO -1] OR ...`. Each examines every
/// `f=` term ([`RECORDS`] of them).
fn ranges(clauses: usize) -> String {
    (0..clauses)
        .map(|i| format!("f:[-{} TO -{i}]", i + 1))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// The position of the range of clause `index` (0-based) in [`ranges`]'s text: the API places a leaf at its
/// value, after `f:`.
fn clause_position(index: usize) -> usize {
    ranges(index).len() + if index > 0 { " OR ".len() } else { 0 } + "f:".len()
}

/// The plane's gauge or counter `name`, 0 when absent.
async fn gauge(plane: &Plane, viewer: &str, name: &str) -> Result<f64> {
    Ok(plane
        .self_metrics(viewer)
        .await?
        .get(name)
        .copied()
        .unwrap_or(0.0))
}

/// `GET /api/v1/logs?q=...` over the last hour: (status, body).
async fn search(plane: &Plane, viewer: &str, q: &str) -> Result<(u16, serde_json::Value)> {
    plane
        .api_get_query(
            "/api/v1/logs",
            &[("q", q), ("from", "-1h"), ("limit", "5")],
            viewer,
        )
        .await
}

#[tokio::test]
async fn query_cost_is_bounded_refused_by_clause_and_stopped_when_the_caller_leaves() -> Result<()>
{
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    let stopped = |reason: &str| format!("gantry_queries_stopped_total{{reason=\"{reason}\"}}");

    // 1. The term cap: 1,000,000 terms; each clause examines 20,000, so the 51st clause passes it.
    let (mut plane, [ingest, viewer]) = start_with_tokens(
        &dir,
        &["--query-max-expanded-terms", "1000000"],
        &[],
        ["ingest", "viewer"],
    )
    .await?;
    let svc = unique("cost");
    load(&plane, &ingest, &viewer, &svc).await?;
    let (status, body) = search(&plane, &viewer, &ranges(60)).await?;
    let error = body["error"].as_str().unwrap_or_default();
    ensure!(
        status == 422
            && body["position"].as_u64() == Some(clause_position(50) as u64)
            && error.contains("query_max_expanded_terms")
            && error.contains("combine ranges on the same field"),
        "60 ranges of 20,000 terms each: 422 at the 51st clause, got {status} {body}"
    );
    // The same through the histogram, which compiles the query the same way.
    let q = ranges(60);
    let (status, body) = plane
        .api_get_query(
            "/api/v1/logs/histogram",
            &[("q", q.as_str()), ("from", "-1h"), ("buckets", "10")],
            &viewer,
        )
        .await?;
    ensure!(
        status == 422 && body["position"].as_u64() == Some(clause_position(50) as u64),
        "the histogram of 60 ranges: {status} {body}"
    );
    // Under the cap, the same kind of query answers, exactly.
    let (status, body) = search(&plane, &viewer, "f:[-0.05 TO -0.01]").await?;
    ensure!(
        status == 200 && body["hits"].as_array().map(Vec::len) == Some(5),
        "a narrow range: {status} {body}"
    );
    ensure!(
        gauge(&plane, &viewer, &stopped("expanded_terms")).await? >= 2.0,
        "the refusals are counted"
    );
    plane.terminate().await?;

    // 2. One permit for expensive queries, and a cap high enough for 1,000 clauses (20,000,000 terms: seconds of
    //    work each). Three at once: one runs, two wait; ingest and a cheap query are answered meanwhile; when their
    //    callers hang up, all three stop.
    let plane = Plane::start_with(
        &dir,
        &[
            "--query-max-expanded-terms",
            "100000000",
            "--query-max-expensive",
            "1",
            "--query-timeout-ms",
            "600000",
        ],
        &[],
    )
    .await?;
    let heavy = ranges(1_000);
    let mut callers = Vec::new();
    for _ in 0..3 {
        let (plane_url, viewer, q) = (
            plane.url(Port::Http, "/api/v1/logs"),
            viewer.clone(),
            heavy.clone(),
        );
        callers.push(tokio::spawn(async move {
            crate::harness::api::http_client()
                .get(plane_url)
                .query(&[("q", q.as_str()), ("from", "-1h")])
                .bearer_auth(viewer)
                .send()
                .await
        }));
    }
    wait_until(
        SEARCH_TIMEOUT,
        "one expensive query running, two waiting",
        || async {
            let running = gauge(&plane, &viewer, "gantry_queries_expensive_running").await?;
            let waiting = gauge(&plane, &viewer, "gantry_queries_expensive_waiting").await?;
            Ok((running == 1.0 && waiting == 2.0).then_some(()))
        },
    )
    .await?;
    let (status, body) = search(&plane, &viewer, &format!("service:{svc} attack")).await?;
    ensure!(
        status == 200,
        "a cheap query while the permit is taken: {status} {body}"
    );
    let fresh = log_record("while busy", now_nanos(), vec![f(1.0)]);
    plane
        .send_logs(Port::OtlpHttp, &ingest, &logs_request(&svc, vec![fresh]))
        .await
        .context("ingest while the permit is taken")?;
    for caller in &callers {
        caller.abort();
    }
    wait_until(
        SEARCH_TIMEOUT,
        "the three abandoned queries to stop",
        || async {
            let cancelled = gauge(&plane, &viewer, &stopped("cancelled")).await?;
            let running = gauge(&plane, &viewer, "gantry_queries_expensive_running").await?;
            let waiting = gauge(&plane, &viewer, "gantry_queries_expensive_waiting").await?;
            Ok((cancelled == 3.0 && running == 0.0 && waiting == 0.0).then_some(()))
        },
    )
    .await?;
    let mut plane = plane;
    plane.terminate().await?;

    // 3. The deadline: 300 ms, far less than the 1,000 clauses need.
    let plane = Plane::start_with(
        &dir,
        &[
            "--query-max-expanded-terms",
            "100000000",
            "--query-timeout-ms",
            "300",
        ],
        &[],
    )
    .await?;
    let (status, body) = search(&plane, &viewer, &heavy).await?;
    let error = body["error"].as_str().unwrap_or_default();
    ensure!(
        status == 422 && error.contains("within 300 ms") && body["position"].as_u64().is_some(),
        "1,000 ranges in 300 ms: 422 at the clause being expanded, got {status} {body}"
    );
    ensure!(
        gauge(&plane, &viewer, &stopped("timeout")).await? == 1.0,
        "the timeout is counted"
    );
    Ok(())
}

//! What the store derives from what senders send, through the real plane over OTLP/JSON: a severity number from a
//! severity text sent alone, and quantiles of exponential histograms at positive, zero and negative scales.

use std::collections::BTreeSet;

use anyhow::{Result, ensure};
use serde_json::{Value, json};

use crate::harness::api::{CT_JSON, Port, hits};
use crate::harness::otlp::now_nanos;
use crate::harness::process::fresh_plane;

/// A JSON logs request of service `derive` whose records have a severity text, a severity number (0: unset) and
/// the attribute `n`.
fn logs(records: &[(&str, i64, i64)]) -> Value {
    let now = now_nanos();
    let records: Vec<Value> = records
        .iter()
        .map(|(text, number, n)| {
            let mut record = json!({
                "timeUnixNano": now.to_string(),
                "severityText": text,
                "body": {"stringValue": format!("record {n}")},
                "attributes": [{"key": "n", "value": {"intValue": n.to_string()}}],
            });
            if *number > 0 {
                record["severityNumber"] = json!(number);
            }
            record
        })
        .collect();
    json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "derive"}}]},
        "scopeLogs": [{"logRecords": records}]
    }]})
}

#[tokio::test]
async fn severity_text_alone_gives_the_severity() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let body = logs(&[
        ("error", 0, 1),
        ("ERR", 0, 2),
        ("Warning", 0, 3),
        ("WARN2", 0, 4),
        ("notice", 0, 5),
        ("CRITICAL", 0, 6),
        ("verbose", 0, 7),
        // A number, when sent, wins over the text.
        ("error", 9, 8),
        ("emergency", 0, 9),
        ("debug3", 0, 10),
    ]);
    let response = plane
        .post_otlp(
            Port::OtlpHttp,
            "/v1/logs",
            CT_JSON,
            body.to_string().into_bytes(),
            &ingest,
            &[],
        )
        .await?;
    ensure!(response.status() == 200, "ingest: {}", response.status());
    plane.wait_for_logs(&viewer, "service:derive", 10).await?;
    let cases: [(&str, &[i64]); 6] = [
        ("severity:error", &[1, 2]),
        ("severity:>=warn", &[1, 2, 3, 4, 6, 9]),
        ("severity:warn", &[3, 4]),
        ("severity:info", &[5, 8]),
        ("severity:fatal", &[6, 9]),
        ("severity:0", &[7]),
    ];
    let mut wrong = Vec::new();
    for (q, want) in cases {
        let found = plane
            .search_logs(&viewer, &format!("service:derive AND {q}"), 100)
            .await?;
        let got: BTreeSet<i64> = hits(&found)?
            .iter()
            .filter_map(|hit| hit["attributes"]["n"].as_i64())
            .collect();
        let want: BTreeSet<i64> = want.iter().copied().collect();
        if got != want {
            wrong.push(format!("{q}: {got:?}, expected {want:?}"));
        }
    }
    ensure!(wrong.is_empty(), "wrong severities:\n{}", wrong.join("\n"));
    // The text is kept as sent, the number derived beside it.
    let found = plane
        .search_logs(&viewer, "service:derive AND n:4", 1)
        .await?;
    let hit = &hits(&found)?[0];
    ensure!(
        hit["severity"] == "WARN2" && hit["severity_number"] == 14,
        "WARN2 kept with number 14: {hit}"
    );
    Ok(())
}

/// An exponential histogram point (cumulative) of metric `name`: `(offset, counts)` of positive and negative
/// buckets.
fn exponential(
    name: &str,
    scale: i32,
    zero: u64,
    positive: (i32, &[u64]),
    negative: (i32, &[u64]),
) -> Value {
    let now = now_nanos();
    let count = zero + positive.1.iter().sum::<u64>() + negative.1.iter().sum::<u64>();
    let buckets = |(offset, counts): (i32, &[u64])| json!({"offset": offset, "bucketCounts": counts.iter().map(u64::to_string).collect::<Vec<_>>()});
    json!({
        "name": name,
        "exponentialHistogram": {
            "aggregationTemporality": 2,
            "dataPoints": [{
                "startTimeUnixNano": (now - 60_000_000_000).to_string(),
                "timeUnixNano": now.to_string(),
                "count": count.to_string(),
                "sum": 1.0,
                "scale": scale,
                "zeroCount": zero.to_string(),
                "positive": buckets(positive),
                "negative": buckets(negative),
            }]
        }
    })
}

#[tokio::test]
async fn exponential_histogram_quantiles_use_the_bucket_bounds() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    // (metric, point, quantile, expected value)
    let cases: Vec<(&str, Value, &str, f64)> = vec![
        // scale 3: bucket 8 covers (2, 2^(9/8)]: the median of 10 values in it is halfway.
        (
            "exp.scale3",
            exponential("exp.scale3", 3, 0, (8, &[10]), (0, &[])),
            "p50",
            2.0 + (2f64.powf(9.0 / 8.0) - 2.0) / 2.0,
        ),
        // scale -1: base 4, bucket 1 covers (4, 16].
        (
            "exp.scale_minus1",
            exponential("exp.scale_minus1", -1, 0, (1, &[10]), (0, &[])),
            "p50",
            10.0,
        ),
        // scale 0: (1, 2] and (2, 4], four values each.
        (
            "exp.scale0",
            exponential("exp.scale0", 0, 0, (0, &[4, 4]), (0, &[])),
            "p90",
            2.0 + 2.0 * 0.8,
        ),
        // zero bucket between [-4, -2) and (2, 4]: the median is 0.
        (
            "exp.zero",
            exponential("exp.zero", 0, 2, (1, &[4]), (1, &[4])),
            "p50",
            0.0,
        ),
    ];
    let metrics: Vec<Value> = cases.iter().map(|(_, m, _, _)| m.clone()).collect();
    let body = json!({"resourceMetrics": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "derive"}}]},
        "scopeMetrics": [{"metrics": metrics}]
    }]});
    let response = plane
        .post_otlp(
            Port::OtlpHttp,
            "/v1/metrics",
            CT_JSON,
            body.to_string().into_bytes(),
            &ingest,
            &[],
        )
        .await?;
    ensure!(response.status() == 200, "ingest: {}", response.status());
    let mut wrong = Vec::new();
    for (name, _, agg, want) in &cases {
        let found = crate::harness::api::wait_until(
            crate::harness::api::SEARCH_TIMEOUT,
            &format!("{name} to be queryable"),
            || async {
                let series = plane
                    .query_metrics(
                        &viewer,
                        &[
                            ("name", name),
                            ("agg", agg),
                            ("from", "-1h"),
                            ("step", "1h"),
                        ],
                    )
                    .await?;
                Ok(series
                    .first()
                    .and_then(|(_, points)| points.last().map(|p| p.1)))
            },
        )
        .await?;
        if (found - want).abs() > want.abs() * 1e-6 + 1e-9 {
            wrong.push(format!("{name} {agg}: {found}, expected {want}"));
        }
    }
    ensure!(wrong.is_empty(), "wrong quantiles:\n{}", wrong.join("\n"));
    Ok(())
}

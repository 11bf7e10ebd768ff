//! What real senders send, searched as asked, through the real plane over OTLP/JSON: prefixes that span the
//! punctuation of module paths and URLs (or a 400 at the clause that cannot be run), nested attribute values and
//! structured bodies by dotted path, and a span an SDK sent twice counted once everywhere.

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::harness::api::Port::{self, OtlpHttp};
use crate::harness::api::Signal::{Logs, Traces};
use crate::harness::api::{hits, json_i64};
use crate::harness::exchange::{Post, Reply, check};
use crate::harness::otlp::{hex, now_nanos, random_span_id, random_trace_id};
use crate::harness::process::{Plane, fresh_plane};
use crate::harness::unique;

/// The `doc` attribute of every hit of `q` in the last hour, or the API's error.
async fn docs(plane: &Plane, viewer: &str, q: &str) -> Result<Result<BTreeSet<i64>, Value>> {
    let (status, body) = plane
        .api_get_query(
            "/api/v1/logs",
            &[("q", q), ("from", "-1h"), ("limit", "1000")],
            viewer,
        )
        .await?;
    if status != 200 {
        return Ok(Err(json!({"status": status, "body": body})));
    }
    Ok(Ok(hits(&body)?
        .iter()
        .filter_map(|hit| json_i64(&hit["attributes"]["doc"]))
        .collect()))
}

/// Runs every `(query, expected docs)` case, and reports all the wrong ones at once.
async fn check_queries(plane: &Plane, viewer: &str, cases: &[(&str, Vec<i64>)]) -> Result<()> {
    let mut failures = Vec::new();
    for (q, want) in cases {
        let want: BTreeSet<i64> = want.iter().copied().collect();
        match docs(plane, viewer, q).await? {
            Ok(got) if got == want => {}
            Ok(got) => failures.push(format!("{q:<45} -> docs {got:?}, expected {want:?}")),
            Err(error) => failures.push(format!("{q:<45} -> {error}")),
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} queries answered wrongly:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}

/// Each `(query, position)` is a 400 whose `position` (and message) point at the refused clause.
async fn check_refusals(plane: &Plane, viewer: &str, cases: &[(&str, u64)]) -> Result<()> {
    for (q, position) in cases {
        for path in ["/api/v1/logs", "/api/v1/logs/histogram"] {
            let (status, body) = plane
                .api_get_query(path, &[("q", q), ("from", "-1h")], viewer)
                .await?;
            ensure!(
                status == 400,
                "{path} q={q:?}: expected 400, got {status}: {body}"
            );
            ensure!(
                body["position"].as_u64() == Some(*position),
                "{path} q={q:?}: expected position {position}: {body}"
            );
            let error = body["error"].as_str().context("error text")?;
            ensure!(
                error.contains(&format!("at position {position}")),
                "{path} q={q:?}: the message should say where: {body}"
            );
        }
    }
    Ok(())
}

/// A string attribute or key-value in OTLP/JSON.
fn text(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

/// An OTLP/JSON log record numbered `doc`, at `time`, with `body` (an `AnyValue`) and more attributes.
fn record(doc: i64, time: u64, body: Value, mut attributes: Vec<Value>) -> Value {
    attributes.push(json!({"key": "doc", "value": {"intValue": doc.to_string()}}));
    json!({
        "timeUnixNano": time.to_string(),
        "severityNumber": 9,
        "body": body,
        "attributes": attributes,
    })
}

fn logs(service: &str, resource: Vec<Value>, records: Vec<Value>) -> Value {
    let mut attributes = vec![text("service.name", service)];
    attributes.extend(resource);
    json!({"resourceLogs": [{
        "resource": {"attributes": attributes},
        "scopeLogs": [{"scope": {"name": "e2e"}, "logRecords": records}]
    }]})
}

/// Free-text prefixes across `::`, `_`, `/` and `=`, phrases, and the forms the body index cannot run (refused
/// at their position, on an empty plane as on one with data).
#[tokio::test]
async fn prefixes_across_punctuation() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let refusals: &[(&str, u64)] = &[
        ("\"kafka_con*\"", 0),
        ("service:x kafka_con\\**", 10),
        ("\\-\\-*", 0),
        (&format!("started \"commit {}\"", "f".repeat(64)), 8),
        ("body:[order-1 TO z]", 5),
        ("severity:loud", 9),
    ];
    check_refusals(&plane, &viewer, refusals).await?;
    // The trace search refuses the same way.
    for (q, position) in [("service:x kind:sideways", 15), ("duration_ms:>abc", 12)] {
        let (status, body) = plane
            .api_get_query("/api/v1/traces", &[("q", q), ("from", "-1h")], &viewer)
            .await?;
        ensure!(
            status == 400 && body["position"].as_u64() == Some(position),
            "/api/v1/traces q={q:?}: expected a 400 at {position}, got {status}: {body}"
        );
    }

    let now = now_nanos();
    let bodies = [
        (1, "vector::sources::kafka_consumer started"),
        (2, "vector::sinks::kafka_producer stopped"),
        (3, "kafka consumer lag 42"),
        (4, "kafka_connect_worker rebalanced"),
        (5, "kafkaconsumer"),
        (6, "GET /api/v1/orders?id=42 200"),
        (7, "user.name=alice logged in"),
    ];
    let records = bodies
        .iter()
        .map(|(doc, body)| {
            record(
                *doc,
                now - *doc as u64,
                json!({"stringValue": body}),
                vec![],
            )
        })
        .collect();
    let request = logs(&unique("prefixsvc"), vec![], records);
    check(
        &plane,
        &ingest,
        Post::json(OtlpHttp, Logs, &request),
        Reply::Accepted,
    )
    .await?;
    plane.wait_for_logs(&viewer, "doc:*", bodies.len()).await?;

    check_queries(
        &plane,
        &viewer,
        &[
            ("kafka_con*", vec![1, 3, 4]),
            ("vector\\:\\:sources\\:\\:kafka*", vec![1]),
            ("vector\\:\\:s*", vec![1, 2]),
            ("body:vector\\:\\:sinks\\:\\:kafka_p*", vec![2]),
            ("KAFKA_CON*", vec![1, 3, 4]),
            ("kafka*", vec![1, 2, 3, 4, 5]),
            ("kafka_*", vec![1, 2, 3, 4]),
            ("kafka_consumer", vec![1, 3]),
            ("\"kafka_consumer started\"", vec![1]),
            ("/api/v1/ord*", vec![6]),
            ("/api/v1/orders?id=4*", vec![6]),
            ("user.name=ali*", vec![7]),
            ("kafka_con* -vector", vec![3, 4]),
            ("kafka_zzz*", vec![]),
        ],
    )
    .await?;
    check_refusals(&plane, &viewer, refusals).await
}

/// The OTLP specification's own `examples/logs.json` (its time moved to now), then maps and arrays in attributes,
/// resource attributes and a structured body: searched by dotted path, any element of an array, shown nested.
#[tokio::test]
async fn nested_values_by_dotted_path() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let now = now_nanos();
    let mut spec: Value = serde_json::from_str(SPEC_LOGS_JSON)?;
    let example = &mut spec["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
    example["timeUnixNano"] = json!(now.to_string());
    example["observedTimeUnixNano"] = json!(now.to_string());
    example["attributes"]
        .as_array_mut()
        .context("attributes")?
        .push(json!({"key": "doc", "value": {"intValue": "1"}}));
    check(
        &plane,
        &ingest,
        Post::json(OtlpHttp, Logs, &spec),
        Reply::Accepted,
    )
    .await?;

    let kvlist = |pairs: Vec<Value>| json!({"kvlistValue": {"values": pairs}});
    let array = |values: Vec<Value>| json!({"arrayValue": {"values": values}});
    let int = |n: i64| json!({"intValue": n.to_string()});
    let string = |s: &str| json!({"stringValue": s});
    let pair = |key: &str, value: Value| json!({"key": key, "value": value});
    let nested = logs(
        "nestedsvc",
        vec![pair(
            "k8s",
            kvlist(vec![pair(
                "pod",
                kvlist(vec![pair("name", string("web-1"))]),
            )]),
        )],
        vec![
            record(
                2,
                now - 1,
                kvlist(vec![
                    pair(
                        "user",
                        kvlist(vec![pair("id", int(42)), pair("name", string("alice"))]),
                    ),
                    pair("event", string("login")),
                    pair(
                        "items",
                        array(vec![
                            kvlist(vec![pair("sku", string("a1"))]),
                            kvlist(vec![pair("sku", string("b2"))]),
                        ]),
                    ),
                ]),
                vec![
                    pair(
                        "http",
                        kvlist(vec![
                            pair("request", kvlist(vec![pair("method", string("GET"))])),
                            pair("status", int(503)),
                        ]),
                    ),
                    pair("tags", array(vec![int(1), int(5), int(12)])),
                ],
            ),
            record(
                3,
                now - 2,
                kvlist(vec![
                    pair("event", string("logout")),
                    pair("user.id", int(7)),
                ]),
                vec![
                    text("http.request.method", "POST"),
                    pair("http.status", int(200)),
                ],
            ),
            record(4, now - 3, string("{\"event\": \"login\"}"), vec![]),
        ],
    );
    check(
        &plane,
        &ingest,
        Post::json(OtlpHttp, Logs, &nested),
        Reply::Accepted,
    )
    .await?;
    plane.wait_for_logs(&viewer, "doc:*", 4).await?;

    check_queries(
        &plane,
        &viewer,
        &[
            // The specification's example.
            ("map.attribute.some.map.key:\"some value\"", vec![1]),
            (
                "attributes.map.attribute.some.map.key:\"some value\"",
                vec![1],
            ),
            ("map.attribute:*", vec![1]),
            ("array.attribute:many", vec![1]),
            ("array.attribute:values", vec![1]),
            ("array.attribute:*", vec![1]),
            ("string.attribute:\"some string\"", vec![1]),
            ("boolean.attribute:true", vec![1]),
            ("int.attribute:>=10", vec![1]),
            ("double.attribute:637.704", vec![1]),
            // Nested maps, and the same paths as literal keys.
            ("http.request.method:GET", vec![2]),
            ("http.request.method:*", vec![2, 3]),
            ("http.status:>=500", vec![2]),
            ("http:*", vec![2, 3]),
            ("tags:5", vec![2]),
            ("tags:>10", vec![2]),
            ("tags:[2 TO 4]", vec![]),
            ("resource.k8s.pod.name:web-1", vec![2, 3, 4]),
            ("k8s.pod.name:web-*", vec![2, 3, 4]),
            // Structured bodies.
            ("body.user.id:42", vec![2]),
            ("body.user.id:7", vec![3]),
            ("body.user.name:alice", vec![2]),
            ("body.event:login", vec![2]),
            ("body.event:*", vec![2, 3]),
            ("body.items.sku:b2", vec![2]),
            ("login", vec![2, 4]),
        ],
    )
    .await?;

    // Shown nested, as sent.
    let body = plane.search_logs(&viewer, "doc:1 OR doc:2", 10).await?;
    let found = hits(&body)?;
    let spec_hit = found
        .iter()
        .find(|hit| json_i64(&hit["attributes"]["doc"]) == Some(1))
        .context("the spec's record")?;
    ensure!(
        spec_hit["attributes"]["map.attribute"] == json!({"some.map.key": "some value"})
            && spec_hit["attributes"]["array.attribute"] == json!(["many", "values"]),
        "attributes shown nested: {spec_hit}"
    );
    let structured = found
        .iter()
        .find(|hit| json_i64(&hit["attributes"]["doc"]) == Some(2))
        .context("the structured record")?;
    let shown: Value = serde_json::from_str(structured["body"].as_str().context("body text")?)?;
    ensure!(
        shown["user"] == json!({"id": 42, "name": "alice"})
            && structured["attributes"]["http"]["request"]["method"] == "GET"
            && structured["resource"]["k8s"] == json!({"pod": {"name": "web-1"}}),
        "body and attributes shown nested: {structured}"
    );
    Ok(())
}

/// A span an SDK exported twice (a retry after a timeout, without `Gantry-Batch-Id`) is one span in the trace, in the
/// trace search's `span_count`, and in the services' RED counts.
#[tokio::test]
async fn a_span_sent_twice_is_counted_once() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let service = unique("retrysvc");
    let trace_id = hex(&random_trace_id());
    let (root, child) = (hex(&random_span_id()), hex(&random_span_id()));
    let end = now_nanos() - 1_000_000;
    let span = |id: &str, parent: &str, kind: i32, ms: u64, code: i32| {
        json!({
            "traceId": trace_id, "spanId": id, "parentSpanId": parent, "name": "GET /retry", "kind": kind,
            "startTimeUnixNano": (end - ms * 1_000_000).to_string(), "endTimeUnixNano": end.to_string(),
            "status": {"code": code},
        })
    };
    let request = |spans: Vec<Value>| {
        json!({"resourceSpans": [{
            "resource": {"attributes": [text("service.name", &service)]},
            "scopeSpans": [{"scope": {"name": "e2e"}, "spans": spans}]
        }]})
    };
    let first = request(vec![
        span(&root, "", 2, 30, 2),
        span(&child, &root, 3, 10, 1),
    ]);
    // The SDK timed out waiting and sends the batch again; then the root alone once more.
    for body in [&first, &first, &request(vec![span(&root, "", 2, 30, 2)])] {
        check(
            &plane,
            &ingest,
            Post::json(OtlpHttp, Traces, body),
            Reply::Accepted,
        )
        .await?;
    }
    // Stored three times: the plane took every copy (none was a duplicate batch).
    let exposition = plane
        .client
        .get(plane.url(Port::Http, "/metrics"))
        .bearer_auth(&viewer)
        .send()
        .await?
        .text()
        .await?;
    let sample = format!("gantry_ingest_records_total{{signal=\"traces\",service=\"{service}\"}} ");
    let stored: f64 = exposition
        .lines()
        .find_map(|line| line.strip_prefix(&sample))
        .with_context(|| format!("no {sample} in /metrics:\n{exposition}"))?
        .trim()
        .parse()?;
    ensure!(
        stored == 5.0,
        "5 spans stored in 3 requests, /metrics says {stored}"
    );
    // A marker sent last: batches are indexed in order and committed together, so once it shows, all copies do.
    let marker = hex(&random_trace_id());
    let marker_span = json!({"resourceSpans": [{
        "resource": {"attributes": [text("service.name", "marker")]},
        "scopeSpans": [{"spans": [{"traceId": marker, "spanId": hex(&random_span_id()), "name": "m", "kind": 2,
            "startTimeUnixNano": end.to_string(), "endTimeUnixNano": end.to_string()}]}]
    }]});
    check(
        &plane,
        &ingest,
        Post::json(OtlpHttp, Traces, &marker_span),
        Reply::Accepted,
    )
    .await?;
    plane.wait_for_trace(&viewer, &marker, 1).await?;

    let (status, trace) = plane
        .api_get(&format!("/api/v1/traces/{trace_id}"), &viewer)
        .await?;
    ensure!(status == 200, "trace: {status} {trace}");
    let ids: Vec<&str> = trace["spans"]
        .as_array()
        .context("spans")?
        .iter()
        .filter_map(|span| span["span_id"].as_str())
        .collect();
    ensure!(
        ids.len() == 2 && ids.contains(&root.as_str()) && ids.contains(&child.as_str()),
        "each span once in the trace: {trace}"
    );
    let summaries = plane
        .search_traces(&viewer, &[("service", service.as_str()), ("from", "-1h")])
        .await?;
    ensure!(
        summaries.len() == 1 && summaries[0]["span_count"] == 2,
        "one trace of 2 spans in the search: {summaries:?}"
    );
    let (status, services) = plane
        .api_get_query("/api/v1/services", &[("from", "-1h")], &viewer)
        .await?;
    ensure!(status == 200, "services: {status} {services}");
    let row = services["services"]
        .as_array()
        .context("services")?
        .iter()
        .find(|row| row["service"] == json!(service))
        .with_context(|| format!("no row for {service}: {services}"))?;
    ensure!(
        row["requests"] == 1 && row["errors"] == 1 && row["error_ratio"] == 1.0,
        "the server span sent three times is one request, one error: {row}"
    );
    Ok(())
}

/// `examples/logs.json` of the OTLP specification (open-telemetry/opentelemetry-proto), as published.
const SPEC_LOGS_JSON: &str = r#"{
  "resourceLogs": [
    {
      "resource": {
        "attributes": [
          {
            "key": "service.name",
            "value": {
              "stringValue": "my.service"
            }
          }
        ]
      },
      "scopeLogs": [
        {
          "scope": {
            "name": "my.library",
            "version": "1.0.0",
            "attributes": [
              {
                "key": "my.scope.attribute",
                "value": {
                  "stringValue": "some scope attribute"
                }
              }
            ]
          },
          "logRecords": [
            {
              "timeUnixNano": 1544712660300000000,
              "observedTimeUnixNano": 1544712660300000000,
              "severityText": "Information",
              "traceId": "5B8EFFF798038103D269B633813FC60C",
              "spanId": "EEE19B7EC3C1B174",
              "body": {
                "stringValue": "Example log record"
              },
              "attributes": [
                {
                  "key": "string.attribute",
                  "value": {
                    "stringValue": "some string"
                  }
                },
                {
                  "key": "boolean.attribute",
                  "value": {
                    "boolValue": true
                  }
                },
                {
                  "key": "int.attribute",
                  "value": {
                    "intValue": 10
                  }
                },
                {
                  "key": "double.attribute",
                  "value": {
                    "doubleValue": 637.704
                  }
                },
                {
                  "key": "array.attribute",
                  "value": {
                    "arrayValue": {
                      "values": [
                        {
                          "stringValue": "many"
                        },
                        {
                          "stringValue": "values"
                        }
                      ]
                    }
                  }
                },
                {
                  "key": "map.attribute",
                  "value": {
                    "kvlistValue": {
                      "values": [
                        {
                          "key": "some.map.key",
                          "value": {
                            "stringValue": "some value"
                          }
                        }
                      ]
                    }
                  }
                }
              ]
            }
          ]
        }
      ]
    }
  ]
}"#;

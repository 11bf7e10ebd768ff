//! OTLP/JSON as real senders write it, through the real plane and agent: every form the proto3 JSON mapping allows is
//! read (numbers and 64-bit integers as strings, enum names, snake_case keys, `"NaN"`), a value that cannot be read
//! is a 400 naming its field, and a value that cannot be stored is rejected on its own, for its real reason. Never a
//! silent 0, never a silent drop.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::harness::api::Port::{Http, OtlpHttp};
use crate::harness::api::Signal::{Logs, Metrics, Traces};
use crate::harness::api::{CT_JSON, SEARCH_TIMEOUT, http_client, json_i64, values, wait_until};
use crate::harness::exchange::Reply::{Accepted, InvalidNaming, RejectedFor};
use crate::harness::exchange::{Post, check};
use crate::harness::otlp::{hex, now_nanos, random_span_id, random_trace_id};
use crate::harness::process::{Agent, Plane, fresh_plane};
use crate::harness::unique;

/// The path of the first data point of the first metric.
const POINT: &str = "at resourceMetrics[0].scopeMetrics[0].metrics[0].gauge.dataPoints[0]";
/// The path of the first log record.
const RECORD: &str = "at resourceLogs[0].scopeLogs[0].logRecords[0]";
/// The path of the first span.
const SPAN: &str = "at resourceSpans[0].scopeSpans[0].spans[0]";

fn resource(service: &str) -> Value {
    json!({"attributes": [{"key": "service.name", "value": {"stringValue": service}}]})
}

fn metrics_body(service: &str, metric: Value) -> Value {
    json!({"resourceMetrics": [{"resource": resource(service), "scopeMetrics": [{"metrics": [metric]}]}]})
}

fn logs_body(service: &str, record: Value) -> Value {
    json!({"resourceLogs": [{"resource": resource(service), "scopeLogs": [{"logRecords": [record]}]}]})
}

fn traces_body(service: &str, span: Value) -> Value {
    json!({"resourceSpans": [{"resource": resource(service), "scopeSpans": [{"spans": [span]}]}]})
}

/// Every point value of metric `name` in the last hour, with `agg`.
async fn stored(plane: &Plane, viewer: &str, name: &str, agg: &str) -> Result<Vec<f64>> {
    let query = [("name", name), ("agg", agg), ("from", "-1h")];
    Ok(values(&plane.query_metrics(viewer, &query).await?))
}

/// Waits until metric `name` has `n` point values in the last hour; returns them.
async fn wait_stored(plane: &Plane, viewer: &str, name: &str, n: usize) -> Result<Vec<f64>> {
    wait_until(SEARCH_TIMEOUT, &format!("{n} values of {name}"), || async {
        let got = stored(plane, viewer, name, "max").await?;
        Ok((got.len() >= n).then_some(got))
    })
    .await
}

#[tokio::test]
async fn json_values_are_read_refused_by_field_or_rejected_for_their_reason() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let svc = unique("jsonvals");
    let run = unique("jv");
    let now = now_nanos();
    let (t, t1) = (now.to_string(), (now - 1_000_000_000).to_string());
    let name = |what: &str| format!("{run}_{what}");
    let gauge = |what: &str, points: Value| {
        let metric = json!({"name": name(what), "gauge": {"dataPoints": points}});
        Post::json(OtlpHttp, Metrics, &metrics_body(&svc, metric))
    };
    let point = |value: Value| json!([{"timeUnixNano": t, "asDouble": value}]);
    let int = |value: Value| json!([{"timeUnixNano": t, "asInt": value}]);
    let metric = |metric: Value| Post::json(Http, Metrics, &metrics_body(&svc, metric));
    let sum = |what: &str, temporality: Value| {
        metric(json!({"name": name(what), "sum": {
            "aggregationTemporality": temporality, "isMonotonic": true,
            "dataPoints": [{"startTimeUnixNano": t1, "timeUnixNano": t, "asInt": "7"}]}}))
    };
    let word = unique("jsonword");
    let log = |record: Value| Post::json(OtlpHttp, Logs, &logs_body(&svc, record));
    let trace_id = hex(&random_trace_id());
    let span = |fields: Value| {
        let mut span = json!({"traceId": trace_id, "spanId": hex(&random_span_id()), "name": "GET /x",
                              "startTimeUnixNano": now - 2_000_000, "endTimeUnixNano": t});
        span.as_object_mut()
            .expect("an object")
            .extend(fields.as_object().expect("an object").clone());
        Post::json(Http, Traces, &traces_body(&svc, span))
    };
    let not_a_value = "data points rejected: 1 with a value that cannot be stored";

    // Values that cannot be read: a 400 naming the field, for every kind of field of every signal. Sent first, so
    // that once the accepted batches below are searchable, these would be too had they been stored.
    let refused = [
        (gauge("bad_double", point(json!("abc"))), format!("{POINT}.asDouble: \"abc\" is not a number")),
        (gauge("bad_nan", point(json!("nan"))), format!("{POINT}.asDouble: \"nan\" is not a number")),
        (gauge("bad_int", int(json!("abc"))), format!("{POINT}.asInt: \"abc\" is not a 64-bit integer")),
        (gauge("bad_fraction", int(json!(1.5))), format!("{POINT}.asInt: 1.5 is not a 64-bit integer")),
        (gauge("bad_range", int(json!("9223372036854775808"))), format!("{POINT}.asInt: 9223372036854775808 is out of range")),
        (gauge("bad_both", json!([{"timeUnixNano": t, "asInt": 1, "asDouble": 1}])), format!("{POINT}: `asInt` and `asDouble` are both set, but they are alternatives")),
        (gauge("bad_time", json!([{"timeUnixNano": "now", "asInt": 1}])), format!("{POINT}.timeUnixNano: \"now\" is not an unsigned 64-bit integer")),
        (gauge("bad_flags", json!([{"timeUnixNano": t, "asInt": 1, "flags": -1}])), format!("{POINT}.flags: -1 is out of range")),
        (gauge("bad_exemplar", json!([{"timeUnixNano": t, "asInt": 1, "exemplars": [{"asInt": "x"}]}])), format!("{POINT}.exemplars[0].asInt: \"x\" is not")),
        (sum("bad_enum", json!("DELTA")), "metrics[0].sum.aggregationTemporality: \"DELTA\" is not a value of AggregationTemporality".into()),
        (sum("bad_enum_text", json!("1")), "metrics[0].sum.aggregationTemporality: \"1\" is not a value".into()),
        (metric(json!({"name": name("bad_kinds"), "gauge": {}, "sum": {}})), "metrics[0]: `sum` and `gauge` are both set".into()),
        (metric(json!({"name": name("bad_bounds"), "histogram": {"dataPoints": [{"timeUnixNano": t, "explicitBounds": ["x"]}]}})), "histogram.dataPoints[0].explicitBounds[0]: \"x\" is not a number".into()),
        (log(json!({"timeUnixNano": t, "severityNumber": "LOUD"})), format!("{RECORD}.severityNumber: \"LOUD\" is not a value of SeverityNumber")),
        (log(json!({"timeUnixNano": t, "body": {"intValue": "abc"}})), format!("{RECORD}.body.intValue: \"abc\" is not a 64-bit integer")),
        (log(json!({"timeUnixNano": "yesterday"})), format!("{RECORD}.timeUnixNano: \"yesterday\" is not")),
        (log(json!({"timeUnixNano": t, "traceId": "xyz"})), format!("{RECORD}.traceId: \"xyz\" is not a hex id")),
        (log(json!({"timeUnixNano": t, "attributes": [{"key": "k", "value": {"boolValue": "yes"}}]})), format!("{RECORD}.attributes[0].value.boolValue")),
        (span(json!({"kind": "client"})), format!("{SPAN}.kind: \"client\" is not a value of SpanKind")),
        (span(json!({"status": {"code": "ERROR"}})), format!("{SPAN}.status.code: \"ERROR\" is not a value of StatusCode")),
        (span(json!({"parentSpanId": "123"})), format!("{SPAN}.parentSpanId: \"123\" is not a hex id")),
        (span(json!({"events": [{"timeUnixNano": 1.5}]})), format!("{SPAN}.events[0].timeUnixNano: 1.5 is not")),
    ];
    for (post, naming) in refused {
        check(&plane, &ingest, post, InvalidNaming(naming.leak())).await?;
    }

    // Values that can be read: every form proto3 JSON allows.
    let snake = json!({"resource_logs": [{"resource": resource(&svc), "scope_logs": [{"log_records": [{
        "time_unix_nano": t, "severity_number": "SEVERITY_NUMBER_INFO",
        "body": {"string_value": format!("{word} snake")}}]}]}]});
    let accepted = [
        gauge("str_double", point(json!("1.5"))),
        gauge("exp_double", point(json!("-2.5e3"))),
        gauge("str_int", int(json!("42"))),
        gauge("js_time", json!([{"timeUnixNano": now as f64, "asInt": 3}])),
        sum("delta", json!("AGGREGATION_TEMPORALITY_DELTA")),
        sum("numeric_delta", json!(1)),
        log(
            json!({"timeUnixNano": t, "severityNumber": "SEVERITY_NUMBER_WARN",
                   "body": {"stringValue": format!("{word} camel")},
                   "attributes": [{"key": "ratio", "value": {"doubleValue": "2.5"}},
                                  {"key": "count", "value": {"intValue": 42}}]}),
        ),
        Post::json(Http, Logs, &snake),
        span(
            json!({"kind": "SPAN_KIND_CLIENT", "status": {"code": "STATUS_CODE_ERROR", "message": "boom"}}),
        ),
    ];
    for post in accepted {
        check(&plane, &ingest, post, Accepted).await?;
    }

    // Values that are read but cannot be stored: rejected one by one, for that reason and not the time's.
    let rejected = [
        (
            gauge(
                "nan",
                json!([{"timeUnixNano": t1, "asDouble": "NaN"}, {"timeUnixNano": t, "asDouble": 2.5}]),
            ),
            1,
            not_a_value.to_owned(),
        ),
        (
            gauge(
                "inf",
                json!([{"timeUnixNano": t1, "asDouble": "Infinity"}, {"timeUnixNano": t1, "asDouble": "-Infinity"}, {"timeUnixNano": t, "asInt": "5"}]),
            ),
            2,
            "data points rejected: 2 with a value that cannot be stored".to_owned(),
        ),
        (
            gauge(
                "no_value",
                json!([{"timeUnixNano": t1}, {"timeUnixNano": t, "asDouble": 4}]),
            ),
            1,
            not_a_value.to_owned(),
        ),
        (
            gauge(
                "misspelt",
                json!([{"timeUnixNano": t1, "asdouble": 8}, {"timeUnixNano": t, "asDouble": 6}]),
            ),
            1,
            not_a_value.to_owned(),
        ),
        (
            metric(
                json!({"name": name("hist_nan"), "histogram": {"aggregationTemporality": "AGGREGATION_TEMPORALITY_DELTA", "dataPoints": [{"timeUnixNano": t, "count": "1", "sum": "NaN", "bucketCounts": ["1"]}]}}),
            ),
            1,
            not_a_value.to_owned(),
        ),
        (
            metric(
                json!({"name": name("no_kind"), "gague": {"dataPoints": [{"timeUnixNano": t, "asDouble": 1}]}}),
            ),
            1,
            not_a_value.to_owned(),
        ),
    ];
    for (post, n, why) in rejected {
        check(&plane, &ingest, post, RejectedFor(n, why.leak())).await?;
    }

    // What was stored is what was sent: 1.5 for "1.5", and no 0 for a value that could not be stored.
    for (what, agg, want) in [
        ("str_double", "max", vec![1.5]),
        ("exp_double", "max", vec![-2500.0]),
        ("str_int", "max", vec![42.0]),
        ("js_time", "max", vec![3.0]),
        ("delta", "sum", vec![7.0]),
        ("numeric_delta", "sum", vec![7.0]),
        ("nan", "max", vec![2.5]),
        ("inf", "max", vec![5.0]),
        ("no_value", "max", vec![4.0]),
        ("misspelt", "max", vec![6.0]),
    ] {
        wait_stored(&plane, &viewer, &name(what), 1).await?;
        let got = stored(&plane, &viewer, &name(what), agg).await?;
        ensure!(got == want, "{what}: stored {got:?}, sent {want:?}");
    }
    let hits = plane.wait_for_logs(&viewer, &word, 2).await?;
    let camel = hits
        .iter()
        .find(|h| h["body"].as_str().is_some_and(|b| b.ends_with("camel")))
        .with_context(|| format!("the camelCase record: {hits:?}"))?;
    ensure!(camel["severity_number"] == 13, "{camel}");
    ensure!(
        camel["attributes"]["ratio"].as_f64() == Some(2.5),
        "{camel}"
    );
    ensure!(
        json_i64(&camel["attributes"]["count"]) == Some(42),
        "{camel}"
    );
    let snake = hits
        .iter()
        .find(|h| h["body"].as_str().is_some_and(|b| b.ends_with("snake")))
        .with_context(|| format!("the snake_case record: {hits:?}"))?;
    ensure!(snake["severity_number"] == 9, "{snake}");
    let trace = plane.wait_for_trace(&viewer, &trace_id, 1).await?;
    let stored_span = &trace["spans"][0];
    ensure!(
        stored_span["kind"] == "client" && stored_span["status"] == "error",
        "{trace}"
    );
    // Nothing refused was stored.
    for what in [
        "bad_double",
        "bad_int",
        "bad_enum",
        "bad_kinds",
        "bad_bounds",
    ] {
        let got = stored(&plane, &viewer, &name(what), "max").await?;
        ensure!(got.is_empty(), "{what} was refused, yet stored {got:?}");
    }

    // The rejection counter gives the real reason.
    let counters = plane.self_metrics(&viewer).await?;
    let rejected = |reason: &str| rejected_records(&counters, "metrics", reason);
    ensure!(
        rejected("invalid_value") == 7.0 && rejected("timestamp") == 0.0,
        "7 points rejected as invalid values, none for their time: {counters:?}"
    );
    Ok(())
}

/// The agent's local OTLP/HTTP receiver reads JSON by the same rules: `"1.5"` arrives at the plane as 1.5, and a
/// value that cannot be read is the agent's 400, naming the field, before anything is buffered.
#[tokio::test]
async fn json_through_the_agent() -> Result<()> {
    let (tmp, plane, ingest, viewer) = fresh_plane().await?;
    let agent = Agent::start(
        &tmp.path().join("agent"),
        &format!("http://{}", plane.endpoints.http),
        &ingest,
        &[],
    )
    .await?;
    let receiver = format!("http://{}/v1/metrics", agent.endpoint("otlp_http")?);
    let svc = unique("jsonagent");
    let name = unique("agent_gauge_");
    let now = now_nanos().to_string();
    let gauge = |value: Value| {
        metrics_body(
            &svc,
            json!({"name": name, "gauge": {"dataPoints": [{"timeUnixNano": now, "asDouble": value}]}}),
        )
    };
    for (body, status, naming) in [
        (
            gauge(json!("abc")),
            400,
            format!("{POINT}.asDouble: \"abc\" is not a number"),
        ),
        (gauge(json!("1.5")), 200, String::new()),
    ] {
        let response = http_client()
            .post(&receiver)
            .header("content-type", CT_JSON)
            .body(body.to_string())
            .send()
            .await?;
        ensure!(response.status() == status, "{body}: {}", response.status());
        let answer: Value = response.json().await?;
        if status == 400 {
            let message = answer["message"].as_str().unwrap_or_default();
            ensure!(answer["code"] == 3 && message.contains(&naming), "{answer}");
        }
    }
    let got = wait_stored(&plane, &viewer, &name, 1).await?;
    ensure!(got == [1.5], "the agent relayed {got:?} for \"1.5\"");
    Ok(())
}

/// A span whose trace id is not 16 bytes or whose span id is not 8 (or either is all zeros) is rejected on its own,
/// as an `invalid_id`, over OTLP/JSON and protobuf alike; a log record may omit its ids but not mangle them. The
/// well-formed span sent beside them is stored.
#[tokio::test]
async fn malformed_trace_and_span_ids_are_rejected_one_by_one() -> Result<()> {
    use crate::harness::otlp::{log_record, logs_request, make_span, traces_request};
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let svc = unique("badids");
    let now = now_nanos();
    let why = "with an invalid trace or span id";
    let good_trace = random_trace_id();
    let span = |trace: &[u8], id: &[u8], parent: &[u8]| {
        make_span(
            trace,
            id,
            parent,
            "GET /ids",
            SpanKind::Server,
            now,
            now + 1_000_000,
            1,
        )
    };
    let id = random_span_id();
    let bad_spans = [
        ("a 3-byte trace id", span(&[1, 2, 3], &id, &[])),
        ("a 32-byte trace id", span(&[7; 32], &id, &[])),
        ("no trace id", span(&[], &id, &[])),
        ("an all-zero trace id", span(&[0; 16], &id, &[])),
        ("a 4-byte span id", span(&good_trace, &[9; 4], &[])),
        ("an all-zero span id", span(&good_trace, &[0; 8], &[])),
        ("a 16-byte parent span id", span(&good_trace, &id, &[5; 16])),
    ];
    for (what, bad) in &bad_spans {
        let fine = span(&good_trace, &random_span_id(), &[]);
        let request = traces_request(&svc, vec![bad.clone(), fine]);
        check(
            &plane,
            &ingest,
            Post::protobuf(OtlpHttp, Traces, &request),
            RejectedFor(1, why),
        )
        .await
        .with_context(|| format!("protobuf, {what}"))?;
    }
    // The same through OTLP/JSON, where ids are hex.
    for (what, trace_id, span_id) in [
        ("a 3-byte trace id", "010203", hex(&id)),
        ("an 8-byte trace id", "0102030405060708", hex(&id)),
        ("a 2-byte span id", &*hex(&good_trace), "abcd".to_owned()),
    ] {
        let body = traces_body(
            &svc,
            json!({"traceId": trace_id, "spanId": span_id, "name": "GET /ids", "kind": 2,
                   "startTimeUnixNano": now.to_string(), "endTimeUnixNano": (now + 1).to_string()}),
        );
        check(
            &plane,
            &ingest,
            Post::json(OtlpHttp, Traces, &body),
            RejectedFor(1, why),
        )
        .await
        .with_context(|| format!("JSON, {what}"))?;
    }
    // Log records: no ids is fine, a wrong length is not.
    let mut with_ids = log_record(&format!("{svc} has ids"), now, vec![]);
    with_ids.trace_id = good_trace.clone();
    with_ids.span_id = id.clone();
    let mut mangled = log_record(&format!("{svc} mangled"), now, vec![]);
    mangled.trace_id = vec![1, 2, 3];
    let plain = log_record(&format!("{svc} plain"), now, vec![]);
    let request = logs_request(&svc, vec![with_ids, mangled, plain]);
    check(
        &plane,
        &ingest,
        Post::protobuf(OtlpHttp, Logs, &request),
        RejectedFor(1, why),
    )
    .await
    .context("log records")?;

    // What was kept is there: every well-formed span of the trace, and the two good log records.
    plane
        .wait_for_trace(&viewer, &hex(&good_trace), bad_spans.len())
        .await?;
    plane.wait_for_logs(&viewer, &svc, 2).await?;
    let counters = plane.self_metrics(&viewer).await?;
    let invalid_ids = |signal: &str| rejected_records(&counters, signal, "invalid_id");
    ensure!(
        invalid_ids("traces") == (bad_spans.len() + 3) as f64 && invalid_ids("logs") == 1.0,
        "every malformed id counted once, as invalid_id: {counters:?}"
    );
    Ok(())
}

/// `gantry_ingest_rejected_records_total` of `signal` and `reason` in the plane's `/metrics` samples.
fn rejected_records(
    counters: &std::collections::BTreeMap<String, f64>,
    signal: &str,
    reason: &str,
) -> f64 {
    counters
        .iter()
        .filter(|(k, _)| {
            k.starts_with("gantry_ingest_rejected_records_total{")
                && k.contains(&format!("signal=\"{signal}\""))
                && k.contains(&format!("reason=\"{reason}\""))
        })
        .map(|(_, v)| *v)
        .sum()
}

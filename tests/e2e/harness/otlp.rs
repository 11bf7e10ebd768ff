//! OTLP fixtures: log records, spans and metric points and the export requests that carry them, trace and span
//! ids, timestamps, gzip, and bytes that are not protobuf.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};

/// Bytes that are not a valid protobuf message: field 1, length-delimited, claiming far more
/// bytes than follow.
pub const BAD_PROTOBUF: &[u8] = &[0x0a, 0xff, 0xff, 0xff, 0x7f, 0x01, 0x02];

pub const HOUR_NANOS: u64 = 3_600 * 1_000_000_000;
pub const DAY_NANOS: u64 = 24 * HOUR_NANOS;

pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

/// RFC3339 with nanoseconds, UTC, for a unix-nanosecond timestamp.
pub fn rfc3339(unix_nano: u64) -> String {
    chrono::DateTime::from_timestamp(
        (unix_nano / 1_000_000_000) as i64,
        (unix_nano % 1_000_000_000) as u32,
    )
    .expect("timestamp in range")
    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

pub fn random_trace_id() -> Vec<u8> {
    rand::random::<[u8; 16]>().to_vec()
}

pub fn random_span_id() -> Vec<u8> {
    rand::random::<[u8; 8]>().to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip into a Vec");
    enc.finish().expect("gzip into a Vec")
}

fn str_value(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_string())),
    }
}

pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(str_value(value)),
        ..Default::default()
    }
}

pub fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

fn resource(service: &str) -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", service),
            kv("service.version", "0.0.1-test"),
        ],
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "gantry-e2e".into(),
        version: "1".into(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

/// An INFO log record.
pub fn log_record(body: &str, time_unix_nano: u64, attributes: Vec<KeyValue>) -> LogRecord {
    LogRecord {
        time_unix_nano,
        observed_time_unix_nano: time_unix_nano,
        severity_number: 9,
        severity_text: "INFO".into(),
        body: Some(str_value(body)),
        attributes,
        ..Default::default()
    }
}

/// A log record with a given severity number and text.
pub fn log_with_severity(
    body: &str,
    time_unix_nano: u64,
    severity_number: i32,
    severity_text: &str,
    attributes: Vec<KeyValue>,
) -> LogRecord {
    LogRecord {
        severity_number,
        severity_text: severity_text.into(),
        ..log_record(body, time_unix_nano, attributes)
    }
}

pub fn logs_request(service: &str, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource(service)),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A logs request with one resource per `(resource attributes, records)` group.
pub fn logs_request_multi(
    groups: Vec<(Vec<KeyValue>, Vec<LogRecord>)>,
) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: groups
            .into_iter()
            .map(|(attributes, records)| ResourceLogs {
                resource: Some(Resource {
                    attributes,
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope()),
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Traces
// ---------------------------------------------------------------------------------------------

/// A span; `status_code` 0 unset, 1 ok, 2 error; `kind` as the OTLP enum (2 = server).
#[allow(clippy::too_many_arguments)]
pub fn make_span(
    trace_id: &[u8],
    span_id: &[u8],
    parent_span_id: &[u8],
    name: &str,
    kind: span::SpanKind,
    start: u64,
    end: u64,
    status_code: i32,
) -> Span {
    Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        parent_span_id: parent_span_id.to_vec(),
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        status: Some(Status {
            code: status_code,
            message: if status_code == 2 {
                "boom".into()
            } else {
                String::new()
            },
        }),
        ..Default::default()
    }
}

pub fn traces_request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource(service)),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

pub fn number_point(value: f64, time_unix_nano: u64, attributes: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: time_unix_nano.saturating_sub(1_000_000_000),
        time_unix_nano,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    }
}

pub fn gauge_metric(name: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: "1".into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: points,
        })),
        ..Default::default()
    }
}

/// A monotonic cumulative sum (a counter).
pub fn counter_metric(name: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: "1".into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

pub fn metrics_request(service: &str, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(service)),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

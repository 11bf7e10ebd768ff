//! The rows every store keeps, converted from OTLP: log records, spans and metric points; and ([`screen`]) the rules
//! that reject an item one by one before it is stored.

mod screen;

use screen::EXPONENTIAL_SCALES;
pub use screen::{Acceptance, Rejections, screen, stamp_missing_times};

use std::collections::BTreeMap;

use gantry_proto::{Attributes, LogRecord, SpanRecord};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde::{Deserialize, Serialize};

use gantry_proto::ExportRequest;

/// The kind of a metric point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// A gauge.
    Gauge,
    /// A sum (counter or up-down counter).
    Sum,
    /// An explicit-bucket histogram (exponential ones are converted).
    Histogram,
    /// A summary, stored as its sum and count.
    Summary,
}

/// Histogram detail of a point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramData {
    /// Upper bounds of the buckets but the last.
    pub bounds: Vec<f64>,
    /// Count per bucket (`bounds.len() + 1`).
    pub counts: Vec<u64>,
    /// Total count.
    pub count: u64,
}

/// One metric data point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    /// Metric name.
    pub name: String,
    /// Gauge, sum, histogram or summary.
    pub kind: MetricKind,
    /// Whether values accumulate from a start time (cumulative) rather than per interval (delta).
    pub cumulative: bool,
    /// Point time, ns.
    pub ts_ns: i64,
    /// The value; for histograms and summaries, the sum of observations.
    pub value: f64,
    /// `service.name` of the resource.
    pub service: String,
    /// Point attributes.
    pub attributes: Attributes,
    /// Resource attributes.
    pub resource: Attributes,
    /// Bucket detail of histograms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub histogram: Option<HistogramData>,
}

/// The rows of one request, and how many records were rejected one by one.
#[derive(Debug, Default)]
pub struct Rows {
    /// Log records.
    pub logs: Vec<LogRecord>,
    /// `bodies[i]` is the body of `logs[i]` as a JSON map when it was sent as a map (`kvlistValue`), else `None`.
    pub bodies: Vec<Option<serde_json::Value>>,
    /// Spans.
    pub spans: Vec<SpanRecord>,
    /// Metric points.
    pub points: Vec<MetricPoint>,
    /// Records rejected (timestamp outside the accepted window).
    pub rejected: u64,
}

/// A log record's time: its time, else its observed time, else `now_ns`.
pub(crate) fn log_time(time: u64, observed: u64, now_ns: i64) -> i64 {
    match (time, observed) {
        (0, 0) => now_ns,
        (0, observed) => observed as i64,
        (time, _) => time as i64,
    }
}

/// Converts a request into rows, dropping (and counting) records outside the window.
pub fn convert(request: &ExportRequest, window: &Acceptance, now_ns: i64) -> Rows {
    let mut rows = Rows::default();
    match request {
        ExportRequest::Logs(request) => {
            for resource_logs in &request.resource_logs {
                let resource = resource_attributes(resource_logs.resource.as_ref());
                let service = service_name(&resource);
                for log in resource_logs.scope_logs.iter().flat_map(|s| &s.log_records) {
                    let ts = log_time(log.time_unix_nano, log.observed_time_unix_nano, now_ns);
                    if !window.accepts(ts) {
                        rows.rejected += 1;
                        continue;
                    }
                    let severity_number = log.severity_number.clamp(0, 24) as u8;
                    rows.logs.push(LogRecord {
                        timestamp: rfc3339(ts),
                        timestamp_unix_nano: ts,
                        severity: if log.severity_text.is_empty() {
                            severity_name(severity_number).to_owned()
                        } else {
                            log.severity_text.clone()
                        },
                        severity_number,
                        service: service.clone(),
                        body: log.body.as_ref().map(any_to_text).unwrap_or_default(),
                        attributes: attributes(&log.attributes),
                        resource: resource.clone(),
                        trace_id: hex::encode(&log.trace_id),
                        span_id: hex::encode(&log.span_id),
                    });
                    rows.bodies.push(structured_body(log.body.as_ref()));
                }
            }
        }
        ExportRequest::Traces(request) => {
            for resource_spans in &request.resource_spans {
                let resource = resource_attributes(resource_spans.resource.as_ref());
                let service = service_name(&resource);
                let version = resource
                    .get("service.version")
                    .map(value_text)
                    .unwrap_or_default();
                for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
                    let start = span.start_time_unix_nano as i64;
                    if !window.accepts(start) {
                        rows.rejected += 1;
                        continue;
                    }
                    let end = (span.end_time_unix_nano as i64).max(start);
                    let status = span.status.as_ref();
                    rows.spans.push(SpanRecord {
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent_span_id: hex::encode(&span.parent_span_id),
                        name: span.name.clone(),
                        service: service.clone(),
                        version: version.clone(),
                        kind: span_kind_name(span.kind).to_owned(),
                        start_unix_nano: start,
                        end_unix_nano: end,
                        duration_ms: (end - start) as f64 / 1e6,
                        status: status_name(status.map_or(0, |s| s.code)).to_owned(),
                        status_message: status.map(|s| s.message.clone()).unwrap_or_default(),
                        attributes: attributes(&span.attributes),
                        resource: resource.clone(),
                    });
                }
            }
        }
        ExportRequest::Metrics(request) => {
            for resource_metrics in &request.resource_metrics {
                let resource = resource_attributes(resource_metrics.resource.as_ref());
                let service = service_name(&resource);
                for metric in resource_metrics
                    .scope_metrics
                    .iter()
                    .flat_map(|s| &s.metrics)
                {
                    let mut push =
                        |kind,
                         cumulative,
                         ts: u64,
                         value: f64,
                         attrs: &[KeyValue],
                         histogram: Option<HistogramData>| {
                            let ts = ts as i64;
                            let storable = value.is_finite()
                                && histogram.as_ref().is_none_or(|h: &HistogramData| {
                                    h.bounds.iter().all(|b| b.is_finite())
                                });
                            if !window.accepts(ts) || !storable {
                                rows.rejected += 1;
                                return;
                            }
                            rows.points.push(MetricPoint {
                                name: metric.name.clone(),
                                kind,
                                cumulative,
                                ts_ns: ts,
                                value,
                                service: service.clone(),
                                attributes: attributes(attrs),
                                resource: resource.clone(),
                                histogram,
                            });
                        };
                    let cumulative = |temporality: i32| temporality == 2;
                    match &metric.data {
                        Some(Data::Gauge(gauge)) => {
                            for p in &gauge.data_points {
                                push(
                                    MetricKind::Gauge,
                                    false,
                                    p.time_unix_nano,
                                    number(&p.value),
                                    &p.attributes,
                                    None,
                                );
                            }
                        }
                        Some(Data::Sum(sum)) => {
                            let cumulative = cumulative(sum.aggregation_temporality);
                            for p in &sum.data_points {
                                push(
                                    MetricKind::Sum,
                                    cumulative,
                                    p.time_unix_nano,
                                    number(&p.value),
                                    &p.attributes,
                                    None,
                                );
                            }
                        }
                        Some(Data::Histogram(histogram)) => {
                            let cumulative = cumulative(histogram.aggregation_temporality);
                            for p in &histogram.data_points {
                                let data = HistogramData {
                                    bounds: p.explicit_bounds.clone(),
                                    counts: p.bucket_counts.clone(),
                                    count: p.count,
                                };
                                let sum = p.sum.unwrap_or(0.0);
                                push(
                                    MetricKind::Histogram,
                                    cumulative,
                                    p.time_unix_nano,
                                    sum,
                                    &p.attributes,
                                    Some(data),
                                );
                            }
                        }
                        Some(Data::ExponentialHistogram(histogram)) => {
                            let cumulative = cumulative(histogram.aggregation_temporality);
                            for p in &histogram.data_points {
                                if !EXPONENTIAL_SCALES.contains(&p.scale) {
                                    // Refused like a non-finite value: counted as rejected.
                                    push(
                                        MetricKind::Histogram,
                                        cumulative,
                                        p.time_unix_nano,
                                        f64::NAN,
                                        &p.attributes,
                                        None,
                                    );
                                    continue;
                                }
                                let data = exponential_to_explicit(
                                    p.scale,
                                    p.zero_count,
                                    p.positive.as_ref(),
                                    p.count,
                                );
                                let sum = p.sum.unwrap_or(0.0);
                                push(
                                    MetricKind::Histogram,
                                    cumulative,
                                    p.time_unix_nano,
                                    sum,
                                    &p.attributes,
                                    Some(data),
                                );
                            }
                        }
                        Some(Data::Summary(summary)) => {
                            for p in &summary.data_points {
                                push(
                                    MetricKind::Summary,
                                    true,
                                    p.time_unix_nano,
                                    p.sum,
                                    &p.attributes,
                                    None,
                                );
                            }
                        }
                        None => {}
                    }
                }
            }
        }
    }
    rows
}

/// Positive buckets of an exponential histogram as explicit upper bounds (negative values fold into the first bucket).
fn exponential_to_explicit(
    scale: i32,
    zero_count: u64,
    positive: Option<
        &opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets,
    >,
    count: u64,
) -> HistogramData {
    let base = 2f64.powf(2f64.powi(-scale));
    let mut bounds = vec![0.0];
    let mut counts = vec![zero_count];
    if let Some(positive) = positive {
        for (i, n) in positive.bucket_counts.iter().enumerate() {
            let exponent = positive
                .offset
                .saturating_add(i32::try_from(i).unwrap_or(i32::MAX))
                .saturating_add(1);
            bounds.push(base.powi(exponent));
            counts.push(*n);
        }
    }
    let listed = counts
        .iter()
        .fold(0u64, |total, n| total.saturating_add(*n));
    counts[0] = counts[0].saturating_add(count.saturating_sub(listed));
    counts.push(0);
    HistogramData {
        bounds,
        counts,
        count,
    }
}

/// A number data point's value as a float (0 when unset).
pub(crate) fn number(value: &Option<number_data_point::Value>) -> f64 {
    match value {
        Some(number_data_point::Value::AsDouble(v)) => *v,
        Some(number_data_point::Value::AsInt(v)) => *v as f64,
        None => 0.0,
    }
}

fn resource_attributes(resource: Option<&Resource>) -> Attributes {
    resource
        .map(|r| attributes(&r.attributes))
        .unwrap_or_default()
}

fn service_name(resource: &Attributes) -> String {
    resource
        .get("service.name")
        .map(value_text)
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown_service".to_owned())
}

/// OTLP attributes as a JSON map.
pub fn attributes(kvs: &[KeyValue]) -> Attributes {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value
                    .as_ref()
                    .map_or(serde_json::Value::Null, any_to_json),
            )
        })
        .collect()
}

fn any_to_json(value: &AnyValue) -> serde_json::Value {
    use serde_json::Value as J;
    match &value.value {
        Some(any_value::Value::StringValue(s)) => J::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => J::Bool(*b),
        Some(any_value::Value::IntValue(i)) => J::from(*i),
        Some(any_value::Value::DoubleValue(d)) => {
            serde_json::Number::from_f64(*d).map_or(J::Null, J::Number)
        }
        Some(any_value::Value::ArrayValue(array)) => {
            J::Array(array.values.iter().map(any_to_json).collect())
        }
        Some(any_value::Value::KvlistValue(list)) => J::Object(
            list.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value.as_ref().map_or(J::Null, any_to_json),
                    )
                })
                .collect(),
        ),
        Some(any_value::Value::BytesValue(bytes)) => {
            use base64::Engine;
            J::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        _ => J::Null,
    }
}

/// A body sent as a map (`kvlistValue`), as JSON; other bodies are text only.
fn structured_body(body: Option<&AnyValue>) -> Option<serde_json::Value> {
    match body?.value.as_ref()? {
        any_value::Value::KvlistValue(_) => body.map(any_to_json),
        _ => None,
    }
}

fn any_to_text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        _ => value_text(&any_to_json(value)),
    }
}

/// An attribute value as the text that queries match (`key=value` terms, labels).
pub fn value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// OTLP severity number to its short name.
pub fn severity_name(number: u8) -> &'static str {
    match number {
        1..=4 => "TRACE",
        5..=8 => "DEBUG",
        9..=12 => "INFO",
        13..=16 => "WARN",
        17..=20 => "ERROR",
        21..=24 => "FATAL",
        _ => "UNSPECIFIED",
    }
}

/// The range of severity numbers a level name or number stands for (`warn` is 13-16).
pub fn severity_range(text: &str) -> Option<(u8, u8)> {
    if let Ok(number) = text.parse::<u8>() {
        return (number <= 24).then_some((number, number));
    }
    let base = match text.to_ascii_lowercase().as_str() {
        "trace" => 1,
        "debug" => 5,
        "info" | "information" => 9,
        "warn" | "warning" => 13,
        "error" | "err" => 17,
        "fatal" | "critical" | "crit" => 21,
        _ => return None,
    };
    Some((base, base + 3))
}

fn span_kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

fn status_name(code: i32) -> &'static str {
    match code {
        1 => "ok",
        2 => "error",
        _ => "unset",
    }
}

/// RFC 3339 with nanoseconds, UTC.
pub fn rfc3339(ts_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ts_ns)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Labels of a point as flat text, resource attributes first and point attributes winning on a clash.
pub fn point_labels(point: &MetricPoint) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = point
        .resource
        .iter()
        .map(|(k, v)| (k.clone(), value_text(v)))
        .collect();
    labels.extend(
        point
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), value_text(v))),
    );
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_names_and_ranges() {
        for (text, expected) in [
            ("warn", Some((13, 16))),
            ("ERROR", Some((17, 20))),
            ("9", Some((9, 9))),
            ("loud", None),
        ] {
            assert_eq!(severity_range(text), expected, "{text}");
        }
        assert_eq!(severity_name(17), "ERROR");
    }

    #[test]
    fn exponential_buckets_become_explicit() {
        let positive =
            opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets {
                offset: 0,
                bucket_counts: vec![1, 2],
            };
        let data = exponential_to_explicit(0, 1, Some(&positive), 4);
        assert_eq!(data.bounds, vec![0.0, 2.0, 4.0]);
        assert_eq!(data.counts, vec![1, 1, 2, 0]);
    }
}

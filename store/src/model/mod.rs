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
                    let severity_number = match log.severity_number.clamp(0, 24) as u8 {
                        0 => severity_from_text(&log.severity_text),
                        number => number,
                    };
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
                        trace_id: optional_id(&log.trace_id),
                        span_id: optional_id(&log.span_id),
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
                        events: span
                            .events
                            .iter()
                            .map(|event| gantry_proto::SpanEvent {
                                time_unix_nano: event.time_unix_nano as i64,
                                name: event.name.clone(),
                                attributes: attributes(&event.attributes),
                            })
                            .collect(),
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
                                let data = exponential_to_explicit(p);
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

/// The bound between buckets `index - 1` and `index` of an exponential histogram of `scale`: `base^index` with
/// `base = 2^(2^-scale)`, computed as `2^(index * 2^-scale)` so that large indexes lose no precision to repeated
/// multiplication (OTel metrics data model, "ExponentialHistogram": bucket `index` covers `(base^index,
/// base^(index+1)]`).
fn exponential_bound(index: i64, scale: i32) -> f64 {
    (index as f64 * (-f64::from(scale)).exp2()).exp2()
}

/// An exponential histogram point as explicit buckets, per the OTel data model: positive bucket `i` covers
/// `(base^(offset+i), base^(offset+i+1)]`, negative bucket `i` covers `[-base^(offset+i+1), -base^(offset+i))`, and
/// the zero bucket `[-zero_threshold, zero_threshold]`. The intervals are laid out in ascending order; gaps between
/// them become empty buckets, and the first bucket (`(-inf, lowest bound]`) is empty, so a quantile interpolates
/// inside the interval that holds it. A count beyond the buckets listed is put in the zero bucket.
pub fn exponential_to_explicit(
    point: &opentelemetry_proto::tonic::metrics::v1::ExponentialHistogramDataPoint,
) -> HistogramData {
    let scale = point.scale;
    let threshold = point.zero_threshold.abs();
    let listed = |buckets: Option<
        &opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets,
    >| {
        buckets.map_or(0u64, |b| {
            b.bucket_counts
                .iter()
                .fold(0u64, |t, n| t.saturating_add(*n))
        })
    };
    let zero_count = point.zero_count.saturating_add(
        point.count.saturating_sub(
            point
                .zero_count
                .saturating_add(listed(point.positive.as_ref()))
                .saturating_add(listed(point.negative.as_ref())),
        ),
    );
    // (lower, upper, count) in ascending order.
    let mut intervals: Vec<(f64, f64, u64)> = Vec::new();
    if let Some(negative) = &point.negative {
        for (i, n) in negative.bucket_counts.iter().enumerate().rev() {
            let index = i64::from(negative.offset) + i as i64;
            intervals.push((
                -exponential_bound(index + 1, scale),
                -exponential_bound(index, scale),
                *n,
            ));
        }
    }
    intervals.push((-threshold, threshold, zero_count));
    if let Some(positive) = &point.positive {
        for (i, n) in positive.bucket_counts.iter().enumerate() {
            let index = i64::from(positive.offset) + i as i64;
            intervals.push((
                exponential_bound(index, scale),
                exponential_bound(index + 1, scale),
                *n,
            ));
        }
    }
    let mut bounds: Vec<f64> = Vec::new();
    let mut counts: Vec<u64> = Vec::new();
    for (lower, upper, n) in intervals {
        if n == 0 {
            continue;
        }
        // Each interval is one explicit bucket (lower, upper]; an empty bucket fills the gap before it (and the
        // first bucket, (-inf, lower], stays empty). The zero bucket of threshold 0 is a bucket of width 0.
        if bounds.last() != Some(&lower) {
            bounds.push(lower);
            counts.push(0);
        }
        bounds.push(upper);
        counts.push(n);
    }
    counts.push(0);
    let count = point.count.max(counts.iter().sum());
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

/// The severity number of a severity text, for records sent with a text and no number (many shippers send only
/// the text): case-insensitive, with the usual aliases (`information`, `notice`, `warning`, `err`, `critical`,
/// `crit`, `emergency`, `alert`, ...) and the numbered forms of the OTel data model (`WARN2` is 14: "SeverityNumber"
/// gives each level four numbers, `INFO` to `INFO4`). 0 (unspecified) when the text names no level.
pub fn severity_from_text(text: &str) -> u8 {
    let text = text.trim();
    let digits = text.len() - text.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (name, step) = text.split_at(text.len() - digits);
    let step = match step {
        "" => 1,
        step => match step.parse::<u8>() {
            Ok(step @ 1..=4) => step,
            _ => return 0,
        },
    };
    match severity_base(name) {
        Some(base) => base + step - 1,
        None => 0,
    }
}

/// The first severity number of a level name (`warn` is 13), case-insensitive.
fn severity_base(name: &str) -> Option<u8> {
    Some(match name.to_ascii_lowercase().as_str() {
        "trace" | "finest" => 1,
        "debug" | "fine" => 5,
        "info" | "information" | "informational" | "notice" => 9,
        "warn" | "warning" => 13,
        "error" | "err" | "severe" => 17,
        "fatal" | "critical" | "crit" | "emergency" | "emerg" | "alert" | "panic" => 21,
        _ => return None,
    })
}

/// The range of severity numbers a level name or number stands for (`warn` is 13-16).
pub fn severity_range(text: &str) -> Option<(u8, u8)> {
    if let Ok(number) = text.parse::<u8>() {
        return (number <= 24).then_some((number, number));
    }
    let base = severity_base(text)?;
    Some((base, base + 3))
}

/// A log record's trace or span id in hex, or empty when it has none: absent, or all zeros (the W3C "invalid"
/// id, which some SDKs send for "no context").
fn optional_id(id: &[u8]) -> String {
    if id.iter().all(|&b| b == 0) {
        String::new()
    } else {
        hex::encode(id)
    }
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

    use opentelemetry_proto::tonic::metrics::v1::ExponentialHistogramDataPoint;
    use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;

    fn exponential(
        scale: i32,
        zero: u64,
        positive: Option<(i32, Vec<u64>)>,
        negative: Option<(i32, Vec<u64>)>,
    ) -> ExponentialHistogramDataPoint {
        let buckets = |b: Option<(i32, Vec<u64>)>| {
            b.map(|(offset, bucket_counts)| Buckets {
                offset,
                bucket_counts,
            })
        };
        let count = zero
            + positive.as_ref().map_or(0, |p| p.1.iter().sum::<u64>())
            + negative.as_ref().map_or(0, |n| n.1.iter().sum::<u64>());
        ExponentialHistogramDataPoint {
            scale,
            zero_count: zero,
            count,
            positive: buckets(positive),
            negative: buckets(negative),
            ..ExponentialHistogramDataPoint::default()
        }
    }

    /// The `q` quantile of an exponential point, through the explicit conversion and the store's interpolation.
    fn quantile(point: &ExponentialHistogramDataPoint, q: f64) -> f64 {
        let data = exponential_to_explicit(point);
        crate::embedded::histogram_quantile(&data.bounds, &data.counts, q).unwrap()
    }

    #[test]
    fn exponential_quantiles_match_hand_computed_values() {
        let close = |got: f64, want: f64, what: &str| {
            assert!(
                (got - want).abs() <= want.abs() * 1e-6 + 1e-12,
                "{what}: {got} instead of {want}"
            );
        };
        // scale 3: base 2^(1/8); bucket 8 covers (2, 2^(9/8)], p50 halfway through it.
        let p = exponential(3, 0, Some((8, vec![10])), None);
        close(
            quantile(&p, 0.5),
            2.0 + (2f64.powf(9.0 / 8.0) - 2.0) / 2.0,
            "scale 3",
        );
        // scale 0: base 2; buckets 0 and 1 cover (1, 2] and (2, 4].
        let p = exponential(0, 0, Some((0, vec![4, 4])), None);
        close(quantile(&p, 0.25), 1.5, "scale 0, p25");
        close(quantile(&p, 0.75), 3.0, "scale 0, p75");
        // scale -1: base 4; bucket 1 covers (4, 16]: its p50 is 10.
        let p = exponential(-1, 0, Some((1, vec![10])), None);
        close(quantile(&p, 0.5), 10.0, "scale -1");
        // scale -2: base 16; bucket 0 covers (1, 16].
        let p = exponential(-2, 0, Some((0, vec![2])), None);
        close(quantile(&p, 0.5), 8.5, "scale -2");
        // scale 20: a value near 1000 stays near 1000 (the old conversion halved it).
        let index = (1000f64.log2() * 2f64.powi(20)).floor() as i32;
        let p = exponential(20, 0, Some((index, vec![5])), None);
        close(quantile(&p, 0.5), 1000.0, "scale 20");
        // Negative buckets and the zero bucket: -4..-2 (bucket 1 at scale 0), zeros, then (2, 4].
        let p = exponential(0, 2, Some((1, vec![4])), Some((1, vec![4])));
        close(quantile(&p, 0.2), -3.0, "negative p20");
        close(quantile(&p, 0.5), 0.0, "zero bucket");
        close(quantile(&p, 0.8), 3.0, "positive p80");
    }

    #[test]
    fn exponential_buckets_become_explicit() {
        let data = exponential_to_explicit(&exponential(0, 1, Some((0, vec![1, 2])), None));
        assert_eq!(data.bounds, vec![0.0, 0.0, 1.0, 2.0, 4.0]);
        assert_eq!(data.counts, vec![0, 1, 0, 1, 2, 0]);
        assert_eq!(data.count, 4);
    }

    #[test]
    fn severities_are_derived_from_text_when_the_number_is_unset() {
        let check = |text: &str, expected: u8| {
            assert_eq!(severity_from_text(text), expected, "{text:?}");
        };
        check("error", 17);
        check("ERROR", 17);
        check("Err", 17);
        check("warning", 13);
        check("WARN2", 14);
        check("info4", 12);
        check("INFO", 9);
        check("information", 9);
        check("notice", 9);
        check("debug", 5);
        check("trace3", 3);
        check("fatal", 21);
        check("CRITICAL", 21);
        check("crit", 21);
        check("emergency", 21);
        check("alert", 21);
        check(" warn ", 13);
        check("warn5", 0);
        check("verbose", 0);
        check("", 0);
        check("42", 0);
    }
}

//! The rules that reject an item (a log record, a span, a data point) one by one before it is stored: a timestamp
//! outside the store's window, a value no store can keep, or a trace or span id of the wrong length. Rejected items are removed from the request, so they
//! never reach the write-ahead log, and are reported to the sender as an OTLP partial success with the real reason.

use gantry_proto::ExportRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;

use super::{exponential_to_explicit, log_time, number, rfc3339};

/// Items newer than this far in the future are rejected (clock skew beyond reason), ns.
const MAX_FUTURE_NS: i64 = 24 * 3600 * 1_000_000_000;

/// Exponential histogram scales accepted: beyond these the bucket bounds overflow or lose all precision.
pub(crate) const EXPONENTIAL_SCALES: std::ops::RangeInclusive<i32> = -10..=20;

/// The window of timestamps a store accepts: `[now - retention, now + 1 day]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acceptance {
    /// Oldest accepted timestamp, ns since the epoch.
    pub oldest_ns: i64,
    /// Newest accepted timestamp, ns since the epoch.
    pub newest_ns: i64,
}

impl Acceptance {
    /// The window for `now_ns` and a retention.
    pub fn new(now_ns: i64, retention: std::time::Duration) -> Self {
        Self {
            oldest_ns: now_ns - retention.as_nanos() as i64,
            newest_ns: now_ns + MAX_FUTURE_NS,
        }
    }

    /// Whether `ts_ns` is inside the window.
    pub fn accepts(&self, ts_ns: i64) -> bool {
        (self.oldest_ns..=self.newest_ns).contains(&ts_ns)
    }
}

/// Items rejected one by one, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rejections {
    /// Timestamp outside the window.
    pub timestamp: u64,
    /// A value that cannot be stored: none at all (a number point without `asDouble` or `asInt`, which OTLP calls
    /// invalid, or a metric without data), NaN or an infinity, non-finite histogram bounds, an exponential
    /// histogram scale outside -10..=20.
    pub invalid_value: u64,
    /// A trace or span id of the wrong length, or all zeros where one is required: a span's trace id must be 16
    /// bytes and its span id 8, neither all zeros (W3C Trace Context §3.2.2.3 and §3.2.2.4), its parent span id
    /// empty or 8 bytes; a log record's ids are optional, but when given 16 and 8 bytes.
    pub invalid_id: u64,
    /// The window applied (for the message).
    pub window: Option<Acceptance>,
}

impl Rejections {
    /// Every item rejected.
    pub fn total(&self) -> u64 {
        self.timestamp + self.invalid_value + self.invalid_id
    }

    /// `(reason, count)` for each reason with a count, as used in the `reason` label of counters.
    pub fn by_reason(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("timestamp", self.timestamp),
            ("invalid_value", self.invalid_value),
            ("invalid_id", self.invalid_id),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
    }

    /// The message of an OTLP partial success: how many items of which kind, why, and what to do.
    pub fn message(&self, items: &str) -> String {
        let mut parts = Vec::new();
        if self.timestamp > 0 {
            let window = match self.window {
                Some(w) => format!(" ({} to {})", rfc3339(w.oldest_ns), rfc3339(w.newest_ns)),
                None => String::new(),
            };
            parts.push(format!(
                "{} with a timestamp outside the accepted window{window}: check the sender's clock or the plane's retention",
                self.timestamp
            ));
        }
        if self.invalid_value > 0 {
            parts.push(format!(
                "{} with a value that cannot be stored (no value, NaN or infinite, or an exponential histogram scale outside -10..20): send points with a finite value and a scale within -10..20",
                self.invalid_value
            ));
        }
        if self.invalid_id > 0 {
            parts.push(format!(
                "{} with an invalid trace or span id (a trace id is 16 bytes and a span id 8, and a span's are not all zeros): send ids as the OpenTelemetry SDKs generate them",
                self.invalid_id
            ));
        }
        format!("{items} rejected: {}", parts.join("; "))
    }
}

/// Bytes of a trace id (W3C Trace Context §3.2.2.3).
pub const TRACE_ID_BYTES: usize = 16;
/// Bytes of a span id (W3C Trace Context §3.2.2.4, `parent-id`).
pub const SPAN_ID_BYTES: usize = 8;

/// Whether `id` is `len` bytes and not all zeros (the W3C "invalid" value).
fn valid_id(id: &[u8], len: usize) -> bool {
    id.len() == len && id.iter().any(|&b| b != 0)
}

/// What is wrong with an item, apart from its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Value,
    Id,
}

impl Fault {
    /// `Value` unless `valid`.
    fn value_unless(valid: bool) -> Fault {
        if valid { Fault::None } else { Fault::Value }
    }

    /// `Id` unless `valid`.
    fn id_unless(valid: bool) -> Fault {
        if valid { Fault::None } else { Fault::Id }
    }
}

/// Removes from `request` the items a store rejects and counts them by reason. Log records without any time count
/// as arriving at `now_ns`.
pub fn screen(request: &mut ExportRequest, window: &Acceptance, now_ns: i64) -> Rejections {
    let mut rejections = Rejections {
        window: Some(*window),
        ..Rejections::default()
    };
    // The reasons in order of precedence: what the item is, before when it is.
    let mut keep = |ts: i64, fault: Fault| {
        if fault == Fault::Value {
            rejections.invalid_value += 1;
            false
        } else if fault == Fault::Id {
            rejections.invalid_id += 1;
            false
        } else if !window.accepts(ts) {
            rejections.timestamp += 1;
            false
        } else {
            true
        }
    };
    match request {
        ExportRequest::Logs(request) => {
            for scope in request
                .resource_logs
                .iter_mut()
                .flat_map(|r| &mut r.scope_logs)
            {
                scope.log_records.retain(|log| {
                    let ids = matches!(log.trace_id.len(), 0 | TRACE_ID_BYTES)
                        && matches!(log.span_id.len(), 0 | SPAN_ID_BYTES);
                    keep(
                        log_time(log.time_unix_nano, log.observed_time_unix_nano, now_ns),
                        Fault::id_unless(ids),
                    )
                });
            }
        }
        ExportRequest::Traces(request) => {
            for scope in request
                .resource_spans
                .iter_mut()
                .flat_map(|r| &mut r.scope_spans)
            {
                scope.spans.retain(|span| {
                    let ids = valid_id(&span.trace_id, TRACE_ID_BYTES)
                        && valid_id(&span.span_id, SPAN_ID_BYTES)
                        && (span.parent_span_id.is_empty()
                            || span.parent_span_id.len() == SPAN_ID_BYTES);
                    keep(span.start_time_unix_nano as i64, Fault::id_unless(ids))
                });
            }
        }
        ExportRequest::Metrics(request) => {
            let finite_sum = |sum: Option<f64>| sum.is_none_or(f64::is_finite);
            // OTLP: "a point is considered invalid when one of the recognized value fields is not present".
            let finite = |value: &Option<_>| value.is_some() && number(value).is_finite();
            for scope in request
                .resource_metrics
                .iter_mut()
                .flat_map(|r| &mut r.scope_metrics)
            {
                // A metric without data (an unknown or misspelt kind in JSON) holds no point to keep: it is
                // rejected as one item rather than dropped unnoticed.
                scope
                    .metrics
                    .retain(|metric| metric.data.is_some() || keep(0, Fault::Value));
            }
            for metric in request
                .resource_metrics
                .iter_mut()
                .flat_map(|r| &mut r.scope_metrics)
                .flat_map(|s| &mut s.metrics)
            {
                match &mut metric.data {
                    Some(Data::Gauge(g)) => g.data_points.retain(|p| {
                        keep(
                            p.time_unix_nano as i64,
                            Fault::value_unless(finite(&p.value)),
                        )
                    }),
                    Some(Data::Sum(s)) => s.data_points.retain(|p| {
                        keep(
                            p.time_unix_nano as i64,
                            Fault::value_unless(finite(&p.value)),
                        )
                    }),
                    Some(Data::Histogram(h)) => h.data_points.retain(|p| {
                        let valid =
                            finite_sum(p.sum) && p.explicit_bounds.iter().all(|b| b.is_finite());
                        keep(p.time_unix_nano as i64, Fault::value_unless(valid))
                    }),
                    Some(Data::ExponentialHistogram(h)) => h.data_points.retain(|p| {
                        let valid = finite_sum(p.sum)
                            && EXPONENTIAL_SCALES.contains(&p.scale)
                            && exponential_to_explicit(p)
                                .bounds
                                .iter()
                                .all(|b| b.is_finite());
                        keep(p.time_unix_nano as i64, Fault::value_unless(valid))
                    }),
                    Some(Data::Summary(s)) => s.data_points.retain(|p| {
                        keep(
                            p.time_unix_nano as i64,
                            Fault::value_unless(p.sum.is_finite()),
                        )
                    }),
                    None => {}
                }
            }
        }
    }
    rejections
}

/// Gives log records that carry neither a time nor an observed time the time of their arrival, in the request
/// itself, so that the WAL keeps it and a replay indexes them at the same time. Returns whether anything changed.
pub fn stamp_missing_times(request: &mut ExportRequest, now_ns: i64) -> bool {
    let ExportRequest::Logs(request) = request else {
        return false;
    };
    let mut changed = false;
    for log in request
        .resource_logs
        .iter_mut()
        .flat_map(|r| &mut r.scope_logs)
        .flat_map(|s| &mut s.log_records)
    {
        if log.time_unix_nano == 0 && log.observed_time_unix_nano == 0 {
            log.observed_time_unix_nano = now_ns as u64;
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    use opentelemetry_proto::tonic::metrics::v1::{
        ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
        Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
    };

    use super::*;

    const NOW: i64 = 1_772_445_512_000_000_000;
    const OLD: u64 = (NOW - 40 * 24 * 3600 * 1_000_000_000) as u64;

    fn window() -> Acceptance {
        Acceptance::new(NOW, std::time::Duration::from_secs(30 * 24 * 3600))
    }

    fn point(value: Option<Value>, time: u64) -> NumberDataPoint {
        NumberDataPoint {
            time_unix_nano: time,
            value,
            ..Default::default()
        }
    }

    fn gauge(points: Vec<NumberDataPoint>) -> Data {
        Data::Gauge(Gauge {
            data_points: points,
        })
    }

    /// Screens one metric of `data` and requires `(rejected for the timestamp, rejected for the value, points
    /// kept)`, and a message that names only the reasons that occurred.
    fn check(data: Option<Data>, want: (u64, u64, u64)) {
        let mut request = ExportRequest::Metrics(ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "m".into(),
                        data: data.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        });
        let rejected = screen(&mut request, &window(), NOW);
        let got = (rejected.timestamp, rejected.invalid_value, request.items());
        assert_eq!(got, want, "{data:?}");
        let message = rejected.message("data points");
        assert_eq!(message.contains("timestamp"), want.0 > 0, "{message}");
        assert_eq!(
            message.contains("cannot be stored"),
            want.1 > 0,
            "{message}"
        );
    }

    #[test]
    fn metric_points_are_rejected_for_their_real_reason() {
        let now = NOW as u64;
        let double = |v: f64| Some(Value::AsDouble(v));
        check(Some(gauge(vec![point(double(1.5), now)])), (0, 0, 1));
        check(
            Some(gauge(vec![point(Some(Value::AsInt(-3)), now)])),
            (0, 0, 1),
        );
        check(Some(gauge(vec![point(double(1.5), OLD)])), (1, 0, 0));
        check(Some(gauge(vec![point(double(f64::NAN), now)])), (0, 1, 0));
        check(
            Some(gauge(vec![point(double(f64::INFINITY), now)])),
            (0, 1, 0),
        );
        check(
            Some(gauge(vec![point(double(f64::NEG_INFINITY), now)])),
            (0, 1, 0),
        );
        // A value that cannot be stored is that, whatever its time.
        check(Some(gauge(vec![point(double(f64::NAN), OLD)])), (0, 1, 0));
        check(Some(gauge(vec![point(double(f64::NAN), 0)])), (0, 1, 0));
        // No value at all is not a 0.
        check(Some(gauge(vec![point(None, now)])), (0, 1, 0));
        check(
            Some(gauge(vec![
                point(double(1.0), now),
                point(None, now),
                point(double(f64::NAN), now),
                point(double(2.0), OLD),
            ])),
            (1, 2, 1),
        );
        let sum = |points| {
            Some(Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: 1,
                is_monotonic: true,
            }))
        };
        check(sum(vec![point(double(f64::INFINITY), now)]), (0, 1, 0));
        check(sum(vec![point(None, now)]), (0, 1, 0));
        check(sum(vec![point(Some(Value::AsInt(7)), now)]), (0, 0, 1));
        // A metric without data.
        check(None, (0, 1, 0));
        let histogram = |sum: Option<f64>, bounds: Vec<f64>| {
            Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    time_unix_nano: now,
                    sum,
                    explicit_bounds: bounds,
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            }))
        };
        check(histogram(Some(1.0), vec![1.0]), (0, 0, 1));
        check(histogram(None, vec![]), (0, 0, 1));
        check(histogram(Some(f64::NAN), vec![]), (0, 1, 0));
        check(histogram(Some(1.0), vec![f64::INFINITY]), (0, 1, 0));
        let exponential = |scale: i32, sum: Option<f64>| {
            Some(Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    time_unix_nano: now,
                    scale,
                    sum,
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            }))
        };
        check(exponential(3, Some(1.0)), (0, 0, 1));
        check(exponential(30, Some(1.0)), (0, 1, 0));
        check(exponential(3, Some(f64::NEG_INFINITY)), (0, 1, 0));
        let summary = |sum: f64, time: u64| {
            Some(Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    time_unix_nano: time,
                    sum,
                    ..Default::default()
                }],
            }))
        };
        check(summary(2.0, now), (0, 0, 1));
        check(summary(f64::NAN, now), (0, 1, 0));
        check(summary(2.0, OLD), (1, 0, 0));
    }
}

#[cfg(test)]
mod id_tests {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;

    const NOW: i64 = 1_772_445_512_000_000_000;
    const OLD: i64 = NOW - 40 * 24 * 3600 * 1_000_000_000;

    fn window() -> Acceptance {
        Acceptance::new(NOW, std::time::Duration::from_secs(30 * 24 * 3600))
    }

    /// `(rejected for the id, rejected for the time, kept)` after screening one span.
    fn span(trace_id: Vec<u8>, span_id: Vec<u8>, parent: Vec<u8>, start: i64) -> (u64, u64, u64) {
        let mut request = ExportRequest::Traces(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id,
                        span_id,
                        parent_span_id: parent,
                        start_time_unix_nano: start as u64,
                        end_time_unix_nano: start as u64 + 1,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        });
        let rejected = screen(&mut request, &window(), NOW);
        let message = rejected.message("spans");
        assert_eq!(
            message.contains("invalid trace or span id"),
            rejected.invalid_id > 0,
            "{message}"
        );
        (rejected.invalid_id, rejected.timestamp, request.items())
    }

    /// `(rejected for the id, kept)` after screening one log record.
    fn log(trace_id: Vec<u8>, span_id: Vec<u8>) -> (u64, u64) {
        let mut request = ExportRequest::Logs(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        time_unix_nano: NOW as u64,
                        trace_id,
                        span_id,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        });
        let rejected = screen(&mut request, &window(), NOW);
        (rejected.invalid_id, request.items())
    }

    #[test]
    fn spans_need_a_16_byte_trace_id_and_an_8_byte_span_id() {
        let (t, s) = (vec![0xab; 16], vec![0xcd; 8]);
        let cases = [
            (
                "well formed root",
                t.clone(),
                s.clone(),
                vec![],
                NOW,
                (0, 0, 1),
            ),
            (
                "well formed child",
                t.clone(),
                s.clone(),
                s.clone(),
                NOW,
                (0, 0, 1),
            ),
            (
                "3-byte trace id",
                vec![1, 2, 3],
                s.clone(),
                vec![],
                NOW,
                (1, 0, 0),
            ),
            (
                "17-byte trace id",
                vec![1; 17],
                s.clone(),
                vec![],
                NOW,
                (1, 0, 0),
            ),
            ("no trace id", vec![], s.clone(), vec![], NOW, (1, 0, 0)),
            (
                "all-zero trace id",
                vec![0; 16],
                s.clone(),
                vec![],
                NOW,
                (1, 0, 0),
            ),
            (
                "4-byte span id",
                t.clone(),
                vec![1; 4],
                vec![],
                NOW,
                (1, 0, 0),
            ),
            ("no span id", t.clone(), vec![], vec![], NOW, (1, 0, 0)),
            (
                "all-zero span id",
                t.clone(),
                vec![0; 8],
                vec![],
                NOW,
                (1, 0, 0),
            ),
            (
                "16-byte parent",
                t.clone(),
                s.clone(),
                vec![1; 16],
                NOW,
                (1, 0, 0),
            ),
            // The id is what the span is; the time only when it is.
            (
                "bad id and old",
                vec![1, 2, 3],
                s.clone(),
                vec![],
                OLD,
                (1, 0, 0),
            ),
            (
                "good id and old",
                t.clone(),
                s.clone(),
                vec![],
                OLD,
                (0, 1, 0),
            ),
        ];
        for (what, trace_id, span_id, parent, start, want) in cases {
            assert_eq!(span(trace_id, span_id, parent, start), want, "{what}");
        }
    }

    #[test]
    fn log_records_may_omit_ids_but_not_mangle_them() {
        let cases = [
            ("no ids", vec![], vec![], (0, 1)),
            ("both ids", vec![7; 16], vec![7; 8], (0, 1)),
            ("a trace id alone", vec![7; 16], vec![], (0, 1)),
            // Some SDKs send zeros for "no context": kept, as no trace.
            ("zero ids", vec![0; 16], vec![0; 8], (0, 1)),
            ("3-byte trace id", vec![1, 2, 3], vec![], (1, 0)),
            ("16-byte span id", vec![7; 16], vec![7; 16], (1, 0)),
        ];
        for (what, trace_id, span_id, want) in cases {
            assert_eq!(log(trace_id, span_id), want, "{what}");
        }
    }
}

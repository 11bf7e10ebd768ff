//! The three OTLP signals and a decoded export request of any of them.
//!
//! The signal is defined once, here: the plane's write-ahead log payloads, its dedup keys, the agent's disk buffer
//! records and both OTLP receivers use [`Signal`] and its byte code.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message;

/// An OTLP signal (OTLP specification, "Signals"): what an export request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// Log records (`ExportLogsServiceRequest`, `/v1/logs`).
    Logs,
    /// Spans (`ExportTraceServiceRequest`, `/v1/traces`).
    Traces,
    /// Metric data points (`ExportMetricsServiceRequest`, `/v1/metrics`).
    Metrics,
}

impl Signal {
    /// Every signal, in byte-code order.
    pub const ALL: [Signal; 3] = [Signal::Logs, Signal::Traces, Signal::Metrics];

    /// The OTLP/HTTP path segment and the name used in labels and keys: `logs`, `traces`, `metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Logs => "logs",
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
        }
    }

    /// What one item of the signal is called in messages: `log records`, `spans`, `data points`.
    pub fn items(self) -> &'static str {
        match self {
            Signal::Logs => "log records",
            Signal::Traces => "spans",
            Signal::Metrics => "data points",
        }
    }

    /// The byte that stands for the signal in stored records: 0 logs, 1 traces, 2 metrics. Stable: changing it
    /// changes the plane's write-ahead log and the agent's buffer format.
    pub fn to_byte(self) -> u8 {
        match self {
            Signal::Logs => 0,
            Signal::Traces => 1,
            Signal::Metrics => 2,
        }
    }

    /// The signal a byte written by [`Signal::to_byte`] stands for, `None` for any other byte.
    pub fn from_byte(byte: u8) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.to_byte() == byte)
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoded OTLP export request of one signal.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportRequest {
    /// `ExportLogsServiceRequest`.
    Logs(ExportLogsServiceRequest),
    /// `ExportTraceServiceRequest`.
    Traces(ExportTraceServiceRequest),
    /// `ExportMetricsServiceRequest`.
    Metrics(ExportMetricsServiceRequest),
}

impl ExportRequest {
    /// An empty request of `signal`.
    pub fn empty(signal: Signal) -> ExportRequest {
        match signal {
            Signal::Logs => ExportRequest::Logs(Default::default()),
            Signal::Traces => ExportRequest::Traces(Default::default()),
            Signal::Metrics => ExportRequest::Metrics(Default::default()),
        }
    }

    /// The signal the request carries.
    pub fn signal(&self) -> Signal {
        match self {
            ExportRequest::Logs(_) => Signal::Logs,
            ExportRequest::Traces(_) => Signal::Traces,
            ExportRequest::Metrics(_) => Signal::Metrics,
        }
    }

    /// Log records, spans or data points in the request (what OTLP's partial success counts).
    pub fn items(&self) -> u64 {
        match self {
            ExportRequest::Logs(r) => r
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .map(|s| s.log_records.len() as u64)
                .sum(),
            ExportRequest::Traces(r) => r
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len() as u64)
                .sum(),
            ExportRequest::Metrics(r) => r
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
                .map(|m| data_points(m.data.as_ref()))
                .sum(),
        }
    }

    /// The request as OTLP protobuf bytes.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        match self {
            ExportRequest::Logs(r) => r.encode_to_vec(),
            ExportRequest::Traces(r) => r.encode_to_vec(),
            ExportRequest::Metrics(r) => r.encode_to_vec(),
        }
    }

    /// The length of the request's protobuf encoding, bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            ExportRequest::Logs(r) => r.encoded_len(),
            ExportRequest::Traces(r) => r.encoded_len(),
            ExportRequest::Metrics(r) => r.encoded_len(),
        }
    }

    /// Decodes OTLP protobuf bytes as a request of `signal`.
    ///
    /// # Errors
    /// The bytes are not a valid protobuf message of that type.
    pub fn decode(signal: Signal, bytes: &[u8]) -> Result<ExportRequest, prost::DecodeError> {
        Ok(match signal {
            Signal::Logs => ExportRequest::Logs(Message::decode(bytes)?),
            Signal::Traces => ExportRequest::Traces(Message::decode(bytes)?),
            Signal::Metrics => ExportRequest::Metrics(Message::decode(bytes)?),
        })
    }
}

impl ExportRequest {
    /// Splits the request into two with about half of its items each (the first gets the smaller half), keeping
    /// every item's resource and scope; `None` when it holds fewer than two items. A sender uses it when a request
    /// was refused as too large (HTTP 413).
    pub fn split(self) -> Option<(ExportRequest, ExportRequest)> {
        let items = self.items();
        if items < 2 {
            return None;
        }
        let half = (items / 2) as usize;
        Some(match self {
            ExportRequest::Logs(r) => {
                let (a, b) = split_nested(
                    r.resource_logs,
                    half,
                    |rl| &mut rl.scope_logs,
                    |sl| &mut sl.log_records,
                );
                (
                    ExportRequest::Logs(ExportLogsServiceRequest { resource_logs: a }),
                    ExportRequest::Logs(ExportLogsServiceRequest { resource_logs: b }),
                )
            }
            ExportRequest::Traces(r) => {
                let (a, b) = split_nested(
                    r.resource_spans,
                    half,
                    |rs| &mut rs.scope_spans,
                    |ss| &mut ss.spans,
                );
                (
                    ExportRequest::Traces(ExportTraceServiceRequest { resource_spans: a }),
                    ExportRequest::Traces(ExportTraceServiceRequest { resource_spans: b }),
                )
            }
            ExportRequest::Metrics(r) => {
                // Metrics split between metrics of a scope; data points of one metric stay together unless a
                // single metric holds the cut, which then splits its data points.
                let mut metrics = r;
                for rm in &mut metrics.resource_metrics {
                    for sm in &mut rm.scope_metrics {
                        sm.metrics = sm
                            .metrics
                            .drain(..)
                            .flat_map(split_points_of_big_metric)
                            .collect();
                    }
                }
                let (a, b) = split_metric_list(metrics.resource_metrics, half);
                (
                    ExportRequest::Metrics(ExportMetricsServiceRequest {
                        resource_metrics: a,
                    }),
                    ExportRequest::Metrics(ExportMetricsServiceRequest {
                        resource_metrics: b,
                    }),
                )
            }
        })
    }
}

/// Splits resources → scopes → items so that the first part holds `take` items.
fn split_nested<R: Clone, S: Clone, I>(
    resources: Vec<R>,
    mut take: usize,
    scopes: impl Fn(&mut R) -> &mut Vec<S>,
    items: impl Fn(&mut S) -> &mut Vec<I>,
) -> (Vec<R>, Vec<R>) {
    let mut first = Vec::new();
    let mut second = Vec::new();
    for mut resource in resources {
        let count: usize = scopes(&mut resource)
            .iter_mut()
            .map(|s| items(s).len())
            .sum();
        if take == 0 {
            second.push(resource);
            continue;
        }
        if count <= take {
            take -= count;
            first.push(resource);
            continue;
        }
        let all_scopes = std::mem::take(scopes(&mut resource));
        let mut head = resource.clone();
        let mut tail = resource;
        for mut scope in all_scopes {
            let n = items(&mut scope).len();
            if take == 0 {
                scopes(&mut tail).push(scope);
            } else if n <= take {
                take -= n;
                scopes(&mut head).push(scope);
            } else {
                let rest = items(&mut scope).split_off(take);
                take = 0;
                let mut later = scope.clone();
                *items(&mut later) = rest;
                scopes(&mut head).push(scope);
                scopes(&mut tail).push(later);
            }
        }
        first.push(head);
        second.push(tail);
    }
    (first, second)
}

/// A metric with more than one data point becomes one metric per data point, so that a cut can fall between them.
fn split_points_of_big_metric(
    metric: opentelemetry_proto::tonic::metrics::v1::Metric,
) -> Vec<opentelemetry_proto::tonic::metrics::v1::Metric> {
    use opentelemetry_proto::tonic::metrics::v1::Metric;
    macro_rules! one_per_point {
        ($variant:ident, $data:expr) => {{
            let mut data = $data;
            let points = std::mem::take(&mut data.data_points);
            points
                .into_iter()
                .map(|point| {
                    let mut single = data.clone();
                    single.data_points = vec![point];
                    Metric {
                        data: Some(Data::$variant(single)),
                        ..metric_shell(&metric)
                    }
                })
                .collect()
        }};
    }
    fn metric_shell(metric: &Metric) -> Metric {
        Metric {
            data: None,
            ..metric.clone()
        }
    }
    if data_points(metric.data.as_ref()) < 2 {
        return vec![metric];
    }
    match metric.data.clone() {
        Some(Data::Gauge(g)) => one_per_point!(Gauge, g),
        Some(Data::Sum(s)) => one_per_point!(Sum, s),
        Some(Data::Histogram(h)) => one_per_point!(Histogram, h),
        Some(Data::ExponentialHistogram(h)) => one_per_point!(ExponentialHistogram, h),
        Some(Data::Summary(s)) => one_per_point!(Summary, s),
        None => vec![metric],
    }
}

/// Splits metrics (each holding one data point after [`split_points_of_big_metric`], or several) at `take` points.
fn split_metric_list(
    resources: Vec<opentelemetry_proto::tonic::metrics::v1::ResourceMetrics>,
    take: usize,
) -> (
    Vec<opentelemetry_proto::tonic::metrics::v1::ResourceMetrics>,
    Vec<opentelemetry_proto::tonic::metrics::v1::ResourceMetrics>,
) {
    split_nested(
        resources,
        take,
        |rm| &mut rm.scope_metrics,
        |sm| &mut sm.metrics,
    )
}

/// Data points of one metric, whatever its type.
pub fn data_points(data: Option<&Data>) -> u64 {
    match data {
        Some(Data::Gauge(g)) => g.data_points.len() as u64,
        Some(Data::Sum(s)) => s.data_points.len() as u64,
        Some(Data::Histogram(h)) => h.data_points.len() as u64,
        Some(Data::ExponentialHistogram(h)) => h.data_points.len() as u64,
        Some(Data::Summary(s)) => s.data_points.len() as u64,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_bytes_round_trip_and_are_stable() {
        for signal in Signal::ALL {
            assert_eq!(Signal::from_byte(signal.to_byte()), Some(signal));
            assert_eq!(ExportRequest::empty(signal).signal(), signal);
        }
        assert_eq!(Signal::Logs.to_byte(), 0);
        assert_eq!(Signal::Traces.to_byte(), 1);
        assert_eq!(Signal::Metrics.to_byte(), 2);
        assert_eq!(Signal::from_byte(3), None);
    }

    #[test]
    fn splitting_keeps_every_item_once_with_its_resource() {
        use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
        let resource = |n: usize| ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: (0..n)
                    .map(|i| LogRecord {
                        time_unix_nano: i as u64,
                        ..LogRecord::default()
                    })
                    .collect(),
                ..ScopeLogs::default()
            }],
            schema_url: format!("r{n}"),
            ..ResourceLogs::default()
        };
        for sizes in [vec![2], vec![1, 1], vec![3, 4], vec![5], vec![1, 6, 1]] {
            let request = ExportRequest::Logs(ExportLogsServiceRequest {
                resource_logs: sizes.iter().map(|n| resource(*n)).collect(),
            });
            let total = request.items();
            let (a, b) = request.clone().split().expect("splits");
            assert_eq!(a.items() + b.items(), total, "{sizes:?}");
            assert_eq!(a.items(), total / 2, "{sizes:?}");
            let (ExportRequest::Logs(a), ExportRequest::Logs(b)) = (a, b) else {
                unreachable!()
            };
            for part in a.resource_logs.iter().chain(&b.resource_logs) {
                let n: usize = part.scope_logs.iter().map(|s| s.log_records.len()).sum();
                assert!(n <= part.schema_url[1..].parse::<usize>().unwrap());
            }
        }
        assert!(
            ExportRequest::Logs(ExportLogsServiceRequest {
                resource_logs: vec![resource(1)]
            })
            .split()
            .is_none()
        );
    }

    #[test]
    fn a_metric_with_many_points_splits_between_them() {
        use opentelemetry_proto::tonic::metrics::v1::{
            Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
        };
        let request = ExportRequest::Metrics(ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "m".into(),
                        data: Some(Data::Gauge(Gauge {
                            data_points: vec![NumberDataPoint::default(); 5],
                        })),
                        ..Metric::default()
                    }],
                    ..ScopeMetrics::default()
                }],
                ..ResourceMetrics::default()
            }],
        });
        let (a, b) = request.split().expect("splits");
        assert_eq!((a.items(), b.items()), (2, 3));
    }

    #[test]
    fn requests_round_trip_through_protobuf() {
        for signal in Signal::ALL {
            let request = ExportRequest::empty(signal);
            let bytes = request.encode_to_vec();
            assert_eq!(ExportRequest::decode(signal, &bytes).unwrap(), request);
            assert_eq!(request.items(), 0);
        }
    }
}

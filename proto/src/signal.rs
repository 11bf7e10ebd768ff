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
    fn requests_round_trip_through_protobuf() {
        for signal in Signal::ALL {
            let request = ExportRequest::empty(signal);
            let bytes = request.encode_to_vec();
            assert_eq!(ExportRequest::decode(signal, &bytes).unwrap(), request);
            assert_eq!(request.items(), 0);
        }
    }
}

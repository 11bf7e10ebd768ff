//! Spans and the trace API's bodies (`GET /api/v1/traces`, `GET /api/v1/traces/{trace_id}`), and the RED rows of
//! `GET /api/v1/services` that are computed from spans.

use serde::{Deserialize, Serialize};

use crate::Attributes;

/// One span as stored and returned by the trace API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SpanRecord {
    /// Trace id, lowercase hex.
    pub trace_id: String,
    /// Span id, lowercase hex.
    pub span_id: String,
    /// Parent span id, lowercase hex; empty for a root span.
    #[serde(default)]
    pub parent_span_id: String,
    /// Operation name.
    pub name: String,
    /// `service.name` of the resource.
    pub service: String,
    /// `service.version` of the resource, empty when absent.
    #[serde(default)]
    pub version: String,
    /// `server`, `client`, `internal`, `producer`, `consumer` or `unspecified`.
    pub kind: String,
    /// Start, nanoseconds since the Unix epoch.
    pub start_unix_nano: i64,
    /// End, nanoseconds since the Unix epoch.
    pub end_unix_nano: i64,
    /// Duration in milliseconds (fractional).
    pub duration_ms: f64,
    /// `ok`, `error` or `unset`.
    pub status: String,
    /// Status message, when the span has one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_message: String,
    /// Span attributes.
    #[serde(default)]
    pub attributes: Attributes,
    /// Resource attributes.
    #[serde(default)]
    pub resource: Attributes,
    /// The span's events (an exception, a retry, a cache miss), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<SpanEvent>,
}

/// An event of a span (OTLP `Span.Event`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SpanEvent {
    /// When, nanoseconds since the Unix epoch.
    pub time_unix_nano: i64,
    /// Its name (`exception` for a recorded exception, by the OTel semantic conventions).
    pub name: String,
    /// Its attributes (`exception.type`, `exception.message`, `exception.stacktrace`, ...).
    #[serde(default)]
    pub attributes: Attributes,
}

/// The answer of `GET /api/v1/traces/{trace_id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TraceResponse {
    /// The trace id asked for.
    pub trace_id: String,
    /// Every span of the trace, by start time.
    pub spans: Vec<SpanRecord>,
}

/// One trace in `GET /api/v1/traces`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TraceSummary {
    /// Trace id, lowercase hex.
    pub trace_id: String,
    /// Service of the root span (or of the earliest span when the root is missing).
    pub root_service: String,
    /// Operation of the root span.
    pub root_name: String,
    /// Start of the trace, nanoseconds since the Unix epoch.
    pub start_unix_nano: i64,
    /// From the first start to the last end, in milliseconds.
    pub duration_ms: f64,
    /// Number of spans stored for the trace.
    pub span_count: u64,
    /// Whether any span has an error status.
    pub error: bool,
}

/// The answer of `GET /api/v1/traces`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TracesResponse {
    /// Matching traces, newest first.
    pub traces: Vec<TraceSummary>,
    /// Time spent answering, in milliseconds.
    pub took_ms: u64,
}

/// One row of `GET /api/v1/services`: RED figures from server and consumer spans.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceRow {
    /// `service.name`.
    pub service: String,
    /// `service.version` (empty when the spans carry none).
    pub version: String,
    /// Requests in the range.
    pub requests: u64,
    /// Requests whose span has an error status.
    pub errors: u64,
    /// Requests per second over the range.
    pub request_rate: f64,
    /// `errors / requests`.
    pub error_ratio: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile latency, milliseconds.
    pub p95_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Last span seen, RFC 3339.
    pub last_seen: String,
}

/// One time bucket of a [`RedSeries`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedPoint {
    /// The bucket's start, ms since the Unix epoch.
    pub start_unix_ms: i64,
    /// Requests that started in the bucket.
    pub requests: u64,
    /// Of which failed (error status).
    pub errors: u64,
    /// 99th percentile latency of the bucket's requests, milliseconds (0 without requests).
    pub p99_ms: f64,
}

/// RED over time of one service and version, or of one operation (span name) of a service: the totals of the
/// range and one point per bucket (rate, errors and duration, as in Tom Wilkie's RED method).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedSeries {
    /// The totals over the whole range.
    pub total: ServiceRow,
    /// The operation (span name) when grouped by operation; empty otherwise.
    #[serde(default)]
    pub operation: String,
    /// The buckets' width, ms.
    pub step_ms: i64,
    /// One point per bucket, oldest first; every bucket of the range is there, empty ones with zeros.
    pub points: Vec<RedPoint>,
}

/// The answer of `GET /api/v1/red`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedResponse {
    /// One series per service and version (or per operation and version).
    pub series: Vec<RedSeries>,
    /// Time spent answering, in milliseconds.
    pub took_ms: u64,
}

/// One edge of the service map: requests from one service to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceEdge {
    /// The calling service.
    pub client: String,
    /// The called service.
    pub server: String,
    /// Requests seen on the edge (the called side's server spans whose parent is a span of the caller).
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
}

/// `GET /api/v1/service-map`: the services that called each other in a time range, from the spans of the range.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceMap {
    /// Edges, by client then server.
    pub edges: Vec<ServiceEdge>,
    /// Every service seen, with its server spans' requests and errors: (service, requests, errors).
    pub services: Vec<(String, u64, u64)>,
    /// Spans read (the newest of the range, at most the map's cap).
    pub spans_read: u64,
    /// Spans in the range.
    pub spans_matched: u64,
    /// The oldest start among the spans read, ns since the epoch (the map covers from here to the range's end).
    pub covered_from_ns: i64,
    /// Time spent answering, in milliseconds.
    #[serde(default)]
    pub took_ms: u64,
}

/// The answer of `GET /api/v1/services`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServicesResponse {
    /// One row per service and version.
    pub services: Vec<ServiceRow>,
    /// The services the plane runs from a platform spec (`gantry apply`), with or without telemetry yet.
    #[serde(default)]
    pub deployed: Vec<crate::platform::DeployedService>,
    /// Time spent answering, in milliseconds.
    pub took_ms: u64,
}

//! Log records and the log search API's bodies (`GET /api/v1/logs`, `GET /api/v1/logs/histogram`).

use serde::{Deserialize, Serialize};

use crate::Attributes;

/// One log record as stored and as returned by `GET /api/v1/logs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct LogRecord {
    /// When the event happened (RFC 3339 with nanoseconds).
    pub timestamp: String,
    /// The same instant as nanoseconds since the Unix epoch.
    pub timestamp_unix_nano: i64,
    /// Severity text as sent, or derived from the number (`INFO`, `ERROR`, ...).
    pub severity: String,
    /// OTLP severity number (1-24; 0 when unspecified).
    pub severity_number: u8,
    /// `service.name` of the resource (`unknown_service` when absent).
    pub service: String,
    /// The log body, as text.
    pub body: String,
    /// Record attributes.
    #[serde(default)]
    pub attributes: Attributes,
    /// Resource attributes.
    #[serde(default)]
    pub resource: Attributes,
    /// Trace id in lowercase hex, empty when the record is not part of a trace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    /// Span id in lowercase hex, empty when absent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub span_id: String,
}

/// The answer of `GET /api/v1/logs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogsResponse {
    /// Matching records, newest first.
    pub hits: Vec<LogRecord>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// Time spent answering, in milliseconds.
    pub took_ms: u64,
}

/// One bucket of `GET /api/v1/logs/histogram`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistogramBucket {
    /// Start of the bucket, Unix milliseconds.
    pub start_unix_ms: i64,
    /// Matching records in the bucket.
    pub count: u64,
}

/// The answer of `GET /api/v1/logs/histogram`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistogramResponse {
    /// Buckets in time order, covering the whole range.
    pub buckets: Vec<HistogramBucket>,
    /// Width of each bucket in milliseconds.
    pub interval_ms: i64,
    /// Time spent answering, in milliseconds.
    pub took_ms: u64,
}

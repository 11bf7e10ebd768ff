//! Gantry's telemetry store: the `Store` trait that the embedded store (a write-ahead log plus tantivy indexes,
//! [`embedded`]) implements today and a ClickHouse store will implement beside it, the request and result types its
//! methods take, its configuration, and the OTLP → row model every implementation shares ([`model`]).
//!
//! **The store knows nothing about HTTP**: this crate depends on no HTTP or gRPC server crate; the plane's handlers
//! translate requests into these types and back.
#![warn(missing_docs)]

pub mod budget;
mod config;
pub mod embedded;
pub mod model;

pub use config::StoreConfig;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gantry_proto::ExportRequest;
use gantry_proto::{
    HistogramBucket, LogRecord, MetricSeries, RedSeries, ServiceMap, ServiceRow, SpanRecord,
    TraceSummary,
};
use gantry_query::Query;

/// One batch handed to the store.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Idempotency key (`Gantry-Batch-Id`): a batch with a key seen in the last 10 minutes is not stored again.
    pub id: Option<String>,
    /// The decoded request.
    pub request: ExportRequest,
    /// The request as OTLP protobuf, when the caller has it (spares encoding it again; ignored when items are
    /// rejected, since what is kept then differs).
    pub encoded: Option<Bytes>,
}

/// What a write did: whether the batch was stored, and which items were rejected one by one (they never reach
/// the write-ahead log).
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// Stored or recognised as a duplicate.
    pub outcome: WriteOutcome,
    /// Items rejected, by reason.
    pub rejected: model::Rejections,
}

/// What happened to a written batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Durable.
    Stored,
    /// Its id was seen recently; nothing was stored again.
    Duplicate,
}

/// A half-open time range in nanoseconds since the Unix epoch: `from <= t < to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    /// Inclusive start.
    pub from_ns: i64,
    /// Exclusive end.
    pub to_ns: i64,
}

/// Where a page of log results ended: the timestamp of its last hit and how many hits at that timestamp were shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Timestamp of the last hit returned.
    pub ts_ns: i64,
    /// Hits with exactly that timestamp already returned.
    pub seen_at_ts: u32,
}

/// `GET /api/v1/logs`.
#[derive(Debug, Clone)]
pub struct LogSearch {
    /// Parsed query.
    pub query: Query,
    /// Time range.
    pub range: TimeRange,
    /// Page size.
    pub limit: usize,
    /// Continue after this point.
    pub cursor: Option<Cursor>,
}

/// A page of log hits.
#[derive(Debug, Clone)]
pub struct LogPage {
    /// Hits, newest first.
    pub hits: Vec<LogRecord>,
    /// Where the next page starts, absent on the last page.
    pub next: Option<Cursor>,
}

/// `GET /api/v1/traces`.
#[derive(Debug, Clone)]
pub struct TraceSearch {
    /// Only spans of this service.
    pub service: Option<String>,
    /// Only spans with this operation name.
    pub operation: Option<String>,
    /// Only spans at least this long.
    pub min_duration_ms: Option<f64>,
    /// Only spans with an error status.
    pub errors_only: bool,
    /// Further conditions on the spans.
    pub query: Query,
    /// Time range (span start).
    pub range: TimeRange,
    /// Most traces to return.
    pub limit: usize,
}

/// `GET /api/v1/red`: RED (rate, errors, duration) over time, from server and consumer spans.
#[derive(Debug, Clone)]
pub struct RedQuery {
    /// Time range (span start).
    pub range: TimeRange,
    /// Buckets the range is cut into, 1 to 1000.
    pub buckets: usize,
    /// Only this service.
    pub service: Option<String>,
    /// One series per operation (span name) instead of per service.
    pub by_operation: bool,
    /// One series per version too; without it each series is all versions together (`version` is empty).
    pub by_version: bool,
}

/// How points in one step are combined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Aggregation {
    /// Mean of the values.
    Avg,
    /// Sum of the values (of each series' last value for cumulative sums).
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Per-second increase of a counter.
    Rate,
    /// A quantile (0-1) of a histogram, or of the raw values.
    Quantile(f64),
}

/// `GET /api/v1/metrics`.
#[derive(Debug, Clone)]
pub struct MetricQuery {
    /// Metric name.
    pub name: String,
    /// Condition on the series' attributes and resource attributes.
    pub filter: Query,
    /// How to combine points.
    pub aggregation: Aggregation,
    /// Label keys to group by; empty: one series per distinct attribute set.
    pub group_by: Vec<String>,
    /// Step between output points.
    pub step: Duration,
    /// Time range.
    pub range: TimeRange,
}

/// A store failure, mapped to an HTTP status by the API layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The write queue is full: retry after the given time.
    #[error("the write queue is full: retry in {}s", retry_after.as_secs())]
    Overloaded {
        /// Suggested wait.
        retry_after: Duration,
    },
    /// The store is still replaying its write-ahead log.
    #[error("the store is starting up (replaying its write-ahead log): retry shortly")]
    NotReady,
    /// The store is shutting down.
    #[error("the store is shutting down")]
    ShuttingDown,
    /// The write-ahead log cannot be written (a full or failing disk): retry once there is room.
    #[error("the write-ahead log cannot be written ({0}): the disk may be full; retry shortly")]
    Unwritable(String),
    /// The request cannot be answered as asked (e.g. a query too broad).
    #[error("{0}")]
    Invalid(String),
    /// One leaf of the query cannot be run exactly as written (a value a field cannot take, a word the index does
    /// not keep, a prefix or range too broad): refused rather than answered with other hits than asked for.
    #[error("{message}")]
    Query {
        /// Why, and what to write instead.
        message: String,
        /// Which leaf, by its index in reading order (`Query::leaves`); `gantry_query::parse_located` gives where
        /// it starts in the query text.
        leaf: usize,
    },
    /// The query would cost more than its budget allows (`budget::QueryLimits`): too many index terms to expand,
    /// or past its deadline. Not retryable as is (422): narrow it.
    #[error("{message}")]
    TooExpensive {
        /// Which limit, and how to narrow the query.
        message: String,
        /// The leaf being expanded when the limit was reached, by its index in reading order; `None` when it was
        /// reached while searching.
        leaf: Option<usize>,
    },
    /// The query turned expensive and no permit to run expensive queries came free before its deadline: retry
    /// later (503 with `Retry-After`).
    #[error(
        "{running} expensive queries are running (query_max_expensive) and none finished in time for this one: retry in {}s",
        retry_after.as_secs()
    )]
    QueriesBusy {
        /// Permits, all taken.
        running: usize,
        /// Suggested wait.
        retry_after: Duration,
    },
    /// The query was stopped because its caller went away.
    #[error("the query was cancelled: its caller went away")]
    Cancelled,
    /// Something failed inside the store.
    #[error("storage failure: {0}")]
    Internal(String),
}

impl From<std::io::Error> for StoreError {
    fn from(error: std::io::Error) -> Self {
        StoreError::Internal(error.to_string())
    }
}

/// Figures a store reports for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    /// Bytes of write-ahead log on disk.
    pub wal_bytes: u64,
    /// Batches waiting to be written.
    pub queue_depth: u64,
    /// Bytes of indexes on disk.
    pub index_bytes: u64,
    /// Number of time partitions.
    pub partitions: u64,
    /// Records indexed since start.
    pub indexed_records: u64,
    /// Records dropped because they fell outside retention when indexed.
    pub expired_records: u64,
    /// Torn or corrupt WAL bytes cut off at the last start.
    pub wal_truncated_bytes: u64,
    /// Checkpoints found unreadable at start.
    pub corrupt_checkpoints: u64,
    /// Groups of batches refused because the write-ahead log could not be written, since start.
    pub wal_failures: u64,
    /// Whether the last write-ahead log write failed (writes are refused until one succeeds).
    pub wal_failing: bool,
    /// How queries ended and how many are expensive now.
    pub queries: budget::QueryStats,
}

/// Where telemetry is kept and queried. Implemented by the embedded store and (later) ClickHouse.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Makes a batch durable; `Ok` means it survives a crash. Items the store cannot keep (a timestamp outside its
    /// retention window, a non-finite value) are removed first and reported in [`Written::rejected`].
    async fn write(&self, batch: Batch) -> Result<Written, StoreError>;
    /// Searches logs, newest first.
    async fn search_logs(&self, search: LogSearch) -> Result<LogPage, StoreError>;
    /// Counts matching logs per time bucket.
    async fn log_histogram(
        &self,
        query: Query,
        range: TimeRange,
        buckets: usize,
    ) -> Result<Vec<HistogramBucket>, StoreError>;
    /// All spans of one trace, whatever their time.
    async fn trace(&self, trace_id: &str) -> Result<Vec<SpanRecord>, StoreError>;
    /// Trace summaries, newest first.
    async fn search_traces(&self, search: TraceSearch) -> Result<Vec<TraceSummary>, StoreError>;
    /// Metric series aggregated over time steps.
    async fn metrics(&self, query: MetricQuery) -> Result<Vec<MetricSeries>, StoreError>;
    /// RED figures per service and version from server and consumer spans.
    async fn services(&self, range: TimeRange) -> Result<Vec<ServiceRow>, StoreError>;
    /// RED over time per service and version, or per operation and version (see [`RedQuery`]).
    async fn red(&self, query: RedQuery) -> Result<Vec<RedSeries>, StoreError>;
    /// The names of the metrics with points in `range`, sorted (at most 10,000).
    async fn metric_names(&self, range: TimeRange) -> Result<Vec<String>, StoreError>;
    /// Which services called which in `range`, from its newest `max_spans` spans (a span whose parent is a span
    /// of another service is a request on that edge).
    async fn service_map(
        &self,
        range: TimeRange,
        max_spans: usize,
    ) -> Result<ServiceMap, StoreError>;
    /// Whether the store has finished starting (WAL replayed) and its writer and indexer are running.
    fn is_ready(&self) -> bool;
    /// Current figures for `/metrics`.
    fn stats(&self) -> StoreStats;
    /// Stops accepting writes, makes everything written searchable, and stops background work.
    async fn shutdown(&self);
}

//! Wire types shared by the Gantry plane, agent and CLI: roles, API request and response bodies, header names.
//!
//! Everything that crosses the network between Gantry's own processes is defined here, so that the plane,
//! the agent and the CLI agree on one shape. OTLP itself uses the `opentelemetry-proto` types.
#![warn(missing_docs)]

pub mod otlp;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Header carrying a batch's idempotency key; a retried batch with a key seen recently is not stored twice.
pub const BATCH_ID_HEADER: &str = "gantry-batch-id";

/// Prefix of every Gantry API token, so that secret scanners can find leaked ones.
pub const TOKEN_PREFIX: &str = "gty_";

/// Attributes of a record, a span, a resource or a metric series: OTLP `AnyValue`s mapped to JSON.
pub type Attributes = BTreeMap<String, serde_json::Value>;

/// What a token may do. Roles are ordered by power, but `Ingest` is separate: it may only write telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Writes telemetry (OTLP) and nothing else: what agents and SDKs hold.
    Ingest,
    /// Reads telemetry and state.
    Viewer,
    /// Reads, and triggers deployments.
    Deployer,
    /// Everything, including token management.
    Admin,
}

impl Role {
    /// All roles, in the order they are listed to users.
    pub const ALL: [Role; 4] = [Role::Ingest, Role::Viewer, Role::Deployer, Role::Admin];

    /// The role's name as users write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }

    /// Whether a token of this role may perform an action of the given kind.
    ///
    /// ```
    /// use gantry_proto::{Access, Role};
    /// assert!(Role::Ingest.allows(Access::Ingest));
    /// assert!(!Role::Ingest.allows(Access::Read));
    /// assert!(Role::Deployer.allows(Access::Read));
    /// assert!(!Role::Deployer.allows(Access::Admin));
    /// ```
    pub fn allows(self, access: Access) -> bool {
        match access {
            Access::Ingest => matches!(self, Role::Ingest | Role::Admin),
            Access::Read => matches!(self, Role::Viewer | Role::Deployer | Role::Admin),
            Access::Deploy => matches!(self, Role::Deployer | Role::Admin),
            Access::Admin => self == Role::Admin,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role `{s}`: use one of ingest, viewer, deployer, admin")
            })
    }
}

/// The kind of action a route performs, checked against the caller's [`Role`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Writing telemetry.
    Ingest,
    /// Reading telemetry and state.
    Read,
    /// Changing what runs.
    Deploy,
    /// Managing tokens and settings.
    Admin,
}

/// The addresses a running plane listens on, written to `DATA_DIR/endpoints.json` once bound.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoints {
    /// The HTTP API, dashboard and OTLP/HTTP paths.
    pub http: String,
    /// OTLP over gRPC.
    pub otlp_grpc: String,
    /// OTLP over HTTP (the standard port).
    pub otlp_http: String,
}

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

/// One series of `GET /api/v1/metrics`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricSeries {
    /// The grouping labels of the series: the `group_by` keys, or the point attributes and `service.name` without one.
    pub labels: BTreeMap<String, String>,
    /// `[unix_ms, value]` pairs, one per step that has data.
    pub points: Vec<(i64, f64)>,
}

/// The answer of `GET /api/v1/metrics`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsResponse {
    /// Metric name asked for.
    pub name: String,
    /// Step between points, milliseconds.
    pub step_ms: i64,
    /// One series per label set.
    pub series: Vec<MetricSeries>,
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

/// The answer of `GET /api/v1/services`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServicesResponse {
    /// One row per service and version.
    pub services: Vec<ServiceRow>,
    /// Time spent answering, in milliseconds.
    pub took_ms: u64,
}

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// A name for people to recognise the token by (unique).
    pub name: String,
    /// What the token may do.
    pub role: Role,
}

/// A token as listed: never the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenInfo {
    /// Stable id, used to revoke.
    pub id: String,
    /// Name given at creation.
    pub name: String,
    /// What the token may do.
    pub role: Role,
    /// Creation time, RFC 3339.
    pub created: String,
}

/// The answer to a token creation: the only time the secret is shown.
#[derive(Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The token's listing entry.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The secret, `gty_...`; store it now, it cannot be shown again.
    pub token: String,
}

impl fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedToken")
            .field("info", &self.info)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Path of the heartbeat route: agents `POST` a [`NodeHeartbeat`] there with an `ingest` token.
pub const HEARTBEAT_PATH: &str = "/api/v1/nodes/heartbeat";

/// Most labels a node may carry; the plane refuses heartbeats with more, the agent refuses such a config.
pub const MAX_NODE_LABELS: usize = 64;
/// Longest node label key, in characters.
pub const MAX_NODE_LABEL_KEY_CHARS: usize = 128;
/// Longest node label value, in characters.
pub const MAX_NODE_LABEL_VALUE_CHARS: usize = 1024;

/// What an agent knows about its machine; sent with every heartbeat (the first one registers the node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeFacts {
    /// The agent's id; survives agent restarts (kept in the agent's data dir).
    pub agent_id: String,
    /// The machine's host name.
    pub hostname: String,
    /// Non-loopback IP addresses of the machine.
    pub addresses: Vec<String>,
    /// Logical CPUs.
    pub cpus: u32,
    /// Physical memory, bytes.
    pub memory_bytes: u64,
    /// Operating system, e.g. `linux 6.1.0 (Debian GNU/Linux 12)`.
    pub os: String,
    /// The agent's version.
    pub agent_version: String,
    /// Labels from the agent's config (`[labels]`), e.g. `zone = "eu-1"`.
    pub labels: BTreeMap<String, String>,
    /// Workload runtimes the node offers, e.g. `process`, `docker`.
    pub runtimes: Vec<String>,
}

/// The agent's shipping figures, as it counts them; sent with every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeShipping {
    /// Records acknowledged by the plane since the agent started.
    pub sent_records: u64,
    /// Compressed bytes acknowledged since the agent started.
    pub sent_bytes: u64,
    /// Records acknowledged per second over the last heartbeat interval.
    pub records_per_sec: f64,
    /// Compressed bytes acknowledged per second over the last heartbeat interval.
    pub bytes_per_sec: f64,
    /// Bytes in the agent's disk buffer (shipped segments not yet removed included).
    pub buffer_bytes: u64,
    /// The buffer's size limit.
    pub buffer_max_bytes: u64,
    /// Age of the oldest record not yet acknowledged, seconds (0 when all is shipped).
    pub oldest_unshipped_secs: f64,
    /// Records dropped since the agent started, all reasons.
    pub dropped_records: u64,
}

/// Body of `POST /api/v1/nodes/heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeHeartbeat {
    /// Who the node is.
    pub facts: NodeFacts,
    /// How its shipping goes.
    pub shipping: NodeShipping,
    /// Milliseconds until the next heartbeat; the plane counts missed heartbeats with it.
    pub interval_ms: u64,
}

/// Answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// True when this heartbeat registered the node (first sight, or first since it was forgotten).
    pub registered: bool,
}

/// A node's status as the plane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Heartbeats arrive.
    Up,
    /// The configured number of heartbeats in a row did not arrive.
    Down,
}

/// One entry of `GET /api/v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Up or down.
    pub status: NodeStatus,
    /// Last heartbeat, RFC 3339.
    pub last_seen: String,
    /// First registration, RFC 3339.
    pub registered: String,
    /// The node's facts from its last heartbeat.
    pub facts: NodeFacts,
    /// Its shipping figures from its last heartbeat.
    pub shipping: NodeShipping,
    /// The heartbeat interval it announced, milliseconds.
    pub interval_ms: u64,
}

/// Body of `GET /api/v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodesResponse {
    /// Every known node, by host name then agent id.
    pub nodes: Vec<NodeInfo>,
}

/// The body of every API error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do about it.
    pub error: String,
    /// For query errors, the 0-based character position in the query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_round_trips_through_text() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().unwrap_err().contains("`root`"));
    }

    #[test]
    fn created_token_debug_hides_the_secret() {
        let created = CreatedToken {
            info: TokenInfo {
                id: "1".into(),
                name: "ci".into(),
                role: Role::Viewer,
                created: String::new(),
            },
            token: "gty_secret".into(),
        };
        assert!(!format!("{created:?}").contains("gty_secret"));
    }
}

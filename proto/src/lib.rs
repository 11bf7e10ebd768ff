//! Wire types shared by the Gantry plane, agent and CLI, one module per resource: who may do what (`auth`), the
//! telemetry signals and OTLP export requests (`signal`), logs, traces, metrics, nodes, and the error body.
//!
//! Everything that crosses the network between Gantry's own processes is defined here, so that the plane, the agent
//! and the CLI agree on one shape. OTLP itself uses the `opentelemetry-proto` types. **Only wire types live here**:
//! no I/O, no HTTP server, no storage.
#![warn(missing_docs)]

pub mod auth;
pub mod deployments;
pub mod instances;
pub mod logs;
pub mod metrics;
pub mod nodes;
pub mod platform;
pub mod signal;
pub mod traces;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use auth::*;
pub use logs::*;
pub use metrics::*;
pub use nodes::*;
pub use signal::{ExportRequest, Signal};
pub use traces::*;

/// Header carrying a batch's idempotency key; a retried batch with a key seen recently is not stored twice.
pub const BATCH_ID_HEADER: &str = "gantry-batch-id";

/// Attributes of a record, a span, a resource or a metric series: OTLP `AnyValue`s mapped to JSON.
pub type Attributes = BTreeMap<String, serde_json::Value>;

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

/// The body of every API error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do about it.
    pub error: String,
    /// For query errors, the 0-based character position in the query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// For platform spec errors, where in which file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<SpecLocation>,
}

/// Where a platform spec error is: the file as the client named it, the 1-based line and column, and the field's
/// path (e.g. `services.gateway.replicas`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecLocation {
    /// The file.
    pub file: String,
    /// 1-based line; 0 when unknown.
    pub line: u64,
    /// 1-based column; 0 when unknown.
    pub column: u64,
    /// The field's path; empty for the whole document.
    pub field: String,
}

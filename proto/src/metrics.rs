//! Metric series and the metrics API's body (`GET /api/v1/metrics`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

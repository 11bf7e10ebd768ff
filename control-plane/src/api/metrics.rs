//! `GET /api/v1/metrics`: a metric's series, filtered with the query language and aggregated per step.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use gantry_proto::MetricsResponse;
use serde::Deserialize;

use super::time::parse_range;
use super::{ApiError, AppState, Caller, Params, ReadAccess, parse_query};
use gantry_store::{Aggregation, MetricQuery};

/// Most points per series.
const MAX_STEPS: i64 = 11_000;

/// Query string of the metric query.
#[derive(Debug, Deserialize)]
pub struct MetricParams {
    pub(crate) name: Option<String>,
    pub(crate) filter: Option<String>,
    pub(crate) agg: Option<String>,
    pub(crate) group_by: Option<String>,
    pub(crate) step: Option<String>,
    pub(crate) from: Option<String>,
    pub(crate) to: Option<String>,
}

fn aggregation(text: &str) -> Result<Aggregation, ApiError> {
    Ok(match text {
        "avg" => Aggregation::Avg,
        "sum" => Aggregation::Sum,
        "min" => Aggregation::Min,
        "max" => Aggregation::Max,
        "rate" => Aggregation::Rate,
        "p50" => Aggregation::Quantile(0.5),
        "p90" => Aggregation::Quantile(0.9),
        "p95" => Aggregation::Quantile(0.95),
        "p99" => Aggregation::Quantile(0.99),
        other => {
            return Err(ApiError::BadRequest(format!(
                "`agg={other}` is not supported: use avg, sum, min, max, rate, p50, p90, p95 or p99"
            )));
        }
    })
}

/// Steps like `30s`, `5m`, `1h`, or plain seconds.
fn step(text: &str) -> Result<Duration, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "`step={text}` is not a duration: use e.g. 30s, 5m or 1h"
        ))
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let amount: u64 = text[..split].parse().map_err(|_| bad())?;
    let unit = match &text[split..] {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    // At most a year: a larger step is a typo, and it keeps the arithmetic on steps far from overflow.
    match amount.checked_mul(unit) {
        Some(seconds) if seconds > 0 && seconds <= 366 * 86_400 => Ok(Duration::from_secs(seconds)),
        _ => Err(bad()),
    }
}

/// A metric query from its parameters: the metric's name, the store's query, and the parsed filter (for refusals
/// at a position).
///
/// # Errors
/// [`ApiError::BadRequest`] naming the parameter; [`ApiError::BadQuery`] for the filter.
pub(crate) fn build(
    params: MetricParams,
) -> Result<(String, MetricQuery, super::ParsedQuery), ApiError> {
    let name = params.name.filter(|name| !name.is_empty()).ok_or_else(|| {
        ApiError::BadRequest("`name` is required: the metric to query".to_owned())
    })?;
    let range = parse_range(params.from.as_deref(), params.to.as_deref())?;
    let width = range.to_ns - range.from_ns;
    let step = match params.step.as_deref() {
        Some(text) if !text.is_empty() => step(text)?,
        // About 120 points over the range, at least a second apart.
        _ => Duration::from_secs(((width / 120) / 1_000_000_000).max(1) as u64),
    };
    if width / step.as_nanos() as i64 > MAX_STEPS {
        return Err(ApiError::BadRequest(format!(
            "the range holds more than {MAX_STEPS} steps of {}s: use a larger step",
            step.as_secs()
        )));
    }
    let group_by = params
        .group_by
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(str::to_owned)
        .collect();
    let filter = parse_query(params.filter.as_deref())?;
    let query = MetricQuery {
        name: name.clone(),
        filter: filter.query.clone(),
        aggregation: aggregation(params.agg.as_deref().unwrap_or("avg"))?,
        group_by,
        step,
        range,
    };
    Ok((name, query, filter))
}

/// `GET /api/v1/metrics`.
pub async fn query(
    _: Caller<ReadAccess>,
    State(state): State<AppState>,
    Params(params): Params<MetricParams>,
) -> Result<Json<MetricsResponse>, ApiError> {
    let started = Instant::now();
    let (name, query, filter) = build(params)?;
    let step = query.step;
    let series = state
        .store
        .metrics(query)
        .await
        .map_err(|error| filter.refusal(error))?;
    let took_ms = state.query_done("metrics", started);
    Ok(Json(MetricsResponse {
        name,
        step_ms: step.as_millis() as i64,
        series,
        took_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_aggregations() {
        assert_eq!(step("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(step("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(step("60").unwrap(), Duration::from_secs(60));
        assert!(step("0s").is_err() && step("5y").is_err());
        assert!(step("99999999999999999d").is_err() && step("400d").is_err());
        assert_eq!(aggregation("p95").unwrap(), Aggregation::Quantile(0.95));
        assert!(aggregation("median").is_err());
    }
}

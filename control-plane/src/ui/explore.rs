//! `GET /explore`: the metrics explorer: pick a metric (from those with points in the range), an aggregation, a
//! group-by and a filter in the query language; one line per group, over the chosen range.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::chart::{Chart, Series, Unit};
use super::{Layout, Range, RangePicker, UiError, Viewer, html};
use crate::api::metrics::MetricParams;
use crate::api::{ApiError, AppState};

/// The aggregations offered, as the API names them.
pub const AGGREGATIONS: [&str; 9] = [
    "avg", "sum", "min", "max", "rate", "p50", "p90", "p95", "p99",
];

/// Lines drawn at most (the groups with the largest values first).
pub const MAX_LINES: usize = 8;

#[derive(Template)]
#[template(path = "explore.html")]
struct ExplorePage {
    layout: Layout,
    picker: RangePicker,
    range: Range,
    names: Vec<String>,
    name: String,
    agg: String,
    group_by: String,
    filter: String,
    aggregations: [&'static str; 9],
    chart: Option<Chart>,
    groups: usize,
    error: Option<String>,
}

/// `?name=&agg=&group_by=&filter=&from=&to=` of the explorer.
#[derive(Debug, Deserialize)]
pub struct ExploreQuery {
    name: Option<String>,
    agg: Option<String>,
    group_by: Option<String>,
    filter: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// Runs a metric query over `range` as `GET /api/v1/metrics` would (`group_by` comma-separated, `filter` in the
/// query language) and draws it: a line per group, the [`MAX_LINES`] with the highest peaks. Returns the chart and
/// how many groups there were.
///
/// # Errors
/// The query's parameters or filter are refused (400, at a position), or the store failed.
pub async fn metric_chart(
    state: &AppState,
    range: &Range,
    metric: &str,
    agg: &str,
    group_by: &str,
    filter: &str,
) -> Result<(Chart, usize), ApiError> {
    let (_, query, parsed) = crate::api::metrics::build(MetricParams {
        name: Some(metric.to_owned()),
        filter: Some(filter.to_owned()),
        agg: Some(agg.to_owned()),
        group_by: Some(group_by.to_owned()),
        step: None,
        from: Some(range.from.clone()),
        to: Some(range.to.clone()),
    })?;
    let mut series = state
        .store
        .metrics(query)
        .await
        .map_err(|e| parsed.refusal(e))?;
    let peak = |s: &gantry_proto::MetricSeries| {
        s.points
            .iter()
            .map(|p| p.1)
            .filter(|v| v.is_finite())
            .fold(f64::MIN, f64::max)
    };
    series.sort_by(|a, b| peak(b).total_cmp(&peak(a)));
    let lines: Vec<Series> = series
        .iter()
        .take(MAX_LINES)
        .map(|s| Series {
            label: if s.labels.is_empty() {
                metric.to_owned()
            } else {
                s.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            points: s
                .points
                .iter()
                .map(|&(ns, v)| (ns / 1_000_000, v))
                .collect(),
            emphasis: false,
        })
        .collect();
    let chart = Chart::lines(
        &format!("{agg}({metric})"),
        Unit::Value,
        range.range.from_ns / 1_000_000,
        range.range.to_ns / 1_000_000,
        &lines,
        &[],
    );
    Ok((chart, series.len()))
}

/// `GET /explore`.
pub async fn page(
    viewer: Viewer,
    State(state): State<AppState>,
    Query(query): Query<ExploreQuery>,
) -> Result<Response, UiError> {
    let range = Range::parse(query.from.as_deref(), query.to.as_deref(), "-1h")?;
    let names = state
        .store
        .metric_names(range.range)
        .await
        .map_err(ApiError::from)?;
    let name = query.name.unwrap_or_default().trim().to_owned();
    let agg = query
        .agg
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "avg".to_owned());
    let group_by = query.group_by.unwrap_or_default();
    let filter = query.filter.unwrap_or_default();
    let mut chart = None;
    let mut groups = 0;
    let mut error = None;
    if !name.is_empty() {
        match metric_chart(&state, &range, &name, &agg, &group_by, &filter).await {
            Ok((drawn, count)) => {
                chart = Some(drawn);
                groups = count;
            }
            Err(
                e @ (ApiError::BadRequest(_)
                | ApiError::BadQuery { .. }
                | ApiError::TooExpensive { .. }),
            ) => error = Some(e.to_string()),
            Err(other) => return Err(other.into()),
        }
    }
    let page = ExplorePage {
        layout: viewer.layout("explore", "Metrics".into()),
        picker: range.picker(&[
            ("name", &name),
            ("agg", &agg),
            ("group_by", &group_by),
            ("filter", &filter),
        ]),
        range,
        names,
        name,
        agg,
        group_by,
        filter,
        aggregations: AGGREGATIONS,
        chart,
        groups,
        error,
    };
    Ok(html(&page))
}

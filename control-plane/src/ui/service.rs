//! `GET /services/{name}`: a service's RED charts over the chosen range with one line per version (a canary stands
//! out) and its deploys as markers, its endpoints (span names) with their RED, its instances with their nodes and
//! health, its revisions with their diffs, its deployments with their decision records, its newest error logs, and
//! its slowest and failed traces.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use gantry_proto::deployments::Deployment;
use gantry_proto::platform::{InstanceStatus, Revision};
use gantry_proto::{LogRecord, RedSeries, TraceSummary};
use gantry_query::Query as Ast;
use gantry_store::{LogSearch, RedQuery, TraceSearch};
use serde::Deserialize;

use super::chart::{Chart, Series, Unit};
use super::{Layout, Range, RangePicker, UiError, Viewer, blocking, format, html};
use crate::api::{ApiError, AppState};
use crate::state::platform::PlatformError;

/// Buckets of the service's charts.
const BUCKETS: usize = 60;

#[derive(Template)]
#[template(path = "service.html")]
struct ServicePage {
    layout: Layout,
    name: String,
    range: Range,
    picker: RangePicker,
    charts: Vec<Chart>,
    versions: Vec<RedSeries>,
    endpoints: Vec<RedSeries>,
    instances: Vec<InstanceStatus>,
    replicas: Option<u32>,
    current_version: String,
    revisions: Vec<Revision>,
    deploys: Vec<Deployment>,
    errors: Vec<LogRecord>,
    slowest: Vec<TraceSummary>,
    failed: Vec<TraceSummary>,
    errors_query: String,
    logs_query: String,
    /// Whether a rollout of this service runs now (no rollback button then: abort it instead).
    rolling_out: bool,
}

impl ServicePage {
    fn fmt_ms(&self, ms: &f64) -> String {
        format::millis(*ms)
    }
    fn fmt_pct(&self, ratio: &f64) -> String {
        format::percent(*ratio)
    }
    fn fmt_rate(&self, rate: &f64) -> String {
        format!("{}/s", format::number(*rate))
    }
    fn clock(&self, ns: &i64) -> String {
        format::clock_ns(*ns)
    }
    fn text(&self, text: impl AsRef<str>) -> String {
        format::visible(text.as_ref())
    }
    fn json(&self, value: &Option<serde_json::Value>) -> String {
        value
            .as_ref()
            .map_or("-".to_owned(), |v| format::visible(&v.to_string()))
    }
}

/// `?from=&to=` of the service page.
#[derive(Debug, Deserialize)]
pub struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
}

/// `service:NAME AND severity:>=error`, as an AST (never spliced into query text).
fn error_logs(service: &str) -> Ast {
    Ast::And(vec![
        Ast::Term {
            field: Some("service".into()),
            value: service.to_owned(),
        },
        gantry_query::parse("severity:>=error").unwrap_or(Ast::All),
    ])
}

/// `GET /services/{name}`.
pub async fn page(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<RangeQuery>,
) -> Result<Response, UiError> {
    let range = Range::parse(query.from.as_deref(), query.to.as_deref(), "-1h")?;
    let red = |by_operation, by_version| RedQuery {
        range: range.range,
        buckets: BUCKETS,
        service: Some(name.clone()),
        by_operation,
        by_version,
    };
    let store = state.store.clone();
    let errors_ast = error_logs(&name);
    let (versions, endpoints, errors, traces, failed) = tokio::try_join!(
        store.red(red(false, true)),
        store.red(red(true, false)),
        store.search_logs(LogSearch {
            query: errors_ast.clone(),
            range: range.range,
            limit: 20,
            cursor: None,
        }),
        store.search_traces(TraceSearch {
            service: Some(name.clone()),
            operation: None,
            min_duration_ms: None,
            errors_only: false,
            query: Ast::All,
            range: range.range,
            limit: 100,
        }),
        store.search_traces(TraceSearch {
            service: Some(name.clone()),
            operation: None,
            min_duration_ms: None,
            errors_only: true,
            query: Ast::All,
            range: range.range,
            limit: 10,
        }),
    )
    .map_err(ApiError::from)?;
    let service = name.clone();
    let (placements, revisions, deploys) = blocking(&state.platform, move |platform| {
        let placements = match platform.placements(&service) {
            Ok(found) => Some(found),
            Err(PlatformError::NotFound(_)) => None,
            Err(other) => return Err(other),
        };
        let revisions = match platform.revisions(&service) {
            Ok(revisions) => revisions,
            Err(PlatformError::NotFound(_)) => Vec::new(),
            Err(other) => return Err(other),
        };
        let deploys = platform.db().read(|c| {
            crate::state::deployments::list(c, Some(&service), 0, u64::MAX, 20)?
                .iter()
                .map(|row| crate::state::deployments::to_api(c, row))
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok((placements, revisions, deploys))
    })
    .await?;
    if placements.is_none() && versions.is_empty() && endpoints.is_empty() {
        return Err(UiError::NotFound(format!(
            "no service `{name}`: neither deployed nor seen in telemetry in this range"
        )));
    }
    let (replicas, current_version, instances) = match placements {
        Some((deployed, slots)) => (
            Some(deployed.replicas),
            deployed.version.clone(),
            crate::api::platform::instance_statuses(&state, slots),
        ),
        None => (None, String::new(), Vec::new()),
    };
    let from_ms = range.range.from_ns / 1_000_000;
    let to_ms = range.range.to_ns / 1_000_000;
    let markers = super::overview::markers(&deploys)
        .remove(&name)
        .unwrap_or_default();
    let per_version = |value: &dyn Fn(&gantry_proto::RedPoint, f64) -> Option<f64>| -> Vec<Series> {
        versions
            .iter()
            .map(|s| Series {
                label: if s.total.version.is_empty() {
                    "(no version)".to_owned()
                } else {
                    s.total.version.clone()
                },
                points: s
                    .points
                    .iter()
                    .filter_map(|p| {
                        value(p, s.step_ms.max(1) as f64 / 1000.0).map(|v| (p.start_unix_ms, v))
                    })
                    .collect(),
                emphasis: !current_version.is_empty() && s.total.version != current_version,
            })
            .collect()
    };
    let charts = vec![
        Chart::lines(
            "Request rate",
            Unit::PerSecond,
            from_ms,
            to_ms,
            &per_version(&|p, seconds| Some(p.requests as f64 / seconds)),
            &markers,
        ),
        Chart::lines(
            "Error ratio",
            Unit::Ratio,
            from_ms,
            to_ms,
            &per_version(&|p, _| (p.requests > 0).then(|| p.errors as f64 / p.requests as f64)),
            &markers,
        ),
        Chart::lines(
            "p99 latency",
            Unit::Millis,
            from_ms,
            to_ms,
            &per_version(&|p, _| (p.requests > 0).then_some(p.p99_ms)),
            &markers,
        ),
    ];
    let mut slowest = traces;
    slowest.sort_by(|a, b| b.duration_ms.total_cmp(&a.duration_ms));
    slowest.truncate(10);
    let mut endpoints = endpoints;
    endpoints.sort_by_key(|s| std::cmp::Reverse(s.total.requests));
    let name_for_query = name.clone();
    let rolling_out = deploys.iter().any(|d| d.status.active());
    let page = ServicePage {
        layout: viewer.layout("overview", name.clone()),
        picker: range.picker(&[]),
        name,
        range,
        charts,
        versions,
        endpoints,
        instances,
        replicas,
        current_version,
        revisions: revisions.into_iter().take(10).collect(),
        deploys,
        errors: errors.hits,
        slowest,
        failed,
        errors_query: errors_ast.to_string(),
        logs_query: Ast::Term {
            field: Some("service".into()),
            value: name_for_query,
        }
        .to_string(),
        rolling_out,
    };
    Ok(html(&page))
}

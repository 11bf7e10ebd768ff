//! `GET /dashboards` (the dashboards loaded at start) and `GET /dashboards/{name}`: a dashboard's panels over its
//! range (its own default, or the page's `from`/`to`), each drawn from the store as the API would answer it.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use gantry_proto::LogRecord;
use gantry_store::{LogSearch, RedQuery};
use serde::Deserialize;

use super::chart::{Chart, Series, Unit};
use super::{Layout, Range, RangePicker, UiError, Viewer, format, html};
use crate::api::{ApiError, AppState};
use crate::dashboards::{Dashboard, Panel, PanelKind};
use crate::state::deployments;

/// What a panel shows once drawn.
pub enum Body {
    /// One or more charts.
    Charts(Vec<Chart>),
    /// Log lines, newest first.
    Logs(Vec<LogRecord>),
    /// Why it could not be drawn (a query the store refuses, a store busy): the rest of the dashboard still is.
    Failed(String),
}

/// A drawn panel.
pub struct PanelView {
    /// Its title.
    pub title: String,
    /// 1 or 2.
    pub width: u8,
    /// Its content.
    pub body: Body,
}

#[derive(Template)]
#[template(path = "boards.html")]
struct BoardsPage {
    layout: Layout,
    dashboards: Vec<(String, String, usize)>,
}

/// `GET /dashboards`.
pub async fn list(viewer: Viewer, State(state): State<AppState>) -> Result<Response, UiError> {
    let page = BoardsPage {
        layout: viewer.layout("dashboards", "Dashboards".into()),
        dashboards: state
            .dashboards
            .iter()
            .map(|d| (d.name.clone(), d.title.clone(), d.panels.len()))
            .collect(),
    };
    Ok(html(&page))
}

#[derive(Template)]
#[template(path = "board.html")]
struct BoardPage {
    layout: Layout,
    picker: RangePicker,
    title: String,
    panels: Vec<PanelView>,
}

impl BoardPage {
    fn clock(&self, ns: &i64) -> String {
        format::clock_ns(*ns)
    }
    fn text(&self, text: impl AsRef<str>) -> String {
        format::visible(text.as_ref())
    }
}

/// `?from=&to=` of a dashboard.
#[derive(Debug, Deserialize)]
pub struct BoardQuery {
    from: Option<String>,
    to: Option<String>,
}

async fn draw(state: &AppState, panel: &Panel, range: &Range) -> Result<Body, ApiError> {
    let (from_ms, to_ms) = (
        range.range.from_ns / 1_000_000,
        range.range.to_ns / 1_000_000,
    );
    Ok(match &panel.kind {
        PanelKind::Metric {
            metric,
            agg,
            group_by,
            filter,
        } => {
            let (chart, _) = super::explore::metric_chart(
                state,
                range,
                metric,
                agg,
                &group_by.join(","),
                filter,
            )
            .await?;
            Body::Charts(vec![chart])
        }
        PanelKind::LogCount { query } => {
            let parsed = crate::api::parse_query(Some(query))?;
            let buckets = state
                .store
                .log_histogram(parsed.query.clone(), range.range, 60)
                .await
                .map_err(|e| parsed.refusal(e))?;
            let step = ((to_ms - from_ms) / 60).max(1);
            let counts: Vec<(i64, u64)> =
                buckets.iter().map(|b| (b.start_unix_ms, b.count)).collect();
            Body::Charts(vec![Chart::bars(query, from_ms, to_ms, step, &counts)])
        }
        PanelKind::Red { service } => {
            let series = state
                .store
                .red(RedQuery {
                    range: range.range,
                    buckets: 60,
                    service: service.clone(),
                    by_operation: false,
                    by_version: service.is_some(),
                })
                .await?;
            let line =
                |s: &gantry_proto::RedSeries,
                 value: &dyn Fn(&gantry_proto::RedPoint) -> Option<f64>| Series {
                    label: if service.is_some() {
                        s.total.version.clone()
                    } else {
                        s.total.service.clone()
                    },
                    points: s
                        .points
                        .iter()
                        .filter_map(|p| value(p).map(|v| (p.start_unix_ms, v)))
                        .collect(),
                    emphasis: false,
                };
            let seconds = |s: &gantry_proto::RedSeries| s.step_ms.max(1) as f64 / 1000.0;
            // The service's deploys as bands on its charts.
            let markers = match service {
                Some(name) => {
                    let name = name.clone();
                    let deploys = crate::api::blocking(&state.platform, move |platform| {
                        platform
                            .db()
                            .read(|c| {
                                deployments::list(c, Some(&name), 0, u64::MAX, 50)?
                                    .iter()
                                    .map(|row| deployments::to_api(c, row))
                                    .collect::<rusqlite::Result<Vec<_>>>()
                            })
                            .map_err(crate::state::platform::PlatformError::from)
                    })
                    .await?;
                    super::overview::markers(&deploys)
                        .into_values()
                        .flatten()
                        .collect()
                }
                None => Vec::new(),
            };
            let mut by_rate: Vec<&gantry_proto::RedSeries> = series.iter().collect();
            by_rate.sort_by_key(|s| std::cmp::Reverse(s.total.requests));
            by_rate.truncate(super::explore::MAX_LINES);
            let rate: Vec<Series> = by_rate
                .iter()
                .map(|s| line(s, &|p| Some(p.requests as f64 / seconds(s))))
                .collect();
            let mut charts = vec![Chart::lines(
                "Request rate",
                Unit::PerSecond,
                from_ms,
                to_ms,
                &rate,
                &markers,
            )];
            if service.is_some() {
                let errors: Vec<Series> = by_rate
                    .iter()
                    .map(|s| {
                        line(s, &|p| {
                            (p.requests > 0).then(|| p.errors as f64 / p.requests as f64)
                        })
                    })
                    .collect();
                let p99: Vec<Series> = by_rate
                    .iter()
                    .map(|s| line(s, &|p| (p.requests > 0).then_some(p.p99_ms)))
                    .collect();
                charts.push(Chart::lines(
                    "Error ratio",
                    Unit::Ratio,
                    from_ms,
                    to_ms,
                    &errors,
                    &markers,
                ));
                charts.push(Chart::lines(
                    "p99 latency",
                    Unit::Millis,
                    from_ms,
                    to_ms,
                    &p99,
                    &markers,
                ));
            }
            Body::Charts(charts)
        }
        PanelKind::Logs { query, limit } => {
            let parsed = crate::api::parse_query(Some(query))?;
            let page = state
                .store
                .search_logs(LogSearch {
                    query: parsed.query.clone(),
                    range: range.range,
                    limit: *limit,
                    cursor: None,
                })
                .await
                .map_err(|e| parsed.refusal(e))?;
            Body::Logs(page.hits)
        }
    })
}

/// `GET /dashboards/{name}`.
pub async fn page(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<BoardQuery>,
) -> Result<Response, UiError> {
    let dashboard: Dashboard = state
        .dashboards
        .iter()
        .find(|d| d.name == name)
        .cloned()
        .ok_or_else(|| {
            UiError::NotFound(format!("no dashboard `{name}`: /dashboards lists them"))
        })?;
    let range = Range::parse(query.from.as_deref(), query.to.as_deref(), &dashboard.range)?;
    let mut panels = Vec::with_capacity(dashboard.panels.len());
    for panel in &dashboard.panels {
        let body = match draw(&state, panel, &range).await {
            Ok(body) => body,
            Err(ApiError::Internal(message)) => {
                tracing::error!(error = %message, dashboard = %name, panel = %panel.title, "panel failed");
                Body::Failed("the plane failed to draw this panel; its log has the details".into())
            }
            Err(other) => Body::Failed(other.to_string()),
        };
        panels.push(PanelView {
            title: panel.title.clone(),
            width: panel.width,
            body,
        });
    }
    let page = BoardPage {
        layout: viewer.layout("dashboards", dashboard.title.clone()),
        picker: range.picker(&[]),
        title: dashboard.title,
        panels,
    };
    Ok(html(&page))
}

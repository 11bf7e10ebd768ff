//! `GET /traces` (search by service, operation, duration, status and attributes; a duration scatter plot and the
//! result list) and `GET /traces/{trace_id}` (the waterfall, with service colours, durations, errors and each
//! span's attributes, and the trace's logs beside it).

use std::collections::{BTreeMap, HashMap};

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use gantry_proto::{LogRecord, SpanRecord, TraceSummary};
use gantry_query::Query as Ast;
use gantry_store::{LogSearch, TraceSearch};
use serde::Deserialize;

use super::chart::{Chart, Unit};
use super::{Layout, Range, RangePicker, UiError, Viewer, format, html};
use crate::api::{ApiError, AppState};

#[derive(Template)]
#[template(path = "traces.html")]
struct TracesPage {
    layout: Layout,
    range: Range,
    picker: RangePicker,
    service: String,
    operation: String,
    min_duration_ms: String,
    errors_only: bool,
    q: String,
    services: Vec<String>,
    scatter: Chart,
    traces: Vec<TraceSummary>,
    error: Option<String>,
}

impl TracesPage {
    fn clock(&self, ns: &i64) -> String {
        format::clock_ns(*ns)
    }
    fn fmt_ms(&self, ms: &f64) -> String {
        format::millis(*ms)
    }
    fn text(&self, text: impl AsRef<str>) -> String {
        format::visible(text.as_ref())
    }
}

/// `?service=&operation=&min_duration_ms=&status=&q=&from=&to=` of the trace search.
#[derive(Debug, Default, Deserialize)]
pub struct SearchQuery {
    service: Option<String>,
    operation: Option<String>,
    min_duration_ms: Option<String>,
    status: Option<String>,
    q: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// `GET /traces`.
pub async fn search(
    viewer: Viewer,
    State(state): State<AppState>,
    Query(query): Query<SearchQuery>,
) -> Result<Response, UiError> {
    let range = Range::parse(query.from.as_deref(), query.to.as_deref(), "-1h")?;
    let service = query.service.unwrap_or_default().trim().to_owned();
    let operation = query.operation.unwrap_or_default().trim().to_owned();
    let min_duration = query.min_duration_ms.unwrap_or_default().trim().to_owned();
    let errors_only = query.status.as_deref() == Some("error");
    let q = query.q.unwrap_or_default();
    let picker = range.picker(&[
        ("service", &service),
        ("operation", &operation),
        ("min_duration_ms", &min_duration),
        ("status", if errors_only { "error" } else { "" }),
        ("q", &q),
    ]);
    let mut error = None;
    let min_duration_ms = if min_duration.is_empty() {
        None
    } else {
        match min_duration.parse::<f64>() {
            Ok(ms) if ms >= 0.0 && ms.is_finite() => Some(ms),
            _ => {
                error = Some(format!(
                    "minimum duration `{min_duration}` is not a number of milliseconds"
                ));
                None
            }
        }
    };
    let services: Vec<String> = state
        .store
        .services(range.range)
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(|row| row.service)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut traces = Vec::new();
    if error.is_none() {
        let found = async {
            let parsed = crate::api::parse_query(Some(&q))?;
            state
                .store
                .search_traces(TraceSearch {
                    service: Some(service.clone()).filter(|s| !s.is_empty()),
                    operation: Some(operation.clone()).filter(|s| !s.is_empty()),
                    min_duration_ms,
                    errors_only,
                    query: parsed.query.clone(),
                    range: range.range,
                    limit: 100,
                })
                .await
                .map_err(|e| parsed.refusal(e))
        }
        .await;
        match found {
            Ok(found) => traces = found,
            Err(
                e @ (ApiError::BadQuery { .. }
                | ApiError::BadRequest(_)
                | ApiError::TooExpensive { .. }),
            ) => error = Some(e.to_string()),
            Err(other) => return Err(other.into()),
        }
    }
    let points: Vec<(i64, f64, String, String, bool)> = traces
        .iter()
        .map(|t| {
            (
                t.start_unix_nano / 1_000_000,
                t.duration_ms,
                format!("/traces/{}", t.trace_id),
                format!(
                    "{} · {} · {}",
                    t.root_service,
                    format::visible(&t.root_name),
                    format::millis(t.duration_ms)
                ),
                t.error,
            )
        })
        .collect();
    let scatter = Chart::scatter(
        "Trace durations (click a dot)",
        Unit::Millis,
        range.range.from_ns / 1_000_000,
        range.range.to_ns / 1_000_000,
        &points,
    );
    let page = TracesPage {
        layout: viewer.layout("traces", "Traces".into()),
        picker,
        range,
        service,
        operation,
        min_duration_ms: min_duration,
        errors_only,
        q,
        services,
        scatter,
        traces,
        error,
    };
    Ok(html(&page))
}

/// One row of the waterfall.
pub struct SpanRow {
    /// The span.
    pub span: SpanRecord,
    /// Nesting depth (0: a root, or a span whose parent is missing).
    pub depth: usize,
    /// Where the bar starts, per mille of the trace.
    pub offset: f64,
    /// How wide it is, per mille of the trace (at least 2).
    pub width: f64,
    /// Palette index of its service.
    pub color: usize,
}

/// Orders spans depth-first from their roots (children by start time) and places their bars on the trace's time.
pub fn waterfall(mut spans: Vec<SpanRecord>) -> Vec<SpanRow> {
    spans.sort_by_key(|s| (s.start_unix_nano, s.span_id.clone()));
    let start = spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_unix_nano).max().unwrap_or(start);
    let total = (end - start).max(1) as f64;
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<String, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        if span.parent_span_id.is_empty()
            || !ids.contains(span.parent_span_id.as_str())
            || span.parent_span_id == span.span_id
        {
            roots.push(i);
        } else {
            children
                .entry(span.parent_span_id.clone())
                .or_default()
                .push(i);
        }
    }
    let mut colors: BTreeMap<String, usize> = BTreeMap::new();
    for span in &spans {
        let next = colors.len();
        colors.entry(span.service.clone()).or_insert(next % 8);
    }
    let mut order = Vec::with_capacity(spans.len());
    let mut seen = vec![false; spans.len()];
    let mut stack: Vec<(usize, usize)> = roots.into_iter().rev().map(|i| (i, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        order.push((i, depth));
        if let Some(kids) = children.get(&spans[i].span_id) {
            stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
        }
    }
    // Spans in a cycle of parents (malformed input) are shown at the end rather than lost.
    order.extend((0..spans.len()).filter(|&i| !seen[i]).map(|i| (i, 0)));
    let mut slots: Vec<Option<SpanRecord>> = spans.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|(i, depth)| {
            let span = slots[i].take()?;
            let offset = (span.start_unix_nano - start) as f64 / total * 1000.0;
            let width = ((span.end_unix_nano - span.start_unix_nano).max(0) as f64 / total
                * 1000.0)
                .max(2.0)
                .min(1000.0 - offset.min(998.0));
            Some(SpanRow {
                color: colors.get(&span.service).copied().unwrap_or(0),
                span,
                depth,
                offset,
                width,
            })
        })
        .collect()
}

#[derive(Template)]
#[template(path = "trace.html")]
struct TracePage {
    layout: Layout,
    trace_id: String,
    rows: Vec<SpanRow>,
    services: Vec<(String, usize)>,
    duration_ms: f64,
    start_ns: i64,
    errors: usize,
    hits: Vec<LogRecord>,
}

impl TracePage {
    fn clock(&self, ns: &i64) -> String {
        format::clock_ns(*ns)
    }
    fn fmt_ms(&self, ms: &f64) -> String {
        format::millis(*ms)
    }
    fn text(&self, text: impl AsRef<str>) -> String {
        format::visible(text.as_ref())
    }
    /// An event's time after its span's start.
    fn offset(&self, at: &i64, start: &i64) -> String {
        format::millis((*at - *start) as f64 / 1e6)
    }
    fn indent(&self, depth: &usize) -> String {
        "· ".repeat((*depth).min(30))
    }
}

/// `GET /traces/{trace_id}`.
pub async fn view(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(trace_id): Path<String>,
) -> Result<Response, UiError> {
    let trace_id = trace_id.to_ascii_lowercase();
    if trace_id.len() != 32 || !trace_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(UiError::BadRequest(format!(
            "`{trace_id}` is not a trace id: expected 32 hex digits"
        )));
    }
    let logs_query = Ast::Term {
        field: Some("trace_id".into()),
        value: trace_id.clone(),
    };
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    let (spans, logs) = tokio::join!(
        state.store.trace(&trace_id),
        state.store.search_logs(LogSearch {
            query: logs_query,
            range: gantry_store::TimeRange {
                from_ns: 0,
                to_ns: now_ns.saturating_add(3600 * 1_000_000_000),
            },
            limit: 200,
            cursor: None,
        }),
    );
    let spans = spans.map_err(ApiError::from)?;
    if spans.is_empty() {
        return Err(UiError::NotFound(format!("no spans of trace {trace_id}")));
    }
    let mut hits = logs.map_err(ApiError::from)?.hits;
    hits.reverse();
    let start_ns = spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
    let end_ns = spans
        .iter()
        .map(|s| s.end_unix_nano)
        .max()
        .unwrap_or(start_ns);
    let errors = spans.iter().filter(|s| s.status == "error").count();
    let rows = waterfall(spans);
    let mut services: Vec<(String, usize)> = rows
        .iter()
        .map(|r| (r.span.service.clone(), r.color))
        .collect();
    services.sort();
    services.dedup();
    let page = TracePage {
        layout: viewer.layout("traces", format!("Trace {trace_id}")),
        trace_id,
        rows,
        services,
        duration_ms: (end_ns - start_ns) as f64 / 1e6,
        start_ns,
        errors,
        hits,
    };
    Ok(html(&page))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: &str, service: &str, start: i64, end: i64) -> SpanRecord {
        SpanRecord {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            name: id.into(),
            service: service.into(),
            version: String::new(),
            kind: "server".into(),
            start_unix_nano: start,
            end_unix_nano: end,
            duration_ms: (end - start) as f64 / 1e6,
            status: "ok".into(),
            status_message: String::new(),
            attributes: Default::default(),
            resource: Default::default(),
            events: Vec::new(),
        }
    }

    #[test]
    fn the_waterfall_nests_children_under_parents_in_start_order() {
        let rows = waterfall(vec![
            span("c2", "root", "b", 60, 90),
            span("root", "", "a", 0, 100),
            span("c1", "root", "b", 10, 50),
            span("g1", "c1", "c", 20, 30),
            span("orphan", "missing", "d", 95, 100),
        ]);
        let order: Vec<(&str, usize)> = rows
            .iter()
            .map(|r| (r.span.span_id.as_str(), r.depth))
            .collect();
        assert_eq!(
            order,
            vec![("root", 0), ("c1", 1), ("g1", 2), ("c2", 1), ("orphan", 0)]
        );
        assert_eq!(rows[0].width, 1000.0);
        assert_eq!(rows[1].offset, 100.0);
        assert_ne!(rows[0].color, rows[1].color);
        assert_eq!(rows[1].color, rows[3].color);
    }
}

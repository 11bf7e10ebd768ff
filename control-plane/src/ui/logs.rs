//! `GET /logs`: the query box (the Lucene-style language, with a help popover and the parser's error shown at its
//! position), the time range picker, a histogram of matches over time (drag across it to zoom), results newest
//! first with severity colours, each expandable to all its attributes and linked to its trace and its service,
//! and "more" paging by cursor.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use gantry_proto::LogRecord;
use gantry_store::LogSearch;
use serde::Deserialize;

use super::chart::Chart;
use super::{Layout, Range, RangePicker, UiError, Viewer, format, html};
use crate::api::{ApiError, AppState};

/// Hits per page.
pub const PAGE: usize = 100;

/// Histogram buckets.
const BUCKETS: usize = 60;

#[derive(Template)]
#[template(path = "logs.html")]
struct LogsPage {
    layout: Layout,
    q: String,
    range: Range,
    picker: RangePicker,
    histogram: Option<Chart>,
    hits: Vec<LogRecord>,
    more: Option<String>,
    /// The query's error and where it is: (message, the query before it, the rest).
    error: Option<(String, String, String)>,
    took_ms: u128,
    shown: usize,
}

impl LogsPage {
    fn clock(&self, ns: &i64) -> String {
        format::clock_ns(*ns)
    }
    fn text(&self, text: impl AsRef<str>) -> String {
        format::visible(text.as_ref())
    }
}

/// `?q=&from=&to=&cursor=` of the logs page.
#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    q: Option<String>,
    from: Option<String>,
    to: Option<String>,
    cursor: Option<String>,
}

/// `GET /logs`.
pub async fn page(
    viewer: Viewer,
    State(state): State<AppState>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, UiError> {
    let started = std::time::Instant::now();
    let range = Range::parse(query.from.as_deref(), query.to.as_deref(), "-1h")?;
    let q = query.q.unwrap_or_default();
    let picker = range.picker(&[("q", &q)]);
    let mut page = LogsPage {
        layout: viewer.layout(
            "logs",
            if q.is_empty() {
                "Logs".into()
            } else {
                format!("Logs: {q}")
            },
        ),
        picker,
        q: q.clone(),
        range: range.clone(),
        histogram: None,
        hits: Vec::new(),
        more: None,
        error: None,
        took_ms: 0,
        shown: 0,
    };
    let outcome = async {
        let parsed = crate::api::parse_query(Some(&q))?;
        let cursor = query
            .cursor
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(crate::api::logs::decode_cursor)
            .transpose()?;
        let search = LogSearch {
            query: parsed.query.clone(),
            range: range.range,
            limit: PAGE,
            cursor,
        };
        let (found, counts) = tokio::join!(
            state.store.search_logs(search),
            state
                .store
                .log_histogram(parsed.query.clone(), range.range, BUCKETS),
        );
        let found = found.map_err(|error| parsed.refusal(error))?;
        let counts = counts.map_err(|error| parsed.refusal(error))?;
        Ok::<_, ApiError>((found, counts))
    }
    .await;
    match outcome {
        Ok((found, counts)) => {
            let (from_ms, to_ms) = (
                range.range.from_ns / 1_000_000,
                range.range.to_ns / 1_000_000,
            );
            let step_ms = ((to_ms - from_ms) / BUCKETS as i64).max(1);
            let buckets: Vec<(i64, u64)> =
                counts.iter().map(|b| (b.start_unix_ms, b.count)).collect();
            page.histogram = Some(Chart::bars(
                "Matches over time (drag to zoom)",
                from_ms,
                to_ms,
                step_ms,
                &buckets,
            ));
            page.shown = found.hits.len();
            page.hits = found.hits;
            page.more = found.next.map(|cursor| {
                serde_urlencoded::to_string([
                    ("q", q.as_str()),
                    ("from", range.from.as_str()),
                    ("to", range.to.as_str()),
                    ("cursor", crate::api::logs::encode_cursor(cursor).as_str()),
                ])
                .unwrap_or_default()
            });
        }
        Err(ApiError::BadQuery { message, position }) => {
            let split = q
                .char_indices()
                .nth(position)
                .map_or(q.len(), |(byte, _)| byte);
            page.error = Some((message, q[..split].to_owned(), q[split..].to_owned()));
        }
        Err(ApiError::TooExpensive {
            message,
            position: Some(position),
        }) => {
            let split = q
                .char_indices()
                .nth(position)
                .map_or(q.len(), |(byte, _)| byte);
            page.error = Some((message, q[..split].to_owned(), q[split..].to_owned()));
        }
        Err(other) => return Err(other.into()),
    }
    page.took_ms = started.elapsed().as_millis();
    let mut response = html(&page);
    if page.error.is_some() {
        *response.status_mut() = axum::http::StatusCode::BAD_REQUEST;
    }
    Ok(response)
}

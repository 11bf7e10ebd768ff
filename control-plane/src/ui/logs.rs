//! `GET /logs`: the query box (the Lucene-style language, with a help popover and the parser's error shown at its
//! position), the time range picker, a histogram of matches over time (drag across it to zoom), results newest
//! first with severity colours, each expandable to all its attributes and linked to its trace and its service,
//! and "more" paging by cursor.

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
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
    /// The live tail's URL (`/logs/tail?q=...`).
    tail_url: String,
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
        tail_url: format!(
            "/logs/tail?{}",
            serde_urlencoded::to_string([("q", q.as_str())]).unwrap_or_default()
        ),
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
        // The query's own fault: shown at its position, on the page.
        Err(
            ApiError::BadQuery { message, position }
            | ApiError::TooExpensive {
                message,
                position: Some(position),
            },
        ) => {
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

/// `?q=` of the live tail.
#[derive(Debug, Deserialize)]
pub struct TailQuery {
    q: Option<String>,
}

/// How often the tail looks for new lines.
const TAIL_EVERY: Duration = Duration::from_millis(500);
/// Lines sent per look at most; past it the tail says it skipped some (more than 2,000 lines/s).
const TAIL_MAX_LINES: usize = 1000;
/// How far back each look reaches before the newest line already sent, for lines that arrive a little late.
const TAIL_OVERLAP_NS: i64 = 2_000_000_000;
/// A tail ends after this long; the page's script opens a new one.
const TAIL_LIFETIME: Duration = Duration::from_secs(3600);

/// One line of the tail as the page's script receives it (it builds the row with `textContent`: never markup).
#[derive(serde::Serialize)]
struct TailLine {
    /// RFC 3339 time.
    t: String,
    /// Severity text.
    s: String,
    /// Service.
    v: String,
    /// Body, control characters made visible.
    b: String,
    /// Trace id (empty without one).
    r: String,
}

/// `GET /logs/tail?q=`: new lines matching the query as server-sent events (`text/event-stream`), each event a JSON
/// object `{"lines": [...], "truncated": bool}`, newest line first. It looks every 500 ms for lines newer than the last
/// it sent (reaching 2 s back for late arrivals, which it tells apart from lines already sent); the browser's
/// `EventSource` reconnects by itself, and the page closes it while the tab is hidden.
pub async fn tail(
    _viewer: Viewer,
    State(state): State<AppState>,
    Query(query): Query<TailQuery>,
) -> Result<Response, UiError> {
    let q = query.q.unwrap_or_default();
    let parsed = crate::api::parse_query(Some(&q))?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(4);
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut since_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let mut sent: HashSet<(i64, u64)> = HashSet::new();
        let mut ticker = tokio::time::interval(TAIL_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while started.elapsed() < TAIL_LIFETIME && !sender.is_closed() {
            ticker.tick().await;
            let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
            let search = LogSearch {
                query: parsed.query.clone(),
                range: gantry_store::TimeRange {
                    from_ns: since_ns - TAIL_OVERLAP_NS,
                    to_ns: now_ns + 60_000_000_000,
                },
                limit: TAIL_MAX_LINES + sent.len(),
                cursor: None,
            };
            let found = match state.store.search_logs(search).await {
                Ok(found) => found,
                Err(error) => {
                    let event = Event::default().event("error").data(error.to_string());
                    if sender.send(Ok(event)).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            let fresh: Vec<&LogRecord> = found
                .hits
                .iter()
                .filter(|hit| !sent.contains(&line_key(hit)))
                .collect();
            if fresh.is_empty() {
                // A comment keeps proxies from closing an idle stream.
                if sender
                    .send(Ok(Event::default().comment("idle")))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            // More matched in the window than one look sends: the page says some were skipped.
            let truncated = found.next.is_some() || fresh.len() > TAIL_MAX_LINES;
            let lines: Vec<TailLine> = fresh
                .iter()
                .take(TAIL_MAX_LINES)
                .map(|hit| TailLine {
                    t: format::clock_ns(hit.timestamp_unix_nano),
                    s: hit.severity.clone(),
                    v: format::visible(&hit.service),
                    b: format::visible(&hit.body),
                    r: hit.trace_id.clone(),
                })
                .collect();
            since_ns = since_ns.max(
                found
                    .hits
                    .iter()
                    .map(|h| h.timestamp_unix_nano)
                    .max()
                    .unwrap_or(since_ns),
            );
            sent.extend(fresh.iter().map(|hit| line_key(hit)));
            sent.retain(|(ts, _)| *ts >= since_ns - TAIL_OVERLAP_NS);
            let data = serde_json::json!({"lines": lines, "truncated": truncated}).to_string();
            if sender.send(Ok(Event::default().data(data))).await.is_err() {
                break;
            }
        }
    });
    Ok(
        Sse::new(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .keep_alive(KeepAlive::default())
            .into_response(),
    )
}

/// What tells two lines apart in the tail's overlap: time and a hash of service and body.
fn line_key(hit: &LogRecord) -> (i64, u64) {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    hit.service.hash(&mut hasher);
    hit.body.hash(&mut hasher);
    hit.span_id.hash(&mut hasher);
    (hit.timestamp_unix_nano, hasher.finish())
}

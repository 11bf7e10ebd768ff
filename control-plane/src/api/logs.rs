//! `GET /api/v1/logs` (search, newest first, with cursors) and `GET /api/v1/logs/histogram`.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gantry_proto::{HistogramResponse, LogsResponse};
use serde::Deserialize;

use super::time::parse_range;
use super::{ApiError, AppState, Caller, Params, ReadAccess, parse_query};
use gantry_store::{Cursor, LogSearch};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;
/// Most records sharing one timestamp that paging steps over.
const MAX_CURSOR_TIES: usize = 100 * MAX_LIMIT;

/// Query string of the log search.
#[derive(Debug, Deserialize)]
pub struct SearchParams {
    q: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub(crate) fn encode_cursor(cursor: Cursor) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", cursor.ts_ns, cursor.seen_at_ts))
}

pub(crate) fn decode_cursor(text: &str) -> Result<Cursor, ApiError> {
    let bad = || {
        ApiError::BadRequest(
            "`cursor` is not one this API returned: pass `next_cursor` unchanged".to_owned(),
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (ts, seen) = text.split_once(':').ok_or_else(bad)?;
    let cursor = Cursor {
        ts_ns: ts.parse().map_err(|_| bad())?,
        seen_at_ts: seen.parse().map_err(|_| bad())?,
    };
    // A page never holds more than MAX_LIMIT hits; a larger count was not made here (and would size a huge
    // top-k buffer).
    if cursor.seen_at_ts as usize > MAX_CURSOR_TIES {
        return Err(bad());
    }
    Ok(cursor)
}

/// `GET /api/v1/logs`.
pub async fn search(
    _: Caller<ReadAccess>,
    State(state): State<AppState>,
    Params(params): Params<SearchParams>,
) -> Result<Json<LogsResponse>, ApiError> {
    let started = Instant::now();
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be between 1 and {MAX_LIMIT}"
        )));
    }
    let parsed = parse_query(params.q.as_deref())?;
    let search = LogSearch {
        query: parsed.query.clone(),
        range: parse_range(params.from.as_deref(), params.to.as_deref())?,
        limit,
        cursor: params
            .cursor
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(decode_cursor)
            .transpose()?,
    };
    let page = state
        .store
        .search_logs(search)
        .await
        .map_err(|error| parsed.refusal(error))?;
    let took_ms = state.query_done("logs", started);
    Ok(Json(LogsResponse {
        hits: page.hits,
        next_cursor: page.next.map(encode_cursor),
        took_ms,
    }))
}

/// Query string of the histogram.
#[derive(Debug, Deserialize)]
pub struct HistogramParams {
    q: Option<String>,
    from: Option<String>,
    to: Option<String>,
    buckets: Option<usize>,
}

/// `GET /api/v1/logs/histogram`.
pub async fn histogram(
    _: Caller<ReadAccess>,
    State(state): State<AppState>,
    Params(params): Params<HistogramParams>,
) -> Result<Json<HistogramResponse>, ApiError> {
    let started = Instant::now();
    let buckets = params.buckets.unwrap_or(60);
    if !(1..=1000).contains(&buckets) {
        return Err(ApiError::BadRequest(
            "`buckets` must be between 1 and 1000".to_owned(),
        ));
    }
    let range = parse_range(params.from.as_deref(), params.to.as_deref())?;
    let parsed = parse_query(params.q.as_deref())?;
    let counts = state
        .store
        .log_histogram(parsed.query.clone(), range, buckets)
        .await
        .map_err(|error| parsed.refusal(error))?;
    let took_ms = state.query_done("histogram", started);
    Ok(Json(HistogramResponse {
        buckets: counts,
        interval_ms: ((range.to_ns - range.from_ns) / buckets as i64).max(1) / 1_000_000,
        took_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = Cursor {
            ts_ns: 1_700_000_000_123_456_789,
            seen_at_ts: 3,
        };
        assert_eq!(decode_cursor(&encode_cursor(cursor)).unwrap(), cursor);
        assert!(decode_cursor("nope!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("1700000000000000000:4294967295")).is_err());
    }
}

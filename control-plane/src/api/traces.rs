//! `GET /api/v1/traces/{trace_id}`, `GET /api/v1/traces` (trace search) and `GET /api/v1/services` (RED per service).

use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use gantry_proto::{ServicesResponse, TraceResponse, TracesResponse};
use serde::Deserialize;

use super::time::parse_range;
use super::{ApiError, AppState, Caller, Params, ReadAccess, parse_query};
use gantry_store::TraceSearch;

/// `GET /api/v1/traces/{trace_id}`.
pub async fn by_id(
    _: Caller<ReadAccess>,
    State(state): State<AppState>,
    Path(trace_id): Path<String>,
) -> Result<Json<TraceResponse>, ApiError> {
    let started = Instant::now();
    let trace_id = trace_id.to_ascii_lowercase();
    if trace_id.len() != 32 || !trace_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(format!(
            "`{trace_id}` is not a trace id: expected 32 hex digits"
        )));
    }
    let spans = state.store.trace(&trace_id).await?;
    state.query_done("trace", started);
    if spans.is_empty() {
        return Err(ApiError::NotFound(format!("no spans of trace {trace_id}")));
    }
    Ok(Json(TraceResponse { trace_id, spans }))
}

/// Query string of the trace search.
#[derive(Debug, Deserialize)]
pub struct SearchParams {
    service: Option<String>,
    operation: Option<String>,
    min_duration_ms: Option<f64>,
    status: Option<String>,
    q: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/traces`.
pub async fn search(
    _: Caller<ReadAccess>,
    State(state): State<AppState>,
    Params(params): Params<SearchParams>,
) -> Result<Json<TracesResponse>, ApiError> {
    let started = Instant::now();
    let limit = params.limit.unwrap_or(20);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "`limit` must be between 1 and 1000".to_owned(),
        ));
    }
    let errors_only = match params.status.as_deref() {
        None | Some("") | Some("any") => false,
        Some("error") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "`status={other}` is not supported: use `error` or `any`"
            )));
        }
    };
    let parsed = parse_query(params.q.as_deref())?;
    let search = TraceSearch {
        service: params.service.filter(|s| !s.is_empty()),
        operation: params.operation.filter(|s| !s.is_empty()),
        min_duration_ms: params.min_duration_ms,
        errors_only,
        query: parsed.query.clone(),
        range: parse_range(params.from.as_deref(), params.to.as_deref())?,
        limit,
    };
    let traces = state
        .store
        .search_traces(search)
        .await
        .map_err(|error| parsed.refusal(error))?;
    let took_ms = state.query_done("traces", started);
    Ok(Json(TracesResponse { traces, took_ms }))
}

/// Query string of the services view.
#[derive(Debug, Deserialize)]
pub struct RangeParams {
    from: Option<String>,
    to: Option<String>,
}

/// `GET /api/v1/services`.
pub async fn services(
    _: Caller<ReadAccess>,
    State(state): State<AppState>,
    Params(params): Params<RangeParams>,
) -> Result<Json<ServicesResponse>, ApiError> {
    let started = Instant::now();
    let range = parse_range(params.from.as_deref(), params.to.as_deref())?;
    let services = state.store.services(range).await?;
    let deployed = super::blocking(&state.platform, |platform| platform.deployed()).await?;
    let took_ms = state.query_done("services", started);
    Ok(Json(ServicesResponse {
        services,
        deployed,
        took_ms,
    }))
}

/// Query string of `GET /api/v1/red`.
#[derive(Debug, Deserialize)]
pub struct RedParams {
    service: Option<String>,
    /// `version` (default), `operation`, or `service` (all versions together).
    by: Option<String>,
    from: Option<String>,
    to: Option<String>,
    /// 1 to 1000 (default 60).
    buckets: Option<usize>,
}

/// `GET /api/v1/red`: RED over time per service and version (or per operation of one service), from server and
/// consumer spans; the data of the dashboard's charts.
pub async fn red(
    _: Caller<ReadAccess>,
    State(state): State<AppState>,
    Params(params): Params<RedParams>,
) -> Result<Json<gantry_proto::RedResponse>, ApiError> {
    let started = Instant::now();
    let (by_operation, by_version) = match params.by.as_deref().unwrap_or("version") {
        "version" => (false, true),
        "operation" => (true, false),
        "service" => (false, false),
        other => {
            return Err(ApiError::BadRequest(format!(
                "`by={other}` is not supported: use version, operation or service"
            )));
        }
    };
    let series = state
        .store
        .red(gantry_store::RedQuery {
            range: parse_range(params.from.as_deref(), params.to.as_deref())?,
            buckets: params.buckets.unwrap_or(60),
            service: params.service.filter(|s| !s.is_empty()),
            by_operation,
            by_version,
        })
        .await?;
    let took_ms = state.query_done("red", started);
    Ok(Json(gantry_proto::RedResponse { series, took_ms }))
}

/// Query string of `GET /api/v1/service-map`.
#[derive(Debug, Deserialize)]
pub struct MapParams {
    from: Option<String>,
    to: Option<String>,
    /// Spans read at most (default and cap 50 000).
    max_spans: Option<usize>,
}

/// `GET /api/v1/service-map`: which services called which in the range, with requests and errors per edge.
pub async fn service_map(
    _: Caller<ReadAccess>,
    State(state): State<AppState>,
    Params(params): Params<MapParams>,
) -> Result<Json<gantry_proto::ServiceMap>, ApiError> {
    let started = Instant::now();
    let range = parse_range(params.from.as_deref(), params.to.as_deref())?;
    let max_spans = params.max_spans.unwrap_or(50_000).clamp(1, 50_000);
    let mut map = state.store.service_map(range, max_spans).await?;
    map.took_ms = state.query_done("service_map", started);
    Ok(Json(map))
}

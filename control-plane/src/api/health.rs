//! `/healthz` (the process answers), `/readyz` (the store has replayed its WAL) and `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::{AppState, Caller, ReadAccess};

/// Liveness: answers while the process runs.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: 200 once the store accepts writes and queries.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.store.is_ready() {
        (StatusCode::OK, [(header::RETRY_AFTER, "0")], "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "not ready: replaying the write-ahead log, or the store's writer stopped\n",
        )
    }
}

/// The plane's own metrics, OpenMetrics text.
pub async fn metrics(
    _: Caller<ReadAccess>,
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    // The figures include walking the index directories for their size: not on an async worker.
    let store = state.store.clone();
    let stats = tokio::task::spawn_blocking(move || store.stats())
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            gantry_support::metrics::content_type(accept),
        )],
        state.metrics.render(&stats, state.store.is_ready()),
    )
}

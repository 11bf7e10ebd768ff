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
    if state.ingest.store.is_ready() {
        (StatusCode::OK, [(header::RETRY_AFTER, "0")], "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "replaying the write-ahead log\n",
        )
    }
}

/// The plane's own metrics.
pub async fn metrics(_: Caller<ReadAccess>, State(state): State<AppState>) -> impl IntoResponse {
    // The figures include walking the index directories for their size: not on an async worker.
    let store = state.ingest.store.clone();
    let stats = tokio::task::spawn_blocking(move || store.stats())
        .await
        .unwrap_or_default();
    let gauges = [
        (
            "gantry_wal_bytes",
            "bytes of write-ahead log on disk",
            stats.wal_bytes as f64,
        ),
        (
            "gantry_write_queue_depth",
            "batches waiting for the write-ahead log",
            stats.queue_depth as f64,
        ),
        (
            "gantry_index_bytes",
            "bytes of indexes on disk",
            stats.index_bytes as f64,
        ),
        (
            "gantry_partitions",
            "time partitions of all signals",
            stats.partitions as f64,
        ),
        (
            "gantry_indexed_records",
            "records indexed since start",
            stats.indexed_records as f64,
        ),
        (
            "gantry_expired_records",
            "records outside the accepted time window when indexed (rejected at ingest, or expired while queued)",
            stats.expired_records as f64,
        ),
        (
            "gantry_wal_truncated_bytes",
            "torn or corrupt bytes cut off the write-ahead log at start",
            stats.wal_truncated_bytes as f64,
        ),
        (
            "gantry_ready",
            "1 once the store has replayed its write-ahead log",
            f64::from(u8::from(state.ingest.store.is_ready())),
        ),
    ];
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.ingest.metrics.render(&gauges),
    )
}

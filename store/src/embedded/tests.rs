//! Tests of the embedded store through its `Store` trait: durability across a clean restart, retention by age and
//! by disk budget dropping whole partitions, and spans stored twice read once.

use std::time::{Duration, Instant};

use gantry_proto::ExportRequest;
use gantry_query::Query;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

use super::EmbeddedStore;
use crate::{Batch, LogSearch, RedQuery, Store, StoreConfig, TimeRange, TraceSearch};

const HOUR_NS: i64 = 3600 * 1_000_000_000;

fn config(retention_hours: u64, max_disk_bytes: u64) -> StoreConfig {
    StoreConfig {
        retention: Duration::from_secs(retention_hours * 3600),
        max_disk_bytes,
        partition: Duration::from_secs(3600),
        commit_interval: Duration::from_millis(50),
        ..StoreConfig::default_embedded()
    }
}

async fn start(dir: &std::path::Path, config: StoreConfig) -> std::sync::Arc<EmbeddedStore> {
    let (store, replayed) = EmbeddedStore::start(dir, config);
    replayed
        .await
        .expect("the opener answers")
        .expect("the store starts");
    store
}

fn text(value: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(value.to_owned())),
    })
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: text(value),
        ..KeyValue::default()
    }
}

/// A logs request of service `checkout` with one record per timestamp, each with the body `at-<i>`.
fn logs_at(times: &[i64]) -> ExportLogsServiceRequest {
    let log_records = times
        .iter()
        .enumerate()
        .map(|(i, ts)| LogRecord {
            time_unix_nano: *ts as u64,
            severity_number: 9,
            body: text(&format!("at-{i}")),
            attributes: vec![kv("order_id", &i.to_string())],
            ..LogRecord::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "checkout")],
                ..Resource::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records,
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}

/// `n` log records at `ts_ns`, as a request (a fixture for the other modules' tests).
pub(crate) fn sample_logs(n: usize, ts_ns: i64) -> ExportRequest {
    ExportRequest::Logs(logs_at(&vec![ts_ns; n]))
}

async fn bodies(store: &EmbeddedStore) -> Vec<String> {
    let page = store
        .search_logs(LogSearch {
            query: Query::All,
            range: TimeRange {
                from_ns: 0,
                to_ns: i64::MAX,
            },
            limit: 100,
            cursor: None,
        })
        .await
        .expect("search");
    let mut bodies: Vec<String> = page.hits.into_iter().map(|hit| hit.body).collect();
    bodies.sort();
    bodies
}

async fn wait_for(store: &EmbeddedStore, expected: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = bodies(store).await;
        if found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {expected:?}, found {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn write(store: &EmbeddedStore, request: ExportLogsServiceRequest) {
    store
        .write(Batch {
            id: None,
            request: ExportRequest::Logs(request),
            encoded: None,
        })
        .await
        .expect("write");
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_clean_restart_and_old_partitions_age_out() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ns();
    let store = start(dir.path(), config(3, 0)).await;
    write(&store, logs_at(&[now - 150 * HOUR_NS / 60, now])).await;
    wait_for(&store, &["at-0", "at-1"]).await;
    store.shutdown().await;
    drop(store);

    // Same retention: everything is still there.
    let store = start(dir.path(), config(3, 0)).await;
    wait_for(&store, &["at-0", "at-1"]).await;
    store.shutdown().await;
    drop(store);

    // Retention of one hour: the partition of the record from 2.5 hours ago is dropped whole.
    let store = start(dir.path(), config(1, 0)).await;
    wait_for(&store, &["at-1"]).await;
    // A dropped partition leaves the catalog before its directory is deleted.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let partitions = std::fs::read_dir(dir.path().join("index/logs"))
            .unwrap()
            .count();
        if partitions == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only the current partition should be left on disk, found {partitions}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_budget_drops_the_oldest_partitions_first() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ns();
    let store = start(dir.path(), config(6, 0)).await;
    write(
        &store,
        logs_at(&[now - 150 * HOUR_NS / 60, now - 90 * HOUR_NS / 60, now]),
    )
    .await;
    wait_for(&store, &["at-0", "at-1", "at-2"]).await;
    store.shutdown().await;
    drop(store);

    // A budget no partition fits: all but the newest go, oldest first.
    let store = start(dir.path(), config(6, 1)).await;
    wait_for(&store, &["at-2"]).await;
    store.shutdown().await;
}

/// Every item the write-ahead log holds, over all its records.
fn wal_items(dir: &std::path::Path) -> u64 {
    let (mut wal, _) =
        gantry_wal::Wal::open(&dir.join("wal"), gantry_wal::WalOptions::default()).unwrap();
    wal.read_from(1)
        .unwrap()
        .map(|record| {
            let (_, bytes) = record.unwrap();
            super::payload::decode(&bytes).unwrap().request.items()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_items_never_reach_the_write_ahead_log() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ns();
    let store = start(dir.path(), config(1, 0)).await;
    let written = store
        .write(Batch {
            id: None,
            request: ExportRequest::Logs(logs_at(&[
                now - 3 * HOUR_NS,
                now,
                now + 3 * 24 * HOUR_NS,
            ])),
            encoded: None,
        })
        .await
        .unwrap();
    assert_eq!(written.rejected.timestamp, 2);
    let all_old = store
        .write(Batch {
            id: None,
            request: ExportRequest::Logs(logs_at(&[now - 5 * HOUR_NS])),
            encoded: None,
        })
        .await
        .unwrap();
    assert_eq!(all_old.rejected.total(), 1);
    wait_for(&store, &["at-1"]).await;
    store.shutdown().await;
    drop(store);
    assert_eq!(
        wal_items(dir.path()),
        1,
        "only the accepted record is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_checkpoint_is_counted_and_the_log_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ns();
    let store = start(dir.path(), config(6, 0)).await;
    write(&store, logs_at(&[now - HOUR_NS, now])).await;
    wait_for(&store, &["at-0", "at-1"]).await;
    store.shutdown().await;
    drop(store);

    std::fs::write(dir.path().join("checkpoint.json"), b"{\"seq\": 1").unwrap();
    let store = start(dir.path(), config(6, 0)).await;
    assert_eq!(store.stats().corrupt_checkpoints, 1);
    wait_for(&store, &["at-0", "at-1"]).await;
    write(&store, logs_at(&[now])).await;
    wait_for(&store, &["at-0", "at-0", "at-1"]).await;
    store.shutdown().await;
}

/// A span of `trace` (its first byte) with the span id byte `id`, of `kind` (2 server, 3 client), starting at
/// `start_ns` and lasting `ms` milliseconds, with status `status` (2 error).
fn span(trace: u8, id: u8, kind: i32, start_ns: i64, ms: i64, status: i32) -> Span {
    Span {
        trace_id: [vec![trace], vec![7; 15]].concat(),
        span_id: [vec![id], vec![9; 7]].concat(),
        name: "GET /orders".to_owned(),
        kind,
        start_time_unix_nano: start_ns as u64,
        end_time_unix_nano: (start_ns + ms * 1_000_000) as u64,
        status: Some(Status {
            code: status,
            ..Status::default()
        }),
        ..Span::default()
    }
}

async fn write_spans(store: &EmbeddedStore, service: &str, spans: Vec<Span>) {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    store
        .write(Batch {
            id: None,
            request: ExportRequest::Traces(request),
            encoded: None,
        })
        .await
        .expect("write");
}

/// The start of the first span of `batches`, in ns since the epoch.
fn batches_start(batches: &[Vec<Span>]) -> i64 {
    batches[0][0].start_time_unix_nano as i64
}

/// What the reads give for trace 1 after `batches` were written one after the other, without batch ids: the spans of
/// `GET /api/v1/traces/{id}`, the `span_count` of its summary, and the service's requests, errors and p50 (ms).
async fn reads_after(batches: Vec<Vec<Span>>) -> (usize, u64, u64, u64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let store = start(dir.path(), config(6, 0)).await;
    let marker_start = batches_start(&batches);
    for batch in batches {
        write_spans(&store, "orders", batch).await;
    }
    // Batches are indexed in order and a partition's commit covers all of them: once the marker, written last into
    // the same partition (the same start time), is found, all are. Partitions reload one after another, so a marker
    // in another partition (the next hour) could show first.
    write_spans(&store, "marker", vec![span(99, 1, 2, marker_start, 1, 0)]).await;
    let marker = format!("63{}", "07".repeat(15));
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.trace(&marker).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the marker span never showed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let trace_id = format!("01{}", "07".repeat(15));
    let spans = store.trace(&trace_id).await.unwrap();
    let range = TimeRange {
        from_ns: now_ns() - HOUR_NS,
        to_ns: now_ns() + HOUR_NS,
    };
    let summaries = store
        .search_traces(TraceSearch {
            service: Some("orders".into()),
            operation: None,
            min_duration_ms: None,
            errors_only: false,
            query: Query::All,
            range,
            limit: 10,
        })
        .await
        .unwrap();
    let span_count = summaries
        .iter()
        .find(|summary| summary.trace_id == trace_id)
        .map_or(0, |summary| summary.span_count);
    let services = store.services(range).await.unwrap();
    let row = services.iter().find(|row| row.service == "orders");
    store.shutdown().await;
    (
        spans.len(),
        span_count,
        row.map_or(0, |row| row.requests),
        row.map_or(0, |row| row.errors),
        row.map_or(0.0, |row| row.p50_ms),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_stored_twice_is_read_once() {
    let start = now_ns() - 60 * 1_000_000_000;
    let (server, client) = (2, 3);
    let a = span(1, 1, server, start, 10, 1);
    let b = span(1, 2, server, start + 1_000, 20, 1);
    // Another span of the same trace, kind and start: only its stored row tells it from `a`.
    let twin = span(1, 3, server, start, 30, 2);
    let a_later_failed = span(1, 1, server, start, 40, 2);
    let a_client = span(1, 1, client, start, 5, 1);
    for (what, batches, expected) in [
        ("sent once", vec![vec![a.clone()]], (1, 1, 1, 0, 10.0)),
        (
            "sent twice",
            vec![vec![a.clone()], vec![a.clone()]],
            (1, 1, 1, 0, 10.0),
        ),
        (
            "three times in one batch, then again",
            vec![vec![a.clone(), a.clone(), a.clone()], vec![a.clone()]],
            (1, 1, 1, 0, 10.0),
        ),
        (
            "beside a sibling sent twice",
            vec![vec![a.clone(), b.clone()], vec![b.clone()]],
            (2, 2, 2, 0, 10.0),
        ),
        (
            "again after it ended later, with an error: the later copy counts",
            vec![vec![a.clone()], vec![a_later_failed.clone()]],
            (1, 1, 1, 1, 40.0),
        ),
        (
            "a different span starting at the same nanosecond",
            vec![vec![a.clone(), twin.clone()], vec![twin.clone()]],
            (2, 2, 2, 1, 10.0),
        ),
        (
            "the client half of a shared span id is another span",
            vec![vec![a.clone(), a_client.clone()], vec![a_client.clone()]],
            (2, 2, 1, 0, 10.0),
        ),
    ] {
        assert_eq!(reads_after(batches).await, expected, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_service_is_counted_from_its_routers_spans_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = start(dir.path(), config(24 * 7, 0)).await;
    let start_ns = now_ns() - 60 * 1_000_000_000;
    let router = |trace: u8, ms| {
        let mut span = span(trace, 1, 2, start_ns, ms, 1);
        span.attributes.push(KeyValue {
            key: "gantry.router".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::BoolValue(true)),
            }),
            ..KeyValue::default()
        });
        span
    };
    // `ledger`: two routed requests, each also seen by the service's own (instrumented) server span.
    let mut own = span(1, 2, 2, start_ns + 1_000, 8, 1);
    own.parent_span_id = [vec![1], vec![9; 7]].concat();
    write_spans(&store, "ledger", vec![router(1, 10), router(2, 12), own]).await;
    // `legacy`: not routed; its own server spans count.
    write_spans(
        &store,
        "legacy",
        vec![span(3, 1, 2, start_ns, 5, 1), span(4, 1, 2, start_ns, 5, 2)],
    )
    .await;
    let range = TimeRange {
        from_ns: now_ns() - HOUR_NS,
        to_ns: now_ns() + HOUR_NS,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = store.services(range).await.unwrap();
        let requests = |name: &str| {
            rows.iter()
                .find(|r| r.service == name)
                .map(|r| (r.requests, r.errors))
        };
        if requests("ledger").is_some() && requests("legacy").is_some() {
            assert_eq!(requests("ledger"), Some((2, 0)), "each routed request once");
            assert_eq!(requests("legacy"), Some((2, 1)));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the spans never showed: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_series_bucket_requests_by_start_and_group_by_operation() {
    let dir = tempfile::tempdir().unwrap();
    let store = start(dir.path(), config(24 * 7, 0)).await;
    let from_ns = (now_ns() - 10 * 60 * 1_000_000_000) / 1_000_000_000 * 1_000_000_000;
    let minute = 60 * 1_000_000_000;
    // Minute 0: two requests of `GET /orders` (one failed); minute 2: one of `POST /orders`.
    let mut post = span(3, 1, 2, from_ns + 2 * minute + 5, 30, 1);
    post.name = "POST /orders".into();
    write_spans(
        &store,
        "orders",
        vec![
            span(1, 1, 2, from_ns + 10, 10, 1),
            span(2, 1, 2, from_ns + 20, 20, 2),
            post,
        ],
    )
    .await;
    let query = |by_operation| RedQuery {
        range: TimeRange {
            from_ns,
            to_ns: from_ns + 5 * minute,
        },
        buckets: 5,
        service: Some("orders".into()),
        by_operation,
        by_version: true,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let series = loop {
        let series = store.red(query(false)).await.unwrap();
        if series.first().is_some_and(|s| s.total.requests == 3) {
            break series;
        }
        assert!(
            Instant::now() < deadline,
            "the spans never showed: {series:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].step_ms, 60_000);
    let counts: Vec<(u64, u64)> = series[0]
        .points
        .iter()
        .map(|p| (p.requests, p.errors))
        .collect();
    assert_eq!(counts, vec![(2, 1), (0, 0), (1, 0), (0, 0), (0, 0)]);
    assert_eq!(series[0].points[0].start_unix_ms, from_ns / 1_000_000);
    assert_eq!(series[0].points[2].p99_ms, 30.0);
    let by_operation = store.red(query(true)).await.unwrap();
    let operations: Vec<(&str, u64)> = by_operation
        .iter()
        .map(|s| (s.operation.as_str(), s.total.requests))
        .collect();
    assert_eq!(operations, vec![("GET /orders", 2), ("POST /orders", 1)]);
    assert!(
        store
            .red(RedQuery {
                buckets: 0,
                ..query(false)
            })
            .await
            .is_err()
    );
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_map_joins_each_server_span_to_its_parents_service() {
    let dir = tempfile::tempdir().unwrap();
    let store = start(dir.path(), config(24 * 7, 0)).await;
    let start_ns = now_ns() - 60 * 1_000_000_000;
    // Two traces: gateway's server span (root) and its client span, and the accounts server span under that.
    let mut gateway = Vec::new();
    let mut accounts = Vec::new();
    for (trace, status) in [(1u8, 1), (2u8, 2)] {
        gateway.push(span(trace, 1, 2, start_ns, 10, 1));
        let mut client = span(trace, 2, 3, start_ns + 1, 8, 1);
        client.parent_span_id = [vec![1], vec![9; 7]].concat();
        gateway.push(client);
        let mut server = span(trace, 3, 2, start_ns + 2, 6, status);
        server.parent_span_id = [vec![2], vec![9; 7]].concat();
        accounts.push(server);
    }
    write_spans(&store, "gateway", gateway).await;
    write_spans(&store, "accounts", accounts).await;
    let range = TimeRange {
        from_ns: now_ns() - HOUR_NS,
        to_ns: now_ns() + HOUR_NS,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let map = loop {
        let map = store.service_map(range, 10_000).await.unwrap();
        if map.spans_matched == 6 {
            break map;
        }
        assert!(Instant::now() < deadline, "the spans never showed: {map:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(map.edges.len(), 1, "{map:?}");
    let edge = &map.edges[0];
    assert_eq!(
        (
            edge.client.as_str(),
            edge.server.as_str(),
            edge.requests,
            edge.errors
        ),
        ("gateway", "accounts", 2, 1)
    );
    assert_eq!(
        map.services,
        vec![("accounts".to_owned(), 2, 1), ("gateway".to_owned(), 2, 0)]
    );
    // Past the cap, the newest spans are read and the rest only counted.
    let capped = store.service_map(range, 3).await.unwrap();
    assert_eq!((capped.spans_read, capped.spans_matched), (3, 6));
    store.shutdown().await;
}

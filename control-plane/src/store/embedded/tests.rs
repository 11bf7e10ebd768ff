//! Tests of the embedded store through its `Store` trait: durability across a clean restart, retention by age and
//! by disk budget dropping whole partitions.

use std::time::{Duration, Instant};

use gantry_query::Query;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;

use super::{EmbeddedStore, encode_request};
use crate::bench::generate::Generator;
use crate::store::{Batch, LogSearch, OtlpRequest, Store, StoreConfig, TimeRange};

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

/// One log record per timestamp, each with the body `at-<i>`.
fn logs_at(times: &[i64]) -> ExportLogsServiceRequest {
    let mut request = Generator::new(1, 1).logs(times.len(), times[0]);
    let records = request
        .resource_logs
        .iter_mut()
        .flat_map(|r| &mut r.scope_logs)
        .flat_map(|s| &mut s.log_records);
    for (i, (record, ts)) in records.zip(times).enumerate() {
        record.time_unix_nano = *ts as u64;
        record.body = Some(opentelemetry_proto::tonic::common::v1::AnyValue {
            value: Some(
                opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(format!(
                    "at-{i}"
                )),
            ),
        });
    }
    request
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
    let request = OtlpRequest::Logs(request);
    let encoded = encode_request(&request);
    store
        .write(Batch {
            id: None,
            request,
            encoded,
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
    let partitions = std::fs::read_dir(dir.path().join("index/logs"))
        .unwrap()
        .count();
    assert_eq!(partitions, 1, "only the current partition is left on disk");
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

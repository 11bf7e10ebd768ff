//! The plane's own metrics, exposed at `/metrics` in the OpenMetrics text format through `prometheus-client`
//! (`gantry_support::metrics`): ingest counters by signal, protocol, outcome and service, query and commit latency
//! histograms, and the store's figures as gauges read at scrape time.

use std::collections::HashSet;
use std::sync::Mutex;

use gantry_proto::Signal;
use gantry_store::StoreStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Distinct services counted by name in `gantry_ingest_records_total`; the rest are counted as `_other`, so that a
/// sender inventing service names cannot grow the exposition without bound.
pub const MAX_SERVICES: usize = 10_000;

/// Labels of `gantry_ingest_batches_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchLabels {
    /// `logs`, `traces` or `metrics`.
    pub signal: &'static str,
    /// `http` or `grpc`.
    pub protocol: &'static str,
    /// `stored`, `duplicate`, or why the batch was refused (`overloaded`, `unauthorized`, ...).
    pub outcome: &'static str,
}

/// Labels of a counter per signal.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    /// `logs`, `traces` or `metrics`.
    pub signal: &'static str,
}

/// Labels of `gantry_ingest_rejected_records_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectedLabels {
    /// `logs`, `traces` or `metrics`.
    pub signal: &'static str,
    /// `timestamp`, `invalid_value` or `invalid_id`.
    pub reason: &'static str,
}

/// Labels of `gantry_queries_stopped_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoppedLabels {
    /// `expanded_terms` (past `query_max_expanded_terms`, 422), `timeout` (past `query_timeout_ms` while working,
    /// 422), `busy` (past it waiting for a permit, 503) or `cancelled` (the caller went away).
    pub reason: &'static str,
}

/// Labels of `gantry_ingest_records_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// `logs`, `traces` or `metrics`.
    pub signal: &'static str,
    /// The resource's `service.name` as sent (escaped in the exposition), or `_other` past [`MAX_SERVICES`].
    pub service: String,
}

/// Labels of `gantry_query_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The API endpoint (`logs`, `traces`, ...).
    pub endpoint: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Store figures, set at each scrape.
#[derive(Default)]
struct StoreGauges {
    wal_bytes: Gauge,
    queue_depth: Gauge,
    index_bytes: Gauge,
    partitions: Gauge,
    indexed_records: Gauge,
    expired_records: Gauge,
    wal_truncated_bytes: Gauge,
    corrupt_checkpoints: Gauge,
    wal_failures: Gauge,
    wal_failing: Gauge,
    ready: Gauge,
    expensive_running: Gauge,
    expensive_waiting: Gauge,
}

/// The plane's own counters, histograms and gauges.
pub struct SelfMetrics {
    registry: Registry,
    batches: Family<BatchLabels, Counter>,
    bytes: Family<SignalLabels, Counter>,
    rejected: Family<RejectedLabels, Counter>,
    records: Family<ServiceLabels, Counter>,
    services: Mutex<HashSet<String>>,
    commit: Histogram,
    queries: HistogramFamily<EndpointLabels>,
    /// Queries the budget stopped, synced from the store's counters at each scrape.
    stopped: Family<StoppedLabels, Counter>,
    store: StoreGauges,
}

impl Default for SelfMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SelfMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfMetrics").finish_non_exhaustive()
    }
}

impl SelfMetrics {
    /// Every metric registered, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let batches = Family::<BatchLabels, Counter>::default();
        let bytes = Family::<SignalLabels, Counter>::default();
        let rejected = Family::<RejectedLabels, Counter>::default();
        let records = Family::<ServiceLabels, Counter>::default();
        let commit = gantry_support::metrics::latency_histogram();
        let queries: HistogramFamily<EndpointLabels> =
            Family::new_with_constructor(gantry_support::metrics::latency_histogram);
        registry.register(
            "gantry_ingest_batches",
            "OTLP export requests by signal, protocol and outcome (stored, duplicate, or why refused)",
            batches.clone(),
        );
        registry.register(
            "gantry_ingest_bytes",
            "Protobuf bytes of stored batches, by signal",
            bytes.clone(),
        );
        registry.register(
            "gantry_ingest_rejected_records",
            "Items (log records, spans, data points) rejected one by one, by signal and reason",
            rejected.clone(),
        );
        registry.register(
            "gantry_ingest_records",
            "Items stored, by signal and service.name",
            records.clone(),
        );
        registry.register(
            "gantry_ingest_commit_seconds",
            "Time from handing a batch to the store to its fsync in the write-ahead log",
            commit.clone(),
        );
        registry.register(
            "gantry_query_seconds",
            "Query latency by API endpoint",
            queries.clone(),
        );
        let stopped = Family::<StoppedLabels, Counter>::default();
        registry.register(
            "gantry_queries_stopped",
            "Queries stopped before their answer, by reason: expanded_terms and timeout (422), busy (503), cancelled (the caller went away)",
            stopped.clone(),
        );
        let store = StoreGauges::default();
        for (name, help, gauge) in [
            (
                "gantry_queries_expensive_running",
                "Expensive queries (running over 100 ms) holding one of the query_max_expensive permits",
                &store.expensive_running,
            ),
            (
                "gantry_queries_expensive_waiting",
                "Expensive queries waiting for a permit",
                &store.expensive_waiting,
            ),
            (
                "gantry_wal_bytes",
                "Bytes of write-ahead log on disk",
                &store.wal_bytes,
            ),
            (
                "gantry_write_queue_depth",
                "Batches waiting for the write-ahead log",
                &store.queue_depth,
            ),
            (
                "gantry_index_bytes",
                "Bytes of indexes on disk",
                &store.index_bytes,
            ),
            (
                "gantry_partitions",
                "Time partitions of all signals",
                &store.partitions,
            ),
            (
                "gantry_indexed_records",
                "Records indexed since start",
                &store.indexed_records,
            ),
            (
                "gantry_expired_records",
                "Records outside the accepted time window when indexed (expired while queued)",
                &store.expired_records,
            ),
            (
                "gantry_wal_truncated_bytes",
                "Torn or corrupt bytes cut off the write-ahead log at start",
                &store.wal_truncated_bytes,
            ),
            (
                "gantry_corrupt_checkpoints",
                "Checkpoints found unreadable at start (the write-ahead log was replayed from its oldest segment)",
                &store.corrupt_checkpoints,
            ),
            (
                "gantry_wal_write_failures",
                "Groups of batches refused since start because the write-ahead log could not be written (full or failing disk)",
                &store.wal_failures,
            ),
            (
                "gantry_wal_failing",
                "1 while the last write-ahead log write failed: ingest answers 503 until one succeeds",
                &store.wal_failing,
            ),
            (
                "gantry_ready",
                "1 once the store has replayed its write-ahead log and its writer and indexer run",
                &store.ready,
            ),
        ] {
            registry.register(name, help, gauge.clone());
        }
        Self {
            registry,
            batches,
            bytes,
            rejected,
            records,
            services: Mutex::new(HashSet::new()),
            commit,
            queries,
            stopped,
            store,
        }
    }

    /// Counts one export request with its outcome.
    pub fn batch(&self, signal: Signal, protocol: &'static str, outcome: &'static str) {
        self.batches
            .get_or_create(&BatchLabels {
                signal: signal.as_str(),
                protocol,
                outcome,
            })
            .inc();
    }

    /// Counts a stored batch's bytes and the time its commit took.
    pub fn stored(&self, signal: Signal, bytes: u64, commit_seconds: f64) {
        self.bytes
            .get_or_create(&SignalLabels {
                signal: signal.as_str(),
            })
            .inc_by(bytes);
        self.commit.observe(commit_seconds);
    }

    /// Counts items rejected one by one.
    pub fn rejected(&self, signal: Signal, reason: &'static str, items: u64) {
        if items > 0 {
            self.rejected
                .get_or_create(&RejectedLabels {
                    signal: signal.as_str(),
                    reason,
                })
                .inc_by(items);
        }
    }

    /// Counts items stored for a service.
    pub fn records(&self, signal: Signal, service: &str, items: u64) {
        let service = {
            let mut known = self.services.lock().unwrap_or_else(|p| p.into_inner());
            if known.contains(service) || known.len() < MAX_SERVICES {
                known.insert(service.to_owned());
                service.to_owned()
            } else {
                "_other".to_owned()
            }
        };
        self.records
            .get_or_create(&ServiceLabels {
                signal: signal.as_str(),
                service,
            })
            .inc_by(items);
    }

    /// Records a query's latency.
    pub fn query(&self, endpoint: &'static str, seconds: f64) {
        self.queries
            .get_or_create(&EndpointLabels { endpoint })
            .observe(seconds);
    }

    /// The exposition, with the store's figures as of now.
    pub fn render(&self, stats: &StoreStats, ready: bool) -> String {
        let set = |gauge: &Gauge, value: u64| {
            gauge.set(value.min(i64::MAX as u64) as i64);
        };
        set(&self.store.wal_bytes, stats.wal_bytes);
        set(&self.store.queue_depth, stats.queue_depth);
        set(&self.store.index_bytes, stats.index_bytes);
        set(&self.store.partitions, stats.partitions);
        set(&self.store.indexed_records, stats.indexed_records);
        set(&self.store.expired_records, stats.expired_records);
        set(&self.store.wal_truncated_bytes, stats.wal_truncated_bytes);
        set(&self.store.corrupt_checkpoints, stats.corrupt_checkpoints);
        set(&self.store.wal_failures, stats.wal_failures);
        set(&self.store.wal_failing, u64::from(stats.wal_failing));
        set(&self.store.ready, u64::from(ready));
        let queries = &stats.queries;
        set(&self.store.expensive_running, queries.expensive_running);
        set(&self.store.expensive_waiting, queries.expensive_waiting);
        for (reason, total) in [
            ("expanded_terms", queries.refused_expanded_terms),
            ("timeout", queries.refused_timeout),
            ("busy", queries.refused_busy),
            ("cancelled", queries.cancelled),
        ] {
            // The store counts; the exposition's counter follows it (it only ever grows).
            let counter = self.stopped.get_or_create(&StoppedLabels { reason });
            let shown = counter.get();
            if total > shown {
                counter.inc_by(total - shown);
            }
        }
        gantry_support::metrics::encode(&self.registry)
    }
}

/// How often the plane records its own figures into its store.
pub const OWN_METRICS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The plane's own figures as OTLP metrics of the service `gantry-plane`, for its built-in health dashboard:
/// `gantry.store.wal.size` and `gantry.store.index.size` (bytes, gauges), `gantry.store.queue.depth` (batches,
/// gauge), `gantry.store.indexed_records` (records, a cumulative sum since `start_ns`), at `now_ns`.
pub fn own_metrics(
    stats: &StoreStats,
    start_ns: u64,
    now_ns: u64,
) -> opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::metrics::v1::{
        AggregationTemporality, Gauge as OtlpGauge, Metric, NumberDataPoint, ResourceMetrics,
        ScopeMetrics, Sum, metric, number_data_point,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    let point = |value: f64, start: u64| NumberDataPoint {
        start_time_unix_nano: start,
        time_unix_nano: now_ns,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..NumberDataPoint::default()
    };
    let gauge = |name: &str, unit: &str, value: f64| Metric {
        name: name.to_owned(),
        unit: unit.to_owned(),
        data: Some(metric::Data::Gauge(OtlpGauge {
            data_points: vec![point(value, 0)],
        })),
        ..Metric::default()
    };
    let metrics = vec![
        gauge("gantry.store.wal.size", "By", stats.wal_bytes as f64),
        gauge("gantry.store.index.size", "By", stats.index_bytes as f64),
        gauge(
            "gantry.store.queue.depth",
            "{batch}",
            stats.queue_depth as f64,
        ),
        Metric {
            name: "gantry.store.indexed_records".to_owned(),
            unit: "{record}".to_owned(),
            data: Some(metric::Data::Sum(Sum {
                data_points: vec![point(stats.indexed_records as f64, start_ns)],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
            ..Metric::default()
        },
    ];
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".to_owned(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("gantry-plane".to_owned())),
                    }),
                    ..KeyValue::default()
                }],
                ..Resource::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

/// Records the plane's own figures ([`own_metrics`]) into `store` every [`OWN_METRICS_EVERY`] until `shutdown`; a
/// write the store refuses (overload, a full disk) is skipped, the next one tries again.
pub async fn record_own(
    store: std::sync::Arc<dyn gantry_store::Store>,
    shutdown: gantry_support::CancellationToken,
) {
    let now = || chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0).max(0) as u64;
    let start_ns = now();
    let mut ticker = tokio::time::interval(OWN_METRICS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !store.is_ready() {
            continue;
        }
        let request = own_metrics(&store.stats(), start_ns, now());
        let batch = gantry_store::Batch {
            id: None,
            request: gantry_proto::ExportRequest::Metrics(request),
            encoded: None,
        };
        if let Err(error) = store.write(batch).await {
            tracing::debug!(%error, "the plane's own metrics were not recorded this time");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let metrics = SelfMetrics::new();
        metrics.batch(Signal::Logs, "http", "stored");
        metrics.batch(Signal::Logs, "http", "stored");
        metrics.stored(Signal::Logs, 100, 0.003);
        metrics.records(Signal::Traces, "pay\"ments\n", 3);
        metrics.query("logs", 0.02);
        let text = metrics.render(
            &StoreStats {
                wal_bytes: 7,
                queries: gantry_store::budget::QueryStats {
                    refused_expanded_terms: 2,
                    expensive_waiting: 3,
                    ..Default::default()
                },
                ..StoreStats::default()
            },
            true,
        );
        for line in [
            r#"gantry_ingest_batches_total{signal="logs",protocol="http",outcome="stored"} 2"#,
            r#"gantry_ingest_bytes_total{signal="logs"} 100"#,
            r#"gantry_ingest_records_total{signal="traces",service="pay\"ments\n"} 3"#,
            r#"gantry_ingest_commit_seconds_bucket{le="0.005"} 1"#,
            r#"gantry_query_seconds_count{endpoint="logs"} 1"#,
            "gantry_wal_bytes 7",
            "gantry_ready 1",
            r#"gantry_queries_stopped_total{reason="expanded_terms"} 2"#,
            "gantry_queries_expensive_waiting 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }

    #[test]
    fn services_beyond_the_cap_are_counted_as_other() {
        let metrics = SelfMetrics::new();
        for i in 0..MAX_SERVICES + 5 {
            metrics.records(Signal::Logs, &format!("s{i}"), 1);
        }
        let text = metrics.render(&StoreStats::default(), true);
        assert!(text.contains(r#"gantry_ingest_records_total{signal="logs",service="_other"} 5"#));
    }
}

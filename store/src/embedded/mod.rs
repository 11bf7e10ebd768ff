//! The embedded store: a write-ahead log plus time-partitioned tantivy indexes, all under one data directory.
//!
//! `EmbeddedStore::start` returns at once; the WAL is replayed on a thread and the store turns ready when it is done
//! (writes before then get `NotReady`, which ingest answers with 503 and `Retry-After`).

mod checkpoint;
mod compile;
mod copies;
mod dedup;
mod indexer;
mod metrics;
mod partitions;
mod payload;
pub mod schema;
mod search;
mod terms;
mod wal_thread;

#[cfg(test)]
pub(crate) mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gantry_proto::{
    ExportRequest, HistogramBucket, MetricSeries, RedSeries, ServiceMap, ServiceRow, SpanRecord,
    TraceSummary,
};
use gantry_query::Query;
use gantry_wal::{Wal, WalOptions};
use tokio::sync::oneshot;

use self::dedup::SeenIds;
use self::indexer::Indexer;
pub use self::indexer::merge_policy;
#[cfg(test)]
pub(crate) use self::metrics::histogram_quantile;
use self::partitions::{Catalog, dir_size};
pub use self::partitions::{dir_size as disk_bytes, index_settings};
use self::wal_thread::{Pending, WriteStats};
use crate::budget::{Budget, Gate, QueryCounters, QueryLimits};
use crate::model::{Acceptance, Rejections, screen, stamp_missing_times};
use crate::{
    Batch, LogPage, LogSearch, MetricQuery, RedQuery, Store, StoreConfig, StoreError, StoreStats,
    TimeRange, TraceSearch, WriteOutcome, Written,
};

/// The embedded telemetry store.
pub struct EmbeddedStore {
    dir: PathBuf,
    retention: Duration,
    catalog: Mutex<Option<Arc<Catalog>>>,
    queue: Mutex<Option<SyncSender<Pending>>>,
    ready: AtomicBool,
    stats: Arc<WriteStats>,
    truncated_bytes: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The budget of each query, and the permits of expensive ones.
    query_limits: QueryLimits,
    gate: Arc<Gate>,
    query_counters: Arc<QueryCounters>,
}

impl EmbeddedStore {
    /// Starts the store in `data_dir`: the returned receiver tells when the WAL replay is done (or why it failed).
    pub fn start(
        data_dir: &Path,
        config: StoreConfig,
    ) -> (Arc<Self>, oneshot::Receiver<Result<u64, StoreError>>) {
        let query_counters = Arc::new(QueryCounters::default());
        let store = Arc::new(Self {
            dir: data_dir.to_owned(),
            retention: config.retention,
            catalog: Mutex::new(None),
            queue: Mutex::new(None),
            ready: AtomicBool::new(false),
            stats: Arc::new(WriteStats::default()),
            truncated_bytes: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
            query_limits: config.query,
            gate: Arc::new(Gate::new(
                config.query.max_expensive,
                query_counters.clone(),
            )),
            query_counters,
        });
        let (done, replayed) = oneshot::channel();
        let starting = store.clone();
        let opener = std::thread::Builder::new()
            .name("gantry-store-open".to_owned())
            .spawn(move || {
                let _ = done.send(starting.open(config));
            })
            .expect("spawn the store opener");
        store
            .threads
            .lock()
            .expect("threads lock poisoned")
            .push(opener);
        (store, replayed)
    }

    /// Opens the WAL and the partitions, replays, and starts the writer threads. Runs on its own thread.
    fn open(&self, config: StoreConfig) -> Result<u64, StoreError> {
        let started = std::time::Instant::now();
        let (mut wal, recovery) = Wal::open(&self.dir.join("wal"), WalOptions::default())
            .map_err(|error| StoreError::Internal(format!("open the write-ahead log: {error}")))?;
        if recovery.truncated_bytes > 0 || recovery.corrupt_records > 0 {
            tracing::warn!(
                truncated_bytes = recovery.truncated_bytes,
                corrupt_records = recovery.corrupt_records,
                "cut a torn or corrupt tail off the write-ahead log"
            );
        }
        self.truncated_bytes
            .store(recovery.truncated_bytes, Ordering::Relaxed);
        let catalog = Arc::new(Catalog::open(&self.dir.join("index"), config.partition)?);
        let seen = Arc::new(SeenIds::default());
        let checkpoint_seq = Indexer::load_checkpoint(&self.dir, &seen, &self.stats);
        if checkpoint_seq > wal.last_seq() {
            // The WAL never loses its active segment, so this means it was deleted or replaced from outside: new
            // seqs would collide with what the partitions record as committed.
            return Err(StoreError::Internal(format!(
                "the write-ahead log ends at seq {} but the checkpoint is at {checkpoint_seq}: was {} deleted? restore it, or move the data directory aside",
                wal.last_seq(),
                self.dir.join("wal").display()
            )));
        }
        let checkpoint = Arc::new(AtomicU64::new(checkpoint_seq));
        let mut indexer = Indexer::new(
            catalog.clone(),
            config.clone(),
            &self.dir,
            seen.clone(),
            checkpoint.clone(),
            self.stats.clone(),
        );
        let replayed = indexer.replay(&mut wal)?;
        tracing::info!(
            batches = replayed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "write-ahead log replayed"
        );
        self.stats
            .wal_bytes
            .store(wal.size_bytes(), Ordering::Relaxed);

        let (requests, incoming) = std::sync::mpsc::sync_channel(config.max_queue_batches);
        let (to_indexer, batches) = std::sync::mpsc::sync_channel(indexer::INDEX_QUEUE);
        let stats = self.stats.clone();
        let wal_thread = std::thread::Builder::new()
            .name("gantry-wal".to_owned())
            .spawn(fail_stop_on_panic(
                "the write-ahead log thread",
                move || wal_thread::run(wal, incoming, to_indexer, seen, checkpoint, stats),
            ))?;
        let indexer_thread = std::thread::Builder::new()
            .name("gantry-indexer".to_owned())
            .spawn(fail_stop_on_panic("the indexer thread", move || {
                indexer.run(batches)
            }))?;
        self.threads
            .lock()
            .expect("threads lock poisoned")
            .extend([wal_thread, indexer_thread]);
        *self.catalog.lock().expect("catalog lock poisoned") = Some(catalog);
        *self.queue.lock().expect("queue lock poisoned") = Some(requests);
        self.ready.store(true, Ordering::Release);
        Ok(replayed)
    }

    fn catalog(&self) -> Result<Arc<Catalog>, StoreError> {
        self.catalog
            .lock()
            .expect("catalog lock poisoned")
            .clone()
            .ok_or(StoreError::NotReady)
    }

    /// Runs `work` on a blocking thread under a fresh query budget; dropping the returned future (the caller went
    /// away) stops the work at its next checkpoint.
    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Catalog, &Budget) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let catalog = self.catalog()?;
        let budget = Budget::new(self.query_limits, self.gate.clone());
        let guard = budget.cancel_on_drop();
        let result = tokio::task::spawn_blocking(move || work(&catalog, &budget))
            .await
            .map_err(|error| StoreError::Internal(format!("query task failed: {error}")))?;
        guard.disarm();
        result
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn write(&self, batch: Batch) -> Result<Written, StoreError> {
        let Some(queue) = self.queue.lock().expect("queue lock poisoned").clone() else {
            return Err(if self.ready.load(Ordering::Acquire) {
                StoreError::ShuttingDown
            } else {
                StoreError::NotReady
            });
        };
        let retention = self.retention;
        // Walking, screening and encoding a large batch takes milliseconds: not on an async worker.
        let (prepared, rejected) = tokio::task::spawn_blocking(move || prepare(batch, retention))
            .await
            .map_err(|error| {
                StoreError::Internal(format!("preparing the batch failed: {error}"))
            })?;
        let Some((id, request, encoded)) = prepared else {
            // Every item was rejected: nothing to store.
            return Ok(Written {
                outcome: WriteOutcome::Stored,
                rejected,
            });
        };
        let (reply, outcome) = oneshot::channel();
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        let pending = Pending {
            id,
            request,
            encoded,
            reply,
        };
        match queue.try_send(pending) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                return Err(StoreError::Overloaded {
                    retry_after: Duration::from_secs(1),
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                return Err(StoreError::ShuttingDown);
            }
        }
        let outcome = outcome.await.map_err(|_| StoreError::ShuttingDown)??;
        Ok(Written { outcome, rejected })
    }

    async fn search_logs(&self, search: LogSearch) -> Result<LogPage, StoreError> {
        self.read(move |catalog, budget| search::search_logs(catalog, budget, &search))
            .await
    }

    async fn log_histogram(
        &self,
        query: Query,
        range: TimeRange,
        buckets: usize,
    ) -> Result<Vec<HistogramBucket>, StoreError> {
        self.read(move |catalog, budget| {
            search::log_histogram(catalog, budget, &query, range, buckets)
        })
        .await
    }

    async fn trace(&self, trace_id: &str) -> Result<Vec<SpanRecord>, StoreError> {
        let trace_id = trace_id.to_owned();
        self.read(move |catalog, budget| search::trace(catalog, budget, &trace_id))
            .await
    }

    async fn search_traces(&self, search: TraceSearch) -> Result<Vec<TraceSummary>, StoreError> {
        self.read(move |catalog, budget| search::search_traces(catalog, budget, &search))
            .await
    }

    async fn metrics(&self, query: MetricQuery) -> Result<Vec<MetricSeries>, StoreError> {
        self.read(move |catalog, budget| metrics::query(catalog, budget, &query))
            .await
    }

    async fn services(&self, range: TimeRange) -> Result<Vec<ServiceRow>, StoreError> {
        self.read(move |catalog, budget| search::services(catalog, budget, range))
            .await
    }

    async fn red(&self, query: RedQuery) -> Result<Vec<RedSeries>, StoreError> {
        self.read(move |catalog, budget| search::red(catalog, budget, &query))
            .await
    }

    async fn metric_names(&self, range: TimeRange) -> Result<Vec<String>, StoreError> {
        self.read(move |catalog, budget| search::metric_names(catalog, budget, range))
            .await
    }

    async fn service_map(
        &self,
        range: TimeRange,
        max_spans: usize,
    ) -> Result<ServiceMap, StoreError> {
        self.read(move |catalog, budget| search::service_map(catalog, budget, range, max_spans))
            .await
    }

    fn is_ready(&self) -> bool {
        // The writer threads are the last two started; once running, a finished one means the store cannot write
        // (it only happens at shutdown: a panic stops the process).
        self.ready.load(Ordering::Acquire)
            && self
                .threads
                .lock()
                .expect("threads lock poisoned")
                .iter()
                .skip(1)
                .all(|thread| !thread.is_finished())
    }

    fn stats(&self) -> StoreStats {
        let partitions = self
            .catalog()
            .map(|catalog| catalog.all().len() as u64)
            .unwrap_or(0);
        StoreStats {
            wal_bytes: self.stats.wal_bytes.load(Ordering::Relaxed),
            queue_depth: self.stats.queued.load(Ordering::Relaxed),
            index_bytes: dir_size(&self.dir.join("index")),
            partitions,
            indexed_records: self.stats.indexed.load(Ordering::Relaxed),
            expired_records: self.stats.expired.load(Ordering::Relaxed),
            wal_truncated_bytes: self.truncated_bytes.load(Ordering::Relaxed),
            corrupt_checkpoints: self.stats.corrupt_checkpoints.load(Ordering::Relaxed),
            wal_failures: self.stats.wal_failures.load(Ordering::Relaxed),
            wal_failing: self.stats.wal_failing.load(Ordering::Relaxed) == 1,
            queries: self.query_counters.snapshot(),
        }
    }

    async fn shutdown(&self) {
        // The opener finishes first (a replay under way completes), so that the writer threads exist to be stopped.
        let opener = {
            let mut threads = self.threads.lock().expect("threads lock poisoned");
            (!threads.is_empty()).then(|| threads.remove(0))
        };
        if let Some(opener) = opener {
            let _ = tokio::task::spawn_blocking(move || opener.join()).await;
        }
        // Dropping the queue's sender lets the WAL thread drain and stop, which stops the indexer after a last commit.
        self.queue.lock().expect("queue lock poisoned").take();
        let threads: Vec<_> = self
            .threads
            .lock()
            .expect("threads lock poisoned")
            .drain(..)
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// Wraps a writer thread's body: a panic in it stops the process (exit 70) like an indexing failure, rather than
/// leave a process that answers but can never write again. A restart replays the write-ahead log.
fn fail_stop_on_panic(
    what: &'static str,
    body: impl FnOnce() + Send + 'static,
) -> impl FnOnce() + Send + 'static {
    move || {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_err() {
            indexer::fail_stop(what, 0, &StoreError::Internal("panicked".to_owned()));
        }
    }
}

/// A batch made ready for the WAL: log records without a time get their arrival time (in the request, so a replay
/// indexes them at the same time), items the store cannot keep are removed, and the request is encoded unless the
/// caller's protobuf bytes still describe it. `None` when no item is left.
fn prepare(
    batch: Batch,
    retention: Duration,
) -> (Option<(Option<String>, ExportRequest, Bytes)>, Rejections) {
    let Batch {
        id,
        mut request,
        mut encoded,
    } = batch;
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    if stamp_missing_times(&mut request, now_ns) {
        encoded = None;
    }
    let rejected = screen(&mut request, &Acceptance::new(now_ns, retention), now_ns);
    if rejected.total() > 0 {
        encoded = None;
        if request.items() == 0 {
            return (None, rejected);
        }
    }
    let encoded = encoded.unwrap_or_else(|| Bytes::from(request.encode_to_vec()));
    (Some((id, request, encoded)), rejected)
}

impl From<tantivy::TantivyError> for StoreError {
    fn from(error: tantivy::TantivyError) -> Self {
        StoreError::Internal(error.to_string())
    }
}

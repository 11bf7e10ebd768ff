//! The indexer thread: turns WAL'd batches into tantivy documents in the partition of each row's time, commits
//! every open partition together every `commit_interval` with the WAL seq it covers, moves the checkpoint, and
//! enforces retention.
//!
//! Invariants: **every partition commit records the WAL seq it covers**, so replay after a crash skips exactly what
//! a partition already has; **the checkpoint is written after all partitions committed**, and the WAL thread cuts the
//! WAL only behind it; **an indexing or commit failure stops the process** (exit 70) rather than let the checkpoint
//! pass a batch the indexes lack.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use gantry_proto::{ExportRequest, Signal};
use gantry_wal::Wal;
use tantivy::IndexWriter;

use super::checkpoint::{self, Checkpoint, Loaded};
use super::dedup::{SeenIds, dedup_key};
use super::partitions::{Catalog, Partition};
use super::payload;
use super::schema::{dir_name, log_document, point_document, span_document};
use super::wal_thread::WriteStats;
use crate::model::{Acceptance, convert};
use crate::{StoreConfig, StoreError};

/// Batches waiting between the WAL thread and the indexer.
pub const INDEX_QUEUE: usize = 32;

/// The checkpoint's file name inside the data directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

/// Fewer merges than tantivy's default: commits every half second make many small segments, and merges (rebuilding
/// term dictionaries full of ids) were 40% of the plane's CPU under load with the default policy. Segments stop
/// growing at 2 M documents: merging them further costs more CPU than a handful more segments cost queries.
pub fn merge_policy() -> tantivy::merge_policy::LogMergePolicy {
    let mut policy = tantivy::merge_policy::LogMergePolicy::default();
    policy.set_min_num_segments(12);
    policy.set_min_layer_size(20_000);
    policy.set_max_docs_before_merge(2_000_000);
    policy
}

/// A partition's writer, and whether it got documents since the last commit.
struct OpenWriter {
    partition: Arc<Partition>,
    writer: IndexWriter,
    touched: bool,
}

/// Stops the process after an indexing or commit failure. Carrying on would let the checkpoint pass a batch that is
/// not in the indexes (it would be cut from the WAL and lost); exiting keeps every acknowledged batch in the WAL,
/// and the restart replays it from the last checkpoint.
pub(crate) fn fail_stop(what: &str, seq: u64, error: &StoreError) -> ! {
    tracing::error!(
        error = %error,
        seq,
        "{what} failed; exiting so that a restart replays the write-ahead log from the last checkpoint"
    );
    // Never `eprintln!`: it panics when stderr cannot be written (a full disk), and the exit must happen anyway.
    let _ = writeln!(
        std::io::stderr(),
        "gantry: {what} failed at write-ahead log seq {seq}: {error}; exiting (a restart replays the log)"
    );
    std::process::exit(70);
}

/// The indexer: documents into partitions, commits, checkpoint, retention.
pub struct Indexer {
    catalog: Arc<Catalog>,
    config: StoreConfig,
    writers: HashMap<(Signal, i64), OpenWriter>,
    last_seq: u64,
    dirty: bool,
    checkpoint_path: PathBuf,
    checkpoint: Arc<AtomicU64>,
    seen: Arc<SeenIds>,
    stats: Arc<WriteStats>,
}

impl Indexer {
    /// An indexer over a catalog, resuming after `checkpoint_seq`.
    pub fn new(
        catalog: Arc<Catalog>,
        config: StoreConfig,
        data_dir: &Path,
        seen: Arc<SeenIds>,
        checkpoint: Arc<AtomicU64>,
        stats: Arc<WriteStats>,
    ) -> Self {
        Self {
            catalog,
            config,
            writers: HashMap::new(),
            last_seq: checkpoint.load(Ordering::Acquire),
            dirty: false,
            checkpoint_path: data_dir.join(CHECKPOINT_FILE),
            checkpoint,
            seen,
            stats,
        }
    }

    /// Loads `DATA_DIR/checkpoint.json`: its seq, and the batch ids it remembers into `seen`. A corrupt checkpoint
    /// is logged and counted, and start-up goes on from seq 0: the WAL is replayed from its oldest segment kept.
    pub fn load_checkpoint(data_dir: &Path, seen: &SeenIds, stats: &WriteStats) -> u64 {
        let path = data_dir.join(CHECKPOINT_FILE);
        let checkpoint = match checkpoint::read(&path) {
            Loaded::Read(checkpoint) => checkpoint,
            Loaded::Missing => Checkpoint::default(),
            Loaded::Corrupt(error) => {
                tracing::error!(
                    path = %path.display(),
                    error = %error,
                    "the checkpoint is unreadable; replaying the write-ahead log from its oldest segment \
                     (partitions skip what they committed; batch ids older than the log are forgotten)"
                );
                stats.corrupt_checkpoints.fetch_add(1, Ordering::Relaxed);
                Checkpoint::default()
            }
        };
        let now_s = chrono::Utc::now().timestamp();
        for (id, first) in checkpoint.batch_ids {
            seen.restore(id, first, now_s);
        }
        checkpoint.seq
    }

    /// Re-indexes what the WAL holds after the checkpoint; returns the number of batches replayed.
    pub fn replay(&mut self, wal: &mut Wal) -> Result<u64, StoreError> {
        let from = self.last_seq + 1;
        let mut replayed = 0;
        let now_s = chrono::Utc::now().timestamp();
        for record in wal
            .read_from(from)
            .map_err(|error| StoreError::Internal(error.to_string()))?
        {
            let (seq, payload) = record.map_err(|error| StoreError::Internal(error.to_string()))?;
            let Some(payload::Payload { id, request }) = payload::decode(&payload) else {
                tracing::warn!(seq, "skipping an undecodable write-ahead log record");
                continue;
            };
            if let Some(id) = id {
                self.seen.confirm(&dedup_key(request.signal(), &id), now_s);
            }
            self.index(seq, &request)?;
            replayed += 1;
        }
        self.commit()?;
        Ok(replayed)
    }

    /// Runs until the WAL thread hangs up, committing every `commit_interval`.
    pub fn run(mut self, batches: Receiver<(u64, ExportRequest)>) {
        let mut next_commit = Instant::now() + self.config.commit_interval;
        let mut next_retention = Instant::now();
        loop {
            let wait = next_commit.saturating_duration_since(Instant::now());
            match batches.recv_timeout(wait) {
                Ok((seq, request)) => {
                    if let Err(error) = self.index(seq, &request) {
                        fail_stop("indexing", seq, &error);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_commit {
                if let Err(error) = self.commit() {
                    fail_stop("committing", self.last_seq, &error);
                }
                next_commit = Instant::now() + self.config.commit_interval;
            }
            if Instant::now() >= next_retention {
                self.enforce_retention();
                next_retention = Instant::now() + Duration::from_secs(30);
            }
        }
        if let Err(error) = self.commit() {
            tracing::error!(error = %error, "final commit failed; the write-ahead log will be replayed at start");
        }
        for (_, open) in self.writers.drain() {
            let _ = open.writer.wait_merging_threads();
        }
        tracing::debug!("indexer stopped");
    }

    fn index(&mut self, seq: u64, request: &ExportRequest) -> Result<(), StoreError> {
        let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        let rows = convert(
            request,
            &Acceptance::new(now_ns, self.config.retention),
            now_ns,
        );
        self.stats
            .expired
            .fetch_add(rows.rejected, Ordering::Relaxed);
        let mut indexed = 0;
        let [logs, spans, metrics] = Signal::ALL.map(|signal| self.catalog.fields(signal).clone());
        for (i, log) in rows.logs.iter().enumerate() {
            if let Some((_, writer)) = self.writer(Signal::Logs, log.timestamp_unix_nano, seq)? {
                let body = rows.bodies.get(i).and_then(Option::as_ref);
                writer.add_document(log_document(&logs, log, body))?;
                indexed += 1;
            }
        }
        for span in &rows.spans {
            if let Some((_, writer)) = self.writer(Signal::Traces, span.start_unix_nano, seq)? {
                writer.add_document(span_document(&spans, span))?;
                indexed += 1;
            }
        }
        for point in &rows.points {
            if let Some((_, writer)) = self.writer(Signal::Metrics, point.ts_ns, seq)? {
                writer.add_document(point_document(&metrics, point))?;
                indexed += 1;
            }
        }
        self.stats.indexed.fetch_add(indexed, Ordering::Relaxed);
        self.last_seq = self.last_seq.max(seq);
        self.dirty = true;
        Ok(())
    }

    /// The writer of the partition holding `ts`, or None when that partition already committed record `seq`.
    fn writer(
        &mut self,
        signal: Signal,
        ts_ns: i64,
        seq: u64,
    ) -> Result<Option<(Arc<Partition>, &mut IndexWriter)>, StoreError> {
        let partition = self.catalog.partition_for(signal, ts_ns)?;
        if partition.committed() >= seq {
            return Ok(None);
        }
        let memory = match signal {
            Signal::Logs => self.config.indexer_memory_bytes,
            Signal::Traces | Signal::Metrics => {
                (self.config.indexer_memory_bytes / 2).max(20 << 20)
            }
        };
        let open = match self.writers.entry((signal, partition.start_ns)) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let writer: IndexWriter = partition.index.writer_with_num_threads(1, memory)?;
                writer.set_merge_policy(Box::new(merge_policy()));
                entry.insert(OpenWriter {
                    partition: partition.clone(),
                    writer,
                    touched: false,
                })
            }
        };
        open.touched = true;
        Ok(Some((partition, &mut open.writer)))
    }

    /// Commits every open writer with the last seq, reloads readers, writes the checkpoint.
    fn commit(&mut self) -> Result<(), StoreError> {
        if !self.dirty {
            return Ok(());
        }
        let seq = self.last_seq;
        let payload = seq.to_string();
        let mut idle = Vec::new();
        for (key, open) in &mut self.writers {
            if !open.touched {
                // Nothing new since the last commit: close the writer to free its memory.
                idle.push(*key);
                continue;
            }
            let mut prepared = open.writer.prepare_commit()?;
            prepared.set_payload(&payload);
            prepared.commit()?;
            open.partition.reader.reload()?;
            open.partition.committed_seq.store(seq, Ordering::Release);
            open.touched = false;
        }
        for key in idle {
            if let Some(open) = self.writers.remove(&key) {
                let _ = open.writer.wait_merging_threads();
            }
        }
        let now_s = chrono::Utc::now().timestamp();
        let checkpoint = Checkpoint {
            seq,
            batch_ids: self.seen.snapshot(now_s),
        };
        checkpoint::write(&self.checkpoint_path, &checkpoint)?;
        self.checkpoint.store(seq, Ordering::Release);
        self.dirty = false;
        Ok(())
    }

    /// Drops partitions older than retention, then the oldest ones while the disk budget is exceeded.
    fn enforce_retention(&mut self) {
        let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        let oldest = now_ns - self.config.retention.as_nanos() as i64;
        let partitions = self.catalog.all();
        let mut total: u64 = if self.config.max_disk_bytes > 0 {
            partitions.iter().map(|p| p.disk_bytes()).sum()
        } else {
            0
        };
        let newest_start = partitions
            .iter()
            .map(|p| p.start_ns)
            .max()
            .unwrap_or(i64::MIN);
        for partition in partitions {
            let expired = partition.end_ns <= oldest;
            let over_budget = self.config.max_disk_bytes > 0
                && total > self.config.max_disk_bytes
                && partition.start_ns < newest_start;
            if !expired && !over_budget {
                continue;
            }
            let size = partition.disk_bytes();
            if let Some(open) = self.writers.remove(&(partition.signal, partition.start_ns)) {
                // Merges must be over before the files go.
                let _ = open.writer.wait_merging_threads();
            }
            match self.catalog.drop_partition(&partition) {
                Ok(()) => {
                    total = total.saturating_sub(size);
                    tracing::info!(
                        signal = dir_name(partition.signal),
                        start = %crate::model::rfc3339(partition.start_ns),
                        bytes = size,
                        reason = if expired { "retention" } else { "disk budget" },
                        "dropped a partition"
                    );
                }
                Err(error) => tracing::warn!(error = %error, "could not drop a partition"),
            }
        }
    }
}

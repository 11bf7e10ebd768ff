//! The write path: a WAL thread that appends and fsyncs batches in groups before they are acknowledged, and an
//! indexer thread that turns them into documents, commits every partition together, and moves the checkpoint.
//!
//! Invariants: **a batch is acknowledged only after its WAL record is fsynced**; **every partition commit records
//! the WAL seq it covers**, so replay after a crash skips exactly what a partition already has; **the WAL is cut only
//! behind the checkpoint**, which is written after all partitions committed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gantry_wal::Wal;
use prost::Message;
use serde::{Deserialize, Serialize};
use tantivy::IndexWriter;
use tokio::sync::oneshot;

use super::partitions::{Catalog, Partition};
use super::schema::{Signal, log_document, point_document, span_document};
use crate::store::model::{Acceptance, convert};
use crate::store::{Batch, OtlpRequest, StoreConfig, StoreError, WriteOutcome};

/// How long a batch id is remembered.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(600);
/// Most batches fsynced together.
const MAX_GROUP: usize = 256;
/// Batches waiting between the WAL thread and the indexer.
pub const INDEX_QUEUE: usize = 32;

/// A batch waiting to be written, and whom to tell.
pub struct Pending {
    /// The batch.
    pub batch: Batch,
    /// Told after the fsync.
    pub reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
}

/// Batch ids seen in the last [`DEDUP_WINDOW`], with the Unix second they were first seen. An id is *pending* from
/// the moment its batch is taken until the WAL fsync (a duplicate arriving meanwhile is answered with the first's
/// outcome), and *confirmed* after it: only confirmed ids are written to the checkpoint, so a restart never
/// remembers an id whose batch was not stored.
#[derive(Default)]
pub struct SeenIds(Mutex<Ids>);

#[derive(Default)]
struct Ids {
    confirmed: HashMap<String, i64>,
    pending: std::collections::HashSet<String>,
}

impl SeenIds {
    /// Takes an id as pending; false when it is pending or was confirmed within the window.
    fn insert(&self, id: &str, now_s: i64) -> bool {
        let mut ids = self.0.lock().expect("dedup lock poisoned");
        let fresh_confirmed = ids
            .confirmed
            .get(id)
            .is_some_and(|first| now_s - first < DEDUP_WINDOW.as_secs() as i64);
        if fresh_confirmed || ids.pending.contains(id) {
            return false;
        }
        ids.pending.insert(id.to_owned());
        true
    }

    /// The batch of a pending id is durable.
    fn confirm(&self, id: &str, now_s: i64) {
        let mut ids = self.0.lock().expect("dedup lock poisoned");
        ids.pending.remove(id);
        ids.confirmed.insert(id.to_owned(), now_s);
    }

    /// The batch of a pending id was not stored.
    fn remove(&self, id: &str) {
        self.0
            .lock()
            .expect("dedup lock poisoned")
            .pending
            .remove(id);
    }

    fn snapshot(&self, now_s: i64) -> HashMap<String, i64> {
        let mut ids = self.0.lock().expect("dedup lock poisoned");
        ids.confirmed
            .retain(|_, first| now_s - *first < DEDUP_WINDOW.as_secs() as i64);
        ids.confirmed.clone()
    }
}

/// What survives a restart besides the WAL and the indexes.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    /// Every record up to this seq is committed in every partition.
    seq: u64,
    /// Batch ids seen recently, with the Unix second first seen.
    batch_ids: HashMap<String, i64>,
}

fn read_checkpoint(path: &Path) -> Checkpoint {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn write_checkpoint(path: &Path, checkpoint: &Checkpoint) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    let file = std::fs::File::create(&temporary)?;
    serde_json::to_writer(&file, checkpoint)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// WAL payload: signal byte, id length (u16 LE), id bytes, OTLP protobuf.
fn encode_payload(batch: &Batch) -> Vec<u8> {
    let id = batch.id.as_deref().unwrap_or("").as_bytes();
    let id = &id[..id.len().min(u16::MAX as usize)];
    let signal = match batch.request {
        OtlpRequest::Logs(_) => 0u8,
        OtlpRequest::Traces(_) => 1,
        OtlpRequest::Metrics(_) => 2,
    };
    let mut payload = Vec::with_capacity(3 + id.len() + batch.encoded.len());
    payload.push(signal);
    payload.extend_from_slice(&(id.len() as u16).to_le_bytes());
    payload.extend_from_slice(id);
    payload.extend_from_slice(&batch.encoded);
    payload
}

fn decode_payload(payload: &[u8]) -> Option<(Option<String>, OtlpRequest)> {
    let (&signal, rest) = payload.split_first()?;
    let id_len = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let id = std::str::from_utf8(rest.get(2..2 + id_len)?).ok()?;
    let body = rest.get(2 + id_len..)?;
    let request = match signal {
        0 => OtlpRequest::Logs(Message::decode(body).ok()?),
        1 => OtlpRequest::Traces(Message::decode(body).ok()?),
        2 => OtlpRequest::Metrics(Message::decode(body).ok()?),
        _ => return None,
    };
    Some(((!id.is_empty()).then(|| id.to_owned()), request))
}

/// What became of one batch of a group.
enum Entry {
    /// Its id was seen recently.
    Duplicate,
    /// In the WAL at this seq; `key` is its dedup key.
    Appended { seq: u64, key: Option<String> },
    /// Its append failed.
    Failed { key: Option<String> },
    /// Not tried: an earlier append of the group failed.
    Skipped,
}

/// The dedup key of a batch: its id within its signal, so a logs batch and a traces batch may share an id.
fn dedup_key(request: &OtlpRequest, id: &str) -> String {
    let signal = match request {
        OtlpRequest::Logs(_) => "logs",
        OtlpRequest::Traces(_) => "traces",
        OtlpRequest::Metrics(_) => "metrics",
    };
    format!("{signal}/{id}")
}

/// Shared counters of the write path.
#[derive(Default)]
pub struct WriteStats {
    /// Bytes of WAL on disk.
    pub wal_bytes: AtomicU64,
    /// Records indexed.
    pub indexed: AtomicU64,
    /// Records dropped at indexing because they fell outside retention.
    pub expired: AtomicU64,
    /// Batches queued for the WAL.
    pub queued: AtomicU64,
}

/// Runs the WAL thread until every sender is gone.
pub fn run_wal(
    mut wal: Wal,
    requests: Receiver<Pending>,
    to_indexer: SyncSender<(u64, OtlpRequest)>,
    seen: Arc<SeenIds>,
    checkpoint: Arc<AtomicU64>,
    stats: Arc<WriteStats>,
) {
    while let Ok(first) = requests.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match requests.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        stats
            .queued
            .fetch_sub(group.len() as u64, Ordering::Relaxed);
        let now_s = chrono::Utc::now().timestamp();
        let mut written = Vec::with_capacity(group.len());
        let mut failure = None;
        for pending in group {
            if failure.is_some() {
                written.push((Entry::Skipped, pending));
                continue;
            }
            let key = pending
                .batch
                .id
                .as_deref()
                .map(|id| dedup_key(&pending.batch.request, id));
            if let Some(key) = &key
                && !seen.insert(key, now_s)
            {
                written.push((Entry::Duplicate, pending));
                continue;
            }
            match wal.append(&encode_payload(&pending.batch)) {
                Ok(seq) => written.push((Entry::Appended { seq, key }, pending)),
                Err(error) => {
                    failure = Some(error.to_string());
                    written.push((Entry::Failed { key }, pending));
                }
            }
        }
        if failure.is_none()
            && let Err(error) = wal.sync()
        {
            failure = Some(error.to_string());
        }
        if let Some(error) = failure {
            tracing::error!(error = %error, "write-ahead log append failed; the batches are refused");
            // Nothing of this group is acknowledged, so no id of it may count as seen (a duplicate in the group may
            // be of a batch that failed with it): every sender retries.
            for (entry, pending) in written {
                if let Entry::Appended { key: Some(key), .. } | Entry::Failed { key: Some(key) } =
                    &entry
                {
                    seen.remove(key);
                }
                let _ = pending.reply.send(Err(StoreError::Internal(format!(
                    "write-ahead log: {error}"
                ))));
            }
            continue;
        }
        for (entry, _) in &written {
            if let Entry::Appended { key: Some(key), .. } = entry {
                seen.confirm(key, now_s);
            }
        }
        for (entry, pending) in written {
            let outcome = match entry {
                Entry::Appended { seq, .. } => {
                    // Blocks when the indexer lags: the queue in front of this thread then fills and ingest answers 429.
                    if to_indexer.send((seq, pending.batch.request)).is_err() {
                        let _ = pending.reply.send(Err(StoreError::ShuttingDown));
                        continue;
                    }
                    WriteOutcome::Stored
                }
                Entry::Duplicate => WriteOutcome::Duplicate,
                // Only a failed group has these, and it was answered above.
                Entry::Failed { .. } | Entry::Skipped => continue,
            };
            let _ = pending.reply.send(Ok(outcome));
        }
        let through = checkpoint.load(Ordering::Acquire);
        if through > 0
            && let Err(error) = wal.remove_through(through)
        {
            tracing::warn!(error = %error, "could not remove old write-ahead log segments");
        }
        stats.wal_bytes.store(wal.size_bytes(), Ordering::Relaxed);
    }
    tracing::debug!("write-ahead log thread stopped");
}

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
fn fail_stop(what: &str, seq: u64, error: &StoreError) -> ! {
    tracing::error!(
        error = %error,
        seq,
        "{what} failed; exiting so that a restart replays the write-ahead log from the last checkpoint"
    );
    eprintln!(
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
            checkpoint_path: data_dir.join("checkpoint.json"),
            checkpoint,
            seen,
            stats,
        }
    }

    /// Loads the checkpoint file: its seq and the batch ids it remembers.
    pub fn load_checkpoint(data_dir: &Path, seen: &SeenIds) -> u64 {
        let checkpoint = read_checkpoint(&data_dir.join("checkpoint.json"));
        let now_s = chrono::Utc::now().timestamp();
        for (id, first) in checkpoint.batch_ids {
            if now_s - first < DEDUP_WINDOW.as_secs() as i64 {
                seen.0
                    .lock()
                    .expect("dedup lock poisoned")
                    .confirmed
                    .insert(id, first);
            }
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
            let Some((id, request)) = decode_payload(&payload) else {
                tracing::warn!(seq, "skipping an undecodable write-ahead log record");
                continue;
            };
            if let Some(id) = id {
                self.seen.confirm(&dedup_key(&request, &id), now_s);
            }
            self.index(seq, &request)?;
            replayed += 1;
        }
        self.commit()?;
        Ok(replayed)
    }

    /// Runs until the WAL thread hangs up, committing every `commit_interval`.
    pub fn run(mut self, batches: Receiver<(u64, OtlpRequest)>) {
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

    fn index(&mut self, seq: u64, request: &OtlpRequest) -> Result<(), StoreError> {
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
        for log in &rows.logs {
            if let Some((_, writer)) = self.writer(Signal::Logs, log.timestamp_unix_nano, seq)? {
                writer.add_document(log_document(&logs, log))?;
                indexed += 1;
            }
        }
        for span in &rows.spans {
            if let Some((_, writer)) = self.writer(Signal::Spans, span.start_unix_nano, seq)? {
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
            Signal::Spans | Signal::Metrics => (self.config.indexer_memory_bytes / 2).max(20 << 20),
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
        write_checkpoint(&self.checkpoint_path, &checkpoint)?;
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
                        signal = partition.signal.name(),
                        start = %crate::store::model::rfc3339(partition.start_ns),
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

/// The protobuf body a request is kept as in the WAL.
pub fn encode_request(request: &OtlpRequest) -> Bytes {
    Bytes::from(match request {
        OtlpRequest::Logs(r) => r.encode_to_vec(),
        OtlpRequest::Traces(r) => r.encode_to_vec(),
        OtlpRequest::Metrics(r) => r.encode_to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_payloads_round_trip_and_garbage_is_refused() {
        let request = OtlpRequest::Logs(
            crate::bench::generate::Generator::new(3, 2).logs(5, 1_700_000_000_000_000_000),
        );
        for id in [Some("agent-7/42".to_owned()), None] {
            let batch = Batch {
                id: id.clone(),
                encoded: encode_request(&request),
                request: request.clone(),
            };
            let (decoded_id, decoded) = decode_payload(&encode_payload(&batch)).expect("decodes");
            assert_eq!(decoded_id, id);
            assert_eq!(encode_request(&decoded), batch.encoded);
        }
        for garbage in [&b""[..], &[7, 0, 0][..], &[0, 9, 0, b'x'][..]] {
            assert!(decode_payload(garbage).is_none(), "{garbage:?}");
        }
    }

    #[test]
    fn dedup_keys_are_per_signal() {
        let logs = OtlpRequest::Logs(Default::default());
        let traces = OtlpRequest::Traces(Default::default());
        assert_ne!(dedup_key(&logs, "b-1"), dedup_key(&traces, "b-1"));
        let seen = SeenIds::default();
        assert!(seen.insert(&dedup_key(&logs, "b-1"), 1_000));
        assert!(!seen.insert(&dedup_key(&logs, "b-1"), 1_000), "pending");
        assert!(
            seen.snapshot(1_000).is_empty(),
            "a pending id is not checkpointed"
        );
        seen.confirm(&dedup_key(&logs, "b-1"), 1_000);
        assert!(!seen.insert(&dedup_key(&logs, "b-1"), 1_000 + 599));
        assert_eq!(seen.snapshot(1_000).len(), 1);
        let failed = SeenIds::default();
        assert!(failed.insert("x", 1));
        failed.remove("x");
        assert!(failed.insert("x", 1), "a failed batch's id is forgotten");
        assert!(
            seen.insert(&dedup_key(&logs, "b-1"), 1_000 + 600),
            "forgotten after 10 minutes"
        );
    }
}

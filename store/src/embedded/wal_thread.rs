//! The WAL thread: appends batches in groups, fsyncs once per group, and only then answers the writers and hands
//! the batches to the indexer. **A batch is acknowledged only after its WAL record is fsynced.**

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};

use bytes::Bytes;
use gantry_proto::ExportRequest;
use gantry_wal::Wal;
use tokio::sync::oneshot;

use super::dedup::{SeenIds, dedup_key};
use super::payload;
use crate::{StoreError, WriteOutcome};

/// Most batches fsynced together.
const MAX_GROUP: usize = 256;

/// A batch waiting to be written, and whom to tell.
pub struct Pending {
    /// Idempotency key, when the sender gave one.
    pub id: Option<String>,
    /// The decoded request (what the indexer converts).
    pub request: ExportRequest,
    /// Its protobuf form (what the WAL keeps).
    pub encoded: Bytes,
    /// Told after the fsync.
    pub reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
}

/// Shared counters of the write path.
#[derive(Default)]
pub struct WriteStats {
    /// Bytes of WAL on disk.
    pub wal_bytes: AtomicU64,
    /// Records indexed.
    pub indexed: AtomicU64,
    /// Records dropped at indexing because they fell outside retention while queued.
    pub expired: AtomicU64,
    /// Batches queued for the WAL.
    pub queued: AtomicU64,
    /// Checkpoints found unreadable at start (the WAL was then replayed from its oldest segment).
    pub corrupt_checkpoints: AtomicU64,
    /// Groups of batches refused because the WAL could not be written (a full or failing disk).
    pub wal_failures: AtomicU64,
    /// 1 while the last WAL write failed (writes are refused with 503 until one succeeds), else 0.
    pub wal_failing: AtomicU64,
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

/// Runs the WAL thread until every sender is gone. `checkpoint` is the seq the indexer's last checkpoint covers:
/// segments wholly behind it are removed.
pub fn run(
    mut wal: Wal,
    requests: Receiver<Pending>,
    to_indexer: SyncSender<(u64, ExportRequest)>,
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
            let signal = pending.request.signal();
            let key = pending.id.as_deref().map(|id| dedup_key(signal, id));
            if let Some(key) = &key
                && !seen.insert(key, now_s)
            {
                written.push((Entry::Duplicate, pending));
                continue;
            }
            let record = payload::encode(signal, pending.id.as_deref(), &pending.encoded);
            match wal.append(&record) {
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
            stats.wal_failures.fetch_add(1, Ordering::Relaxed);
            if stats.wal_failing.swap(1, Ordering::Relaxed) == 0 {
                tracing::error!(
                    error = %error,
                    "write-ahead log write failed (a full or failing disk?); refusing writes with 503 until one succeeds"
                );
            }
            // The log's tail is unknown after a failed write: re-validate it in place, as a restart would, so that
            // the next group can be written once there is room again. Nothing of this group was acknowledged.
            if let Err(recovery) = wal.recover() {
                tracing::error!(error = %recovery, "write-ahead log recovery failed; retrying with the next batch");
            }
            // Nothing of this group is acknowledged, so no id of it may count as seen (a duplicate in the group may
            // be of a batch that failed with it): every sender retries.
            for (entry, pending) in written {
                if let Entry::Appended { key: Some(key), .. } | Entry::Failed { key: Some(key) } =
                    &entry
                {
                    seen.remove(key);
                }
                let _ = pending
                    .reply
                    .send(Err(StoreError::Unwritable(error.clone())));
            }
            continue;
        }
        if stats.wal_failing.swap(0, Ordering::Relaxed) == 1 {
            tracing::info!("write-ahead log writable again; accepting writes");
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
                    if to_indexer.send((seq, pending.request)).is_err() {
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

//! The disk buffer between sources and the shipper: a `gantry_wal::Wal` in `DATA_DIR/buffer`, a size limit, and the shipped cursor in `DATA_DIR/shipped-seq`.
//!
//! # Flow
//!
//! Sources send [`AppendRequest`]s over a bounded channel to the writer thread
//! ([`spawn_writer`]), which appends each batch, fsyncs, and only then answers with its seq. The
//! shipper learns about new records through a `watch` of the last seq and reads them back from the
//! WAL (the disk is the queue, so memory stays bounded whatever the backlog).
//!
//! # fsync policy
//!
//! One `fdatasync` per appended batch: the writer syncs before answering, so a source's checkpoint
//! never covers bytes that are not durable here. Batches are cut by the sources at
//! `batch_max_lines` records or `batch_timeout` (1 s by default), so a steady source costs at most
//! about one fsync per second plus one per full batch. The shipped cursor is written with a
//! temporary file, `fsync` and `rename` after every acknowledged batch.
//!
//! # Size limit
//!
//! An append is refused with [`AppendOutcome::Full`] when the WAL's size plus the batch would pass
//! `buffer_max_bytes` while unshipped records remain; from then on every append is refused until the shipper has
//! brought the buffer below 90% of the limit, so that small appends do not starve a large one. Sources that can
//! wait (files, Docker logs) pause and retry; those that cannot (the OTLP receiver) answer 503 with
//! `Retry-After`; metrics samples are dropped and counted.
//!
//! # Pins
//!
//! An append may be pinned: its segment is not removed, even once shipped, until the source
//! calls [`Buffer::confirm`] after persisting its own checkpoint. A source that crashes between
//! the two finds the positions it had reached in the records after its checkpoint
//! ([`Buffer::read_from`]), so nothing is read twice.

pub mod record;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use gantry_wal::{Wal, WalError, WalOptions, WalReader};
use tokio::sync::{mpsc, oneshot, watch};

pub use record::{BufferHeader, BufferRecord, Signal};

use crate::telemetry::Telemetry;

/// Capacity of the channel from sources to the writer thread, in batches.
pub const APPEND_QUEUE: usize = 4;

/// A failure of the disk buffer.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// The WAL failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The cursor file could not be read or written.
    #[error("shipped cursor {path}: {source}")]
    Cursor {
        /// `DATA_DIR/shipped-seq`.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A batch for the buffer, with where to send the answer.
#[derive(Debug)]
pub struct AppendRequest {
    /// The batch.
    pub record: BufferRecord,
    /// Keep the record's segment until [`Buffer::confirm`] (see the module docs).
    pub pin: bool,
    /// Receives the outcome once the batch is durable (or refused).
    pub reply: oneshot::Sender<AppendOutcome>,
}

/// What became of an [`AppendRequest`].
#[derive(Debug)]
pub enum AppendOutcome {
    /// Durable, with this seq.
    Appended(u64),
    /// Refused: the buffer is at its size limit; try again once the shipper made room.
    Full,
    /// The WAL failed; the message says how.
    Failed(String),
}

struct State {
    wal: Wal,
    /// Highest seq acknowledged by the plane (or skipped as rejected).
    shipped: u64,
    /// Appended, shipped or not, but not yet confirmed by their source.
    pins: BTreeSet<u64>,
    /// An append was refused and the buffer has not yet drained below its low watermark.
    full: bool,
}

/// The disk buffer, shared by the writer thread and the shipper.
pub struct Buffer {
    /// Made when the buffer directory is made: batch ids carry it, so that seqs restarting at 1 after the buffer was
    /// wiped never reuse an id the plane still remembers (it would drop the batch as a duplicate).
    epoch: String,
    state: Mutex<State>,
    max_bytes: u64,
    cursor_path: PathBuf,
    last_seq: watch::Sender<u64>,
    telemetry: Arc<Telemetry>,
}

/// The buffer's epoch: read, or made (random, fsynced) when the buffer directory is new or was wiped.
fn read_or_make_epoch(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        Ok(_) => make_epoch(path),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => make_epoch(path),
        Err(error) => Err(error),
    }
}

fn make_epoch(path: &Path) -> std::io::Result<String> {
    let epoch = hex::encode(rand::random::<[u8; 4]>());
    let file = std::fs::File::create(path)?;
    std::io::Write::write_all(&mut &file, epoch.as_bytes())?;
    file.sync_all()?;
    Ok(epoch)
}

impl Buffer {
    /// The buffer's epoch, part of every batch id.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Opens (creating) `DATA_DIR/buffer` and reads the shipped cursor. Blocking.
    pub fn open(
        data_dir: &Path,
        max_bytes: u64,
        telemetry: Arc<Telemetry>,
    ) -> Result<Arc<Buffer>, BufferError> {
        // Small segments so that shipped data is removed promptly (only whole segments go).
        let segment_bytes = (max_bytes / 16).clamp(64 << 10, 16 << 20);
        let (wal, stats) = Wal::open(&data_dir.join("buffer"), WalOptions { segment_bytes })?;
        let epoch =
            read_or_make_epoch(&data_dir.join("buffer").join("epoch")).map_err(|source| {
                BufferError::Cursor {
                    path: data_dir.join("buffer").join("epoch"),
                    source,
                }
            })?;
        if stats.truncated_bytes > 0 || stats.corrupt_records > 0 {
            tracing::warn!(
                truncated_bytes = stats.truncated_bytes,
                corrupt_records = stats.corrupt_records,
                "disk buffer recovered from a torn or corrupt tail"
            );
        }
        let cursor_path = data_dir.join("shipped-seq");
        let mut shipped = match std::fs::read_to_string(&cursor_path) {
            Ok(text) => text.trim().parse::<u64>().unwrap_or_else(|_| {
                tracing::warn!(path = %cursor_path.display(), "unreadable shipped cursor; resending the whole buffer (the plane deduplicates)");
                0
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(BufferError::Cursor {
                    path: cursor_path,
                    source,
                });
            }
        };
        if shipped > wal.last_seq() {
            tracing::warn!(
                shipped,
                last_seq = wal.last_seq(),
                "the disk buffer was reset behind the agent's back; shipping it from the start"
            );
            shipped = 0;
        }
        telemetry.set_buffer(wal.size_bytes(), max_bytes);
        telemetry
            .unshipped_batches
            .store(wal.last_seq() - shipped, Ordering::Relaxed);
        let (last_seq, _) = watch::channel(wal.last_seq());
        Ok(Arc::new(Buffer {
            epoch,
            state: Mutex::new(State {
                wal,
                shipped,
                pins: BTreeSet::new(),
                full: false,
            }),
            max_bytes,
            cursor_path,
            last_seq,
            telemetry,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the WAL consistent (it poisons itself on errors).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends and fsyncs one batch. Blocking; used by the writer thread.
    pub fn append(&self, record: &BufferRecord, pin: bool) -> AppendOutcome {
        let bytes = record.encode();
        let mut state = self.lock();
        let unshipped = state.wal.last_seq() > state.shipped;
        let size = state.wal.size_bytes();
        // Once full, the buffer stays full until it drained below the low watermark: small appends (an OTLP
        // request) must not keep taking the room a large one (a file batch) waits for.
        if state.full && unshipped && size > self.max_bytes / 10 * 9 {
            return AppendOutcome::Full;
        }
        if unshipped && size + bytes.len() as u64 > self.max_bytes {
            state.full = true;
            return AppendOutcome::Full;
        }
        state.full = false;
        let result = state.wal.append(&bytes).and_then(|seq| {
            state.wal.sync()?;
            Ok(seq)
        });
        match result {
            Ok(seq) => {
                if pin {
                    state.pins.insert(seq);
                }
                self.telemetry
                    .unshipped_batches
                    .store(seq - state.shipped, Ordering::Relaxed);
                self.telemetry
                    .set_buffer(state.wal.size_bytes(), self.max_bytes);
                drop(state);
                self.last_seq.send_replace(seq);
                AppendOutcome::Appended(seq)
            }
            Err(error) => {
                tracing::error!(error = %error, "disk buffer append failed");
                // A failed write or sync poisons the WAL; recover it now (as a restart would) so that the next
                // attempt can succeed once the cause (a full disk, say) is gone.
                match state.wal.recover() {
                    Ok(stats) => tracing::info!(
                        truncated_bytes = stats.truncated_bytes,
                        "disk buffer recovered after the failed append"
                    ),
                    Err(error) => {
                        tracing::error!(error = %error, "disk buffer recovery failed; retrying with the next append")
                    }
                }
                AppendOutcome::Failed(error.to_string())
            }
        }
    }

    /// The first seq after `seq` that can be read without going through `seq`'s segment: where the shipper goes
    /// on when `seq` cannot be read.
    pub fn next_segment_start(&self, seq: u64) -> Option<u64> {
        self.lock().wal.next_segment_start(seq)
    }

    /// The source persisted its checkpoint for `seq`; its segment may go once shipped.
    pub fn confirm(&self, seq: u64) {
        self.lock().pins.remove(&seq);
    }

    /// Highest seq the plane acknowledged (or that was skipped as rejected).
    pub fn shipped(&self) -> u64 {
        self.lock().shipped
    }

    /// A receiver of the last appended seq, for the shipper to wait on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last_seq.subscribe()
    }

    /// Reads the records with seq >= `from` (a snapshot; see `WalReader`). Blocking.
    pub fn read_from(&self, from: u64) -> Result<WalReader, BufferError> {
        Ok(self.lock().wal.read_from(from)?)
    }

    /// Records that `seq` is delivered: persists the cursor, then removes whole segments behind
    /// it (and behind every pin). Blocking.
    pub fn mark_shipped(&self, seq: u64) -> Result<(), BufferError> {
        write_cursor(&self.cursor_path, seq).map_err(|source| BufferError::Cursor {
            path: self.cursor_path.clone(),
            source,
        })?;
        let mut state = self.lock();
        state.shipped = state.shipped.max(seq);
        self.telemetry.unshipped_batches.store(
            state.wal.last_seq().saturating_sub(state.shipped),
            Ordering::Relaxed,
        );
        let mut through = state.shipped;
        if let Some(&pin) = state.pins.first() {
            through = through.min(pin - 1);
        }
        let freed = state.wal.remove_through(through)?;
        if freed > 0 {
            self.telemetry
                .set_buffer(state.wal.size_bytes(), self.max_bytes);
        }
        Ok(())
    }
}

/// Writes `DATA_DIR/shipped-seq` atomically (temp file, fsync, rename).
fn write_cursor(path: &Path, seq: u64) -> std::io::Result<()> {
    // The rename must survive a power loss too, or the cursor could go back behind what the plane dedups.
    gantry_support::fs::write_atomic(path, format!("{seq}\n").as_bytes())
}

/// Starts the writer thread: it serves [`AppendRequest`]s until every sender is dropped.
pub fn spawn_writer(
    buffer: Arc<Buffer>,
) -> std::io::Result<(mpsc::Sender<AppendRequest>, std::thread::JoinHandle<()>)> {
    let (tx, mut rx) = mpsc::channel::<AppendRequest>(APPEND_QUEUE);
    let handle = std::thread::Builder::new()
        .name("buffer-writer".into())
        .spawn(move || {
            while let Some(request) = rx.blocking_recv() {
                let outcome = buffer.append(&request.record, request.pin);
                if matches!(outcome, AppendOutcome::Appended(_)) {
                    buffer.telemetry.buffer_appends.inc();
                }
                // The source may have gone (shutdown); the batch is durable either way.
                let _ = request.reply.send(outcome);
            }
        })?;
    Ok((tx, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8, len: usize) -> BufferRecord {
        BufferRecord {
            signal: record::Signal::Logs,
            appended_unix_nanos: n as u64,
            records: 1,
            source_state: Vec::new(),
            payload: vec![n; len],
        }
    }

    fn seqs(buffer: &Buffer, from: u64) -> Vec<u64> {
        buffer
            .read_from(from)
            .unwrap()
            .map(|r| r.unwrap().0)
            .collect()
    }

    #[test]
    fn full_buffer_refuses_until_shipped_and_cursor_survives_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let telemetry = Arc::new(Telemetry::new(&[]));
        let max = 1 << 20;
        let buffer = Buffer::open(tmp.path(), max, telemetry.clone()).unwrap();
        let mut appended = 0;
        loop {
            match buffer.append(&record(1, 100_000), false) {
                AppendOutcome::Appended(seq) => appended = seq,
                AppendOutcome::Full => break,
                AppendOutcome::Failed(e) => panic!("{e}"),
            }
        }
        assert!((9..=11).contains(&appended), "{appended}");
        assert_eq!(seqs(&buffer, 1).len() as u64, appended);
        // Full means full: a small append that would fit is refused too until the buffer drained.
        assert!(matches!(
            buffer.append(&record(3, 10), false),
            AppendOutcome::Full
        ));
        buffer.mark_shipped(appended).unwrap();
        assert!(matches!(
            buffer.append(&record(2, 100_000), false),
            AppendOutcome::Appended(_)
        ));
        assert!(telemetry.buffer_bytes() < max);
        drop(buffer);
        let buffer = Buffer::open(tmp.path(), max, telemetry).unwrap();
        assert_eq!(buffer.shipped(), appended);
        assert_eq!(seqs(&buffer, appended + 1), vec![appended + 1]);
    }

    #[test]
    fn pinned_records_survive_shipping_until_confirmed() {
        let tmp = tempfile::tempdir().unwrap();
        let telemetry = Arc::new(Telemetry::new(&[]));
        let buffer = Buffer::open(tmp.path(), 1 << 20, telemetry).unwrap();
        // 64 KiB segments: each 70 KB record gets its own segment.
        let AppendOutcome::Appended(pinned) = buffer.append(&record(1, 70_000), true) else {
            panic!("append")
        };
        for n in 2..5 {
            buffer.append(&record(n, 70_000), false);
        }
        buffer.mark_shipped(4).unwrap();
        assert_eq!(seqs(&buffer, 1).first(), Some(&pinned));
        buffer.confirm(pinned);
        buffer.mark_shipped(4).unwrap();
        assert_eq!(seqs(&buffer, 1), vec![4]);
    }
}

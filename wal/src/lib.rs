//! Gantry's write-ahead log: a segmented, checksummed, append-only record log with group commit.
//!
//! The control plane appends every acknowledged OTLP batch and calls [`Wal::sync`] before
//! answering (many appends, one sync); on start it replays from its checkpoint with
//! [`Wal::read_from`]. The node agent reuses it as a bounded disk buffer (append, read from a
//! cursor, [`Wal::remove_through`] acknowledged segments, watch [`Wal::size_bytes`]).
//!
//! # Format
//!
//! A directory of segment files named `{first_seq:020}.wal`, plus a `LOCK` file that holds an
//! exclusive advisory lock while a [`Wal`] is open. Each segment starts with an 8-byte header
//! (`GWAL` + u32 LE version 1) followed by records:
//!
//! ```text
//! u32 LE payload_len | u32 LE crc32(seq LE bytes ++ payload) | u64 LE seq | payload
//! ```
//!
//! Seqs are consecutive and start at 1 in an empty log; 0 means "nothing". A new segment is
//! started by the append that finds the active segment at or above
//! [`WalOptions::segment_bytes`] (a segment always holds at least one record before rotating).
//!
//! # Durability
//!
//! "Acknowledged means durable": once [`Wal::sync`] returns `Ok`, every record appended before it
//! survives a crash (kill -9 or power loss) and is replayed exactly once, by seq.
//!
//! * [`Wal::append`] only buffers (a `BufWriter`); nothing is durable until a sync.
//! * [`Wal::sync`] flushes the buffer and `fdatasync`s the active segment.
//! * Rotation first flushes and `fdatasync`s the segment being sealed, then creates the new file,
//!   writes and `fdatasync`s its header and `fsync`s the directory. So only the active (last)
//!   segment can ever contain unsynced bytes.
//! * [`Wal::open`] `fsync`s any truncation it makes, and always `fdatasync`s the last segment, so
//!   records recovered from the page cache after a process crash are durable before anyone reads
//!   them (a later power loss cannot take back a seq that was already replayed). A newly created
//!   log directory is made durable by `fsync`ing its parent.
//! * [`Wal::remove_through`] `fsync`s the directory after deleting segments.
//! * After any failed write, flush or sync the [`Wal`] is poisoned ([`WalError::Poisoned`]): the
//!   state of the file tail is unknown, so it must be reopened, which recovers it.
//! * Dropping a [`Wal`] flushes buffered records to the OS but does not sync them.
//!
//! # Recovery
//!
//! [`Wal::open`] never refuses to start because of a bad tail: an invalid record at the end of
//! the last segment (short read, implausible length, checksum mismatch, non-consecutive seq) and
//! everything after it is cut off (the file is truncated to the last good record). Corruption in
//! an earlier segment skips the rest of that segment (the file is left untouched and the gap is
//! reported on every open until the segment is removed) and later segments continue. See
//! [`RecoveryStats`] for what is counted.
//!
//! # Seq monotonicity
//!
//! The active segment is never deleted, and its name records its first seq even when it holds no
//! record, so the highest seq is always recoverable and numbering continues monotonically across
//! restarts and [`Wal::remove_through`]. Only a log directory whose segments were all removed by
//! someone else restarts at seq 1; callers that persist a checkpoint should treat
//! `checkpoint > last_seq()` after open as "the log was reset".
#![warn(missing_docs)]

mod error;
mod format;
mod reader;
mod segment;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub use error::WalError;
pub use format::{MAX_PAYLOAD, max_payload};
pub use reader::WalReader;

use error::IoContext;
use format::{MAX_SEQ, RecordHeader, parse_segment_file_name};
use reader::SegmentSnapshot;
use segment::{
    HeaderState, Segment, Stop, count_frames, create_segment, reset_segment, scan_segment,
    sync_dir, truncate_segment,
};

/// Default [`WalOptions::segment_bytes`]: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Name of the lock file inside the log directory.
const LOCK_FILE: &str = "LOCK";

/// Capacity of the append buffer.
const WRITE_BUFFER: usize = 256 * 1024;

/// Options for [`Wal::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// Size at or above which the next append starts a new segment (default 64 MiB).
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// What [`Wal::open`] found and repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Number of segment files after recovery (including the active one).
    pub segments: usize,
    /// Number of valid, readable records.
    pub records: u64,
    /// Bytes cut from the end of the last segment (torn or corrupt tail, or a damaged header).
    pub truncated_bytes: u64,
    /// Records lost to corruption. For an earlier segment this is exact (the seq gap up to the
    /// next segment). For the last segment it is best effort: the first invalid complete record
    /// plus the records that could still be delimited after it; a merely torn (incomplete) final
    /// record or a zero-filled tail counts only in `truncated_bytes`.
    pub corrupt_records: u64,
}

/// A segmented, checksummed, append-only write-ahead log. See the [crate docs](crate).
///
/// Synchronous (std::fs); run it on a dedicated thread.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    /// Oldest first; never empty; the last one is the active segment.
    segments: VecDeque<Segment>,
    /// Appends go here (active segment, append mode). `None` only during drop.
    writer: Option<BufWriter<File>>,
    next_seq: u64,
    /// Records were appended since the last successful sync.
    unsynced: bool,
    poisoned: bool,
    /// Holds the directory lock for as long as the log is open.
    _lock: File,
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`.
    ///
    /// Recovers the tail: a torn or corrupt record at the end of the last segment (short read,
    /// bad length, bad checksum, non-consecutive seq) is cut off (the file is truncated to the
    /// last good record) and counted in the returned [`RecoveryStats`]; a bad tail never stops
    /// the open. Corruption in an earlier (non-last) segment: records after the bad one in that
    /// segment are skipped and counted, later segments continue.
    ///
    /// Fails with [`WalError::Locked`] if another [`Wal`] has the directory open, and with
    /// [`WalError::UnsupportedVersion`] for segments written by an unknown format version.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, RecoveryStats), WalError> {
        let existed = dir.is_dir();
        fs::create_dir_all(dir).ctx(dir)?;
        if !existed {
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            sync_dir(parent)?;
        }

        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .ctx(&lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(WalError::Locked(dir.to_path_buf())),
            Err(TryLockError::Error(e)) => return Err(e).ctx(&lock_path),
        }
        Self::open_locked(dir, opts, lock)
    }

    /// Recovers a poisoned log in place, as [`Wal::open`] would after a restart (the tail is re-validated and
    /// cut to its last good record), without letting go of the directory lock. Records that were appended but
    /// not synced may be lost, as after a crash. Also works on a healthy log (it only re-reads it).
    pub fn recover(&mut self) -> Result<RecoveryStats, WalError> {
        let lock = self._lock.try_clone().ctx(&self.dir.join(LOCK_FILE))?;
        if let Some(writer) = self.writer.take() {
            // The tail's state is unknown: write nothing more through the old handle.
            let _ = writer.into_parts();
        }
        // Mark the old value poisoned so that its drop writes nothing either.
        self.poisoned = true;
        let (wal, stats) = Self::open_locked(&self.dir.clone(), self.opts, lock)?;
        *self = wal;
        Ok(stats)
    }

    /// First seq of the first segment that starts after `seq` and holds records: where a reader can go on past
    /// a record it cannot read.
    pub fn next_segment_start(&self, seq: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| s.first_seq > seq && s.has_records())
            .map(|s| s.first_seq)
    }

    /// [`Wal::open`] once the directory lock is held (by `lock`).
    fn open_locked(
        dir: &Path,
        opts: WalOptions,
        lock: File,
    ) -> Result<(Wal, RecoveryStats), WalError> {
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).ctx(dir)? {
            let entry = entry.ctx(dir)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            match parse_segment_file_name(name) {
                Some(first_seq) if entry.file_type().ctx(&entry.path())?.is_file() => {
                    found.push((first_seq, entry.path()));
                }
                _ if name.ends_with(".wal") => {
                    tracing::warn!(file = %entry.path().display(), "ignoring file that is not a wal segment");
                }
                _ => {}
            }
        }
        found.sort_unstable_by_key(|(seq, _)| *seq);

        let mut stats = RecoveryStats::default();
        let mut segments = VecDeque::with_capacity(found.len().max(1));
        let file = if found.is_empty() {
            let (seg, file) = create_segment(dir, 1)?;
            segments.push_back(seg);
            file
        } else {
            let last = found.len() - 1;
            for (i, (first_seq, path)) in found.iter().enumerate().take(last) {
                let limit = found[i + 1].0;
                segments.push_back(recover_sealed(path, *first_seq, limit, &mut stats)?);
            }
            let (first_seq, path) = &found[last];
            segments.push_back(recover_last(path, *first_seq, &mut stats)?);
            let path = &segments[last].path;
            let file = OpenOptions::new().append(true).open(path).ctx(path)?;
            // Make everything recovered durable before it can be read (see crate docs).
            file.sync_data().ctx(path)?;
            file
        };

        let active = segments.back().expect("at least one segment");
        let next_seq = active.last_seq + 1;
        stats.segments = segments.len();
        tracing::info!(
            dir = %dir.display(),
            segments = stats.segments,
            records = stats.records,
            last_seq = next_seq - 1,
            truncated_bytes = stats.truncated_bytes,
            corrupt_records = stats.corrupt_records,
            "wal opened"
        );
        let wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            segments,
            writer: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            next_seq,
            unsynced: false,
            poisoned: false,
            _lock: lock,
        };
        Ok((wal, stats))
    }

    /// Appends one record and returns its seq.
    ///
    /// Buffered: not durable until [`Wal::sync`]. Fails with [`WalError::PayloadTooLarge`] above
    /// [`MAX_PAYLOAD`]; empty payloads are allowed.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, WalError> {
        self.check_poisoned()?;
        if payload.len() > MAX_PAYLOAD {
            return Err(WalError::PayloadTooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD,
            });
        }
        let seq = self.next_seq;
        if seq > MAX_SEQ {
            return Err(WalError::SeqExhausted);
        }
        let active = self.active();
        if active.has_records() && active.file_len >= self.opts.segment_bytes {
            let r = self.rotate();
            self.poison_on_err(r)?;
        }
        let header = RecordHeader::new(seq, payload);
        let r = self.write_frame(&header, payload);
        self.poison_on_err(r)?;
        let active = self.active_mut();
        active.file_len += header.frame_len();
        active.valid_len = active.file_len;
        active.last_seq = seq;
        self.next_seq = seq + 1;
        self.unsynced = true;
        Ok(seq)
    }

    /// Flushes and fdatasyncs the active segment; after `Ok` every appended record is durable.
    ///
    /// Cheap when nothing was appended since the last sync.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check_poisoned()?;
        if !self.unsynced {
            return Ok(());
        }
        let r = self.flush_and_sync();
        self.poison_on_err(r)?;
        self.unsynced = false;
        Ok(())
    }

    /// Seq of the last appended record (0 if none ever).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Deletes whole segments whose records all have seq <= `seq`, oldest first, and returns the
    /// bytes freed.
    ///
    /// Never deletes the active segment (that keeps seq numbering monotonic; see the crate docs),
    /// so up to [`WalOptions::segment_bytes`] plus one record may remain after removing
    /// "everything". The directory is fsynced after a deletion.
    pub fn remove_through(&mut self, seq: u64) -> Result<u64, WalError> {
        let mut freed = 0;
        let mut removed = 0usize;
        while self.segments.len() > 1 {
            // Every seq the oldest segment can hold is below the next segment's first seq.
            let upper = self.segments[1].first_seq - 1;
            if upper > seq {
                break;
            }
            let seg = &self.segments[0];
            match fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    if removed > 0 {
                        sync_dir(&self.dir)?;
                    }
                    return Err(e).ctx(&seg.path);
                }
            }
            freed += seg.file_len;
            removed += 1;
            self.segments.pop_front();
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
            tracing::debug!(
                through = seq,
                segments = removed,
                bytes = freed,
                "wal segments removed"
            );
        }
        Ok(freed)
    }

    /// Total bytes of all segment files (including records still in the append buffer).
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.file_len).sum()
    }

    /// Oldest seq still stored, or `None` if the log holds no record.
    pub fn first_seq(&self) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| s.has_records())
            .map(|s| s.first_seq)
    }

    /// Reads the records with seq >= `from`, in order.
    ///
    /// Flushes the append buffer first, so every record appended so far is seen (durable or not);
    /// records appended after this call are not. See [`WalReader`].
    pub fn read_from(&mut self, from: u64) -> Result<WalReader, WalError> {
        self.check_poisoned()?;
        let r = self.flush();
        self.poison_on_err(r)?;
        let snaps = self
            .segments
            .iter()
            .filter(|s| s.has_records() && s.last_seq >= from)
            .map(|s| SegmentSnapshot {
                path: s.path.clone(),
                first_seq: s.first_seq,
                last_seq: s.last_seq,
                valid_len: s.valid_len,
            })
            .collect();
        Ok(WalReader::new(snaps, from))
    }

    fn active(&self) -> &Segment {
        self.segments.back().expect("at least one segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments.back_mut().expect("at least one segment")
    }

    fn writer(&mut self) -> &mut BufWriter<File> {
        self.writer.as_mut().expect("writer present until drop")
    }

    fn check_poisoned(&self) -> Result<(), WalError> {
        if self.poisoned {
            Err(WalError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn poison_on_err<T>(&mut self, r: Result<T, WalError>) -> Result<T, WalError> {
        if let Err(e) = &r {
            tracing::error!(error = %e, "wal poisoned");
            self.poisoned = true;
        }
        r
    }

    fn write_frame(&mut self, header: &RecordHeader, payload: &[u8]) -> Result<(), WalError> {
        let path = self.active().path.clone();
        let w = self.writer();
        w.write_all(&header.encode()).ctx(&path)?;
        w.write_all(payload).ctx(&path)
    }

    fn flush(&mut self) -> Result<(), WalError> {
        if self.writer().buffer().is_empty() {
            return Ok(());
        }
        let path = self.active().path.clone();
        self.writer().flush().ctx(&path)
    }

    fn flush_and_sync(&mut self) -> Result<(), WalError> {
        self.flush()?;
        let path = self.active().path.clone();
        self.writer().get_ref().sync_data().ctx(&path)
    }

    /// Seals the active segment (flush + fdatasync) and starts a new one at `next_seq`.
    fn rotate(&mut self) -> Result<(), WalError> {
        self.flush_and_sync()?;
        self.unsynced = false;
        let (seg, file) = create_segment(&self.dir, self.next_seq)?;
        tracing::debug!(path = %seg.path.display(), "wal segment created");
        self.segments.push_back(seg);
        self.writer = Some(BufWriter::with_capacity(WRITE_BUFFER, file));
        Ok(())
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            if self.poisoned {
                // The tail is in an unknown state; write nothing more.
                let _ = w.into_parts();
            } else {
                // BufWriter flushes on drop (to the OS, not durably).
                drop(w);
            }
        }
    }
}

/// Recovers an earlier (sealed) segment: validates it without modifying the file.
fn recover_sealed(
    path: &Path,
    first_seq: u64,
    limit: u64,
    stats: &mut RecoveryStats,
) -> Result<Segment, WalError> {
    let scan = scan_segment(path, first_seq, Some(limit))?;
    let lost = limit - 1 - scan.last_seq;
    if lost > 0 || scan.header != HeaderState::Valid || scan.stop.is_some() {
        tracing::warn!(
            path = %path.display(),
            header = ?scan.header,
            stop = ?scan.stop,
            valid_records = scan.records,
            lost_records = lost,
            "corruption in an earlier wal segment; skipping the rest of it"
        );
    }
    stats.records += scan.records;
    stats.corrupt_records += lost;
    Ok(Segment {
        first_seq,
        last_seq: scan.last_seq,
        valid_len: scan.valid_len,
        file_len: scan.file_len,
        path: path.to_path_buf(),
    })
}

/// Recovers the last segment: cuts a torn or corrupt tail, or rewrites a damaged header.
fn recover_last(
    path: &Path,
    first_seq: u64,
    stats: &mut RecoveryStats,
) -> Result<Segment, WalError> {
    let scan = scan_segment(path, first_seq, None)?;
    let mut seg = Segment {
        first_seq,
        last_seq: scan.last_seq,
        valid_len: scan.valid_len,
        file_len: scan.valid_len,
        path: path.to_path_buf(),
    };
    match scan.header {
        HeaderState::Valid => {
            if scan.valid_len < scan.file_len {
                let cut = scan.file_len - scan.valid_len;
                tracing::warn!(
                    path = %path.display(),
                    offset = scan.valid_len,
                    bytes = cut,
                    stop = ?scan.stop,
                    "cutting bad tail of the last wal segment"
                );
                truncate_segment(path, scan.valid_len)?;
                stats.truncated_bytes += cut;
                if let Some(Stop::Corrupt { frames, .. }) = scan.stop {
                    stats.corrupt_records += frames;
                }
            }
        }
        HeaderState::Torn | HeaderState::BadMagic => {
            let lost = if scan.header == HeaderState::BadMagic {
                let file = File::open(path).ctx(path)?;
                let mut r = std::io::BufReader::new(file);
                r.seek_relative(format::SEGMENT_HEADER_LEN as i64)
                    .ctx(path)?;
                count_frames(&mut r, path, format::SEGMENT_HEADER_LEN, scan.file_len)?
            } else {
                0
            };
            tracing::warn!(
                path = %path.display(),
                header = ?scan.header,
                bytes = scan.file_len,
                "rewriting the damaged header of the last wal segment"
            );
            reset_segment(path)?;
            stats.truncated_bytes += scan.file_len;
            stats.corrupt_records += lost;
            seg.valid_len = format::SEGMENT_HEADER_LEN;
            seg.file_len = format::SEGMENT_HEADER_LEN;
        }
    }
    stats.records += scan.records;
    Ok(seg)
}

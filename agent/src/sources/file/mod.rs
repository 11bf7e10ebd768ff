//! The file source: tails files matching glob patterns, follows rotation, turns lines into OTLP log records and hands batches to the disk buffer, checkpointing what is durable.
//!
//! It runs on a dedicated thread (blocking file I/O, no async worker is held). Each pass reads new
//! bytes from every tailed file; every second the patterns are expanded again, so new files are
//! picked up and rotation is noticed:
//!
//! * **rename**: the path now names another inode. The old file keeps being read (through its
//!   open descriptor) to its end and is closed once it stayed idle for a second; the new file at
//!   the path is read from 0.
//! * **copy-truncate**, or any rewrite in place: same inode, but shorter than the offset read, or
//!   its first bytes or the bytes just before the offset read changed (the last 1 KiB read is read
//!   again with every read, so this is seen before any byte after it). Reading restarts at 0. A
//!   copy that the patterns also match is recognised by the same two ranges of bytes and read
//!   from where the original was, not again from 0.
//!
//! # File identity
//!
//! A file is named by (device, inode), and is the file a saved position was taken from only if it
//! was born at the same time (`statx` birth time, where the filesystem reports it), is at least as
//! long as the saved offset, and both its first 256 bytes and the 1 KiB just before the offset
//! still have their saved checksums ([`identity`] has the rule and its one pure function). So a
//! file deleted and created again with the same inode, or truncated and rewritten in place, is
//! never taken for the old one, even when it starts with the same banner, is shorter than the
//! offset or is shorter than the 256 bytes; a file that only grew resumes exactly. A file found
//! not to be the old one is read from its start (logged once, with the reason); one that took the
//! inode of a file deleted while the agent was down, and that no pattern matches, is not read at
//! all. See [`checkpoint`] for how positions are persisted and recovered.

pub mod checkpoint;
mod encode;
pub mod glob;
pub mod identity;
pub mod lines;
pub mod parse;
mod watch;

use gantry_support::CancellationToken;
use std::collections::HashMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long the file source waits before offering a batch again after the buffer failed to append it.
const FAILED_APPEND_RETRY: Duration = Duration::from_secs(1);
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::sync::{mpsc, oneshot};

use crate::buffer::{AppendOutcome, AppendRequest, Buffer, BufferHeader, BufferRecord, Signal};
use crate::config::{AgentConfig, FileSourceConfig};
use crate::sources::{encode_logs, host_name, kv};
use crate::telemetry::{Telemetry, now_unix_nanos};
use checkpoint::{Checkpoints, FilePosition, SourceState};
use identity::{FINGERPRINT_BYTES, Fingerprint, Mark, Recent, Seen, birth_time, judge};
use lines::{Frame, Framer};

/// Bytes read from one file per `read` call.
const CHUNK: usize = 64 << 10;
/// Bytes read from one file per pass before moving on to the next (fairness).
const PER_FILE_PER_PASS: usize = 1 << 20;
/// A batch is cut at this many bytes of records.
const BATCH_MAX_BYTES: usize = 1 << 20;
/// Pause between passes that found nothing new.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often patterns are expanded again.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// A pending multi-line record is emitted after this long without a new line.
const MULTILINE_IDLE: Duration = Duration::from_secs(1);
/// A file that is no longer at its path is closed after being idle at its end this long: long enough for an
/// application that reopens its log lazily (after its next write) to have written its last lines to the old file.
const ROTATED_CLOSE_AFTER: Duration = Duration::from_secs(30);
/// How long a truncated file's old content is remembered to recognise its copy.
const COPY_MEMORY: Duration = Duration::from_secs(60);

/// Device and inode.
type FileKey = (u64, u64);

/// One file being read.
struct Tailer {
    key: FileKey,
    /// The file's first bytes.
    fingerprint: Fingerprint,
    /// Birth time, nanoseconds since the Unix epoch, where the filesystem reports it.
    born: Option<u64>,
    /// The last bytes read, to checksum the bytes before the safe and read offsets.
    recent: Recent,
    path: PathBuf,
    source: usize,
    service: String,
    /// Resource attributes beside `service.name` (an instance's version and id).
    extra: Arc<Vec<(String, String)>>,
    file: std::fs::File,
    framer: Framer,
    /// The patterns no longer match this file (renamed away or deleted).
    rotated: bool,
    /// When a read last found nothing new.
    idle_since: Option<Instant>,
    /// Last timestamp given to a record without one, kept increasing per file.
    last_time: u64,
}

impl Tailer {
    fn position(&self) -> FilePosition {
        FilePosition {
            dev: self.key.0,
            ino: self.key.1,
            fingerprint: self.fingerprint,
            tail: self.recent.before(self.framer.safe_offset()),
            born_unix_nanos: self.born,
            path: self.path.clone(),
            offset: self.framer.safe_offset(),
        }
    }
}

/// One file's records in a batch: its key, path, service, other resource attributes, and its records encoded as
/// `ScopeLogs.log_records` entries.
type Group = (
    FileKey,
    PathBuf,
    String,
    Arc<Vec<(String, String)>>,
    Vec<u8>,
);

/// A batch being filled: records grouped by file, in read order.
#[derive(Default)]
struct Batch {
    /// Per file: its key, path, service, other resource attributes and its records encoded as
    /// `ScopeLogs.log_records` entries.
    groups: Vec<Group>,
    records: usize,
    lines: u64,
    bytes: usize,
    started: Option<Instant>,
}

/// The file source's state; [`FileSource::run`] drives it on its own thread.
pub struct FileSource {
    sources: Vec<(glob::Pattern, FileSourceConfig)>,
    /// Reasons of missed files already logged.
    missed_logged: std::collections::HashSet<&'static str>,
    batch_max_lines: usize,
    batch_timeout: Duration,
    host_name: String,
    checkpoint_path: PathBuf,
    tailers: Vec<Tailer>,
    /// Positions from the last run not yet matched to a file.
    recovered: HashMap<FileKey, FilePosition>,
    /// What files truncated recently held where they were read to, to recognise their copies.
    truncated: Vec<(Mark, Instant)>,
    batch: Batch,
    buffer: Arc<Buffer>,
    appends: mpsc::Sender<AppendRequest>,
    telemetry: Arc<Telemetry>,
    /// File events, watched from [`FileSource::recover`] on: the agent reports ready only after, so a file created
    /// (and deleted) right after it is ready is seen.
    watch: watch::Watch,
}

impl FileSource {
    /// Loads `checkpoints.json`, applies the positions of buffer records written after it (a
    /// crash between append and checkpoint), and stores the result. Blocking; call before the
    /// shipper starts so those records are still in the buffer.
    pub fn recover(
        config: &AgentConfig,
        buffer: Arc<Buffer>,
        appends: mpsc::Sender<AppendRequest>,
        telemetry: Arc<Telemetry>,
    ) -> anyhow::Result<FileSource> {
        let checkpoint_path = config.data_dir.join("checkpoints.json");
        let mut checkpoints = Checkpoints::load(&checkpoint_path)?;
        let mut newer = false;
        // A record that cannot be read (damaged on disk) ends the walk: the positions found so far stand, and the
        // lines after them are read again (at least once), rather than the agent refusing to start.
        for record in buffer.read_from(checkpoints.buffer_seq + 1)? {
            let readable = record
                .map_err(anyhow::Error::from)
                .and_then(|(seq, bytes)| {
                    // Only the positions are needed: the header locates them without copying the payload.
                    let source_state = &bytes[BufferHeader::parse(&bytes)?.state];
                    let state = if source_state.is_empty() {
                        None
                    } else {
                        Some(serde_json::from_slice::<SourceState>(source_state)?)
                    };
                    Ok((seq, state))
                });
            let (seq, state) = match readable {
                Ok(found) => found,
                Err(error) => {
                    tracing::error!(error = %error, "a disk buffer record cannot be read; file positions recovered up to it, the lines after them are read again");
                    break;
                }
            };
            let Some(state) = state else {
                continue;
            };
            checkpoints = Checkpoints {
                buffer_seq: seq,
                files: state.file,
            };
            newer = true;
        }
        if newer {
            tracing::info!(
                buffer_seq = checkpoints.buffer_seq,
                "file positions recovered from the disk buffer"
            );
            checkpoints
                .store(&checkpoint_path)
                .with_context(|| format!("writing {}", checkpoint_path.display()))?;
        }
        let sources: Vec<(glob::Pattern, FileSourceConfig)> = config
            .files
            .iter()
            .map(|f| {
                let pattern = glob::Pattern::new(&f.pattern).map_err(anyhow::Error::msg)?;
                Ok((pattern, f.clone()))
            })
            .collect::<anyhow::Result<_>>()?;
        let patterns: Vec<glob::Pattern> = sources.iter().map(|(p, _)| p.clone()).collect();
        let watch = watch::Watch::new(&patterns);
        Ok(FileSource {
            watch,
            sources,
            missed_logged: std::collections::HashSet::new(),
            batch_max_lines: config.batch_max_lines,
            batch_timeout: config.batch_timeout,
            host_name: host_name(),
            checkpoint_path,
            tailers: Vec::new(),
            recovered: checkpoints
                .files
                .into_iter()
                .map(|p| ((p.dev, p.ino), p))
                .collect(),
            truncated: Vec::new(),
            batch: Batch::default(),
            buffer,
            appends,
            telemetry,
        })
    }

    /// Starts the source on its own thread; it returns once `stop` is cancelled and what was read is
    /// in the buffer (or the buffer is full, in which case the checkpoint stays behind).
    pub fn spawn(
        self,
        stop: CancellationToken,
    ) -> std::io::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
        std::thread::Builder::new()
            .name("file-source".into())
            .spawn(move || self.run(&stop))
    }

    fn run(mut self, stop: &CancellationToken) -> anyhow::Result<()> {
        self.scan_orphans();
        let mut last_scan: Option<Instant> = None;
        let mut buf = vec![0u8; CHUNK];
        let mut read = 0;
        while !stop.is_cancelled() {
            // New files are opened as soon as they appear (an open file stays readable once deleted); while files
            // have more to read, the events are only collected.
            let wait = if read == 0 {
                POLL_INTERVAL
            } else {
                Duration::ZERO
            };
            for path in self.watch.wait(wait) {
                self.open_appeared(&path);
            }
            let now = Instant::now();
            if last_scan.is_none_or(|t| now.duration_since(t) >= SCAN_INTERVAL) {
                self.scan(now);
                self.watch.retry();
                last_scan = Some(now);
            }
            read = self.read_pass(&mut buf, now);
            if self.batch_due(Instant::now()) && !self.commit(stop)? {
                // Stopped while the buffer was full: the batch was dropped from memory, and the positions in
                // memory are past it. Committing anything now would checkpoint over those lines; stop here so the
                // next start reads them again from the last checkpoint.
                return Ok(());
            }
        }
        // Shutdown: whatever was read goes to the buffer; partial lines wait for the next run.
        let mut frames = Vec::new();
        for i in 0..self.tailers.len() {
            self.tailers[i].framer.flush_pending(&mut frames);
            self.add_frames(i, &mut frames);
        }
        if self.batch.records > 0 {
            self.commit(stop)?;
        }
        Ok(())
    }

    fn batch_due(&self, now: Instant) -> bool {
        self.batch.records >= self.batch_max_lines
            || self.batch.bytes >= BATCH_MAX_BYTES
            || self
                .batch
                .started
                .is_some_and(|t| now.duration_since(t) >= self.batch_timeout)
    }

    /// Expands the patterns: opens new files, notices renamed, deleted and truncated ones.
    fn scan(&mut self, now: Instant) {
        let mut seen: HashMap<FileKey, (PathBuf, usize)> = HashMap::new();
        let mut order = Vec::new();
        for (index, (pattern, _)) in self.sources.iter().enumerate() {
            for path in pattern.expand() {
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                let key = (meta.dev(), meta.ino());
                if let std::collections::hash_map::Entry::Vacant(e) = seen.entry(key) {
                    e.insert((path, index));
                    order.push(key);
                }
            }
        }
        self.truncated
            .retain(|(_, at)| now.duration_since(*at) < COPY_MEMORY);
        let mut frames = Vec::new();
        for i in 0..self.tailers.len() {
            let tailer = &mut self.tailers[i];
            match seen.remove(&tailer.key) {
                Some((path, _)) => {
                    if tailer.rotated {
                        tracing::info!(path = %path.display(), "file is back under a matching path");
                    }
                    tailer.path = path;
                    tailer.rotated = false;
                }
                None => {
                    if !tailer.rotated {
                        tracing::info!(path = %tailer.path.display(), "file was rotated or deleted; reading it to its end");
                    }
                    tailer.rotated = true;
                    continue;
                }
            }
            if let Some(old) = check_truncation(tailer, now, &mut frames) {
                self.truncated.push((old, now));
            }
            self.add_frames(i, &mut frames);
            let tailer = &mut self.tailers[i];
            if (tailer.fingerprint.len as usize) < FINGERPRINT_BYTES
                && let Ok(fp) = Fingerprint::of(&tailer.file)
            {
                tailer.fingerprint = fp;
            }
        }
        for key in order {
            let Some((path, source)) = seen.remove(&key) else {
                continue;
            };
            if let Err(error) = self.open(&path, source, false) {
                self.missed(&path, &error);
            }
        }
        self.telemetry
            .files_open
            .store(self.tailers.len() as u64, Ordering::Relaxed);
    }

    /// Opens a file that a file event says appeared or was written under a watched directory, if a pattern matches
    /// it and it is not tailed yet.
    fn open_appeared(&mut self, path: &Path) {
        let Some(source) = self
            .sources
            .iter()
            .position(|(pattern, _)| pattern.matches(path))
        else {
            return;
        };
        if self.tailers.iter().any(|t| t.path == path && !t.rotated) {
            return;
        }
        if let Err(error) = self.open(path, source, false) {
            self.missed(path, &error);
        }
        self.telemetry
            .files_open
            .store(self.tailers.len() as u64, Ordering::Relaxed);
    }

    /// Counts a file that matched but could not be read (`gantry_agent_files_missed_total{reason}`), and logs the
    /// first of each reason: a file deleted before it could be opened, or one that cannot be opened.
    fn missed(&mut self, path: &Path, error: &anyhow::Error) {
        let gone = error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound);
        let reason = if gone {
            "deleted_before_open"
        } else {
            "unreadable"
        };
        self.telemetry.files_missed.add(reason, 1);
        if self.missed_logged.insert(reason) {
            tracing::warn!(
                path = %path.display(),
                error = %error,
                reason,
                "a matching file could not be read; counted in gantry_agent_files_missed_total (logged once per reason)"
            );
        }
    }

    /// Files from the last run's checkpoint that no pattern matches any more: they were rotated
    /// while the agent was down. Looks for them (same inode) next to their old path and reads
    /// them to their end, if they are still the same files (not a file that took the inode of
    /// one deleted meanwhile).
    fn scan_orphans(&mut self) {
        let mut matched = std::collections::HashSet::new();
        for (pattern, _) in &self.sources {
            for path in pattern.expand() {
                if let Ok(meta) = std::fs::metadata(&path) {
                    matched.insert((meta.dev(), meta.ino()));
                }
            }
        }
        let orphans: Vec<FilePosition> = self
            .recovered
            .values()
            .filter(|p| !matched.contains(&(p.dev, p.ino)))
            .cloned()
            .collect();
        for position in orphans {
            let Some(dir) = position.path.parent() else {
                continue;
            };
            let source = self
                .sources
                .iter()
                .position(|(pattern, _)| pattern.matches(&position.path))
                .unwrap_or(0);
            let found = std::fs::read_dir(dir).ok().and_then(|entries| {
                entries.flatten().map(|e| e.path()).find(|p| {
                    std::fs::metadata(p).is_ok_and(|m| {
                        m.is_file() && (m.dev(), m.ino()) == (position.dev, position.ino)
                    })
                })
            });
            if let Some(path) = found
                && let Err(error) = self.open(&path, source, true)
            {
                tracing::warn!(path = %path.display(), error = %error, "cannot open rotated file");
            }
        }
    }

    /// Starts tailing `path`, from its recovered position if it is the same file. An `orphan` (a
    /// file no pattern matches, found by the inode of a recovered position) is read only if it is
    /// that position's file.
    fn open(&mut self, path: &Path, source: usize, orphan: bool) -> anyhow::Result<()> {
        let file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            bail!("not a regular file");
        }
        let key = (meta.dev(), meta.ino());
        if self.tailers.iter().any(|t| t.key == key) {
            return Ok(());
        }
        let fingerprint = Fingerprint::of(&file)?;
        let mut offset = 0;
        if let Some(position) = self.recovered.remove(&key) {
            let mark = position.mark();
            match judge(&mark, &Seen::read(&file, &meta, &mark)?) {
                Ok(()) if orphan => {
                    tracing::info!(path = %path.display(), was = %position.path.display(), "reading the rest of a file rotated while the agent was down");
                    offset = position.offset;
                }
                Ok(()) => offset = position.offset,
                Err(change) if orphan => {
                    tracing::info!(path = %path.display(), was = %position.path.display(), reason = %change, "not reading a file that took the inode of one deleted while the agent was down");
                    return Ok(());
                }
                Err(change) => {
                    tracing::info!(path = %path.display(), saved_offset = position.offset, size = meta.len(), reason = %change, "file is not the one in the checkpoint; reading it from the start");
                }
            }
        } else if fingerprint.len as usize == FINGERPRINT_BYTES
            && let Some(original) = self.truncated.iter().map(|(mark, _)| *mark).find(|mark| {
                mark.head == fingerprint
                    && Seen::read(&file, &meta, mark).is_ok_and(|seen| judge(mark, &seen).is_ok())
            })
        {
            tracing::info!(path = %path.display(), offset = original.offset, "file is a copy of a truncated file; reading it from where the original was");
            offset = original.offset;
        }
        let config = &self.sources[source].1;
        let instance = config
            .instance_output
            .then(|| instance_resource(path))
            .flatten();
        let (service, extra) = match instance {
            Some((service, extra)) => (service, extra),
            None => (
                config.service.clone().unwrap_or_else(|| {
                    path.file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "unknown_service".into())
                }),
                Vec::new(),
            ),
        };
        tracing::info!(path = %path.display(), offset, service, "tailing file");
        let recent = Recent::read(&file, offset)?;
        self.tailers.push(Tailer {
            key,
            fingerprint,
            born: birth_time(&meta),
            recent,
            path: path.to_path_buf(),
            source,
            service,
            extra: Arc::new(extra),
            file,
            framer: Framer::new(offset, config.multiline.clone()),
            rotated: orphan,
            idle_since: None,
            last_time: 0,
        });
        Ok(())
    }

    /// Reads new bytes from every file into the batch; returns the bytes read. Stops early when
    /// the batch is full. Closes rotated files that are done.
    fn read_pass(&mut self, buf: &mut [u8], now: Instant) -> usize {
        let mut total = 0;
        let mut frames = Vec::new();
        for i in 0..self.tailers.len() {
            let mut read_here = 0;
            loop {
                let tailer = &mut self.tailers[i];
                let at = tailer.framer.read_offset();
                // The last bytes read are read again with the new ones: if they changed, the file was truncated
                // or rewritten in place since, and the bytes after `at` are not the continuation of what was read.
                let overlap = tailer.recent.last(at).len();
                let got = match tailer.file.read_at(buf, at - overlap as u64) {
                    Ok(got) => got,
                    Err(error) => {
                        tracing::warn!(path = %tailer.path.display(), error = %error, "read failed");
                        overlap
                    }
                };
                let change = if got < overlap {
                    Some(identity::Change::Shorter)
                } else {
                    (buf[..overlap] != *tailer.recent.last(at)).then_some(identity::Change::Tail)
                };
                if let Some(change) = change {
                    if let Some(old) = restart(tailer, now, change, &mut frames) {
                        self.truncated.push((old, now));
                    }
                    self.add_frames(i, &mut frames);
                    break;
                }
                let n = got - overlap;
                if n == 0 {
                    tailer.idle_since.get_or_insert(now);
                    break;
                }
                tailer.idle_since = None;
                let new = &buf[overlap..got];
                tailer.framer.push(new, now, &mut frames);
                tailer.recent.push(at, new, tailer.framer.safe_offset());
                self.add_frames(i, &mut frames);
                read_here += n;
                if read_here >= PER_FILE_PER_PASS || self.batch_due(now) {
                    break;
                }
            }
            total += read_here;
            let tailer = &mut self.tailers[i];
            tailer.framer.flush_idle(now, MULTILINE_IDLE, &mut frames);
            if tailer.rotated
                && tailer
                    .idle_since
                    .is_some_and(|t| now.duration_since(t) >= ROTATED_CLOSE_AFTER)
            {
                tailer.framer.finish(now, &mut frames);
            }
            self.add_frames(i, &mut frames);
            if self.batch_due(now) {
                break;
            }
        }
        // Done rotated files leave; their last records are in the batch, and the next
        // checkpoint no longer lists them.
        let before = self.tailers.len();
        self.tailers.retain(|t| {
            let done = t.rotated
                && t.framer.is_idle()
                && t.idle_since
                    .is_some_and(|s| now.duration_since(s) >= ROTATED_CLOSE_AFTER);
            if done {
                tracing::info!(path = %t.path.display(), "finished reading rotated file");
            }
            !done
        });
        if self.tailers.len() != before {
            self.telemetry
                .files_open
                .store(self.tailers.len() as u64, Ordering::Relaxed);
        }
        total
    }

    /// Parses `frames` of tailer `i` into log records of the batch.
    fn add_frames(&mut self, i: usize, frames: &mut Vec<Frame>) {
        if frames.is_empty() {
            return;
        }
        let tailer = &mut self.tailers[i];
        let config = &self.sources[tailer.source].1;
        let mut lines = 0;
        let count = frames.len() as u64;
        let mut records = Vec::with_capacity(frames.len() * 256);
        for frame in frames.drain(..) {
            lines += frame.lines;
            self.batch.bytes += frame.text.len() + 64;
            let parsed = parse::parse(&frame.text, config.parse_regex.as_ref());
            // Records without a time of their own get the time they were read, kept increasing
            // per file so that their order survives.
            let observed = frame.read_unix_nanos.max(tailer.last_time + 1);
            tailer.last_time = observed;
            encode::Record {
                time_unix_nano: parsed.time_unix_nano.unwrap_or(observed),
                observed_time_unix_nano: observed,
                parsed: &parsed,
            }
            .write_framed(&mut records);
        }
        self.telemetry.read(&config.pattern, lines, count);
        self.batch.records += count as usize;
        self.batch.lines += lines;
        self.batch.started.get_or_insert_with(Instant::now);
        match self.batch.groups.last_mut() {
            Some((key, _, _, _, group)) if *key == tailer.key => group.extend_from_slice(&records),
            _ => self.batch.groups.push((
                tailer.key,
                tailer.path.clone(),
                tailer.service.clone(),
                tailer.extra.clone(),
                records,
            )),
        }
    }

    /// Appends the batch to the buffer and checkpoints. Waits (paused) while the buffer is full;
    /// returns `Ok(false)` if `stop` is set meanwhile (the batch is dropped from memory, its
    /// bytes are read again on the next start since the checkpoint did not move).
    fn commit(&mut self, stop: &CancellationToken) -> anyhow::Result<bool> {
        let batch = std::mem::take(&mut self.batch);
        let positions = SourceState {
            file: self.tailers.iter().map(Tailer::position).collect(),
        };
        let groups: Vec<(Resource, Vec<u8>)> = batch
            .groups
            .into_iter()
            .map(|(_, path, service, extra, records)| {
                let mut attributes = vec![
                    kv("host.name", &self.host_name),
                    kv("service.name", &service),
                    kv("log.file.path", &path.to_string_lossy()),
                ];
                attributes.extend(extra.iter().map(|(key, value)| kv(key, value)));
                let resource = Resource {
                    attributes,
                    ..Default::default()
                };
                (resource, records)
            })
            .collect();
        let payload = encode_logs(groups.iter().map(|(r, l)| (r, l.as_slice())));
        drop(groups);
        let record = BufferRecord {
            signal: Signal::Logs,
            appended_unix_nanos: now_unix_nanos(),
            records: batch.records as u32,
            source_state: serde_json::to_vec(&positions)?,
            payload,
        };
        let mut paused = false;
        let outcome = loop {
            let (reply, answer) = oneshot::channel();
            self.appends
                .blocking_send(AppendRequest {
                    record: record.clone(),
                    pin: true,
                    reply,
                })
                .context("the buffer writer stopped")?;
            match answer
                .blocking_recv()
                .context("the buffer writer stopped")?
            {
                AppendOutcome::Full => {
                    if !paused {
                        paused = true;
                        tracing::warn!(
                            "disk buffer full; pausing file reading until the shipper makes room"
                        );
                        self.telemetry
                            .sources_paused
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    if stop.is_cancelled() {
                        break None;
                    }
                    std::thread::sleep(POLL_INTERVAL);
                }
                AppendOutcome::Appended(seq) => break Some(seq),
                AppendOutcome::Failed(message) => {
                    // The buffer recovers itself after a failed write (a full disk, say); the batch is kept and
                    // offered again, and the checkpoint does not move meanwhile.
                    if !paused {
                        paused = true;
                        tracing::error!(
                            error = message,
                            "disk buffer append failed; pausing file reading and retrying"
                        );
                        self.telemetry
                            .sources_paused
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    if stop.is_cancelled() {
                        break None;
                    }
                    std::thread::sleep(FAILED_APPEND_RETRY);
                }
            }
        };
        if paused {
            tracing::info!("disk buffer has room again; resuming file reading");
            self.telemetry
                .sources_paused
                .fetch_sub(1, Ordering::Relaxed);
        }
        let Some(seq) = outcome else {
            return Ok(false);
        };
        Checkpoints {
            buffer_seq: seq,
            files: positions.file,
        }
        .store(&self.checkpoint_path)
        .with_context(|| format!("writing {}", self.checkpoint_path.display()))?;
        self.buffer.confirm(seq);
        tracing::debug!(
            seq,
            records = batch.records,
            lines = batch.lines,
            "batch buffered"
        );
        Ok(true)
    }
}

/// What `tailer` knows of its file where it has read to. The descriptor holds the inode: it cannot
/// have been deleted and created again meanwhile, so there is no birth time to compare.
fn read_mark(tailer: &Tailer) -> Mark {
    let read = tailer.framer.read_offset();
    Mark {
        offset: read,
        head: tailer.fingerprint,
        tail: tailer.recent.before(read),
        born: None,
    }
}

/// Detects a truncated or rewritten file (the same inode, no longer holding the bytes read: see
/// [`identity`]) and restarts it at 0; returns what [`restart`] does.
fn check_truncation(tailer: &mut Tailer, now: Instant, frames: &mut Vec<Frame>) -> Option<Mark> {
    let meta = tailer.file.metadata().ok()?;
    let mark = read_mark(tailer);
    let seen = Seen::read(&tailer.file, &meta, &mark).ok()?;
    let change = judge(&mark, &seen).err()?;
    restart(tailer, now, change, frames)
}

/// Reads `tailer`'s file again from 0 (it was truncated or rewritten: `change`) after emitting what
/// was held back of the old content. Returns what the old content was where it was read to, to
/// recognise a copy, when it had a full fingerprint.
fn restart(
    tailer: &mut Tailer,
    now: Instant,
    change: identity::Change,
    frames: &mut Vec<Frame>,
) -> Option<Mark> {
    let mark = read_mark(tailer);
    let size = tailer.file.metadata().map(|m| m.len()).ok();
    tracing::info!(path = %tailer.path.display(), size, offset = mark.offset, reason = %change, "file was truncated or rewritten; reading it from the start");
    tailer.framer.finish(now, frames);
    tailer.framer.reset(0);
    tailer.recent = Recent::default();
    tailer.fingerprint = Fingerprint::of(&tailer.file).unwrap_or_default();
    (mark.head.len as usize == FINGERPRINT_BYTES).then_some(mark)
}

#[cfg(test)]
mod tests;

/// The resource of an instance's output file, from the `instance.json` beside it: `service.name`, and
/// `service.version`, `service.instance.id` and `log.iostream` (`stdout` or `stderr`, from the file's name).
fn instance_resource(path: &Path) -> Option<(String, Vec<(String, String)>)> {
    #[derive(serde::Deserialize)]
    struct Meta {
        service: String,
        version: String,
        instance_id: String,
    }
    let text = std::fs::read(path.parent()?.join("instance.json")).ok()?;
    let meta: Meta = serde_json::from_slice(&text).ok()?;
    let name = path.file_name()?.to_string_lossy();
    let stream = if name.starts_with("stderr") {
        "stderr"
    } else {
        "stdout"
    };
    Some((
        meta.service,
        vec![
            ("service.version".to_owned(), meta.version),
            ("service.instance.id".to_owned(), meta.instance_id),
            ("log.iostream".to_owned(), stream.to_owned()),
        ],
    ))
}

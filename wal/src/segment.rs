//! Segment files: creation, directory fsync and the recovery scan that validates a segment's records.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{IoContext, WalError};
use crate::format::{
    HeaderCheck, MAX_PAYLOAD, RECORD_HEADER_LEN, RecordHeader, SEGMENT_HEADER_LEN,
    check_segment_header, checksum, segment_file_name, segment_header,
};

/// In-memory state of one segment file.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    /// Seq of the first record (from the file name).
    pub first_seq: u64,
    /// Seq of the last readable record; `first_seq - 1` when the segment holds none.
    pub last_seq: u64,
    /// End of the readable (validated) region in bytes.
    pub valid_len: u64,
    /// Length of the file in bytes (for the active segment: including still-buffered bytes).
    pub file_len: u64,
    /// Path of the file.
    pub path: PathBuf,
}

impl Segment {
    /// Whether the segment holds at least one readable record.
    pub fn has_records(&self) -> bool {
        self.last_seq >= self.first_seq
    }
}

/// How the segment header looked during a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderState {
    /// Valid header.
    Valid,
    /// Shorter than a header: torn creation.
    Torn,
    /// Full length but wrong magic.
    BadMagic,
}

/// Why a scan stopped before the end of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// An incomplete record (short header or payload): a torn write.
    Torn,
    /// A record header of all zeros: zero-filled space after a crash.
    ZeroFill,
    /// A complete record that failed validation.
    Corrupt {
        /// What failed.
        reason: &'static str,
        /// The bad record plus the records that could be delimited after it (best effort).
        frames: u64,
    },
}

/// Result of scanning one segment.
#[derive(Debug, Clone)]
pub(crate) struct Scan {
    /// Header state; when not [`HeaderState::Valid`] no records were read.
    pub header: HeaderState,
    /// File length in bytes.
    pub file_len: u64,
    /// End of the last valid record (0 when the header is not valid).
    pub valid_len: u64,
    /// Seq of the last valid record, `first_seq - 1` if none.
    pub last_seq: u64,
    /// Number of valid records.
    pub records: u64,
    /// Why the scan stopped early, if it did.
    pub stop: Option<Stop>,
}

/// Reads the whole buffer, returning how many bytes were read (less than `buf.len()` only at EOF).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Scans a segment, validating records in order.
///
/// Records must have consecutive seqs starting at `first_seq`, a length of at most
/// [`MAX_PAYLOAD`] that fits in the file, a matching checksum, and (when `seq_limit` is given)
/// a seq below `seq_limit` (the first seq of the following segment).
pub(crate) fn scan_segment(
    path: &Path,
    first_seq: u64,
    seq_limit: Option<u64>,
) -> Result<Scan, WalError> {
    let file = File::open(path).ctx(path)?;
    let file_len = file.metadata().ctx(path)?.len();
    let mut r = BufReader::with_capacity(256 * 1024, file);
    let mut scan = Scan {
        header: HeaderState::Valid,
        file_len,
        valid_len: 0,
        last_seq: first_seq - 1,
        records: 0,
        stop: None,
    };
    if file_len < SEGMENT_HEADER_LEN {
        scan.header = HeaderState::Torn;
        return Ok(scan);
    }
    let mut hdr = [0u8; SEGMENT_HEADER_LEN as usize];
    r.read_exact(&mut hdr).ctx(path)?;
    match check_segment_header(&hdr) {
        HeaderCheck::Valid => {}
        HeaderCheck::BadMagic => {
            scan.header = HeaderState::BadMagic;
            return Ok(scan);
        }
        HeaderCheck::UnsupportedVersion(version) => {
            return Err(WalError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
    }

    let mut pos = SEGMENT_HEADER_LEN;
    let mut expected = first_seq;
    let mut payload = Vec::new();
    loop {
        let remaining = file_len - pos;
        if remaining == 0 {
            break;
        }
        if remaining < RECORD_HEADER_LEN {
            scan.stop = Some(Stop::Torn);
            break;
        }
        let mut hb = [0u8; RECORD_HEADER_LEN as usize];
        if read_full(&mut r, &mut hb).ctx(path)? < hb.len() {
            // The file shrank under us; treat like a torn tail.
            scan.stop = Some(Stop::Torn);
            break;
        }
        let h = RecordHeader::decode(&hb);
        if h.is_zero() {
            scan.stop = Some(Stop::ZeroFill);
            break;
        }
        if h.len as usize > MAX_PAYLOAD {
            scan.stop = Some(Stop::Corrupt {
                reason: "length exceeds the maximum payload",
                frames: 1,
            });
            break;
        }
        if u64::from(h.len) > remaining - RECORD_HEADER_LEN {
            scan.stop = Some(Stop::Torn);
            break;
        }
        // Bounded by MAX_PAYLOAD and by the bytes actually in the file.
        payload.resize(h.len as usize, 0);
        if read_full(&mut r, &mut payload).ctx(path)? < payload.len() {
            scan.stop = Some(Stop::Torn);
            break;
        }
        let reason = if checksum(h.seq, &payload) != h.crc {
            Some("checksum mismatch")
        } else if h.seq != expected || seq_limit.is_some_and(|limit| h.seq >= limit) {
            Some("unexpected sequence number")
        } else {
            None
        };
        if let Some(reason) = reason {
            let after = pos + h.frame_len();
            let more = count_frames(&mut r, path, after, file_len)?;
            scan.stop = Some(Stop::Corrupt {
                reason,
                frames: 1 + more,
            });
            break;
        }
        pos += h.frame_len();
        scan.last_seq = h.seq;
        scan.records += 1;
        expected = h.seq + 1;
    }
    scan.valid_len = pos;
    Ok(scan)
}

/// Counts, best effort, the record frames that can be delimited from `pos` (the reader's current
/// position) to the end of the file: stops at a zero header, an implausible length or a short frame.
pub(crate) fn count_frames(
    r: &mut BufReader<File>,
    path: &Path,
    mut pos: u64,
    file_len: u64,
) -> Result<u64, WalError> {
    let mut frames = 0;
    while file_len - pos >= RECORD_HEADER_LEN {
        let mut hb = [0u8; RECORD_HEADER_LEN as usize];
        if read_full(r, &mut hb).ctx(path)? < hb.len() {
            break;
        }
        let h = RecordHeader::decode(&hb);
        let remaining = file_len - pos - RECORD_HEADER_LEN;
        if h.is_zero() || h.len as usize > MAX_PAYLOAD || u64::from(h.len) > remaining {
            break;
        }
        frames += 1;
        r.seek_relative(i64::from(h.len)).ctx(path)?;
        pos += h.frame_len();
    }
    Ok(frames)
}

/// Creates a new segment file for `first_seq` (which must not exist), writes and fsyncs its
/// header, then fsyncs the directory so the new entry is durable. Returns the file opened for
/// appending.
pub(crate) fn create_segment(dir: &Path, first_seq: u64) -> Result<(Segment, File), WalError> {
    let path = dir.join(segment_file_name(first_seq));
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .ctx(&path)?;
    file.write_all(&segment_header()).ctx(&path)?;
    file.sync_data().ctx(&path)?;
    sync_dir(dir)?;
    let seg = Segment {
        first_seq,
        last_seq: first_seq - 1,
        valid_len: SEGMENT_HEADER_LEN,
        file_len: SEGMENT_HEADER_LEN,
        path,
    };
    Ok((seg, file))
}

/// Replaces the contents of an existing (last) segment with just a fresh header, durably.
pub(crate) fn reset_segment(path: &Path) -> Result<(), WalError> {
    let mut file = OpenOptions::new().write(true).open(path).ctx(path)?;
    file.set_len(0).ctx(path)?;
    file.write_all(&segment_header()).ctx(path)?;
    file.sync_all().ctx(path)
}

/// Truncates a segment to `len` bytes, durably.
pub(crate) fn truncate_segment(path: &Path, len: u64) -> Result<(), WalError> {
    let file = OpenOptions::new().write(true).open(path).ctx(path)?;
    file.set_len(len).ctx(path)?;
    file.sync_all().ctx(path)
}

/// Fsyncs a directory so created, renamed or removed entries are durable.
#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).ctx(dir)
}

/// Directory fsync is not available on this platform; entries rely on the filesystem.
#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) -> Result<(), WalError> {
    Ok(())
}

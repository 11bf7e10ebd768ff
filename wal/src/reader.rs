//! Sequential reader over a snapshot of the log's segments, yielding `(seq, payload)` records.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;

use crate::error::{IoContext, WalError};
use crate::format::{
    HeaderCheck, MAX_PAYLOAD, RECORD_HEADER_LEN, RecordHeader, SEGMENT_HEADER_LEN,
    check_segment_header, checksum,
};

/// The part of a segment a reader may read, captured when the reader was created.
#[derive(Debug, Clone)]
pub(crate) struct SegmentSnapshot {
    /// Segment file.
    pub path: PathBuf,
    /// Seq of the first record.
    pub first_seq: u64,
    /// Seq of the last readable record.
    pub last_seq: u64,
    /// End of the readable region in bytes.
    pub valid_len: u64,
}

/// Iterator over records with `seq >= from`, in seq order, created by
/// [`Wal::read_from`](crate::Wal::read_from).
///
/// It reads a snapshot: records appended after it was created are not returned. It owns its
/// file handles and does not borrow the [`Wal`](crate::Wal), so appends may continue meanwhile.
/// Every returned record is re-validated (length, checksum, seq); on the first error the error is
/// yielded once and the iterator ends. Across a segment whose damaged records were skipped at
/// open, seqs jump to the next segment's first seq.
#[derive(Debug)]
pub struct WalReader {
    pending: VecDeque<SegmentSnapshot>,
    current: Option<OpenSegment>,
    from: u64,
    done: bool,
}

impl WalReader {
    pub(crate) fn new(segments: Vec<SegmentSnapshot>, from: u64) -> Self {
        Self {
            pending: segments.into(),
            current: None,
            from,
            done: false,
        }
    }

    fn advance(&mut self) -> Result<Option<(u64, Vec<u8>)>, WalError> {
        loop {
            if self.current.is_none() {
                let Some(snap) = self.pending.pop_front() else {
                    return Ok(None);
                };
                self.current = Some(OpenSegment::open(snap)?);
            }
            let cur = self.current.as_mut().expect("segment opened above");
            match cur.next_record(self.from)? {
                Some(rec) => return Ok(Some(rec)),
                None => self.current = None,
            }
        }
    }
}

impl Iterator for WalReader {
    type Item = Result<(u64, Vec<u8>), WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.advance() {
            Ok(Some(rec)) => Some(Ok(rec)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// A segment being read.
#[derive(Debug)]
struct OpenSegment {
    snap: SegmentSnapshot,
    reader: BufReader<File>,
    pos: u64,
    next_seq: u64,
}

impl OpenSegment {
    fn open(snap: SegmentSnapshot) -> Result<Self, WalError> {
        let file = File::open(&snap.path).ctx(&snap.path)?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let mut hdr = [0u8; SEGMENT_HEADER_LEN as usize];
        reader.read_exact(&mut hdr).ctx(&snap.path)?;
        if check_segment_header(&hdr) != HeaderCheck::Valid {
            return Err(WalError::Corrupt {
                path: snap.path,
                offset: 0,
                reason: "invalid segment header",
            });
        }
        Ok(Self {
            next_seq: snap.first_seq,
            snap,
            reader,
            pos: SEGMENT_HEADER_LEN,
        })
    }

    fn corrupt(&self, reason: &'static str) -> WalError {
        WalError::Corrupt {
            path: self.snap.path.clone(),
            offset: self.pos,
            reason,
        }
    }

    fn next_record(&mut self, from: u64) -> Result<Option<(u64, Vec<u8>)>, WalError> {
        let path = self.snap.path.clone();
        while self.next_seq <= self.snap.last_seq {
            if self.snap.valid_len - self.pos < RECORD_HEADER_LEN {
                return Err(self.corrupt("record header extends past the valid region"));
            }
            let mut hb = [0u8; RECORD_HEADER_LEN as usize];
            self.reader.read_exact(&mut hb).ctx(&path)?;
            let h = RecordHeader::decode(&hb);
            if h.len as usize > MAX_PAYLOAD
                || u64::from(h.len) > self.snap.valid_len - self.pos - RECORD_HEADER_LEN
            {
                return Err(self.corrupt("invalid record length"));
            }
            if h.seq != self.next_seq {
                return Err(self.corrupt("unexpected sequence number"));
            }
            if h.seq < from {
                self.reader.seek_relative(i64::from(h.len)).ctx(&path)?;
                self.pos += h.frame_len();
                self.next_seq += 1;
                continue;
            }
            let mut payload = vec![0u8; h.len as usize];
            self.reader.read_exact(&mut payload).ctx(&path)?;
            if checksum(h.seq, &payload) != h.crc {
                return Err(self.corrupt("checksum mismatch"));
            }
            self.pos += h.frame_len();
            self.next_seq += 1;
            return Ok(Some((h.seq, payload)));
        }
        Ok(None)
    }
}

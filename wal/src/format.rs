//! On-disk format: segment file names, the segment header and record framing.

/// Magic bytes at the start of every segment file.
pub(crate) const MAGIC: [u8; 4] = *b"GWAL";
/// Current segment format version.
pub(crate) const VERSION: u32 = 1;
/// Length of the segment header (`GWAL` + u32 LE version).
pub(crate) const SEGMENT_HEADER_LEN: u64 = 8;
/// Length of a record header (`u32 len | u32 crc | u64 seq`).
pub(crate) const RECORD_HEADER_LEN: u64 = 16;
/// Largest sequence number ever handed out; also the largest accepted segment name.
///
/// Half the `u64` range keeps all seq arithmetic (including `+ 1` while scanning) overflow free.
pub(crate) const MAX_SEQ: u64 = u64::MAX / 2;

/// Largest payload accepted by [`Wal::append`](crate::Wal::append) (64 MiB).
///
/// During recovery a length field above this is treated as corruption, so no allocation is ever
/// sized from an untrusted length beyond it.
pub const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// Returns [`MAX_PAYLOAD`].
pub const fn max_payload() -> usize {
    MAX_PAYLOAD
}

/// The header written at the start of each segment.
pub(crate) fn segment_header() -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..4].copy_from_slice(&MAGIC);
    h[4..].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Result of checking a complete segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderCheck {
    /// Magic and version match.
    Valid,
    /// The magic does not match: not (or no longer) a segment header.
    BadMagic,
    /// The magic matches but the version is unknown.
    UnsupportedVersion(u32),
}

/// Validates a segment header.
pub(crate) fn check_segment_header(h: &[u8; SEGMENT_HEADER_LEN as usize]) -> HeaderCheck {
    if h[..4] != MAGIC {
        return HeaderCheck::BadMagic;
    }
    let version = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if version == VERSION {
        HeaderCheck::Valid
    } else {
        HeaderCheck::UnsupportedVersion(version)
    }
}

/// File name of the segment whose first record has `first_seq`.
pub(crate) fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.wal")
}

/// Parses a segment file name back into its first seq (`None` if it is not a segment name).
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seq: u64 = digits.parse().ok()?;
    (1..=MAX_SEQ).contains(&seq).then_some(seq)
}

/// CRC32 over the little-endian seq followed by the payload.
pub(crate) fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    /// Payload length in bytes.
    pub len: u32,
    /// CRC32 over seq bytes + payload.
    pub crc: u32,
    /// Sequence number.
    pub seq: u64,
}

impl RecordHeader {
    /// Builds the header for `payload` at `seq`.
    pub fn new(seq: u64, payload: &[u8]) -> Self {
        Self {
            len: u32::try_from(payload.len()).expect("payload length checked against MAX_PAYLOAD"),
            crc: checksum(seq, payload),
            seq,
        }
    }

    /// Encodes to the on-disk layout.
    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN as usize] {
        let mut b = [0u8; RECORD_HEADER_LEN as usize];
        b[..4].copy_from_slice(&self.len.to_le_bytes());
        b[4..8].copy_from_slice(&self.crc.to_le_bytes());
        b[8..].copy_from_slice(&self.seq.to_le_bytes());
        b
    }

    /// Decodes from the on-disk layout.
    pub fn decode(b: &[u8; RECORD_HEADER_LEN as usize]) -> Self {
        Self {
            len: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            crc: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            seq: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        }
    }

    /// Whether every field is zero (a zero-filled region, typical of a crash after a file grew).
    pub fn is_zero(&self) -> bool {
        self.len == 0 && self.crc == 0 && self.seq == 0
    }

    /// Total frame length (header + payload).
    pub fn frame_len(&self) -> u64 {
        RECORD_HEADER_LEN + u64::from(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(1), "00000000000000000001.wal");
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_file_name("00000000000000000000.wal"), None);
        assert_eq!(parse_segment_file_name("0000000000000000001.wal"), None);
        assert_eq!(parse_segment_file_name("0000000000000000000a.wal"), None);
        assert_eq!(parse_segment_file_name("00000000000000000001.tmp"), None);
        assert_eq!(parse_segment_file_name("LOCK"), None);
        assert_eq!(parse_segment_file_name(&segment_file_name(u64::MAX)), None);
    }

    #[test]
    fn header_round_trip() {
        let h = RecordHeader::new(7, b"hello");
        assert_eq!(RecordHeader::decode(&h.encode()), h);
        assert_eq!(h.frame_len(), 21);
        assert!(!h.is_zero());
        assert_eq!(check_segment_header(&segment_header()), HeaderCheck::Valid);
        let mut bad = segment_header();
        bad[4] = 9;
        assert_eq!(
            check_segment_header(&bad),
            HeaderCheck::UnsupportedVersion(9)
        );
        bad[0] = b'X';
        assert_eq!(check_segment_header(&bad), HeaderCheck::BadMagic);
    }
}

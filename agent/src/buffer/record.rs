//! The layout of one buffered batch: a small header the agent keeps for itself, then the OTLP payload that is shipped as is.

/// Format version of [`BufferRecord`]: 2 added the signal byte, 3 writes it as `gantry_proto::Signal::to_byte`.
/// Records of versions 1 (logs only) and 2 are still read, so a buffer written by an older agent ships after an
/// upgrade.
const VERSION: u8 = 3;
/// version u8 + signal u8 + appended_unix_nanos u64 + records u32 + source_state_len u32.
const HEADER_LEN: usize = 1 + 1 + 8 + 4 + 4;
/// The header of a version 1 record: no signal byte.
const V1_HEADER_LEN: usize = 1 + 8 + 4 + 4;

pub use gantry_proto::Signal;

/// The signal byte of a version 2 record, written before the signal was defined once in `gantry-proto` (0 logs,
/// 1 metrics, 2 traces; version 3 uses [`Signal::to_byte`]).
fn v2_signal(byte: u8) -> Option<Signal> {
    match byte {
        0 => Some(Signal::Logs),
        1 => Some(Signal::Metrics),
        2 => Some(Signal::Traces),
        _ => None,
    }
}

/// One batch as stored in the disk buffer (one WAL record).
///
/// ```text
/// u8 version (3) | u8 signal | u64 LE appended_unix_nanos | u32 LE records | u32 LE state_len | state | payload
/// ```
///
/// `state` is what the producing source needs to resume after a crash (the file source stores the
/// file positions this batch reaches); `payload` is the protobuf export request of `signal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferRecord {
    /// What the payload is.
    pub signal: Signal,
    /// When the batch entered the buffer (for the "oldest unshipped record" age).
    pub appended_unix_nanos: u64,
    /// Log records, data points or spans in the payload (for the counters, and the dropped counter when the plane
    /// refuses a batch).
    pub records: u32,
    /// Opaque source state (JSON), empty for sources without positions.
    pub source_state: Vec<u8>,
    /// Protobuf export request of `signal`.
    pub payload: Vec<u8>,
}

/// A WAL record that is not a valid [`BufferRecord`].
#[derive(Debug, thiserror::Error)]
#[error("buffer record is malformed: {0}")]
pub struct MalformedRecord(&'static str);

impl BufferRecord {
    /// Serializes for [`gantry_wal::Wal::append`].
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.source_state.len() + self.payload.len());
        out.push(VERSION);
        out.push(self.signal.to_byte());
        out.extend_from_slice(&self.appended_unix_nanos.to_le_bytes());
        out.extend_from_slice(&self.records.to_le_bytes());
        out.extend_from_slice(&(self.source_state.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.source_state);
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses a WAL payload written by [`BufferRecord::encode`].
    pub fn decode(bytes: &[u8]) -> Result<BufferRecord, MalformedRecord> {
        let header = BufferHeader::parse(bytes)?;
        Ok(BufferRecord {
            signal: header.signal,
            appended_unix_nanos: header.appended_unix_nanos,
            records: header.records,
            source_state: bytes[header.state.clone()].to_vec(),
            payload: bytes[header.payload_start..].to_vec(),
        })
    }
}

/// The fields of a stored [`BufferRecord`] and where its parts lie, read without copying the payload (what the
/// shipper needs: it compresses the payload straight from the bytes read back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferHeader {
    /// What the payload is.
    pub signal: Signal,
    /// When the batch entered the buffer.
    pub appended_unix_nanos: u64,
    /// Records in the payload.
    pub records: u32,
    /// Where the source state lies.
    pub state: std::ops::Range<usize>,
    /// Where the payload starts (it runs to the end).
    pub payload_start: usize,
}

impl BufferHeader {
    /// Reads the header of a WAL payload written by [`BufferRecord::encode`].
    pub fn parse(bytes: &[u8]) -> Result<BufferHeader, MalformedRecord> {
        let (signal, header, fields) = match bytes.first() {
            Some(1) => (Signal::Logs, V1_HEADER_LEN, 1),
            Some(&version) if version == 2 || version == VERSION => {
                let byte = *bytes
                    .get(1)
                    .ok_or(MalformedRecord("shorter than its header"))?;
                let signal = if version == 2 {
                    v2_signal(byte)
                } else {
                    Signal::from_byte(byte)
                };
                (
                    signal.ok_or(MalformedRecord("unknown signal"))?,
                    HEADER_LEN,
                    2,
                )
            }
            Some(_) => return Err(MalformedRecord("unknown version")),
            None => return Err(MalformedRecord("empty")),
        };
        if bytes.len() < header {
            return Err(MalformedRecord("shorter than its header"));
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let state_len = u32_at(fields + 12) as usize;
        if bytes.len() - header < state_len {
            return Err(MalformedRecord("source state runs past the end"));
        }
        Ok(BufferHeader {
            signal,
            appended_unix_nanos: u64_at(fields),
            records: u32_at(fields + 8),
            state: header..header + state_len,
            payload_start: header + state_len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed() {
        let record = BufferRecord {
            signal: Signal::Metrics,
            appended_unix_nanos: 42,
            records: 7,
            source_state: b"{\"files\":[]}".to_vec(),
            payload: vec![1, 2, 3],
        };
        assert_eq!(BufferRecord::decode(&record.encode()).unwrap(), record);
        let empty = BufferRecord {
            signal: Signal::Logs,
            appended_unix_nanos: 0,
            records: 0,
            source_state: Vec::new(),
            payload: Vec::new(),
        };
        assert_eq!(BufferRecord::decode(&empty.encode()).unwrap(), empty);
        assert!(BufferRecord::decode(&[1, 2]).is_err());
        let mut bad = record.encode();
        bad[0] = 9;
        assert!(BufferRecord::decode(&bad).is_err());
        let mut long_state = record.encode();
        long_state[14] = 200;
        assert!(BufferRecord::decode(&long_state).is_err());
        let mut bad_signal = record.encode();
        bad_signal[1] = 7;
        assert!(BufferRecord::decode(&bad_signal).is_err());
        // The header alone locates the parts without copying them.
        let bytes = record.encode();
        let header = BufferHeader::parse(&bytes).unwrap();
        assert_eq!((header.signal, header.records), (Signal::Metrics, 7));
        assert_eq!(&bytes[header.state.clone()], &record.source_state[..]);
        assert_eq!(&bytes[header.payload_start..], &record.payload[..]);
        // A version 1 record, written by an agent before signals existed, reads as logs.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&42u64.to_le_bytes());
        v1.extend_from_slice(&7u32.to_le_bytes());
        v1.extend_from_slice(&2u32.to_le_bytes());
        v1.extend_from_slice(b"{}");
        v1.extend_from_slice(&[9, 9]);
        let old = BufferRecord::decode(&v1).unwrap();
        assert_eq!(old.signal, Signal::Logs);
        // A version 2 record keeps its own signal bytes: 1 was metrics then.
        let mut v2 = record.encode();
        v2[0] = 2;
        v2[1] = 1;
        assert_eq!(BufferRecord::decode(&v2).unwrap().signal, Signal::Metrics);
        v2[1] = 2;
        assert_eq!(BufferRecord::decode(&v2).unwrap().signal, Signal::Traces);
        assert_eq!(
            (
                old.records,
                old.source_state.as_slice(),
                old.payload.as_slice()
            ),
            (7, &b"{}"[..], &[9u8, 9][..])
        );
    }
}

//! The layout of one buffered batch: a small header the agent keeps for itself, then the OTLP payload that is shipped as is.

/// Format version of [`BufferRecord`].
const VERSION: u8 = 1;
/// version u8 + appended_unix_nanos u64 + records u32 + source_state_len u32.
const HEADER_LEN: usize = 1 + 8 + 4 + 4;

/// One batch as stored in the disk buffer (one WAL record).
///
/// ```text
/// u8 version (1) | u64 LE appended_unix_nanos | u32 LE records | u32 LE state_len | state | payload
/// ```
///
/// `state` is what the producing source needs to resume after a crash (the file source stores the
/// file positions this batch reaches); `payload` is a protobuf `ExportLogsServiceRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferRecord {
    /// When the batch entered the buffer (for the "oldest unshipped record" age).
    pub appended_unix_nanos: u64,
    /// Log records in the payload (for the dropped counter when the plane refuses a batch).
    pub records: u32,
    /// Opaque source state (JSON), empty for sources without positions.
    pub source_state: Vec<u8>,
    /// Protobuf `ExportLogsServiceRequest`.
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
        out.extend_from_slice(&self.appended_unix_nanos.to_le_bytes());
        out.extend_from_slice(&self.records.to_le_bytes());
        out.extend_from_slice(&(self.source_state.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.source_state);
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses a WAL payload written by [`BufferRecord::encode`].
    pub fn decode(bytes: &[u8]) -> Result<BufferRecord, MalformedRecord> {
        if bytes.len() < HEADER_LEN {
            return Err(MalformedRecord("shorter than its header"));
        }
        if bytes[0] != VERSION {
            return Err(MalformedRecord("unknown version"));
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let state_len = u32_at(13) as usize;
        let rest = &bytes[HEADER_LEN..];
        if rest.len() < state_len {
            return Err(MalformedRecord("source state runs past the end"));
        }
        let (state, payload) = rest.split_at(state_len);
        Ok(BufferRecord {
            appended_unix_nanos: u64_at(1),
            records: u32_at(9),
            source_state: state.to_vec(),
            payload: payload.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed() {
        let record = BufferRecord {
            appended_unix_nanos: 42,
            records: 7,
            source_state: b"{\"files\":[]}".to_vec(),
            payload: vec![1, 2, 3],
        };
        assert_eq!(BufferRecord::decode(&record.encode()).unwrap(), record);
        let empty = BufferRecord {
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
        long_state[13] = 200;
        assert!(BufferRecord::decode(&long_state).is_err());
    }
}

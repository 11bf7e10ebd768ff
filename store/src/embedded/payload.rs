//! The WAL record of one batch:
//!
//! ```text
//! u8 signal (gantry_proto::Signal::to_byte) | u16 LE id length | id bytes (UTF-8) | OTLP protobuf export request
//! ```

use gantry_proto::{ExportRequest, Signal};

/// A batch as the WAL keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    /// The batch id, when the sender gave one.
    pub id: Option<String>,
    /// The request.
    pub request: ExportRequest,
}

/// Serializes a batch: `encoded` is the protobuf form of a request of `signal`.
pub fn encode(signal: Signal, id: Option<&str>, encoded: &[u8]) -> Vec<u8> {
    let id = id.unwrap_or("").as_bytes();
    let id = &id[..id.len().min(u16::MAX as usize)];
    let mut payload = Vec::with_capacity(3 + id.len() + encoded.len());
    payload.push(signal.to_byte());
    payload.extend_from_slice(&(id.len() as u16).to_le_bytes());
    payload.extend_from_slice(id);
    payload.extend_from_slice(encoded);
    payload
}

/// Parses a record written by [`encode`]; `None` when it is not one.
pub fn decode(payload: &[u8]) -> Option<Payload> {
    let (&signal, rest) = payload.split_first()?;
    let signal = Signal::from_byte(signal)?;
    let id_len = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let id = std::str::from_utf8(rest.get(2..2 + id_len)?).ok()?;
    let request = ExportRequest::decode(signal, rest.get(2 + id_len..)?).ok()?;
    Some(Payload {
        id: (!id.is_empty()).then(|| id.to_owned()),
        request,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::tests::sample_logs;

    #[test]
    fn payloads_round_trip_and_garbage_is_refused() {
        let request = sample_logs(5, 1_700_000_000_000_000_000);
        let encoded = request.encode_to_vec();
        for id in [Some("agent-7/42"), None] {
            let decoded = decode(&encode(Signal::Logs, id, &encoded)).expect("decodes");
            assert_eq!(decoded.id.as_deref(), id);
            assert_eq!(decoded.request.encode_to_vec(), encoded);
        }
        for garbage in [&b""[..], &[7, 0, 0][..], &[0, 9, 0, b'x'][..]] {
            assert!(decode(garbage).is_none(), "{garbage:?}");
        }
    }
}

//! OTLP ingest shared by the HTTP and gRPC receivers: decoding, decompression with a size cap, the retention check
//! that rejects records one by one, and handing the batch to the store.

pub mod grpc;
pub mod http;

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prost::Message;

use crate::store::embedded::{Signal, encode_request};
use crate::store::model::{Acceptance, count_rejected, stamp_missing_times};
use crate::store::{Batch, OtlpRequest, Store, StoreError, WriteOutcome};
use crate::telemetry::SelfMetrics;

/// How a body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json` (OTLP JSON).
    Json,
}

/// Why a request was refused before reaching the store.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Over the size cap once decompressed.
    #[error(
        "the request body is larger than {limit} bytes once decompressed: send smaller batches"
    )]
    TooLarge {
        /// The cap.
        limit: usize,
    },
    /// Not valid gzip, protobuf or JSON.
    #[error("{0}")]
    Malformed(String),
}

/// Decompresses gzip, reading at most `limit` bytes of output (a gzip bomb stops there).
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity((body.len() * 4).min(limit));
    flate2::read::MultiGzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|error| DecodeError::Malformed(format!("the body is not valid gzip: {error}")))?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    Ok(out)
}

/// Decodes an OTLP export request.
pub fn decode(signal: Signal, encoding: Encoding, body: &[u8]) -> Result<OtlpRequest, DecodeError> {
    fn protobuf<M: Message + Default>(body: &[u8]) -> Result<M, DecodeError> {
        M::decode(body)
            .map_err(|error| DecodeError::Malformed(format!("invalid OTLP protobuf: {error}")))
    }
    fn json<M: serde::de::DeserializeOwned>(body: &[u8]) -> Result<M, DecodeError> {
        serde_json::from_slice(body)
            .map_err(|error| DecodeError::Malformed(format!("invalid OTLP JSON: {error}")))
    }
    Ok(match (signal, encoding) {
        (Signal::Logs, Encoding::Protobuf) => OtlpRequest::Logs(protobuf(body)?),
        (Signal::Spans, Encoding::Protobuf) => OtlpRequest::Traces(protobuf(body)?),
        (Signal::Metrics, Encoding::Protobuf) => OtlpRequest::Metrics(protobuf(body)?),
        (Signal::Logs, Encoding::Json) => OtlpRequest::Logs(json(body)?),
        (Signal::Spans, Encoding::Json) => OtlpRequest::Traces(json(body)?),
        (Signal::Metrics, Encoding::Json) => OtlpRequest::Metrics(json(body)?),
    })
}

/// What a stored batch is answered with.
#[derive(Debug, Default, Clone)]
pub struct Accepted {
    /// Records rejected one by one.
    pub rejected: u64,
    /// Why, when any were.
    pub message: String,
}

/// The ingest side of the plane: the store, its acceptance window, and the counters.
#[derive(Clone)]
pub struct Ingest {
    /// Where batches go.
    pub store: Arc<dyn Store>,
    /// Retention: older records are rejected.
    pub retention: std::time::Duration,
    /// Largest body, decompressed.
    pub max_body_bytes: usize,
    /// Counters for `/metrics`.
    pub metrics: Arc<SelfMetrics>,
    /// Requests being received, decoded or written at once; beyond it ingest answers 429 before reading a body,
    /// which bounds the memory that bodies and decoded batches take under overload.
    pub admission: Arc<tokio::sync::Semaphore>,
}

/// Ingest requests in flight at once (each may hold up to `max_body_bytes` raw, decompressed and decoded).
pub const MAX_IN_FLIGHT: usize = 32;

impl Ingest {
    /// Makes a decoded request durable; `encoded` is its protobuf form when the caller already has it.
    pub async fn accept(
        &self,
        signal: Signal,
        mut request: OtlpRequest,
        mut encoded: Option<Bytes>,
        id: Option<String>,
        protocol: &'static str,
    ) -> Result<Accepted, StoreError> {
        let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        let window = Acceptance::new(now_ns, self.retention);
        // Walking and encoding a large batch takes milliseconds: not on an async worker.
        let (request, encoded, rejected) = tokio::task::spawn_blocking(move || {
            if stamp_missing_times(&mut request, now_ns) {
                encoded = None;
            }
            let rejected = count_rejected(&request, &window, now_ns);
            let encoded = encoded.unwrap_or_else(|| encode_request(&request));
            (request, encoded, rejected)
        })
        .await
        .map_err(|error| StoreError::Internal(format!("preparing the batch failed: {error}")))?;
        let bytes = encoded.len() as u64;
        let started = Instant::now();
        let outcome = self
            .store
            .write(Batch {
                id,
                request,
                encoded,
            })
            .await;
        let name = signal.name();
        match &outcome {
            Ok(WriteOutcome::Stored) => {
                self.metrics.observe(
                    "gantry_ingest_commit_seconds",
                    &[],
                    started.elapsed().as_secs_f64(),
                );
                self.metrics.add(
                    "gantry_ingest_batches_total",
                    &[
                        ("signal", name),
                        ("protocol", protocol),
                        ("outcome", "stored"),
                    ],
                    1,
                );
                self.metrics
                    .add("gantry_ingest_bytes_total", &[("signal", name)], bytes);
                self.metrics.add(
                    "gantry_ingest_rejected_records_total",
                    &[("signal", name), ("reason", "timestamp")],
                    rejected,
                );
            }
            Ok(WriteOutcome::Duplicate) => {
                self.metrics.add(
                    "gantry_ingest_batches_total",
                    &[
                        ("signal", name),
                        ("protocol", protocol),
                        ("outcome", "duplicate"),
                    ],
                    1,
                );
            }
            Err(error) => {
                let outcome = match error {
                    StoreError::Overloaded { .. } => "overloaded",
                    StoreError::NotReady | StoreError::ShuttingDown => "unavailable",
                    _ => "failed",
                };
                self.metrics.add(
                    "gantry_ingest_batches_total",
                    &[
                        ("signal", name),
                        ("protocol", protocol),
                        ("outcome", outcome),
                    ],
                    1,
                );
            }
        }
        outcome?;
        Ok(Accepted {
            rejected,
            message: if rejected > 0 {
                window.rejection_message(rejected)
            } else {
                String::new()
            },
        })
    }

    /// Counts a request refused before the store (malformed, too large, unauthorized).
    pub fn refused(&self, signal: Signal, protocol: &'static str, reason: &'static str) {
        self.metrics.add(
            "gantry_ingest_batches_total",
            &[
                ("signal", signal.name()),
                ("protocol", protocol),
                ("outcome", reason),
            ],
            1,
        );
    }
}

/// `google.rpc.Status`, the error body of OTLP/HTTP protobuf responses and gRPC status details.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    /// A `google.rpc.Code`.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What went wrong.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Further detail, e.g. a `RetryInfo`.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoAny {
    /// Type of the packed message.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// The packed message.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, Message)]
pub struct RetryInfo {
    /// How long to wait.
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoDuration {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// A `RetryInfo` packed in an `Any`.
pub fn retry_info(delay: std::time::Duration) -> ProtoAny {
    ProtoAny {
        type_url: "type.googleapis.com/google.rpc.RetryInfo".to_owned(),
        value: RetryInfo {
            retry_delay: Some(ProtoDuration {
                seconds: delay.as_secs() as i64,
                nanos: delay.subsec_nanos() as i32,
            }),
        }
        .encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gzip_bomb_stops_at_the_limit() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; 8 << 20]).unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(matches!(
            gunzip(&bomb, 1 << 20),
            Err(DecodeError::TooLarge { .. })
        ));
        assert_eq!(gunzip(&bomb, 8 << 20).unwrap().len(), 8 << 20);
        assert!(matches!(
            gunzip(b"not gzip", 100),
            Err(DecodeError::Malformed(_))
        ));
    }
}

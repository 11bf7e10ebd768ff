//! OTLP ingest shared by the HTTP and gRPC receivers: decoding, decompression with a size cap, the retention check
//! that rejects records one by one, and handing the batch to the store.

pub mod grpc;
pub mod http;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::store::embedded::{Signal, encode_request};
use crate::store::model::{Acceptance, count_rejected, stamp_missing_times};
use crate::store::{Batch, OtlpRequest, Store, StoreError, WriteOutcome};
use crate::telemetry::SelfMetrics;

pub use gantry_proto::otlp::{DecodeError, Encoding, RpcStatus, gunzip, retry_info};

/// Decodes an OTLP export request.
pub fn decode(signal: Signal, encoding: Encoding, body: &[u8]) -> Result<OtlpRequest, DecodeError> {
    use gantry_proto::otlp::decode_message;
    Ok(match signal {
        Signal::Logs => OtlpRequest::Logs(decode_message(encoding, body)?),
        Signal::Spans => OtlpRequest::Traces(decode_message(encoding, body)?),
        Signal::Metrics => OtlpRequest::Metrics(decode_message(encoding, body)?),
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

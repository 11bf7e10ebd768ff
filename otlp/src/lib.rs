//! The OTLP receiver of Gantry, shared by the plane (which stores what it receives) and the node agent (which
//! buffers it on disk for the plane): `POST /v1/{logs,traces,metrics}` over HTTP (protobuf or JSON, gzip or not)
//! and the three OTLP collector services over gRPC.
//!
//! The receiver owns the transport: content types, capped gunzip, **admission before a body is read** (at most
//! [`ReceiverConfig::max_in_flight`] requests are read, decoded and handed over at once; beyond it the answer is 429
//! with `Retry-After`, or gRPC UNAVAILABLE with a `RetryInfo`), decoding off the async threads, and the mapping of
//! every [`Refusal`] to an HTTP status and a gRPC code (OTLP specification, "OTLP/HTTP Response" and
//! "OTLP/gRPC Response"). Each side plugs in what it does with an accepted batch by implementing [`Intake`].
//!
//! **Nothing here stores or ships data**: an [`Intake`] does.
#![warn(missing_docs)]

pub mod encoding;
mod grpc;
pub mod limits;
pub use grpc::standard_codes;
mod http;
mod json;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gantry_proto::{ExportRequest, Signal};
use tokio::sync::Semaphore;

pub use encoding::{DecodeError, Encoding};

/// Which transport a request came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// OTLP/HTTP.
    Http,
    /// OTLP/gRPC.
    Grpc,
}

impl Protocol {
    /// `http` or `grpc`, as used in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// A decoded export request, as the receiver hands it over.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request.
    pub request: ExportRequest,
    /// Its protobuf bytes when it arrived as protobuf (spares re-encoding it).
    pub encoded: Option<Bytes>,
    /// The `Gantry-Batch-Id` header or metadata, when present and not empty.
    pub batch_id: Option<String>,
    /// The transport it came over.
    pub protocol: Protocol,
}

/// What an [`Intake`] answers for a batch it made durable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Items (log records, spans, data points) rejected one by one: reported as OTLP partial success.
    pub rejected: u64,
    /// Why they were rejected (empty when none were).
    pub message: String,
}

/// Why a request was not accepted. Each variant maps to one HTTP status and one gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No valid credentials: 401 with `WWW-Authenticate: Bearer`, gRPC UNAUTHENTICATED.
    #[error("{0}")]
    Unauthenticated(String),
    /// Credentials that may not write telemetry: 403, gRPC PERMISSION_DENIED.
    #[error("{0}")]
    Forbidden(String),
    /// A `Content-Type` OTLP does not define: 415.
    #[error("{0}")]
    UnsupportedContentType(String),
    /// A `Content-Encoding` other than gzip: 415.
    #[error("{0}")]
    UnsupportedContentEncoding(String),
    /// The request is malformed or breaks a rule: 400, gRPC INVALID_ARGUMENT. Not retried.
    #[error("{0}")]
    Invalid(String),
    /// The request is over a size limit: 413, gRPC RESOURCE_EXHAUSTED. Not retried as is.
    #[error("{0}")]
    TooLarge(String),
    /// Too much at once: 429 with `Retry-After`, gRPC UNAVAILABLE with a `RetryInfo`.
    #[error("{message}")]
    Overloaded {
        /// What is going on.
        message: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// The receiving side's buffer is full (its downstream is away or slow): 503 with `Retry-After`, gRPC
    /// UNAVAILABLE with a `RetryInfo`.
    #[error("{message}")]
    BufferFull {
        /// What is going on.
        message: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// Passing trouble on the receiving side (starting, stopping, a failed disk): 503 with `Retry-After`, gRPC
    /// UNAVAILABLE with a `RetryInfo`.
    #[error("{message}")]
    Unavailable {
        /// What is going on.
        message: String,
        /// When to try again.
        retry_after: Duration,
    },
}

impl Refusal {
    /// A short reason for counters: `unauthorized`, `forbidden`, `unsupported_media_type`,
    /// `unsupported_encoding`, `malformed`, `too_large`, `overloaded`, `buffer_full`, `unavailable`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(_) => "unauthorized",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::UnsupportedContentType(_) => "unsupported_media_type",
            Refusal::UnsupportedContentEncoding(_) => "unsupported_encoding",
            Refusal::Invalid(_) => "malformed",
            Refusal::TooLarge(_) => "too_large",
            Refusal::Overloaded { .. } => "overloaded",
            Refusal::BufferFull { .. } => "buffer_full",
            Refusal::Unavailable { .. } => "unavailable",
        }
    }

    /// How long the sender should wait, for the refusals a retry can fix.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::Overloaded { retry_after, .. }
            | Refusal::BufferFull { retry_after, .. }
            | Refusal::Unavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl From<DecodeError> for Refusal {
    fn from(error: DecodeError) -> Self {
        match error {
            DecodeError::TooLarge { .. } => Refusal::TooLarge(error.to_string()),
            DecodeError::Malformed(message) => Refusal::Invalid(message),
        }
    }
}

/// What a receiver's owner does with what arrives.
#[async_trait]
pub trait Intake: Send + Sync + 'static {
    /// Checks the caller's `Authorization` value (header or gRPC metadata) before anything else is read.
    ///
    /// # Errors
    /// [`Refusal::Unauthenticated`] or [`Refusal::Forbidden`].
    fn authorize(&self, authorization: Option<&str>) -> Result<(), Refusal>;

    /// Takes a decoded batch and answers once it is durable (acknowledged means durable).
    ///
    /// # Errors
    /// Any [`Refusal`]; the receiver answers it to the sender.
    async fn accept(&self, batch: Received) -> Result<Accepted, Refusal>;

    /// Called for every request refused, whether by the receiver or by [`Intake::accept`] (for counters).
    fn refused(&self, signal: Signal, protocol: Protocol, refusal: &Refusal);
}

/// Limits of a receiver.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Requests read, decoded and handed over at once; beyond it requests are refused before their body is read.
    pub max_in_flight: usize,
    /// Largest body accepted, bytes, before and after decompression.
    pub max_body_bytes: usize,
    /// The `Retry-After` of a request refused for being over `max_in_flight`.
    pub busy_retry_after: Duration,
    /// What one request may expand to once decoded (items, attributes per item, memory).
    pub decode: limits::DecodeLimits,
    /// Estimated memory of the decoded requests in flight together, bytes; a request that would pass it waits for
    /// no one: it is refused with 429 and `Retry-After`.
    pub memory_budget_bytes: u64,
}

impl ReceiverConfig {
    /// A configuration with the default decode limits and a memory budget of `max_in_flight` requests of 16 MiB
    /// decoded each (a typical batch is well under 1 MiB), and at least one request of the largest size.
    pub fn new(max_in_flight: usize, max_body_bytes: usize) -> ReceiverConfig {
        let decode = limits::DecodeLimits::default();
        ReceiverConfig {
            max_in_flight,
            max_body_bytes,
            busy_retry_after: Duration::from_secs(1),
            memory_budget_bytes: (max_in_flight as u64 * (16 << 20)).max(decode.max_decoded_bytes),
            decode,
        }
    }
}

/// An OTLP receiver over an [`Intake`]; cheap to clone (the HTTP and gRPC sides share its admission limit).
pub struct Receiver<I: Intake> {
    intake: Arc<I>,
    config: ReceiverConfig,
    admission: Arc<Semaphore>,
    /// The memory budget, in KiB permits.
    memory: Arc<Semaphore>,
}

impl<I: Intake> Clone for Receiver<I> {
    fn clone(&self) -> Self {
        Self {
            intake: self.intake.clone(),
            config: self.config.clone(),
            admission: self.admission.clone(),
            memory: self.memory.clone(),
        }
    }
}

impl<I: Intake> Receiver<I> {
    /// A receiver handing batches to `intake`.
    pub fn new(intake: Arc<I>, config: ReceiverConfig) -> Self {
        let admission = Arc::new(Semaphore::new(config.max_in_flight));
        let memory = Arc::new(Semaphore::new(
            (config.memory_budget_bytes >> 10).min(Semaphore::MAX_PERMITS as u64) as usize,
        ));
        Self {
            intake,
            config,
            admission,
            memory,
        }
    }

    /// The intake.
    pub fn intake(&self) -> &Arc<I> {
        &self.intake
    }

    /// Takes an admission permit, or refuses with [`Refusal::Overloaded`].
    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
        self.admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Overloaded {
                message: format!(
                    "more than {} OTLP requests in flight; retry in {} s",
                    self.config.max_in_flight,
                    self.config.busy_retry_after.as_secs().max(1)
                ),
                retry_after: self.config.busy_retry_after,
            })
    }

    /// Checks a measured request against the decode limits and charges its estimated memory to the budget; the
    /// permit is held until the request is answered.
    fn charge(
        &self,
        signal: Signal,
        shape: &limits::Shape,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
        if let Err(over) = self.config.decode.check(signal, shape) {
            return Err(
                if shape.max_item_attributes > self.config.decode.max_item_attributes
                    && shape.items <= self.config.decode.max_items
                {
                    Refusal::Invalid(over.0)
                } else {
                    Refusal::TooLarge(over.0)
                },
            );
        }
        let kib = u32::try_from((shape.decoded_bytes >> 10).max(1)).unwrap_or(u32::MAX);
        self.memory
            .clone()
            .try_acquire_many_owned(kib)
            .map_err(|_| Refusal::Overloaded {
                message: format!(
                    "the requests in flight already take the receiver's memory budget ({} MiB); retry in {} s",
                    self.config.memory_budget_bytes >> 20,
                    self.config.busy_retry_after.as_secs().max(1)
                ),
                retry_after: self.config.busy_retry_after,
            })
    }

    /// The refusal of a request, counted.
    fn refuse(&self, signal: Signal, protocol: Protocol, refusal: Refusal) -> Refusal {
        self.intake.refused(signal, protocol, &refusal);
        refusal
    }
}

/// Requests a test (or a dashboard) may see in flight: the permits taken.
impl<I: Intake> Receiver<I> {
    /// Requests being read, decoded or handed over right now.
    pub fn in_flight(&self) -> usize {
        self.config.max_in_flight - self.admission.available_permits()
    }
}

//! The plane's OTLP intake: what the shared receiver (`gantry_otlp`) hands over is checked against the token table,
//! written to the telemetry store (which answers once the batch is fsynced), and counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gantry_otlp::{Accepted, Intake, Protocol, Received, Refusal};
use gantry_proto::{Access, ExportRequest, Signal};
use gantry_store::{Batch, Store, StoreError, WriteOutcome};

use crate::auth::{AuthError, authorize};
use crate::state::tokens::TokenStore;
use crate::telemetry::SelfMetrics;

/// Requests received, decoded or written at once, over both transports; beyond it ingest answers 429 (HTTP, before
/// reading the body) or UNAVAILABLE with a `RetryInfo` (gRPC), which bounds the memory bodies and decoded batches
/// take under overload.
pub const MAX_IN_FLIGHT: usize = 32;

/// The plane's [`Intake`].
pub struct PlaneIntake {
    /// Where batches go.
    pub store: Arc<dyn Store>,
    /// Who may send.
    pub tokens: TokenStore,
    /// Counters for `/metrics`.
    pub metrics: Arc<SelfMetrics>,
    /// The canary judge's feed: router spans of services under a canary, once durable.
    pub feed: Arc<crate::rollout::feed::Feed>,
}

impl From<AuthError> for Refusal {
    fn from(error: AuthError) -> Self {
        let message = error.to_string();
        match error {
            AuthError::Unauthorized => Refusal::Unauthenticated(message),
            AuthError::Forbidden { .. } => Refusal::Forbidden(message),
            AuthError::Unavailable(_) => Refusal::Unavailable {
                message,
                retry_after: Duration::from_secs(1),
            },
        }
    }
}

/// A store error as a refusal: overload is 429, a caller's mistake 400, anything else passing (503): never a 500
/// for what a retry can fix.
fn refusal(error: StoreError) -> Refusal {
    let message = error.to_string();
    match error {
        StoreError::Overloaded { retry_after } => Refusal::Overloaded {
            message,
            retry_after,
        },
        StoreError::Invalid(message) | StoreError::Query { message, .. } => {
            Refusal::Invalid(message)
        }
        // A full disk lasts longer than a busy queue: ask for a longer wait.
        StoreError::Unwritable(_) => Refusal::Unavailable {
            message,
            retry_after: Duration::from_secs(5),
        },
        // Query errors: a write never gets them.
        StoreError::NotReady
        | StoreError::ShuttingDown
        | StoreError::Internal(_)
        | StoreError::TooExpensive { .. }
        | StoreError::QueriesBusy { .. }
        | StoreError::Cancelled => Refusal::Unavailable {
            message,
            retry_after: Duration::from_secs(1),
        },
    }
}

/// Items per `service.name` in a request.
fn items_by_service(request: &ExportRequest) -> Vec<(String, u64)> {
    use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    let service = |resource: Option<&Resource>| {
        resource
            .and_then(|r| {
                r.attributes
                    .iter()
                    .find(|a: &&KeyValue| a.key == "service.name")
            })
            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                Value::StringValue(name) => Some(name.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "unknown_service".to_owned())
    };
    match request {
        ExportRequest::Logs(r) => r
            .resource_logs
            .iter()
            .map(|rl| {
                let items = rl.scope_logs.iter().map(|s| s.log_records.len() as u64);
                (service(rl.resource.as_ref()), items.sum())
            })
            .collect(),
        ExportRequest::Traces(r) => r
            .resource_spans
            .iter()
            .map(|rs| {
                let items = rs.scope_spans.iter().map(|s| s.spans.len() as u64);
                (service(rs.resource.as_ref()), items.sum())
            })
            .collect(),
        ExportRequest::Metrics(r) => r
            .resource_metrics
            .iter()
            .map(|rm| {
                let items = rm
                    .scope_metrics
                    .iter()
                    .flat_map(|s| &s.metrics)
                    .map(|m| gantry_proto::signal::data_points(m.data.as_ref()));
                (service(rm.resource.as_ref()), items.sum())
            })
            .collect(),
    }
}

#[async_trait]
impl Intake for PlaneIntake {
    fn authorize(&self, authorization: Option<&str>) -> Result<(), Refusal> {
        authorize(&self.tokens, authorization, Access::Ingest)?;
        Ok(())
    }

    async fn accept(&self, received: Received) -> Result<Accepted, Refusal> {
        let signal = received.request.signal();
        let services = items_by_service(&received.request);
        let observations = self.feed.extract(&received.request);
        let bytes = match &received.encoded {
            Some(encoded) => encoded.len() as u64,
            None => received.request.encoded_len() as u64,
        };
        let started = Instant::now();
        let written = self
            .store
            .write(Batch {
                id: received.batch_id,
                request: received.request,
                encoded: received.encoded,
            })
            .await
            .map_err(refusal)?;
        let protocol = received.protocol.as_str();
        match written.outcome {
            WriteOutcome::Stored => {
                self.feed.push(observations);
                self.metrics.batch(signal, protocol, "stored");
                self.metrics
                    .stored(signal, bytes, started.elapsed().as_secs_f64());
                for (service, items) in services {
                    self.metrics.records(signal, &service, items);
                }
            }
            WriteOutcome::Duplicate => self.metrics.batch(signal, protocol, "duplicate"),
        }
        for (reason, items) in written.rejected.by_reason() {
            self.metrics.rejected(signal, reason, items);
        }
        let rejected = written.rejected.total();
        Ok(Accepted {
            rejected,
            message: if rejected > 0 {
                written.rejected.message(signal.items())
            } else {
                String::new()
            },
        })
    }

    fn refused(&self, signal: Signal, protocol: Protocol, refusal: &Refusal) {
        self.metrics
            .batch(signal, protocol.as_str(), refusal.reason());
    }
}

//! The local OTLP receiver: apps on the node send OTLP/gRPC or OTLP/HTTP to the agent, which adds the host's
//! attributes, makes the batch durable in the disk buffer, and only then answers. The transport (admission, size
//! caps, status codes) is the shared `gantry_otlp` receiver; this module is the agent's [`Intake`].
//!
//! Acknowledged means durable here too: a 200 (or gRPC OK) is sent after the buffer's fsync, and the shipper
//! delivers at least once from there. When the buffer is full the receiver cannot wait (the app holds the data),
//! so it answers 503 with `Retry-After` (gRPC: UNAVAILABLE with a `RetryInfo`), which OTLP exporters retry.
//!
//! Memory stays bounded: at most [`MAX_IN_FLIGHT`] requests are read and decoded at once (beyond it: 429 before the
//! body is read), each at most [`MAX_BODY_BYTES`] once decompressed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use gantry_otlp::{Accepted, Intake, Protocol, Received, Receiver, ReceiverConfig, Refusal};
use gantry_proto::{ExportRequest, Signal};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::net::TcpListener;

use crate::buffer::AppendOutcome;
use crate::sources::Sink;
use crate::telemetry::Telemetry;

/// Requests read, decoded and appended at once; beyond it the receiver answers 429 before reading the body.
pub const MAX_IN_FLIGHT: usize = 8;
/// Largest request body once decompressed: well below the plane's `max_body_bytes` (20 MiB by default), so that a
/// relayed request, with the host attributes added, is never refused by the plane as too large.
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// Estimated memory of the decoded requests in flight together (and of one request), bytes.
pub const MEMORY_BUDGET_BYTES: u64 = 64 << 20;
/// What a refused client is told to wait when the buffer is full.
const FULL_RETRY_AFTER: Duration = Duration::from_secs(5);
/// What a refused client is told to wait when too many requests are in flight or the buffer failed.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The agent's [`Intake`]: host attributes added, then the disk buffer.
pub struct AgentIntake {
    sink: Sink,
    telemetry: Arc<Telemetry>,
    host_resource: Arc<Vec<KeyValue>>,
}

/// The receiver over the agent's intake, with the agent's limits.
pub fn receiver(
    sink: Sink,
    telemetry: Arc<Telemetry>,
    host_resource: Vec<KeyValue>,
) -> Receiver<AgentIntake> {
    Receiver::new(
        Arc::new(AgentIntake {
            sink,
            telemetry,
            host_resource: Arc::new(host_resource),
        }),
        ReceiverConfig {
            busy_retry_after: BUSY_RETRY_AFTER,
            decode: gantry_otlp::limits::DecodeLimits {
                max_decoded_bytes: MEMORY_BUDGET_BYTES,
                ..gantry_otlp::limits::DecodeLimits::default()
            },
            memory_budget_bytes: MEMORY_BUDGET_BYTES,
            ..ReceiverConfig::new(MAX_IN_FLIGHT, MAX_BODY_BYTES)
        },
    )
}

/// Binds a receiver listener; a clash is an error that names the address and the flag.
pub async fn bind(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "the local OTLP receiver listens beyond this machine: it takes data without a token and ships it \
             with the agent's; keep it on loopback or behind a firewall"
        );
    }
    TcpListener::bind(addr).await.with_context(|| {
        format!("binding the {what} receiver to {addr} (change {flag} or set it to off)")
    })
}

/// Adds the host's attributes to every resource that does not set them itself.
fn add_host(request: &mut ExportRequest, host: &[KeyValue]) {
    let enrich = |resource: &mut Option<Resource>| {
        let resource = resource.get_or_insert_with(Resource::default);
        for attribute in host {
            if !resource.attributes.iter().any(|a| a.key == attribute.key) {
                resource.attributes.push(attribute.clone());
            }
        }
    };
    match request {
        ExportRequest::Logs(r) => r
            .resource_logs
            .iter_mut()
            .for_each(|r| enrich(&mut r.resource)),
        ExportRequest::Metrics(r) => r
            .resource_metrics
            .iter_mut()
            .for_each(|r| enrich(&mut r.resource)),
        ExportRequest::Traces(r) => r
            .resource_spans
            .iter_mut()
            .for_each(|r| enrich(&mut r.resource)),
    }
}

#[async_trait]
impl Intake for AgentIntake {
    /// The receiver takes no token: it listens on loopback by default (see [`bind`]).
    fn authorize(&self, _authorization: Option<&str>) -> Result<(), Refusal> {
        Ok(())
    }

    async fn accept(&self, received: Received) -> Result<Accepted, Refusal> {
        let mut request = received.request;
        let signal = request.signal();
        let records = request.items();
        if records == 0 {
            return Ok(Accepted::default());
        }
        let host = self.host_resource.clone();
        let unavailable = |message: String| Refusal::Unavailable {
            message,
            retry_after: BUSY_RETRY_AFTER,
        };
        // Walking and encoding a large request takes milliseconds: not on an async worker.
        let payload = tokio::task::spawn_blocking(move || {
            add_host(&mut request, &host);
            request.encode_to_vec()
        })
        .await
        .map_err(|error| unavailable(format!("encoding failed: {error}")))?;
        let outcome = self
            .sink
            .append(signal, payload, records.min(u32::MAX as u64) as u32)
            .await
            .map_err(|_| unavailable("the agent is shutting down".to_owned()))?;
        match outcome {
            AppendOutcome::Appended(_) => {
                self.telemetry
                    .produced
                    .add(&format!("otlp_{}", signal.as_str()), records);
                Ok(Accepted::default())
            }
            AppendOutcome::Full => Err(Refusal::BufferFull {
                message: format!(
                    "the agent's disk buffer is full (the plane is unreachable or slow); retry in {} s",
                    FULL_RETRY_AFTER.as_secs()
                ),
                retry_after: FULL_RETRY_AFTER,
            }),
            AppendOutcome::Failed(message) => Err(unavailable(format!(
                "the agent's disk buffer failed: {message}"
            ))),
        }
    }

    fn refused(&self, _signal: Signal, _protocol: Protocol, refusal: &Refusal) {
        self.telemetry.receiver_refused.add(refusal.reason(), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::kv;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

    fn logs(resource: Option<Resource>, n: usize) -> ExportRequest {
        ExportRequest::Logs(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource,
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord::default(); n],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
    }

    fn resource_keys(request: &ExportRequest) -> Vec<(String, String)> {
        let ExportRequest::Logs(request) = request else {
            unreachable!()
        };
        request.resource_logs[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|a| (a.key.clone(), format!("{:?}", a.value)))
            .collect()
    }

    #[test]
    fn host_attributes_fill_gaps_but_never_override() {
        let host = vec![kv("host.name", "node-1"), kv("os.type", "linux")];
        let mut request = logs(
            Some(Resource {
                attributes: vec![kv("host.name", "from-app"), kv("service.name", "api")],
                ..Default::default()
            }),
            3,
        );
        add_host(&mut request, &host);
        let keys = resource_keys(&request);
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(keys[0].1.contains("from-app"));
        assert_eq!(keys[2].0, "os.type");
        assert_eq!(request.items(), 3);

        let mut bare = logs(None, 1);
        add_host(&mut bare, &host);
        assert_eq!(resource_keys(&bare).len(), 2);
    }
}

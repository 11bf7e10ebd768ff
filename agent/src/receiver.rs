//! The local OTLP receiver: apps on the node send OTLP/gRPC or OTLP/HTTP to the agent, which adds the host's
//! attributes, makes the batch durable in the disk buffer, and only then answers.
//!
//! Acknowledged means durable here too: a 200 (or gRPC OK) is sent after the buffer's fsync, and the shipper
//! delivers at least once from there. When the buffer is full the receiver cannot wait (the app holds the data),
//! so it answers 503 with `Retry-After` (gRPC: UNAVAILABLE with a `RetryInfo`), which OTLP exporters retry.
//!
//! Memory stays bounded: at most [`MAX_IN_FLIGHT`] requests are read and decoded at once (beyond it: 503), each
//! at most `max_body_bytes` once decompressed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use gantry_proto::otlp::{DecodeError, Encoding, RpcStatus, decode_message, gunzip, retry_info};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Status};

use crate::buffer::{AppendOutcome, Signal};
use crate::sources::Sink;
use crate::telemetry::Telemetry;

/// Requests read, decoded and appended at once; beyond it the receiver answers 503.
pub const MAX_IN_FLIGHT: usize = 8;
/// Largest request body once decompressed: well below the plane's `max_body_bytes` (20 MiB by default), so that a
/// relayed request, with the host attributes added, is never refused by the plane as too large.
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// What a refused client is told to wait when the buffer is full.
const FULL_RETRY_AFTER: Duration = Duration::from_secs(5);
/// What a refused client is told to wait when too many requests are in flight or the buffer failed.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Where the receiver listens; `None` turns a protocol off.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// OTLP/gRPC address.
    pub grpc: Option<SocketAddr>,
    /// OTLP/HTTP address.
    pub http: Option<SocketAddr>,
    /// Added to every resource that lacks them (`host.name`, ...).
    pub host_resource: Vec<KeyValue>,
}

/// The running receiver.
pub struct Receiver {
    /// Bound OTLP/gRPC address.
    pub grpc_addr: Option<SocketAddr>,
    /// Bound OTLP/HTTP address.
    pub http_addr: Option<SocketAddr>,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Receiver {
    /// Binds both listeners (a clash is an error that names the address) and starts serving.
    pub async fn start(
        config: ReceiverConfig,
        sink: Sink,
        telemetry: Arc<Telemetry>,
    ) -> anyhow::Result<Receiver> {
        let core = Core {
            sink,
            telemetry,
            host_resource: Arc::new(config.host_resource),
            admission: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        };
        for addr in [config.grpc, config.http].into_iter().flatten() {
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    %addr,
                    "the local OTLP receiver listens beyond this machine: it takes data without a token and ships it \
                     with the agent's; keep it on loopback or behind a firewall"
                );
            }
        }
        let mut receiver = Receiver {
            grpc_addr: None,
            http_addr: None,
            stops: Vec::new(),
            tasks: Vec::new(),
        };
        if let Some(addr) = config.http {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("binding the OTLP/HTTP receiver to {addr} (change --otlp-http-addr or set it to off)")
            })?;
            receiver.http_addr = Some(listener.local_addr()?);
            let (stop, stopped) = oneshot::channel::<()>();
            let app = http_app(core.clone());
            receiver.stops.push(stop);
            receiver.tasks.push(tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .context("the OTLP/HTTP receiver failed")
            }));
        }
        if let Some(addr) = config.grpc {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("binding the OTLP/gRPC receiver to {addr} (change --otlp-grpc-addr or set it to off)")
            })?;
            receiver.grpc_addr = Some(listener.local_addr()?);
            let (stop, stopped) = oneshot::channel::<()>();
            let grpc = Grpc(core);
            let routes = tonic::service::Routes::new(
                LogsServiceServer::new(grpc.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(MAX_BODY_BYTES),
            )
            .add_service(
                TraceServiceServer::new(grpc.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(MAX_BODY_BYTES),
            )
            .add_service(
                MetricsServiceServer::new(grpc)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(MAX_BODY_BYTES),
            );
            receiver.stops.push(stop);
            receiver.tasks.push(tokio::spawn(async move {
                // Tonic reads and decodes a message before the handler's admission check. A global limit in
                // front of it makes further requests wait (their bodies held back by HTTP/2 flow control) rather
                // than be decoded, so memory stays bounded however many connections there are.
                tonic::transport::Server::builder()
                    .concurrency_limit_per_connection(MAX_IN_FLIGHT)
                    .max_concurrent_streams(MAX_IN_FLIGHT as u32)
                    .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                        MAX_IN_FLIGHT,
                    ))
                    .layer(tower::util::MapResponseLayer::new(
                        gantry_proto::otlp::standard_codes,
                    ))
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        async {
                            let _ = stopped.await;
                        },
                    )
                    .await
                    .context("the OTLP/gRPC receiver failed")
            }));
        }
        Ok(receiver)
    }

    /// Stops accepting, lets requests in flight finish, and returns once both servers are down.
    pub async fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for task in self.tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(error = %error, "OTLP receiver"),
                Err(error) => tracing::error!(error = %error, "OTLP receiver task"),
            }
        }
    }
}

/// One decoded export request.
enum Export {
    Logs(ExportLogsServiceRequest),
    Metrics(ExportMetricsServiceRequest),
    Traces(ExportTraceServiceRequest),
}

impl Export {
    fn signal(&self) -> Signal {
        match self {
            Export::Logs(_) => Signal::Logs,
            Export::Metrics(_) => Signal::Metrics,
            Export::Traces(_) => Signal::Traces,
        }
    }

    /// Log records, data points or spans.
    fn records(&self) -> u64 {
        match self {
            Export::Logs(r) => r
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .map(|s| s.log_records.len() as u64)
                .sum(),
            Export::Traces(r) => r
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len() as u64)
                .sum(),
            Export::Metrics(r) => r
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
                .map(|m| match &m.data {
                    Some(Data::Gauge(g)) => g.data_points.len() as u64,
                    Some(Data::Sum(s)) => s.data_points.len() as u64,
                    Some(Data::Histogram(h)) => h.data_points.len() as u64,
                    Some(Data::ExponentialHistogram(h)) => h.data_points.len() as u64,
                    Some(Data::Summary(s)) => s.data_points.len() as u64,
                    None => 0,
                })
                .sum(),
        }
    }

    /// Adds the host's attributes to every resource that does not set them itself.
    fn add_host(&mut self, host: &[KeyValue]) {
        let enrich = |resource: &mut Option<Resource>| {
            let resource = resource.get_or_insert_with(Resource::default);
            for attribute in host {
                if !resource.attributes.iter().any(|a| a.key == attribute.key) {
                    resource.attributes.push(attribute.clone());
                }
            }
        };
        match self {
            Export::Logs(r) => r
                .resource_logs
                .iter_mut()
                .for_each(|r| enrich(&mut r.resource)),
            Export::Metrics(r) => r
                .resource_metrics
                .iter_mut()
                .for_each(|r| enrich(&mut r.resource)),
            Export::Traces(r) => r
                .resource_spans
                .iter_mut()
                .for_each(|r| enrich(&mut r.resource)),
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Export::Logs(r) => r.encode_to_vec(),
            Export::Metrics(r) => r.encode_to_vec(),
            Export::Traces(r) => r.encode_to_vec(),
        }
    }
}

/// Why a request was not accepted, in terms both protocols map.
#[derive(Debug)]
enum Refusal {
    /// The disk buffer is at its limit.
    Full,
    /// Too many requests at once.
    Busy,
    /// The buffer failed or the agent is stopping.
    Unavailable(String),
    /// The caller's request is bad.
    Invalid(String),
    /// Over the size cap.
    TooLarge(String),
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Full => "buffer_full",
            Refusal::Busy => "busy",
            Refusal::Unavailable(_) => "unavailable",
            Refusal::Invalid(_) => "invalid",
            Refusal::TooLarge(_) => "too_large",
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::Full => format!(
                "the agent's disk buffer is full (the plane is unreachable or slow); retry in {} s",
                FULL_RETRY_AFTER.as_secs()
            ),
            Refusal::Busy => "too many requests in flight; retry shortly".to_owned(),
            Refusal::Unavailable(m) | Refusal::Invalid(m) | Refusal::TooLarge(m) => m.clone(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::Full => Some(FULL_RETRY_AFTER),
            Refusal::Busy | Refusal::Unavailable(_) => Some(BUSY_RETRY_AFTER),
            Refusal::Invalid(_) | Refusal::TooLarge(_) => None,
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

/// What both protocols share: enrichment, the buffer, the counters, admission.
#[derive(Clone)]
struct Core {
    sink: Sink,
    telemetry: Arc<Telemetry>,
    host_resource: Arc<Vec<KeyValue>>,
    admission: Arc<Semaphore>,
}

impl Core {
    /// Makes `export` durable in the buffer.
    async fn accept(&self, mut export: Export) -> Result<(), Refusal> {
        let signal = export.signal();
        let records = export.records();
        if records == 0 {
            return Ok(());
        }
        let host = self.host_resource.clone();
        // Walking and encoding a large request takes milliseconds: not on an async worker.
        let payload = tokio::task::spawn_blocking(move || {
            export.add_host(&host);
            export.encode()
        })
        .await
        .map_err(|error| Refusal::Unavailable(format!("encoding failed: {error}")))?;
        let outcome = self
            .sink
            .append(signal, payload, records.min(u32::MAX as u64) as u32)
            .await
            .map_err(|_| Refusal::Unavailable("the agent is shutting down".to_owned()))?;
        match outcome {
            AppendOutcome::Appended(_) => {
                self.telemetry
                    .produced
                    .add(&format!("otlp_{}", signal.as_str()), records);
                Ok(())
            }
            AppendOutcome::Full => Err(Refusal::Full),
            AppendOutcome::Failed(message) => Err(Refusal::Unavailable(format!(
                "the agent's disk buffer failed: {message}"
            ))),
        }
    }

    fn refused(&self, refusal: Refusal) -> Refusal {
        self.telemetry.receiver_refused.add(refusal.reason(), 1);
        refusal
    }
}

fn http_app(core: Core) -> Router {
    Router::new()
        .route("/v1/logs", post(http_logs))
        .route("/v1/metrics", post(http_metrics))
        .route("/v1/traces", post(http_traces))
        .with_state(core)
}

async fn http_logs(State(core): State<Core>, headers: HeaderMap, body: Body) -> Response {
    http_receive(core, headers, body, Signal::Logs).await
}

async fn http_metrics(State(core): State<Core>, headers: HeaderMap, body: Body) -> Response {
    http_receive(core, headers, body, Signal::Metrics).await
}

async fn http_traces(State(core): State<Core>, headers: HeaderMap, body: Body) -> Response {
    http_receive(core, headers, body, Signal::Traces).await
}

async fn http_receive(core: Core, headers: HeaderMap, body: Body, signal: Signal) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(encoding) = Encoding::from_content_type(content_type) else {
        core.telemetry
            .receiver_refused
            .add("unsupported_media_type", 1);
        return http_error(
            Encoding::Json,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!(
                "unsupported content type `{content_type}`: send application/x-protobuf or application/json"
            ),
            None,
        );
    };
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None | Some("" | "identity") => false,
        Some("gzip") => true,
        Some(other) => {
            core.telemetry
                .receiver_refused
                .add("unsupported_encoding", 1);
            return http_error(
                encoding,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("unsupported content encoding `{other}`: send gzip or no encoding"),
                None,
            );
        }
    };
    let result = async {
        let _permit = core
            .admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy)?;
        let raw: Bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|_| {
                Refusal::TooLarge(format!(
                    "the request body is larger than {MAX_BODY_BYTES} bytes: send smaller batches"
                ))
            })?;
        let export = tokio::task::spawn_blocking(move || -> Result<Export, Refusal> {
            let plain = if gzip {
                gunzip(&raw, MAX_BODY_BYTES)?
            } else {
                raw.to_vec()
            };
            Ok(match signal {
                Signal::Logs => Export::Logs(decode_message(encoding, &plain)?),
                Signal::Metrics => Export::Metrics(decode_message(encoding, &plain)?),
                Signal::Traces => Export::Traces(decode_message(encoding, &plain)?),
            })
        })
        .await
        .map_err(|error| Refusal::Unavailable(format!("decoding failed: {error}")))??;
        core.accept(export).await
    }
    .await;
    match result {
        Ok(()) => {
            let body = match (encoding, signal) {
                (Encoding::Json, _) => b"{}".to_vec(),
                (Encoding::Protobuf, Signal::Logs) => {
                    ExportLogsServiceResponse::default().encode_to_vec()
                }
                (Encoding::Protobuf, Signal::Metrics) => {
                    ExportMetricsServiceResponse::default().encode_to_vec()
                }
                (Encoding::Protobuf, Signal::Traces) => {
                    ExportTraceServiceResponse::default().encode_to_vec()
                }
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, encoding.content_type())],
                body,
            )
                .into_response()
        }
        Err(refusal) => {
            let refusal = core.refused(refusal);
            let status = match refusal {
                Refusal::Full | Refusal::Busy | Refusal::Unavailable(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
                Refusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            };
            http_error(encoding, status, &refusal.message(), refusal.retry_after())
        }
    }
}

fn http_error(
    encoding: Encoding,
    status: StatusCode,
    message: &str,
    retry_after: Option<Duration>,
) -> Response {
    let body = gantry_proto::otlp::error_body(encoding, status.as_u16(), message);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response();
    if let Some(delay) = retry_after {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(delay.as_secs().max(1)),
        );
    }
    response
}

#[derive(Clone)]
struct Grpc(Core);

impl Grpc {
    async fn receive(&self, export: Export) -> Result<(), Status> {
        let core = &self.0;
        let result = match core.admission.clone().try_acquire_owned() {
            Ok(_permit) => core.accept(export).await,
            Err(_) => Err(Refusal::Busy),
        };
        result.map_err(|refusal| {
            let refusal = core.refused(refusal);
            let message = refusal.message();
            match refusal.retry_after() {
                Some(delay) => {
                    let details = RpcStatus {
                        code: Code::Unavailable as i32,
                        message: message.clone(),
                        details: vec![retry_info(delay)],
                    };
                    Status::with_details(Code::Unavailable, message, details.encode_to_vec().into())
                }
                None => match refusal {
                    Refusal::TooLarge(_) => Status::resource_exhausted(message),
                    _ => Status::invalid_argument(message),
                },
            }
        })
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, Status> {
        self.receive(Export::Logs(request.into_inner())).await?;
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, Status> {
        self.receive(Export::Metrics(request.into_inner())).await?;
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
        self.receive(Export::Traces(request.into_inner())).await?;
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::kv;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

    fn logs(resource: Option<Resource>, n: usize) -> Export {
        Export::Logs(ExportLogsServiceRequest {
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

    #[test]
    fn host_attributes_fill_gaps_but_never_override() {
        let host = vec![kv("host.name", "node-1"), kv("os.type", "linux")];
        let mut export = logs(
            Some(Resource {
                attributes: vec![kv("host.name", "from-app"), kv("service.name", "api")],
                ..Default::default()
            }),
            3,
        );
        export.add_host(&host);
        let Export::Logs(request) = &export else {
            unreachable!()
        };
        let keys: Vec<(String, String)> = request.resource_logs[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|a| (a.key.clone(), format!("{:?}", a.value)))
            .collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(keys[0].1.contains("from-app"));
        assert_eq!(keys[2].0, "os.type");
        assert_eq!(export.records(), 3);

        let mut bare = logs(None, 1);
        bare.add_host(&host);
        let Export::Logs(request) = &bare else {
            unreachable!()
        };
        assert_eq!(
            request.resource_logs[0]
                .resource
                .as_ref()
                .unwrap()
                .attributes
                .len(),
            2
        );
    }
}

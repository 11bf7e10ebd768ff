//! OTLP/gRPC: the three collector services (`LogsService`, `TraceService`, `MetricsService`), gzip accepted, with
//! the same admission, durability and refusals as OTLP/HTTP mapped to gRPC codes.

use anyhow::Context;
use gantry_proto::{BATCH_ID_HEADER, ExportRequest};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{Accepted, Intake, Protocol, Received, Receiver, Refusal};

/// The gRPC side of a [`Receiver`].
struct Grpc<I: Intake>(Receiver<I>);

impl<I: Intake> Clone for Grpc<I> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<I: Intake> Receiver<I> {
    /// The three OTLP services as tonic routes (gzip accepted and sent, messages capped at `max_body_bytes`).
    pub fn grpc_routes(&self) -> tonic::service::Routes {
        let limit = self.config.max_body_bytes;
        let grpc = Grpc(self.clone());
        tonic::service::Routes::new(
            LogsServiceServer::new(grpc.clone())
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit),
        )
        .add_service(
            TraceServiceServer::new(grpc.clone())
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit),
        )
        .add_service(
            MetricsServiceServer::new(grpc)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit),
        )
    }

    /// Serves OTLP/gRPC on `listener` until `shutdown` is cancelled, then lets requests in flight finish, with the
    /// process's connection limits (`gantry_net`).
    ///
    /// Tonic reads and decodes a message before a service sees it, so the admission check alone would come too late
    /// for memory: a global concurrency limit of `max_in_flight` in front of the services makes further requests
    /// wait, their bodies held back by HTTP/2 flow control, however many connections there are.
    ///
    /// # Errors
    /// The server failed (the listener broke).
    pub async fn serve_grpc(
        &self,
        listener: TcpListener,
        limits: gantry_net::Limits,
        shutdown: gantry_support::CancellationToken,
    ) -> anyhow::Result<()> {
        let router = self
            .grpc_routes()
            .into_axum_router()
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                measure_before_decoding::<I>,
            ))
            .layer(tower::util::MapResponseLayer::new(standard_codes))
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                self.config.max_in_flight,
            ));
        gantry_net::serve(listener, router, limits, shutdown, "OTLP/gRPC")
            .await
            .context("the OTLP/gRPC server failed")
    }
}

/// The signal of an OTLP gRPC method path, `None` for any other path.
fn signal_of(path: &str) -> Option<gantry_proto::Signal> {
    use gantry_proto::Signal;
    let service = path.trim_start_matches('/').split('/').next()?;
    match service {
        "opentelemetry.proto.collector.logs.v1.LogsService" => Some(Signal::Logs),
        "opentelemetry.proto.collector.trace.v1.TraceService" => Some(Signal::Traces),
        "opentelemetry.proto.collector.metrics.v1.MetricsService" => Some(Signal::Metrics),
        _ => None,
    }
}

/// Measures an OTLP gRPC request before tonic decodes it (a few KiB of protobuf can decode into gigabytes): the
/// message (uncompressed when sent gzip) is walked without decoding, checked against the decode limits and charged
/// to the memory budget, whose permit is held until the call is answered. A request past a limit gets its gRPC
/// status here, and tonic never decodes it.
async fn measure_before_decoding<I: Intake>(
    axum::extract::State(receiver): axum::extract::State<Receiver<I>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let Some(signal) = signal_of(request.uri().path()) else {
        return next.run(request).await;
    };
    let gzip = request
        .headers()
        .get("grpc-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let limit = receiver.config.max_body_bytes;
    let (parts, body) = request.into_parts();
    let refuse = |refusal: Refusal| -> axum::response::Response {
        status_of(receiver.refuse(signal, Protocol::Grpc, refusal)).into_http::<axum::body::Body>()
    };
    // A message, its 5-byte frame prefix, and room for trailing frames of a misbehaving client.
    let bytes = match axum::body::to_bytes(body, limit.saturating_add(64)).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return refuse(Refusal::TooLarge(format!(
                "the request is larger than {limit} bytes: send smaller batches"
            )));
        }
    };
    let framed = bytes.clone();
    let measured = tokio::task::spawn_blocking(move || -> Result<crate::limits::Shape, Refusal> {
        let mut shape = crate::limits::Shape::default();
        let mut rest = &framed[..];
        while rest.len() >= 5 {
            let compressed = rest[0] == 1;
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let Some(message) = rest.get(5..5 + len) else {
                break;
            };
            let plain;
            let message = if compressed && gzip {
                plain = crate::encoding::gunzip(message, limit)?;
                &plain[..]
            } else {
                message
            };
            let one = crate::limits::measure_protobuf(signal, message)?;
            shape.items += one.items;
            shape.max_item_attributes = shape.max_item_attributes.max(one.max_item_attributes);
            shape.decoded_bytes += one.decoded_bytes;
            rest = &rest[5 + len..];
        }
        Ok(shape)
    })
    .await;
    let shape = match measured {
        Ok(Ok(shape)) => shape,
        // Not measurable: tonic's own decoding answers (INVALID_ARGUMENT and the like).
        Ok(Err(Refusal::Invalid(_))) => {
            return next
                .run(axum::extract::Request::from_parts(
                    parts,
                    axum::body::Body::from(bytes),
                ))
                .await;
        }
        Ok(Err(refusal)) => return refuse(refusal),
        Err(error) => {
            return refuse(Refusal::Unavailable {
                message: format!("measuring the request failed: {error}"),
                retry_after: std::time::Duration::from_secs(1),
            });
        }
    };
    let _memory = match receiver.charge(signal, &shape) {
        Ok(permit) => permit,
        Err(refusal) => return refuse(refusal),
    };
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

impl<I: Intake> Grpc<I> {
    async fn receive<T>(
        &self,
        request: Request<T>,
        wrap: fn(T) -> ExportRequest,
    ) -> Result<Accepted, Status> {
        let receiver = &self.0;
        let text = |key: &str| {
            request
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let authorization = text("authorization");
        let batch_id = text(BATCH_ID_HEADER).filter(|id| !id.trim().is_empty());
        let export = wrap(request.into_inner());
        let signal = export.signal();
        let result = async {
            receiver.intake.authorize(authorization.as_deref())?;
            let _permit = receiver.admit()?;
            receiver
                .intake
                .accept(Received {
                    request: export,
                    encoded: None,
                    batch_id,
                    protocol: Protocol::Grpc,
                })
                .await
        }
        .await;
        result.map_err(|refusal| status_of(receiver.refuse(signal, Protocol::Grpc, refusal)))
    }
}

/// A refusal as a gRPC status: overload and passing trouble are UNAVAILABLE with a `RetryInfo` (OTLP/gRPC
/// "Failures": retryable codes; the delay is the server's throttling hint).
pub(crate) fn status_of(refusal: Refusal) -> Status {
    let message = refusal.to_string();
    match refusal {
        Refusal::Unauthenticated(_) => Status::unauthenticated(message),
        Refusal::Forbidden(_) => Status::permission_denied(message),
        Refusal::UnsupportedContentType(_)
        | Refusal::UnsupportedContentEncoding(_)
        | Refusal::Invalid(_) => Status::invalid_argument(message),
        Refusal::TooLarge(_) => Status::resource_exhausted(message),
        Refusal::Overloaded { retry_after, .. }
        | Refusal::BufferFull { retry_after, .. }
        | Refusal::Unavailable { retry_after, .. } => Status::with_error_details(
            Code::Unavailable,
            message,
            ErrorDetails::with_retry_info(Some(retry_after)),
        ),
    }
}

/// Rewrites the codes tonic gives to a caller's mistakes into the ones the OTLP specification asks for: an
/// undecodable message is INVALID_ARGUMENT (tonic: INTERNAL), an oversized one RESOURCE_EXHAUSTED (tonic:
/// OUT_OF_RANGE). Used as a layer around the gRPC server.
pub fn standard_codes<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32);
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .replace("%20", " ");
    let replacement = match code {
        Some(Code::Internal) if message.starts_with("failed to decode Protobuf message") => {
            Code::InvalidArgument
        }
        Some(Code::OutOfRange) if message.contains("message length too large") => {
            Code::ResourceExhausted
        }
        _ => return response,
    };
    headers.insert("grpc-status", http::HeaderValue::from(replacement as i32));
    response
}

#[tonic::async_trait]
impl<I: Intake> LogsService for Grpc<I> {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let accepted = self.receive(request, ExportRequest::Logs).await?;
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: (accepted.rejected > 0).then_some(ExportLogsPartialSuccess {
                rejected_log_records: accepted.rejected as i64,
                error_message: accepted.message,
            }),
        }))
    }
}

#[tonic::async_trait]
impl<I: Intake> TraceService for Grpc<I> {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let accepted = self.receive(request, ExportRequest::Traces).await?;
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: (accepted.rejected > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: accepted.rejected as i64,
                error_message: accepted.message,
            }),
        }))
    }
}

#[tonic::async_trait]
impl<I: Intake> MetricsService for Grpc<I> {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let accepted = self.receive(request, ExportRequest::Metrics).await?;
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: (accepted.rejected > 0).then_some(ExportMetricsPartialSuccess {
                rejected_data_points: accepted.rejected as i64,
                error_message: accepted.message,
            }),
        }))
    }
}

//! The OTLP/gRPC receiver: the three collector services, gzip accepted, with the same durability and errors as
//! OTLP/HTTP mapped to gRPC codes.

use std::sync::Arc;

use gantry_proto::Access;
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
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Response, Status};

use super::{Accepted, Ingest, RpcStatus, retry_info};
use crate::api::{ApiError, authorize};
use crate::auth::TokenStore;
use crate::store::embedded::Signal;
use crate::store::{OtlpRequest, StoreError};

/// The three OTLP services over one ingest.
#[derive(Clone)]
pub struct OtlpGrpc {
    ingest: Ingest,
    tokens: Arc<TokenStore>,
}

impl OtlpGrpc {
    /// The receiver.
    pub fn new(ingest: Ingest, tokens: Arc<TokenStore>) -> Self {
        Self { ingest, tokens }
    }

    /// A tonic router serving the three services.
    pub fn router(self) -> tonic::service::Routes {
        let limit = self.ingest.max_body_bytes;
        let logs = LogsServiceServer::new(self.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(limit);
        let traces = TraceServiceServer::new(self.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(limit);
        let metrics = MetricsServiceServer::new(self)
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(limit);
        tonic::service::Routes::new(logs)
            .add_service(traces)
            .add_service(metrics)
    }

    async fn accept<T>(
        &self,
        request: Request<T>,
        signal: Signal,
        wrap: fn(T) -> OtlpRequest,
    ) -> Result<Accepted, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if let Err(error) = authorize(&self.tokens, authorization, Access::Ingest) {
            self.ingest.refused(signal, "grpc", "unauthorized");
            let code = match error {
                ApiError::Forbidden { .. } => Code::PermissionDenied,
                _ => Code::Unauthenticated,
            };
            return Err(Status::new(code, error.to_string()));
        }
        let id = request
            .metadata()
            .get(gantry_proto::BATCH_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .filter(|id| !id.is_empty());
        let Ok(_in_flight) = self.ingest.admission.clone().try_acquire_owned() else {
            self.ingest.refused(signal, "grpc", "overloaded");
            return Err(status_of(StoreError::Overloaded {
                retry_after: std::time::Duration::from_secs(1),
            }));
        };
        let decoded = wrap(request.into_inner());
        self.ingest
            .accept(signal, decoded, None, id, "grpc")
            .await
            .map_err(status_of)
    }
}

pub use gantry_proto::otlp::standard_codes;

/// A store error as a gRPC status: overload and restarts are UNAVAILABLE with a `RetryInfo`.
fn status_of(error: StoreError) -> Status {
    let retry = |delay: std::time::Duration, message: String| {
        let details = RpcStatus {
            code: Code::Unavailable as i32,
            message: message.clone(),
            details: vec![retry_info(delay)],
        };
        Status::with_details(Code::Unavailable, message, details.encode_to_vec().into())
    };
    match error {
        StoreError::Overloaded { retry_after } => retry(retry_after, error.to_string()),
        StoreError::Invalid(message) => Status::invalid_argument(message),
        other => retry(std::time::Duration::from_secs(1), other.to_string()),
    }
}

#[tonic::async_trait]
impl LogsService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let accepted = self
            .accept(request, Signal::Logs, OtlpRequest::Logs)
            .await?;
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: (accepted.rejected > 0).then_some(ExportLogsPartialSuccess {
                rejected_log_records: accepted.rejected as i64,
                error_message: accepted.message,
            }),
        }))
    }
}

#[tonic::async_trait]
impl TraceService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let accepted = self
            .accept(request, Signal::Spans, OtlpRequest::Traces)
            .await?;
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: (accepted.rejected > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: accepted.rejected as i64,
                error_message: accepted.message,
            }),
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let accepted = self
            .accept(request, Signal::Metrics, OtlpRequest::Metrics)
            .await?;
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: (accepted.rejected > 0).then_some(ExportMetricsPartialSuccess {
                rejected_data_points: accepted.rejected as i64,
                error_message: accepted.message,
            }),
        }))
    }
}

//! The OTLP/HTTP receiver: `POST /v1/logs|traces|metrics` in protobuf or JSON, gzip or not, answered in the
//! request's content type once the batch is durable.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gantry_proto::{Access, BATCH_ID_HEADER};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;

use super::{Accepted, DecodeError, Encoding, decode, gunzip};
use crate::api::{ApiError, AppState, authorize};
use crate::store::StoreError;
use crate::store::embedded::Signal;

/// `POST /v1/logs`.
pub async fn logs(state: State<AppState>, headers: HeaderMap, body: Body) -> Response {
    receive(state, headers, body, Signal::Logs).await
}

/// `POST /v1/traces`.
pub async fn traces(state: State<AppState>, headers: HeaderMap, body: Body) -> Response {
    receive(state, headers, body, Signal::Spans).await
}

/// `POST /v1/metrics`.
pub async fn metrics(state: State<AppState>, headers: HeaderMap, body: Body) -> Response {
    receive(state, headers, body, Signal::Metrics).await
}

/// An OTLP error in the request's encoding: a `google.rpc.Status` body.
fn failure(
    encoding: Encoding,
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
) -> Response {
    let body = gantry_proto::otlp::error_body(encoding, status.as_u16(), &message);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn success(signal: Signal, encoding: Encoding, accepted: Accepted) -> Response {
    let rejected = accepted.rejected as i64;
    let partial = (rejected > 0).then_some(accepted.message);
    let body = match encoding {
        Encoding::Protobuf => match signal {
            Signal::Logs => ExportLogsServiceResponse {
                partial_success: partial.map(|error_message| ExportLogsPartialSuccess {
                    rejected_log_records: rejected,
                    error_message,
                }),
            }
            .encode_to_vec(),
            Signal::Spans => ExportTraceServiceResponse {
                partial_success: partial.map(|error_message| ExportTracePartialSuccess {
                    rejected_spans: rejected,
                    error_message,
                }),
            }
            .encode_to_vec(),
            Signal::Metrics => ExportMetricsServiceResponse {
                partial_success: partial.map(|error_message| ExportMetricsPartialSuccess {
                    rejected_data_points: rejected,
                    error_message,
                }),
            }
            .encode_to_vec(),
        },
        // OTLP JSON: int64 as a string, absent fields left out.
        Encoding::Json => {
            let field = match signal {
                Signal::Logs => "rejectedLogRecords",
                Signal::Spans => "rejectedSpans",
                Signal::Metrics => "rejectedDataPoints",
            };
            let body = match partial {
                Some(message) => serde_json::json!({
                    "partialSuccess": { field: rejected.to_string(), "errorMessage": message }
                }),
                None => serde_json::json!({}),
            };
            body.to_string().into_bytes()
        }
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
    signal: Signal,
) -> Response {
    let ingest = &state.ingest;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let encoding = match Encoding::from_content_type(content_type) {
        Some(encoding) => encoding,
        None => {
            let other = content_type.split(';').next().unwrap_or("").trim();
            ingest.refused(signal, "http", "unsupported_media_type");
            return failure(
                Encoding::Json,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported content type `{other}`: send application/x-protobuf or application/json"
                ),
                None,
            );
        }
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(error) = authorize(&state.tokens, authorization, Access::Ingest) {
        ingest.refused(signal, "http", "unauthorized");
        let status = match error {
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        let mut response = failure(encoding, status, error.to_string(), None);
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        return response;
    }
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None | Some("identity") | Some("") => false,
        Some("gzip") => true,
        Some(other) => {
            ingest.refused(signal, "http", "unsupported_encoding");
            return failure(
                encoding,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported content encoding `{other}`: send gzip or no encoding"),
                None,
            );
        }
    };
    let limit = ingest.max_body_bytes;
    let raw: Bytes = match axum::body::to_bytes(body, limit).await {
        Ok(raw) => raw,
        Err(_) => {
            ingest.refused(signal, "http", "too_large");
            return failure(
                encoding,
                StatusCode::PAYLOAD_TOO_LARGE,
                DecodeError::TooLarge { limit }.to_string(),
                None,
            );
        }
    };
    let id = headers
        .get(BATCH_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|id| !id.is_empty());
    let decoded = tokio::task::spawn_blocking(move || {
        let body = if gzip {
            Bytes::from(gunzip(&raw, limit)?)
        } else {
            raw
        };
        let request = decode(signal, encoding, &body)?;
        Ok::<_, DecodeError>((request, (encoding == Encoding::Protobuf).then_some(body)))
    })
    .await;
    let (request, encoded) = match decoded {
        Ok(Ok(decoded)) => decoded,
        Ok(Err(error @ DecodeError::TooLarge { .. })) => {
            ingest.refused(signal, "http", "too_large");
            return failure(
                encoding,
                StatusCode::PAYLOAD_TOO_LARGE,
                error.to_string(),
                None,
            );
        }
        Ok(Err(error)) => {
            ingest.refused(signal, "http", "malformed");
            return failure(encoding, StatusCode::BAD_REQUEST, error.to_string(), None);
        }
        Err(error) => {
            return failure(
                encoding,
                StatusCode::SERVICE_UNAVAILABLE,
                format!("decoding failed: {error}"),
                Some(1),
            );
        }
    };
    match ingest.accept(signal, request, encoded, id, "http").await {
        Ok(accepted) => success(signal, encoding, accepted),
        Err(StoreError::Overloaded { retry_after }) => failure(
            encoding,
            StatusCode::TOO_MANY_REQUESTS,
            StoreError::Overloaded { retry_after }.to_string(),
            Some(retry_after.as_secs().max(1)),
        ),
        Err(StoreError::Invalid(message)) => {
            failure(encoding, StatusCode::BAD_REQUEST, message, None)
        }
        // Anything else is ours and passing: a retry can succeed, so never a 500.
        Err(error) => failure(
            encoding,
            StatusCode::SERVICE_UNAVAILABLE,
            error.to_string(),
            Some(1),
        ),
    }
}

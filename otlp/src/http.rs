//! OTLP/HTTP: `POST /v1/logs`, `/v1/traces` and `/v1/metrics`, answered in the request's encoding once the intake
//! made the batch durable.
//!
//! The order of checks is the order of cost: content type, credentials, content encoding and admission come before
//! a byte of the body is read; the body is read with a cap, then decompressed (capped) and decoded on a blocking
//! thread.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use gantry_proto::{BATCH_ID_HEADER, Signal};
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

use crate::encoding::{Encoding, decode, error_body, gunzip};
use crate::{Accepted, Intake, Protocol, Received, Receiver, Refusal};

impl<I: Intake> Receiver<I> {
    /// A router serving `POST /v1/logs`, `/v1/traces` and `/v1/metrics`; merge it into an application or serve it
    /// on its own port.
    pub fn http_router(&self) -> Router {
        Router::new()
            .route("/v1/logs", post(logs::<I>))
            .route("/v1/traces", post(traces::<I>))
            .route("/v1/metrics", post(metrics::<I>))
            .with_state(self.clone())
    }
}

async fn logs<I: Intake>(State(r): State<Receiver<I>>, headers: HeaderMap, body: Body) -> Response {
    receive(r, headers, body, Signal::Logs).await
}

async fn traces<I: Intake>(
    State(r): State<Receiver<I>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(r, headers, body, Signal::Traces).await
}

async fn metrics<I: Intake>(
    State(r): State<Receiver<I>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(r, headers, body, Signal::Metrics).await
}

async fn receive<I: Intake>(
    receiver: Receiver<I>,
    headers: HeaderMap,
    body: Body,
    signal: Signal,
) -> Response {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let content_type = text(header::CONTENT_TYPE).unwrap_or("");
    let limit = receiver.config.max_body_bytes;
    let Some(encoding) = Encoding::from_content_type(content_type) else {
        let media = content_type.split(';').next().unwrap_or("").trim();
        let refusal = Refusal::UnsupportedContentType(format!(
            "unsupported content type `{media}`: send application/x-protobuf or application/json"
        ));
        discard(body, limit);
        // No encoding to answer in: JSON, which every client can read.
        return failure(
            Encoding::Json,
            receiver.refuse(signal, Protocol::Http, refusal),
        );
    };
    let admitted = (|| {
        receiver.intake.authorize(text(header::AUTHORIZATION))?;
        let gzip = match text(header::CONTENT_ENCODING).map(str::trim) {
            None | Some("") => false,
            Some(value) if value.eq_ignore_ascii_case("identity") => false,
            Some(value) if value.eq_ignore_ascii_case("gzip") => true,
            Some(other) => {
                return Err(Refusal::UnsupportedContentEncoding(format!(
                    "unsupported content encoding `{other}`: send gzip or no encoding"
                )));
            }
        };
        // Held until the intake answered: bodies, decoded batches and batches waiting to be made durable are
        // bounded together.
        Ok((gzip, receiver.admit()?))
    })();
    let (gzip, _permit) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => {
            discard(body, limit);
            return failure(encoding, receiver.refuse(signal, Protocol::Http, refusal));
        }
    };
    let too_large = || {
        Refusal::TooLarge(format!(
            "the request body is larger than {limit} bytes: send smaller batches"
        ))
    };
    let result = async {
        let declared = text(header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(too_large());
        }
        let raw: Bytes = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| too_large())?;
        let batch_id = text(BATCH_ID_HEADER.try_into().expect("a valid header name"))
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_owned);
        // Decompressed and measured (without decoding) on a blocking thread; decoded only within the limits and
        // the memory budget.
        let (body, shape) = tokio::task::spawn_blocking(move || -> Result<_, Refusal> {
            let body = if gzip {
                Bytes::from(gunzip(&raw, limit)?)
            } else {
                raw
            };
            let shape = match encoding {
                Encoding::Protobuf => crate::limits::measure_protobuf(signal, &body)?,
                Encoding::Json => crate::limits::measure_json(&body)?,
            };
            Ok((body, shape))
        })
        .await
        .map_err(|error| Refusal::Unavailable {
            message: format!("decoding failed: {error}"),
            retry_after: std::time::Duration::from_secs(1),
        })??;
        let _memory = receiver.charge(signal, &shape)?;
        let received = tokio::task::spawn_blocking(move || -> Result<Received, Refusal> {
            let request = decode(signal, encoding, &body)?;
            Ok(Received {
                request,
                encoded: (encoding == Encoding::Protobuf).then_some(body),
                batch_id,
                protocol: Protocol::Http,
            })
        })
        .await
        .map_err(|error| Refusal::Unavailable {
            message: format!("decoding failed: {error}"),
            retry_after: std::time::Duration::from_secs(1),
        })??;
        receiver.intake.accept(received).await
    }
    .await;
    match result {
        Ok(accepted) => success(signal, encoding, accepted),
        Err(refusal) => failure(encoding, receiver.refuse(signal, Protocol::Http, refusal)),
    }
}

/// How long a refused request's body may take to arrive before its connection is dropped.
const DISCARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads and drops the body of a request refused before its body was read, so that the client, still sending,
/// receives the answer instead of a broken pipe (a server that closes with unread bytes resets the connection, and
/// the reset destroys the answer in the client's receive buffer). Nothing is kept: memory stays flat whatever the
/// body's size; at most `limit` bytes or [`DISCARD_TIMEOUT`] are spent on it, then the connection is dropped.
fn discard(body: Body, limit: usize) {
    use tokio_stream::StreamExt;
    tokio::spawn(async move {
        let mut chunks = body.into_data_stream();
        let mut read = 0usize;
        let drained = tokio::time::timeout(DISCARD_TIMEOUT, async {
            while let Some(Ok(chunk)) = chunks.next().await {
                read += chunk.len();
                if read > limit {
                    break;
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::debug!(
                read,
                "a refused request's body was still arriving after 30 s; dropping it"
            );
        }
    });
}

/// The HTTP status of a refusal.
pub(crate) fn status_of(refusal: &Refusal) -> StatusCode {
    match refusal {
        Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
        Refusal::UnsupportedContentType(_) | Refusal::UnsupportedContentEncoding(_) => {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        }
        Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
        Refusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Refusal::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
        Refusal::BufferFull { .. } | Refusal::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// An OTLP error answer in `encoding`: a `google.rpc.Status` body, `Retry-After` when a retry can succeed,
/// `WWW-Authenticate` on a 401.
fn failure(encoding: Encoding, refusal: Refusal) -> Response {
    let status = status_of(&refusal);
    let body = error_body(encoding, status.as_u16(), &refusal.to_string());
    let mut response = (
        status,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response();
    let headers = response.headers_mut();
    if let Some(delay) = refusal.retry_after() {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(delay.as_secs().max(1)),
        );
    }
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// A 200 in `encoding`, with an OTLP partial success when items were rejected.
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
            Signal::Traces => ExportTraceServiceResponse {
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
                Signal::Traces => "rejectedSpans",
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

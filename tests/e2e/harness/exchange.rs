//! One OTLP/HTTP exchange checked in one line: [`check`] sends a [`Post`] (signal, port, content type, encoding,
//! body) and requires the [`Reply`] it must get: its status, its content type (the request's), and its body, the
//! signal's export response or a `google.rpc.Status`.

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use serde_json::Value;

use super::api::{CT_JSON, CT_PROTOBUF, Port, Signal, content_type, field, json_i64};
use super::otlp::gzip;
use super::process::Plane;

/// An OTLP/HTTP request for [`check`]: where it goes, its content type, body and extra headers.
pub struct Post {
    port: Port,
    signal: Signal,
    content_type: &'static str,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

impl Post {
    pub fn new(port: Port, signal: Signal, content_type: &'static str, body: &[u8]) -> Post {
        Post {
            port,
            signal,
            content_type,
            body: body.to_vec(),
            headers: Vec::new(),
        }
    }

    /// OTLP JSON.
    pub fn json(port: Port, signal: Signal, body: &Value) -> Post {
        Post::new(port, signal, CT_JSON, body.to_string().as_bytes())
    }

    /// OTLP protobuf.
    pub fn protobuf(port: Port, signal: Signal, message: &impl Message) -> Post {
        Post::new(port, signal, CT_PROTOBUF, &message.encode_to_vec())
    }

    /// The body gzip-compressed, with `Content-Encoding: gzip`.
    pub fn gzip(mut self) -> Post {
        self.body = gzip(&self.body);
        self.header("Content-Encoding", "gzip")
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Post {
        self.headers.push((name, value.to_owned()));
        self
    }
}

impl std::fmt::Display for Post {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (path, port, ct) = (self.signal.path(), self.port, self.content_type);
        write!(f, "POST {path} ({port:?} port, {ct}")?;
        for (name, value) in &self.headers {
            write!(f, ", {name}: {value}")?;
        }
        write!(f, ")")
    }
}

/// What a [`Post`] must get back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// 200 in the request's content type: the signal's export response, rejecting nothing.
    Accepted,
    /// 200 in the request's content type: a partial success rejecting exactly this many items, with a message.
    Rejected(i64),
    /// A partial success rejecting exactly this many items, with a message containing this text.
    RejectedFor(i64, &'static str),
    /// 400 with a `google.rpc.Status` {code: 3 (INVALID_ARGUMENT), message} in the request's content type.
    InvalidArgument,
    /// [`Reply::InvalidArgument`] with a message containing this text.
    InvalidNaming(&'static str),
    /// This status, whatever the body.
    Status(u16),
}

/// `google.rpc.Status` (only the fields we look at; `details` is skipped when decoding).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// Sends `post` with `token` to `plane` and checks that it gets `want`.
pub async fn check(plane: &Plane, token: &str, post: Post, want: Reply) -> Result<()> {
    let headers: Vec<(&str, &str)> = post.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (path, body) = (post.signal.path(), post.body.clone());
    let resp = plane
        .post_otlp(post.port, path, post.content_type, body, token, &headers)
        .await?;
    let status = resp.status().as_u16();
    let ct = content_type(&resp);
    let body = resp.bytes().await?;
    let text = String::from_utf8_lossy(&body);
    let want_status = match want {
        Reply::Accepted | Reply::Rejected(_) | Reply::RejectedFor(..) => 200,
        Reply::InvalidArgument | Reply::InvalidNaming(_) => 400,
        Reply::Status(status) => status,
    };
    ensure!(
        status == want_status,
        "{post}: expected {want:?} ({want_status}), got {status}: {text}"
    );
    if let Reply::Status(_) = want {
        return Ok(());
    }
    ensure!(
        ct.starts_with(post.content_type),
        "{post}: the reply must have the request's content type, got {ct:?}"
    );
    if let Reply::InvalidArgument | Reply::InvalidNaming(_) = want {
        let (code, message) = rpc_status(&post, &body)
            .with_context(|| format!("{post}: the 400 is not a google.rpc.Status: {text}"))?;
        ensure!(
            code == 3 && !message.is_empty(),
            "{post}: the Status should be {{code: 3, message}}: {text}"
        );
        if let Reply::InvalidNaming(naming) = want {
            ensure!(
                message.contains(naming),
                "{post}: the message should contain `{naming}`: {message}"
            );
        }
        return Ok(());
    }
    let (rejected, message) = partial_success(&post, &body)
        .with_context(|| format!("{post}: the 200 is not an OTLP export response: {text}"))?;
    match want {
        Reply::Rejected(n) => ensure!(
            rejected == n && !message.is_empty(),
            "{post}: expected {n} rejected with a message, got {rejected} {message:?}: {text}"
        ),
        Reply::RejectedFor(n, why) => ensure!(
            rejected == n && message.contains(why),
            "{post}: expected {n} rejected with a message containing `{why}`, got {rejected} \
             {message:?}: {text}"
        ),
        _ => ensure!(
            rejected == 0,
            "{post}: nothing should be rejected, got {rejected}: {text}"
        ),
    }
    Ok(())
}

/// `(code, message)` of the `google.rpc.Status` answered to `post`, in its format.
fn rpc_status(post: &Post, body: &[u8]) -> Result<(i32, String)> {
    if post.content_type == CT_JSON {
        let v: Value = serde_json::from_slice(body)?;
        let code = v["code"].as_i64().context("no numeric code")?;
        let message = v["message"].as_str().unwrap_or_default().to_owned();
        return Ok((i32::try_from(code)?, message));
    }
    let status = RpcStatus::decode(body)?;
    Ok((status.code, status.message))
}

/// `(rejected, error_message)` of the export response to `post` (`(0, "")` without a partial success).
fn partial_success(post: &Post, body: &[u8]) -> Result<(i64, String)> {
    let (camel, snake) = match post.signal {
        Signal::Logs => ("rejectedLogRecords", "rejected_log_records"),
        Signal::Traces => ("rejectedSpans", "rejected_spans"),
        Signal::Metrics => ("rejectedDataPoints", "rejected_data_points"),
    };
    if post.content_type == CT_JSON {
        let v: Value = serde_json::from_slice(body)?;
        ensure!(v.is_object(), "not an OTLP JSON object");
        let Some(ps) = field(&v, "partialSuccess", "partial_success") else {
            return Ok((0, String::new()));
        };
        let rejected = field(ps, camel, snake).and_then(json_i64).unwrap_or(0);
        let message = field(ps, "errorMessage", "error_message").and_then(Value::as_str);
        return Ok((rejected, message.unwrap_or_default().to_owned()));
    }
    let ps = match post.signal {
        Signal::Logs => ExportLogsServiceResponse::decode(body)?
            .partial_success
            .map(|p| (p.rejected_log_records, p.error_message)),
        Signal::Traces => ExportTraceServiceResponse::decode(body)?
            .partial_success
            .map(|p| (p.rejected_spans, p.error_message)),
        Signal::Metrics => ExportMetricsServiceResponse::decode(body)?
            .partial_success
            .map(|p| (p.rejected_data_points, p.error_message)),
    };
    Ok(ps.unwrap_or_default())
}

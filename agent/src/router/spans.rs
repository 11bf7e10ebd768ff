//! The routers' spans: one per routed request, kind `SERVER`, under the target service's resource
//! (`service.name`, `service.version`, `service.instance.id` of the instance that answered) with the HTTP
//! semantic-convention attributes, `gantry.router: true`, and during a weighted rollout `gantry.route.share` (the
//! probability the answering version had of being picked, which the canary judge needs). They are batched (up to 512, at most 200 ms) into
//! OTLP export requests appended to the node's disk buffer like any other telemetry, so they reach the plane at
//! least once. W3C trace context (`traceparent`) is continued when the caller sent one, started otherwise, and
//! passed on to the instance with the router's span as parent.

use std::time::Duration;

use gantry_proto::Signal;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message;
use tokio::sync::mpsc;

use crate::sources::Sink;

/// Spans waiting for their batch at most; beyond, new ones are dropped (and counted in the log).
const QUEUE: usize = 16_384;
/// Spans per export request.
const BATCH: usize = 512;
/// The longest a span waits for its batch.
const FLUSH: Duration = Duration::from_millis(200);

/// One routed request.
#[derive(Debug, Clone)]
pub struct RouterSpan {
    /// The target service.
    pub service: String,
    /// The version of the instance that answered (empty when none did).
    pub version: String,
    /// The instance that answered (empty when none did).
    pub instance_id: String,
    /// 16 bytes.
    pub trace_id: [u8; 16],
    /// 8 bytes.
    pub span_id: [u8; 8],
    /// The caller's span, when it sent a `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
    /// Request method.
    pub method: String,
    /// Request path, without the query.
    pub path: String,
    /// The answer's status code.
    pub status: u16,
    /// Start and end, ns since the Unix epoch.
    pub start_ns: u64,
    /// See `start_ns`.
    pub end_ns: u64,
    /// The instance's address, when one was tried.
    pub peer: String,
    /// Why the router answered itself (no instance, upstream failure), when it did.
    pub error: Option<String>,
    /// The probability the answering version had of being picked, when the route has weights (the canary
    /// judge's `gantry.route.share`).
    pub share: Option<f64>,
    /// For a mirrored copy: the live answer to the same request.
    pub mirror_of: Option<LiveAnswer>,
}

/// The live answer to a request a router mirrored, recorded on the copy's span (`gantry.mirror.live.*`) so that
/// the canary judge compares the two answers to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveAnswer {
    /// The version that answered live.
    pub version: String,
    /// Its status code (0: no answer).
    pub status: u16,
    /// Its duration to the answer's head, nanoseconds.
    pub duration_ns: u64,
}

/// Where routers send their spans.
#[derive(Debug, Clone)]
pub struct SpanSink {
    sender: mpsc::Sender<RouterSpan>,
}

impl SpanSink {
    /// A sink whose batches go to the disk buffer through `sink`, with the node's `host.name`.
    pub fn start(sink: Sink, host_name: String) -> SpanSink {
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(batch(receiver, sink, host_name));
        SpanSink { sender }
    }

    /// Queues a span; drops it when the queue is full (the buffer is far behind).
    pub fn record(&self, span: RouterSpan) {
        if self.sender.try_send(span).is_err() {
            tracing::debug!("router span dropped: the span queue is full");
        }
    }
}

async fn batch(mut receiver: mpsc::Receiver<RouterSpan>, sink: Sink, host_name: String) {
    let mut pending: Vec<RouterSpan> = Vec::new();
    // A span waits at most FLUSH after the first of its batch: the canary judge sees requests within it.
    let mut deadline = tokio::time::Instant::now() + FLUSH;
    loop {
        // Some(Some(span)), Some(None) when every sender is gone, None when the batch's time is up.
        let next = if pending.is_empty() {
            Some(receiver.recv().await)
        } else {
            tokio::time::timeout_at(deadline, receiver.recv())
                .await
                .ok()
        };
        match next {
            Some(Some(span)) => {
                if pending.is_empty() {
                    deadline = tokio::time::Instant::now() + FLUSH;
                }
                pending.push(span);
                if pending.len() < BATCH {
                    continue;
                }
            }
            Some(None) => {
                flush(&sink, &host_name, &mut pending).await;
                return;
            }
            None => {}
        }
        flush(&sink, &host_name, &mut pending).await;
    }
}

async fn flush(sink: &Sink, host_name: &str, pending: &mut Vec<RouterSpan>) {
    if pending.is_empty() {
        return;
    }
    let spans = std::mem::take(pending);
    let count = spans.len() as u32;
    let payload = encode(&spans, host_name).encode_to_vec();
    if sink.append(Signal::Traces, payload, count).await.is_err() {
        tracing::debug!(count, "router spans dropped: the buffer writer stopped");
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_owned()))
}

/// The export request of a batch: one resource per (service, version, instance).
pub fn encode(spans: &[RouterSpan], host_name: &str) -> ExportTraceServiceRequest {
    let mut groups: Vec<((String, String, String), Vec<Span>)> = Vec::new();
    for span in spans {
        let key = (
            span.service.clone(),
            span.version.clone(),
            span.instance_id.clone(),
        );
        let encoded = Span {
            trace_id: span.trace_id.to_vec(),
            span_id: span.span_id.to_vec(),
            parent_span_id: span.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            name: span.method.clone(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: span.start_ns,
            end_time_unix_nano: span.end_ns.max(span.start_ns),
            attributes: {
                let mut attributes = vec![
                    text("http.request.method", &span.method),
                    text("url.path", &span.path),
                    kv(
                        "http.response.status_code",
                        any_value::Value::IntValue(i64::from(span.status)),
                    ),
                ];
                // A mirrored copy is not a request of the service's callers: it carries `gantry.mirror` (and the
                // live answer) instead of `gantry.router`, so that it counts in no rate or error ratio.
                match &span.mirror_of {
                    None => attributes.push(kv("gantry.router", any_value::Value::BoolValue(true))),
                    Some(live) => {
                        attributes.push(kv("gantry.mirror", any_value::Value::BoolValue(true)));
                        attributes.push(text("gantry.mirror.live.version", &live.version));
                        attributes.push(kv(
                            "gantry.mirror.live.status_code",
                            any_value::Value::IntValue(i64::from(live.status)),
                        ));
                        attributes.push(kv(
                            "gantry.mirror.live.duration_ns",
                            any_value::Value::IntValue(live.duration_ns.min(i64::MAX as u64) as i64),
                        ));
                    }
                }
                if !span.peer.is_empty() {
                    attributes.push(text("network.peer.address", &span.peer));
                }
                if let Some(share) = span.share {
                    attributes.push(kv(
                        "gantry.route.share",
                        any_value::Value::DoubleValue(share),
                    ));
                }
                if let Some(error) = &span.error {
                    attributes.push(text("error.type", error));
                }
                attributes
            },
            // Server spans: 5xx is an error, 4xx is the caller's (OTel HTTP semantic conventions, span status).
            status: Some(Status {
                code: if span.status >= 500 {
                    status::StatusCode::Error as i32
                } else {
                    status::StatusCode::Unset as i32
                },
                message: span.error.clone().unwrap_or_default(),
            }),
            ..Default::default()
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(encoded),
            None => groups.push((key, vec![encoded])),
        }
    }
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|((service, version, instance), spans)| {
                let mut attributes =
                    vec![text("service.name", &service), text("host.name", host_name)];
                if !version.is_empty() {
                    attributes.push(text("service.version", &version));
                }
                if !instance.is_empty() {
                    attributes.push(text("service.instance.id", &instance));
                }
                ResourceSpans {
                    resource: Some(Resource {
                        attributes,
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "gantry-router".to_owned(),
                            version: env!("CARGO_PKG_VERSION").to_owned(),
                            ..Default::default()
                        }),
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            })
            .collect(),
    }
}

/// A W3C `traceparent` value (Trace Context, section 3.2): `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
/// Returns the trace id and parent span id; `None` when malformed or all-zero.
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8])> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || parent.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    hex::decode_to_slice(trace, &mut trace_id).ok()?;
    hex::decode_to_slice(parent, &mut span_id).ok()?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((trace_id, span_id))
}

/// The `traceparent` the router passes on: its own span as the parent, sampled.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8]) -> String {
    format!("00-{}-{}-01", hex::encode(trace_id), hex::encode(span_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_round_trip_and_refusals() {
        let (trace, parent) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(hex::encode(trace), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(parent), "00f067aa0ba902b7");
        assert_eq!(
            traceparent(&trace, &parent),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn spans_group_by_instance_with_http_attributes() {
        let span = |instance: &str, status| RouterSpan {
            service: "api".into(),
            version: "2".into(),
            instance_id: instance.into(),
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            method: "GET".into(),
            path: "/x".into(),
            status,
            start_ns: 10,
            end_ns: 20,
            peer: "127.0.0.1:1".into(),
            error: None,
            share: None,
            mirror_of: None,
        };
        let request = encode(&[span("a", 200), span("a", 503), span("b", 404)], "node-1");
        assert_eq!(request.resource_spans.len(), 2);
        let first = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].kind, span::SpanKind::Server as i32);
        assert_eq!(
            first[1].status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
        let second = &request.resource_spans[1].scope_spans[0].spans;
        assert_eq!(
            second[0].status.as_ref().unwrap().code,
            status::StatusCode::Unset as i32,
            "4xx is no error"
        );
    }
}

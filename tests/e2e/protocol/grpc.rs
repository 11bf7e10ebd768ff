//! OTLP/gRPC: all three signals with gzip reach the API, and errors map to gRPC status codes (authentication,
//! permission, malformed protobuf, messages over 20 MiB).

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::json;
use tonic::codec::CompressionEncoding;

use crate::harness::api::{SEARCH_TIMEOUT, grpc_request, values, wait_until};
use crate::harness::otlp::{
    BAD_PROTOBUF, gauge_metric, hex, kv, log_record, logs_request, make_span, metrics_request,
    now_nanos, number_point, random_span_id, random_trace_id, traces_request,
};
use crate::harness::process::fresh_plane;
use crate::harness::unique;

/// OTLP/gRPC with gzip for all three signals; the data shows up in the API.
#[tokio::test]
async fn grpc_gzip_all_signals() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let channel = plane.grpc_channel().await?;
    let svc = unique("grpcsvc");
    let word = unique("grpcword");
    let now = now_nanos();

    let mut logs = LogsServiceClient::new(channel.clone())
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let resp = logs
        .export(grpc_request(
            logs_request(
                &svc,
                vec![log_record(
                    &format!("{word} over grpc"),
                    now,
                    vec![kv("via", "grpc")],
                )],
            ),
            &ingest,
        ))
        .await
        .context("gRPC logs export")?
        .into_inner();
    ensure!(
        resp.partial_success
            .as_ref()
            .is_none_or(|p| p.rejected_log_records == 0),
        "{resp:?}"
    );

    let tid = random_trace_id();
    let root = random_span_id();
    let child = random_span_id();
    let mut traces = TraceServiceClient::new(channel.clone())
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    traces
        .export(grpc_request(
            traces_request(
                &svc,
                vec![
                    make_span(
                        &tid,
                        &root,
                        &[],
                        "rpc Checkout",
                        SpanKind::Server,
                        now - 9_000_000,
                        now,
                        2,
                    ),
                    make_span(
                        &tid,
                        &child,
                        &root,
                        "rpc Pay",
                        SpanKind::Client,
                        now - 8_000_000,
                        now - 1_000_000,
                        0,
                    ),
                ],
            ),
            &ingest,
        ))
        .await
        .context("gRPC traces export")?;

    let metric = unique("grpc_gauge_");
    let mut metrics = MetricsServiceClient::new(channel)
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    metrics
        .export(grpc_request(
            metrics_request(
                &svc,
                vec![gauge_metric(&metric, vec![number_point(7.5, now, vec![])])],
            ),
            &ingest,
        ))
        .await
        .context("gRPC metrics export")?;

    let hits = plane
        .wait_for_logs(&viewer, &format!("via:grpc AND {word}"), 1)
        .await?;
    ensure!(hits[0]["service"] == json!(svc), "{hits:?}");
    let trace = plane.wait_for_trace(&viewer, &hex(&tid), 2).await?;
    ensure!(
        trace["spans"]
            .as_array()
            .context("spans")?
            .iter()
            .any(|s| s["name"] == "rpc Checkout"
                && s["status"] == "error"
                && s["kind"] == "server"),
        "{trace}"
    );
    let q = [("name", metric.as_str()), ("agg", "max"), ("from", "-1h")];
    wait_until(SEARCH_TIMEOUT, "the gRPC gauge = 7.5", || async {
        let s = plane.query_metrics(&viewer, &q).await?;
        Ok(values(&s).contains(&7.5).then_some(()))
    })
    .await?;
    Ok(())
}

/// gRPC status codes: UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT.
#[tokio::test]
async fn grpc_error_codes() -> Result<()> {
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    let channel = plane.grpc_channel().await?;
    let req = || logs_request("grpcerr", vec![log_record("x", now_nanos(), vec![])]);
    let mut client = LogsServiceClient::new(channel.clone());

    for (token, want, label) in [
        ("", tonic::Code::Unauthenticated, "no token"),
        (
            "gty_thisisnotarealtoken0000",
            tonic::Code::Unauthenticated,
            "bad token",
        ),
        (
            viewer.as_str(),
            tonic::Code::PermissionDenied,
            "viewer token",
        ),
    ] {
        let err = client
            .export(grpc_request(req(), token))
            .await
            .err()
            .with_context(|| format!("{label}: gRPC export should fail"))?;
        ensure!(
            err.code() == want,
            "{label}: expected {want:?}, got {err:?}"
        );
    }
    client
        .export(grpc_request(req(), &ingest))
        .await
        .context("ingest token must work over gRPC")?;

    // Bytes that are not a valid ExportLogsServiceRequest.
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.context("gRPC channel ready")?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    );
    let err = grpc
        .unary(grpc_request(BAD_PROTOBUF.to_vec(), &ingest), path, RawCodec)
        .await
        .err()
        .context("malformed protobuf over gRPC should fail")?;
    ensure!(
        err.code() == tonic::Code::InvalidArgument,
        "malformed protobuf over gRPC: expected InvalidArgument, got {err:?}"
    );
    Ok(())
}

/// A gRPC message over 20 MiB (plain, and gzip-compressed) → RESOURCE_EXHAUSTED.
#[tokio::test]
async fn grpc_oversized_is_resource_exhausted() -> Result<()> {
    let (_tmp, plane, ingest, _viewer) = fresh_plane().await?;
    let channel = plane.grpc_channel().await?;
    let huge = "a".repeat(25 << 20);
    let req = logs_request("bigsvc", vec![log_record(&huge, now_nanos(), vec![])]);
    for gz in [false, true] {
        let mut client = LogsServiceClient::new(channel.clone());
        if gz {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let err = client
            .export(grpc_request(req.clone(), &ingest))
            .await
            .err()
            .with_context(|| format!("25 MiB gRPC message (gzip: {gz}) should be refused"))?;
        ensure!(
            err.code() == tonic::Code::ResourceExhausted,
            "25 MiB gRPC message (gzip: {gz}): expected ResourceExhausted, got {:?}: {}",
            err.code(),
            err.message()
        );
    }
    // Still serving.
    LogsServiceClient::new(channel)
        .export(grpc_request(
            logs_request("bigsvc", vec![log_record("small", now_nanos(), vec![])]),
            &ingest,
        ))
        .await
        .context("a small message after the oversized ones")?;
    Ok(())
}

/// A tonic codec that sends raw bytes (to put invalid protobuf on the wire).
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

//! `null-plane`: a sink that stands in for the plane in shipper benchmarks, so they measure the shipper and not indexing.
//!
//! It answers `POST /v1/logs` with 200 and an empty `ExportLogsServiceResponse` once it has read the
//! body, gunzipped it and counted its log records (a walk over the protobuf wire format that decodes
//! nothing but the nesting down to `LogRecord`). With `--tcp-addr` it also accepts plain TCP
//! connections and counts newline-terminated lines, for syslog forwarders (rsyslog's `omfwd`).
//! `GET /count` reports everything as JSON. The agent's heartbeat (`POST /api/v1/nodes/heartbeat`)
//! gets the plane's answer, `{"registered":true}`; any other request is answered 200 and counted in
//! `other_requests`, so a shipper's side traffic neither fails nor skews the counts.
//!
//! On start it prints `http ADDR` and, with `--tcp-addr`, `tcp ADDR` to stdout, one line each.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use clap::Parser;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Largest request body accepted (the plane's default limit is 20 MiB).
const MAX_BODY_BYTES: usize = 64 << 20;
/// The plane's heartbeat route (`gantry_proto::HEARTBEAT_PATH`); kept literal so that this sink builds
/// against any revision of the wire types.
const HEARTBEAT_PATH: &str = "/api/v1/nodes/heartbeat";
/// Read buffer of one TCP connection.
const TCP_READ_BYTES: usize = 256 << 10;

/// A sink standing in for the Gantry plane (OTLP/HTTP logs) and for a syslog TCP receiver.
#[derive(Debug, Parser)]
#[command(name = "null-plane")]
struct Cli {
    /// HTTP address for `POST /v1/logs` and `GET /count` (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Also accept TCP connections here and count the lines received (port 0 picks one).
    #[arg(long)]
    tcp_addr: Option<SocketAddr>,
    /// Note the time at which `records`, and `tcp_lines`, first reach this many (`*_mark_unix_micros`).
    #[arg(long, default_value_t = u64::MAX)]
    mark: u64,
}

/// What the sink received since it started.
#[derive(Default)]
struct Counters {
    mark: u64,
    records: AtomicU64,
    batches: AtomicU64,
    bytes_compressed: AtomicU64,
    bytes_body: AtomicU64,
    bad_requests: AtomicU64,
    heartbeats: AtomicU64,
    other_requests: AtomicU64,
    last_logs_unix_micros: AtomicU64,
    records_mark_unix_micros: AtomicU64,
    tcp_connections: AtomicU64,
    tcp_lines: AtomicU64,
    tcp_bytes: AtomicU64,
    last_tcp_unix_micros: AtomicU64,
    tcp_lines_mark_unix_micros: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> serde_json::Value {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        serde_json::json!({
            "records": get(&self.records),
            "batches": get(&self.batches),
            "bytes_compressed": get(&self.bytes_compressed),
            "bytes_body": get(&self.bytes_body),
            "bad_requests": get(&self.bad_requests),
            "heartbeats": get(&self.heartbeats),
            "other_requests": get(&self.other_requests),
            "last_logs_unix_micros": get(&self.last_logs_unix_micros),
            "records_mark_unix_micros": get(&self.records_mark_unix_micros),
            "tcp_connections": get(&self.tcp_connections),
            "tcp_lines": get(&self.tcp_lines),
            "tcp_bytes": get(&self.tcp_bytes),
            "last_tcp_unix_micros": get(&self.last_tcp_unix_micros),
            "tcp_lines_mark_unix_micros": get(&self.tcp_lines_mark_unix_micros),
        })
    }

    /// Adds `n` to `counter` and stamps `last_at`; stamps `mark_at` too when `counter` first reaches the mark.
    fn count(&self, counter: &AtomicU64, n: u64, last_at: &AtomicU64, mark_at: &AtomicU64) {
        let before = counter.fetch_add(n, Ordering::Relaxed);
        let now = unix_micros();
        last_at.store(now, Ordering::Relaxed);
        if before < self.mark && before + n >= self.mark {
            mark_at.store(now, Ordering::Relaxed);
        }
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Why a request body could not be counted.
#[derive(Debug, PartialEq, Eq)]
enum BodyError {
    Gzip(String),
    Wire(&'static str),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Gzip(error) => write!(f, "the body is not valid gzip: {error}"),
            BodyError::Wire(what) => {
                write!(f, "the body is not an ExportLogsServiceRequest: {what}")
            }
        }
    }
}

/// One protobuf field: its number and, for length-delimited fields, the payload.
struct Field<'a> {
    number: u64,
    payload: Option<&'a [u8]>,
}

/// Iterates over the top-level fields of one protobuf message without decoding their values.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(message: &'a [u8]) -> Fields<'a> {
        Fields { rest: message }
    }

    fn varint(&mut self) -> Result<u64, BodyError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .rest
                .split_first()
                .ok_or(BodyError::Wire("truncated varint"))?;
            self.rest = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(BodyError::Wire("varint longer than 10 bytes"))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], BodyError> {
        let len = usize::try_from(len).map_err(|_| BodyError::Wire("length out of range"))?;
        if len > self.rest.len() {
            return Err(BodyError::Wire("field runs past the end"));
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    fn field(&mut self) -> Result<Field<'a>, BodyError> {
        let key = self.varint()?;
        let number = key >> 3;
        let payload = match key & 7 {
            0 => {
                self.varint()?;
                None
            }
            1 => {
                self.take(8)?;
                None
            }
            2 => {
                let len = self.varint()?;
                Some(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                None
            }
            _ => return Err(BodyError::Wire("unsupported wire type")),
        };
        Ok(Field { number, payload })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, BodyError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = self.field();
        if field.is_err() {
            self.rest = &[];
        }
        Some(field)
    }
}

/// The payloads of the length-delimited fields numbered `number` in `message`.
fn submessages(message: &[u8], number: u64) -> impl Iterator<Item = Result<&[u8], BodyError>> + '_ {
    Fields::new(message).filter_map(move |field| match field {
        Ok(Field {
            number: n,
            payload: Some(payload),
        }) if n == number => Some(Ok(payload)),
        Ok(_) => None,
        Err(error) => Some(Err(error)),
    })
}

/// Counts the `LogRecord`s of an encoded `ExportLogsServiceRequest`:
/// `resource_logs` (1) → `scope_logs` (2) → `log_records` (2).
fn count_log_records(request: &[u8]) -> Result<u64, BodyError> {
    let mut records = 0;
    for resource_logs in submessages(request, 1) {
        for scope_logs in submessages(resource_logs?, 2) {
            for record in submessages(scope_logs?, 2) {
                record?;
                records += 1;
            }
        }
    }
    Ok(records)
}

/// Gunzips the body when it is gzipped, then counts its records; returns (records, uncompressed bytes).
fn count_body(body: &[u8], gzip: bool) -> Result<(u64, u64), BodyError> {
    if !gzip {
        return Ok((count_log_records(body)?, body.len() as u64));
    }
    let mut raw = Vec::with_capacity(body.len().saturating_mul(6));
    flate2::read::MultiGzDecoder::new(body)
        .read_to_end(&mut raw)
        .map_err(|error| BodyError::Gzip(error.to_string()))?;
    Ok((count_log_records(&raw)?, raw.len() as u64))
}

async fn logs(State(counters): State<Arc<Counters>>, headers: HeaderMap, body: Bytes) -> Response {
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let compressed = body.len() as u64;
    // Gunzipping a batch takes about a millisecond: off the async workers.
    let counted = tokio::task::spawn_blocking(move || count_body(&body, gzip)).await;
    match counted {
        Ok(Ok((records, raw_bytes))) => {
            counters.count(
                &counters.records,
                records,
                &counters.last_logs_unix_micros,
                &counters.records_mark_unix_micros,
            );
            counters.batches.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes_compressed
                .fetch_add(compressed, Ordering::Relaxed);
            counters.bytes_body.fetch_add(raw_bytes, Ordering::Relaxed);
            (
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                ExportLogsServiceResponse::default().encode_to_vec(),
            )
                .into_response()
        }
        Ok(Err(error)) => {
            counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            eprintln!("null-plane: refusing a batch: {error}");
            (StatusCode::BAD_REQUEST, error.to_string()).into_response()
        }
        Err(error) => {
            counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
        }
    }
}

async fn count(State(counters): State<Arc<Counters>>) -> Json<serde_json::Value> {
    Json(counters.snapshot())
}

async fn heartbeat(State(counters): State<Arc<Counters>>, _body: Bytes) -> Json<serde_json::Value> {
    counters.heartbeats.fetch_add(1, Ordering::Relaxed);
    Json(serde_json::json!({ "registered": true }))
}

async fn other(State(counters): State<Arc<Counters>>, _body: Bytes) -> Json<serde_json::Value> {
    counters.other_requests.fetch_add(1, Ordering::Relaxed);
    Json(serde_json::json!({}))
}

fn app(counters: Arc<Counters>) -> Router {
    Router::new()
        .route("/v1/logs", post(logs))
        .route("/count", get(count))
        .route(HEARTBEAT_PATH, post(heartbeat))
        .fallback(other)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(counters)
}

/// Number of `\n` bytes in `bytes` (a loop the compiler vectorises).
fn newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Counts the lines and bytes of one TCP connection until the peer closes it or `stop` turns true.
async fn count_lines(
    mut stream: TcpStream,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    counters.tcp_connections.fetch_add(1, Ordering::Relaxed);
    let mut buf = vec![0u8; TCP_READ_BYTES];
    loop {
        let read = tokio::select! {
            read = stream.read(&mut buf) => read,
            _ = stop.changed() => return,
        };
        match read {
            Ok(0) => return,
            Ok(n) => {
                counters.tcp_bytes.fetch_add(n as u64, Ordering::Relaxed);
                counters.count(
                    &counters.tcp_lines,
                    newlines(&buf[..n]),
                    &counters.last_tcp_unix_micros,
                    &counters.tcp_lines_mark_unix_micros,
                );
            }
            Err(error) => {
                eprintln!("null-plane: a TCP connection failed: {error}");
                return;
            }
        }
    }
}

/// Accepts TCP connections until `stop` turns true; each is counted on its own task.
async fn serve_tcp(
    listener: TcpListener,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(count_lines(stream, counters.clone(), stop.clone()));
            }
            Err(error) => eprintln!("null-plane: accepting a TCP connection failed: {error}"),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let counters = Arc::new(Counters {
        mark: cli.mark,
        ..Counters::default()
    });
    let (stop, stopped) = watch::channel(false);

    let http = TcpListener::bind(cli.addr)
        .await
        .with_context(|| format!("binding the HTTP address {}", cli.addr))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "http {}", http.local_addr()?)?;
    let tcp = match cli.tcp_addr {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the TCP address {addr}"))?;
            writeln!(out, "tcp {}", listener.local_addr()?)?;
            Some(tokio::spawn(serve_tcp(
                listener,
                counters.clone(),
                stopped.clone(),
            )))
        }
        None => None,
    };
    out.flush()?;
    drop(out);

    let mut http_stopped = stopped.clone();
    axum::serve(http, app(counters))
        .with_graceful_shutdown(async move {
            termination().await;
            let _ = stop.send(true);
            let _ = http_stopped.changed().await;
        })
        .await?;
    if let Some(tcp) = tcp {
        tcp.await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn text(value: &str) -> Option<AnyValue> {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        })
    }

    fn record(body: &str) -> LogRecord {
        LogRecord {
            time_unix_nano: 1_700_000_000_000_000_000,
            observed_time_unix_nano: 1_700_000_000_000_000_001,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: text(body),
            attributes: vec![KeyValue {
                key: "request_id".into(),
                value: text("7f3a9c2e"),
                ..Default::default()
            }],
            trace_id: vec![7; 16],
            ..Default::default()
        }
    }

    /// A request with `shape[r][s]` records in scope `s` of resource `r`.
    fn request(shape: &[&[usize]]) -> Vec<u8> {
        let resource_logs = shape
            .iter()
            .map(|scopes| ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: text("checkout"),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_logs: scopes
                    .iter()
                    .map(|&n| ScopeLogs {
                        log_records: (0..n).map(|i| record(&format!("line {i}"))).collect(),
                        schema_url: "https://opentelemetry.io/schemas/1.24.0".into(),
                        ..Default::default()
                    })
                    .collect(),
                schema_url: String::new(),
            })
            .collect();
        ExportLogsServiceRequest { resource_logs }.encode_to_vec()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn check(shape: &[&[usize]], expected: u64) {
        let raw = request(shape);
        assert_eq!(count_log_records(&raw), Ok(expected), "{shape:?}");
        assert_eq!(
            count_body(&gzip(&raw), true),
            Ok((expected, raw.len() as u64)),
            "{shape:?}"
        );
    }

    #[test]
    fn counts_records_across_resources_and_scopes() {
        check(&[], 0);
        check(&[&[]], 0);
        check(&[&[1]], 1);
        check(&[&[1000]], 1000);
        check(&[&[3, 0, 2], &[5]], 10);
        check(&[&[200], &[200], &[1, 1, 1]], 403);
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let raw = request(&[&[4]]);
        assert!(count_log_records(&raw[..raw.len() - 3]).is_err());
        assert!(count_log_records(&[0x0b]).is_err(), "wire type 3");
        assert!(
            count_log_records(&[0x0a, 0xff]).is_err(),
            "truncated length"
        );
        assert!(matches!(count_body(&raw, true), Err(BodyError::Gzip(_))));
    }

    #[test]
    fn the_mark_is_stamped_once_when_reached() {
        let counters = Counters {
            mark: 10,
            ..Counters::default()
        };
        let (last, mark) = (AtomicU64::new(0), AtomicU64::new(0));
        let count = |n| counters.count(&counters.records, n, &last, &mark);
        count(9);
        assert_eq!(mark.load(Ordering::Relaxed), 0);
        assert!(last.load(Ordering::Relaxed) > 0);
        count(5);
        let stamped = mark.load(Ordering::Relaxed);
        assert!(stamped > 0);
        mark.store(1, Ordering::Relaxed);
        count(5);
        assert_eq!(mark.load(Ordering::Relaxed), 1, "stamped again");
        assert_eq!(counters.records.load(Ordering::Relaxed), 19);
    }

    #[test]
    fn counts_newlines() {
        assert_eq!(newlines(b""), 0);
        assert_eq!(newlines(b"a\nb\n"), 2);
        assert_eq!(newlines(b"no newline"), 0);
        assert_eq!(newlines(&[b'\n'; 1000]), 1000);
    }
}

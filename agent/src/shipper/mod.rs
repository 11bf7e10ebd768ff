//! The shipper: reads batches from the disk buffer after the shipped cursor and sends them to the plane as gzipped OTLP/HTTP protobuf, one at a time, until acknowledged.
//!
//! Delivery is at least once: the cursor advances (and the buffer drops the batch) only after a
//! 2xx, which the plane sends once the batch is durable. A batch resent after a crash carries the
//! same `Gantry-Batch-Id` (`<agent id>-<buffer seq>`), so the plane stores it once.

mod backoff;

use gantry_support::CancellationToken;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gantry_proto::BATCH_ID_HEADER;
use gantry_wal::WalReader;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

pub use backoff::Backoff;

use crate::buffer::{Buffer, BufferHeader, Signal};
use crate::telemetry::Telemetry;

/// The longest `Retry-After` honoured; a larger value is capped to this (and said so in the log), so that a plane
/// answering `Retry-After: 999999999` cannot stall shipping.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The most of a response body the shipper reads: a partial-success answer or an error message is a few hundred
/// bytes, and a plane (or a proxy) answering with hundreds of MiB must not grow the agent's memory.
pub const MAX_RESPONSE_BYTES: usize = 64 << 10;
/// Consecutive failures to read the record after the cursor before it is skipped as damaged.
const SKIP_AFTER_READ_FAILURES: u32 = 5;
/// Per-request deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and as whom to ship.
#[derive(Clone)]
pub struct ShipperConfig {
    /// The plane's base URL; batches go to `{plane}/v1/{logs,metrics,traces}`.
    pub plane: String,
    /// The ingest token.
    pub token: String,
    /// Prefix of every batch id.
    pub agent_id: String,
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// 2xx: durable at the plane; `rejected_records` from an OTLP partial success.
    Delivered {
        /// Records the plane declined inside an accepted batch.
        rejected_records: u64,
    },
    /// 413: the batch is larger than the plane takes; it is split in halves, each sent on its own.
    TooLarge,
    /// A permanent refusal (4xx other than 408 and 429): the batch is skipped.
    Rejected {
        /// Metric label, such as `http_400`.
        reason: String,
    },
    /// Try again, after at least `after` if the plane said so.
    Retry {
        /// What went wrong, for the log.
        reason: String,
        /// `Retry-After`, capped.
        after: Option<Duration>,
    },
}

/// Records the plane declined in a 2xx answer to a batch of `signal` (OTLP partial success).
fn rejected_in(signal: Signal, body: &[u8]) -> u64 {
    let rejected = match signal {
        Signal::Logs => ExportLogsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| p.rejected_log_records),
        Signal::Metrics => ExportMetricsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| p.rejected_data_points),
        Signal::Traces => ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| p.rejected_spans),
    };
    rejected.unwrap_or(0).max(0) as u64
}

/// Classifies a response to a batch of `signal` by status and headers (the body only matters for 2xx).
pub fn classify(signal: Signal, status: u16, retry_after: Option<&str>, body: &[u8]) -> Attempt {
    match status {
        200..=299 => Attempt::Delivered {
            rejected_records: rejected_in(signal, body),
        },
        // 408 and 429 are the plane asking for a retry. 401, 403 and 404 are configuration problems (a revoked or
        // mistyped token, a wrong URL) that an operator fixes: dropping the whole backlog meanwhile would lose
        // data, so they are retried too (with the same capped backoff), and counted under their reason.
        408 | 429 | 401 | 403 | 404 => Attempt::Retry {
            reason: format!("http_{status}"),
            after: retry_after.and_then(parse_retry_after),
        },
        413 => Attempt::TooLarge,
        400..=499 => Attempt::Rejected {
            reason: format!("http_{status}"),
        },
        _ => Attempt::Retry {
            reason: format!("http_{status}"),
            after: retry_after.and_then(parse_retry_after),
        },
    }
}

/// `Retry-After` as delay-seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            let ms = at.timestamp_millis() - chrono::Utc::now().timestamp_millis();
            Duration::from_millis(ms.max(0) as u64)
        }
    };
    if delay > MAX_RETRY_AFTER {
        tracing::warn!(
            retry_after_s = delay.as_secs(),
            cap_s = MAX_RETRY_AFTER.as_secs(),
            "the plane asked to wait longer than the cap; waiting the cap"
        );
    }
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Reads at most `limit` bytes of a response body; the rest is not read (the connection is then closed).
///
/// # Errors
/// The body could not be read.
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> reqwest::Result<bytes::Bytes> {
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if chunk.len() >= room {
            break;
        }
    }
    Ok(body.freeze())
}

/// Builds the HTTP client the shipper uses.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        // A redirect would turn the POST into a GET without the body (and drop the token across ports).
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        // The plane closes a keep-alive connection left idle for its header read timeout (10 s by default): a
        // connection idle for longer is not reused, so no request races that close and meets a reset.
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
}

/// Ships until `stop` is set and everything buffered was delivered. Callers bound the drain with
/// a timeout and drop the task after it; an interrupted send is resent on the next start.
pub async fn run(
    buffer: Arc<Buffer>,
    client: reqwest::Client,
    config: ShipperConfig,
    telemetry: Arc<Telemetry>,
    stop: CancellationToken,
) {
    let mut appended = buffer.subscribe();
    let mut cursor = buffer.shipped();
    let mut reader: Option<WalReader> = None;
    let mut read_failures = 0;
    loop {
        let last_seq = *appended.borrow_and_update();
        let next = next_record(&buffer, &mut reader, cursor, last_seq).await;
        let (seq, bytes) = match next {
            Ok(Some((seq, bytes))) => (seq, Some(bytes)),
            Ok(None) => {
                telemetry
                    .oldest_unshipped_unix_nanos
                    .store(0, Ordering::Relaxed);
                if stop.is_cancelled() {
                    return;
                }
                tokio::select! {
                    _ = appended.changed() => {}
                    () = stop.cancelled() => {}
                }
                continue;
            }
            Err(error) => {
                reader = None;
                read_failures += 1;
                if read_failures < SKIP_AFTER_READ_FAILURES || !is_damage(&error) {
                    tracing::error!(error = %error, cursor, "cannot read the disk buffer; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                // A record that cannot be read after several tries is damaged on disk: go on with the next
                // segment rather than stall everything behind it, and say what was lost.
                read_failures = 0;
                let skipped = buffer.next_segment_start(cursor + 1);
                let Some(next) = skipped else {
                    tracing::error!(error = %error, cursor, "the disk buffer's newest segment cannot be read; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                let lost = next - cursor - 1;
                tracing::error!(error = %error, from_seq = cursor + 1, to_seq = next - 1, "skipping damaged disk buffer batches");
                telemetry.dropped.add("damaged_buffer_batches", lost);
                (next - 1, None)
            }
        };
        read_failures = 0;
        // `None`: damaged batches skipped above; the cursor moves past them below.
        if let Some(bytes) = bytes {
            match BufferHeader::parse(&bytes) {
                Ok(header) => {
                    telemetry
                        .oldest_unshipped_unix_nanos
                        .store(header.appended_unix_nanos, Ordering::Relaxed);
                    if !deliver(&client, &config, &telemetry, seq, header, bytes).await {
                        // Not sent and not refused: read the record again and retry, never move past it.
                        reader = None;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
                Err(error) => {
                    tracing::error!(error = %error, seq, "skipping a malformed buffer record");
                    telemetry.dropped.add("malformed_buffer_record", 1);
                }
            }
        }
        cursor = seq;
        let shipped = buffer.clone();
        match tokio::task::spawn_blocking(move || shipped.mark_shipped(seq)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(error = %error, seq, "cannot persist the shipped cursor; the batch may be resent (the plane deduplicates)");
            }
            Err(error) => tracing::error!(error = %error, "cursor task failed"),
        }
    }
}

/// Whether a read error says the record on disk is damaged (not a passing I/O problem).
fn is_damage(error: &anyhow::Error) -> bool {
    let wal = error.downcast_ref::<gantry_wal::WalError>().or_else(|| {
        match error.downcast_ref::<crate::buffer::BufferError>() {
            Some(crate::buffer::BufferError::Wal(wal)) => Some(wal),
            _ => None,
        }
    });
    matches!(wal, Some(gantry_wal::WalError::Corrupt { .. }))
}

/// The next record after `cursor`, reusing `reader` while it has records and opening a new one
/// when `last_seq` says more were appended.
async fn next_record(
    buffer: &Arc<Buffer>,
    reader: &mut Option<WalReader>,
    cursor: u64,
    last_seq: u64,
) -> anyhow::Result<Option<(u64, Vec<u8>)>> {
    let taken = reader.take();
    let buffer = buffer.clone();
    let (kept, next) = tokio::task::spawn_blocking(move || {
        let mut current = taken;
        for _ in 0..2 {
            if current.is_none() {
                if last_seq <= cursor {
                    return (None, Ok(None));
                }
                match buffer.read_from(cursor + 1) {
                    Ok(r) => current = Some(r),
                    Err(error) => return (None, Err(anyhow::Error::from(error))),
                }
            }
            match current.as_mut().and_then(Iterator::next) {
                Some(Ok(record)) => return (current, Ok(Some(record))),
                Some(Err(error)) => return (None, Err(error.into())),
                None => current = None,
            }
        }
        (None, Ok(None))
    })
    .await?;
    *reader = kept;
    next
}

/// One batch, or a part of one after a 413 split: its id, its uncompressed payload and its item count.
struct Part {
    batch_id: String,
    payload: bytes::Bytes,
    records: u64,
}

/// Sends one batch until it is delivered or rejected for good (true: the cursor may move past it), or until the
/// batch cannot even be prepared (false: it stays in the buffer). A batch the plane finds too large (413) is split
/// in halves, sent one after the other with the ids `<batch id>.1` and `<batch id>.2` (recursively), so that a
/// resend after a crash is deduplicated part by part; a single item still too large is dropped and counted.
async fn deliver(
    client: &reqwest::Client,
    config: &ShipperConfig,
    telemetry: &Telemetry,
    seq: u64,
    header: BufferHeader,
    record: Vec<u8>,
) -> bool {
    let signal = header.signal;
    let mut record = record;
    let payload = bytes::Bytes::from(record.split_off(header.payload_start));
    let mut parts = vec![Part {
        batch_id: format!("{}-{seq}", config.agent_id),
        payload,
        records: header.records as u64,
    }];
    while let Some(part) = parts.pop() {
        match deliver_part(client, config, telemetry, signal, &part).await {
            PartOutcome::Done => {}
            PartOutcome::NotPrepared => return false,
            PartOutcome::TooLarge => {
                let Part {
                    batch_id,
                    payload,
                    records,
                } = part;
                let split = tokio::task::spawn_blocking(move || {
                    let request = gantry_proto::ExportRequest::decode(signal, &payload).ok()?;
                    let (first, second) = request.split()?;
                    Some([first, second].map(|half| {
                        let records = half.items();
                        (bytes::Bytes::from(half.encode_to_vec()), records)
                    }))
                })
                .await
                .ok()
                .flatten();
                match split {
                    Some([(first, first_records), (second, second_records)]) => {
                        tracing::warn!(
                            batch_id,
                            records,
                            "the plane found the batch too large (413); sending it in two halves"
                        );
                        // Popped in order: the first half goes first.
                        parts.push(Part {
                            batch_id: format!("{batch_id}.2"),
                            payload: second,
                            records: second_records,
                        });
                        parts.push(Part {
                            batch_id: format!("{batch_id}.1"),
                            payload: first,
                            records: first_records,
                        });
                    }
                    None => {
                        tracing::error!(
                            batch_id,
                            records,
                            "the plane refused a batch of one item as too large (413); dropping it"
                        );
                        telemetry.rejected.add("http_413", 1);
                        telemetry.dropped.add("rejected_http_413", records);
                    }
                }
            }
        }
    }
    true
}

/// How sending one part ended.
enum PartOutcome {
    /// Delivered, or refused for good (counted): the next part may go.
    Done,
    /// 413: split it.
    TooLarge,
    /// It could not be compressed: the batch stays in the buffer.
    NotPrepared,
}

/// Sends one part until the plane answers for good.
async fn deliver_part(
    client: &reqwest::Client,
    config: &ShipperConfig,
    telemetry: &Telemetry,
    signal: Signal,
    part: &Part,
) -> PartOutcome {
    let Part {
        batch_id,
        payload,
        records,
    } = part;
    let records = *records;
    let raw = payload.clone();
    // Compressed once; the body is then shared by every attempt, not copied.
    let body = match tokio::task::spawn_blocking(move || gzip(&raw)).await {
        Ok(body) => bytes::Bytes::from(body),
        Err(error) => {
            tracing::error!(error = %error, "gzip task failed; the batch stays in the buffer");
            return PartOutcome::NotPrepared;
        }
    };
    let mut backoff = Backoff::default();
    loop {
        let attempt = match send(client, config, signal, batch_id, body.clone()).await {
            Ok(attempt) => attempt,
            Err(error) => Attempt::Retry {
                reason: error_reason(&error),
                after: None,
            },
        };
        match attempt {
            Attempt::Delivered { rejected_records } => {
                telemetry.sent_batches.inc();
                telemetry
                    .sent_records
                    .add(records - rejected_records.min(records));
                telemetry.sent_bytes.add(body.len() as u64);
                if rejected_records > 0 {
                    tracing::warn!(
                        batch_id,
                        rejected_records,
                        "the plane declined some records of a batch"
                    );
                    telemetry.dropped.add("partial_success", rejected_records);
                }
                tracing::debug!(batch_id, records, bytes = body.len(), "batch delivered");
                return PartOutcome::Done;
            }
            Attempt::TooLarge => return PartOutcome::TooLarge,
            Attempt::Rejected { reason } => {
                tracing::error!(
                    batch_id,
                    reason,
                    records,
                    "the plane refused a batch; skipping it"
                );
                telemetry.rejected.add(&reason, 1);
                telemetry
                    .dropped
                    .add(&format!("rejected_{reason}"), records);
                return PartOutcome::Done;
            }
            Attempt::Retry { reason, after } => {
                telemetry.retries.inc();
                let delay = backoff.next_delay(after);
                tracing::warn!(
                    batch_id,
                    reason,
                    delay_ms = delay.as_millis() as u64,
                    "send failed; retrying"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn send(
    client: &reqwest::Client,
    config: &ShipperConfig,
    signal: Signal,
    batch_id: &str,
    body: bytes::Bytes,
) -> reqwest::Result<Attempt> {
    let response = client
        .post(format!("{}/v1/{}", config.plane, signal.as_str()))
        .bearer_auth(&config.token)
        .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
        .header(reqwest::header::CONTENT_ENCODING, "gzip")
        .header(BATCH_ID_HEADER, batch_id)
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_capped(response, MAX_RESPONSE_BYTES).await?;
    let attempt = classify(signal, status, retry_after.as_deref(), &body);
    if let Attempt::Rejected { reason } | Attempt::Retry { reason, .. } = &attempt
        && (400..500).contains(&status)
    {
        let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
        tracing::error!(batch_id, reason, response = %text, "the plane refused the batch");
    }
    Ok(attempt)
}

fn error_reason(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".into()
    } else if error.is_connect() {
        format!("connect: {error}")
    } else {
        error.to_string()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    encoder.write_all(data).expect("writing into a Vec");
    encoder.finish().expect("writing into a Vec")
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess;

    fn check(status: u16, retry_after: Option<&str>, expected: Attempt) {
        assert_eq!(
            classify(Signal::Logs, status, retry_after, b""),
            expected,
            "{status}"
        );
    }

    #[test]
    fn statuses_are_classified() {
        check(
            200,
            None,
            Attempt::Delivered {
                rejected_records: 0,
            },
        );
        check(
            204,
            None,
            Attempt::Delivered {
                rejected_records: 0,
            },
        );
        check(
            429,
            Some("3"),
            Attempt::Retry {
                reason: "http_429".into(),
                after: Some(Duration::from_secs(3)),
            },
        );
        check(
            408,
            None,
            Attempt::Retry {
                reason: "http_408".into(),
                after: None,
            },
        );
        check(
            503,
            Some("100000"),
            Attempt::Retry {
                reason: "http_503".into(),
                after: Some(MAX_RETRY_AFTER),
            },
        );
        check(413, None, Attempt::TooLarge);
        for status in [400, 405, 422] {
            check(
                status,
                Some("1"),
                Attempt::Rejected {
                    reason: format!("http_{status}"),
                },
            );
        }
        for status in [401, 403, 404] {
            check(
                status,
                None,
                Attempt::Retry {
                    reason: format!("http_{status}"),
                    after: None,
                },
            );
        }
        let body = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: 4,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(
            classify(Signal::Logs, 200, None, &body),
            Attempt::Delivered {
                rejected_records: 4
            }
        );
        let body = ExportTraceServiceResponse {
            partial_success: Some(
                opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess {
                    rejected_spans: 3,
                    error_message: "too old".into(),
                },
            ),
        }
        .encode_to_vec();
        assert_eq!(
            classify(Signal::Traces, 200, None, &body),
            Attempt::Delivered {
                rejected_records: 3
            }
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}

#[cfg(test)]
mod damaged_buffer_tests {
    use super::*;
    use std::sync::Mutex;

    /// A batch whose payload was damaged on disk after the agent opened its buffer is skipped (with the rest of
    /// its segment) after a few tries, counted as dropped, and the batches after it are delivered.
    #[tokio::test]
    async fn a_damaged_batch_is_skipped_not_retried_forever() {
        let tmp = tempfile::tempdir().unwrap();
        let telemetry = Arc::new(Telemetry::new(&[]));
        // 1 MiB limit: 64 KiB segments, so 30 KiB batches make two per segment.
        let buffer = Buffer::open(tmp.path(), 1 << 20, telemetry.clone()).unwrap();
        for n in 1..=6u8 {
            let record = crate::buffer::BufferRecord {
                signal: Signal::Logs,
                appended_unix_nanos: 1,
                records: 1,
                source_state: Vec::new(),
                payload: vec![n; 30_000],
            };
            assert!(matches!(
                buffer.append(&record, false),
                crate::buffer::AppendOutcome::Appended(_)
            ));
        }
        // Flip a byte in the middle of the first batch's payload.
        let mut segments: Vec<_> = std::fs::read_dir(tmp.path().join("buffer"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .collect();
        segments.sort();
        let mut bytes = std::fs::read(&segments[0]).unwrap();
        bytes[10_000] ^= 0xff;
        std::fs::write(&segments[0], bytes).unwrap();

        let delivered: Arc<Mutex<Vec<u8>>> = Arc::default();
        let app = axum::Router::new()
            .route(
                "/v1/logs",
                axum::routing::post(
                    |axum::extract::State(seen): axum::extract::State<Arc<Mutex<Vec<u8>>>>,
                     body: axum::body::Bytes| async move {
                        let plain = gantry_otlp::encoding::gunzip(&body, 1 << 20).unwrap();
                        seen.lock().unwrap().push(plain[0]);
                        ""
                    },
                ),
            )
            .with_state(delivered.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plane = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let stopped = CancellationToken::new();
        let shipper = tokio::spawn(run(
            buffer.clone(),
            http_client().unwrap(),
            ShipperConfig {
                plane,
                token: "t".into(),
                agent_id: "a".into(),
            },
            telemetry.clone(),
            stopped,
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while buffer.shipped() < 6 {
            assert!(std::time::Instant::now() < deadline, "shipper stalled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shipper.abort();
        server.abort();
        let delivered = delivered.lock().unwrap().clone();
        let skipped = telemetry
            .dropped
            .snapshot()
            .get("damaged_buffer_batches")
            .copied()
            .unwrap_or(0);
        assert!(skipped >= 1, "nothing counted as dropped");
        assert_eq!(delivered.len() as u64 + skipped, 6, "{delivered:?}");
        assert_eq!(delivered.last(), Some(&6));
        assert!(!delivered.contains(&1), "{delivered:?}");
    }
}

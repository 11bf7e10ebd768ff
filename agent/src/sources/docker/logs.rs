//! Following one container's stdout and stderr: splitting docker's timestamp off each line, joining partial lines, guessing severity, and handing log records to the batcher.

use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptions;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::StreamExt;

use super::checkpoint::Positions;
use super::container::Container;
use crate::sources::file::parse::severity_number;
use crate::sources::{kv, string_value};
use crate::telemetry::now_unix_nanos;

/// A line longer than this is cut into records of at most this size (docker's own pieces are 16 KiB, but a TTY
/// container's line comes whole).
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// Bytes of records that may be on their way from the followers to the batcher, all containers together.
pub const LINE_QUEUE_BYTES: usize = 8 << 20;
/// Pause before following a container again whose log stream ended while it still runs (it restarted).
const REFOLLOW_DELAY: Duration = Duration::from_secs(1);

/// One log record on its way to the batcher.
#[derive(Debug)]
pub struct LogLine {
    /// The container it came from.
    pub container: Arc<Container>,
    /// Docker's timestamp of the line (unix nanos; 0 when the line had none): its position.
    pub timestamp: u64,
    /// The record.
    pub record: LogRecord,
    /// Its share of the bytes allowed on the way to the batcher ([`LINE_QUEUE_BYTES`]); released when the batcher
    /// takes the line.
    pub budget: Option<OwnedSemaphorePermit>,
}

/// Splits docker's RFC 3339 timestamp (`timestamps=true`) from the front of a line. A line without one is returned
/// whole, with no time.
pub fn split_timestamp(line: &str) -> (Option<u64>, &str) {
    let Some((stamp, rest)) = line.split_once(' ') else {
        return match parse_stamp(line.trim_end_matches(['\n', '\r'])) {
            Some(time) => (Some(time), ""),
            None => (None, line),
        };
    };
    match parse_stamp(stamp) {
        Some(time) => (Some(time), rest),
        None => (None, line),
    }
}

fn parse_stamp(stamp: &str) -> Option<u64> {
    // Cheap reject before asking chrono: `2024-05-01T…`.
    if stamp.len() < 20 || stamp.as_bytes()[4] != b'-' || stamp.as_bytes()[10] != b'T' {
        return None;
    }
    let nanos = chrono::DateTime::parse_from_rfc3339(stamp)
        .ok()?
        .timestamp_nanos_opt()?;
    u64::try_from(nanos).ok()
}

/// The severity of a JSON line with a `level`, `severity` or `lvl` string field, or of a logfmt line with
/// `level=…` (or `lvl=`, `severity=`): (OTLP number, text as written). `None` when absent or not a known level.
pub fn detect_severity(line: &str) -> Option<(i32, String)> {
    let trimmed = line.trim();
    let text = if trimmed.starts_with('{') {
        json_level(trimmed)?
    } else {
        logfmt_level(trimmed)?
    };
    let number = severity_number(&text);
    (number != 0).then_some((number, text))
}

const LEVEL_KEYS: [&str; 3] = ["level", "severity", "lvl"];

fn json_level(line: &str) -> Option<String> {
    // Only lines that mention a level key are parsed.
    if !LEVEL_KEYS.iter().any(|key| line.contains(key)) {
        return None;
    }
    let serde_json::Value::Object(map) = serde_json::from_str(line).ok()? else {
        return None;
    };
    LEVEL_KEYS
        .iter()
        .find_map(|key| map.get(*key)?.as_str().map(str::to_owned))
}

fn logfmt_level(line: &str) -> Option<String> {
    line.split_ascii_whitespace().find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        LEVEL_KEYS
            .contains(&key)
            .then(|| value.trim_matches('"').to_owned())
            .filter(|v| !v.is_empty())
    })
}

/// A line being assembled from docker's partial messages (lines over 16 KiB come in pieces).
#[derive(Debug, Default)]
struct Pending {
    /// Timestamp of the first piece: the record's time.
    first: Option<u64>,
    /// Timestamp of the last piece: the record's position.
    last: Option<u64>,
    text: String,
}

/// Turns the frames of one container's log stream into records: one record per line, pieces joined.
#[derive(Debug, Default)]
pub struct Framer {
    /// After this timestamp (unix nanos) lines are new; lines at or before it were read before.
    skip_until: u64,
    /// stdout, stderr.
    pending: [Pending; 2],
}

/// A record ready for the batcher: (position, record).
pub type Framed = (u64, LogRecord);

impl Framer {
    /// A framer that drops lines stamped at or before `skip_until` (0: none).
    pub fn new(skip_until: u64) -> Framer {
        Framer {
            skip_until,
            pending: Default::default(),
        }
    }

    /// Takes one frame of `stream` (0 stdout, 1 stderr) with its timestamp prefix; returns the records it
    /// completes (usually none or one; more when a line passes [`MAX_RECORD_BYTES`]).
    pub fn push(&mut self, stream: usize, frame: &[u8]) -> Vec<Framed> {
        let text = String::from_utf8_lossy(frame);
        let (time, rest) = split_timestamp(&text);
        let mut out = Vec::new();
        if let Some(time) = time
            && time <= self.skip_until
        {
            return out;
        }
        let complete = rest.ends_with('\n');
        let content = rest.strip_suffix('\n').unwrap_or(rest);
        let mut content = content.strip_suffix('\r').unwrap_or(content);
        loop {
            let pending = &mut self.pending[stream];
            if pending.first.is_none() {
                pending.first = time;
            }
            if time.is_some() {
                pending.last = time;
            }
            let piece = truncate(content, MAX_RECORD_BYTES - pending.text.len());
            pending.text.push_str(piece);
            content = &content[piece.len()..];
            if content.is_empty() {
                break;
            }
            out.extend(self.take(stream));
        }
        if complete || self.pending[stream].text.len() >= MAX_RECORD_BYTES {
            out.extend(self.take(stream));
        }
        out
    }

    /// The record of `stream` still being assembled, if any (at the end of the stream).
    pub fn take(&mut self, stream: usize) -> Option<Framed> {
        let pending = std::mem::take(&mut self.pending[stream]);
        if pending.first.is_none() && pending.text.is_empty() {
            return None;
        }
        let severity = detect_severity(&pending.text);
        let (severity_number, severity_text) = severity.unwrap_or_default();
        let record = LogRecord {
            time_unix_nano: pending.first.unwrap_or(0),
            observed_time_unix_nano: now_unix_nanos(),
            severity_number,
            severity_text,
            body: Some(string_value(pending.text)),
            attributes: vec![iostream(stream)],
            ..Default::default()
        };
        Some((pending.last.unwrap_or(0), record))
    }
}

fn iostream(stream: usize) -> KeyValue {
    kv(
        "log.iostream",
        if stream == 1 { "stderr" } else { "stdout" },
    )
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Follows `container`'s log until it stops (again after each restart noticed while following), sending records
/// to `lines` within `budget` (permits are bytes, see [`LINE_QUEUE_BYTES`]). Returns when the container is no
/// longer running, the daemon fails, or the batcher is gone.
pub async fn follow(
    docker: Docker,
    container: Arc<Container>,
    positions: Arc<Positions>,
    lines: mpsc::Sender<LogLine>,
    budget: Arc<Semaphore>,
) {
    let out = Out {
        container: &container,
        positions: &positions,
        lines: &lines,
        budget: &budget,
    };
    let id = container.id.as_str();
    loop {
        let resume = positions.resume(id);
        let options = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            timestamps: true,
            // Docker takes whole seconds; the framer drops what is at or before `resume` within that second.
            since: i32::try_from(resume / 1_000_000_000).unwrap_or(0),
            ..Default::default()
        };
        tracing::debug!(container = %container.name, since_unix_nanos = resume, "following container logs");
        let mut stream = docker.logs(id, Some(options));
        let mut framer = Framer::new(resume);
        while let Some(frame) = stream.next().await {
            let (stream_index, bytes) = match frame {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    (0, message)
                }
                Ok(LogOutput::StdErr { message }) => (1, message),
                Ok(LogOutput::StdIn { .. }) => continue,
                Err(error @ bollard::errors::Error::DockerResponseServerError { .. }) => {
                    // E.g. a logging driver that cannot be read back (`none`, `syslog`).
                    tracing::warn!(container = %container.name, error = %error, "the daemon refuses this container's log; it is not collected");
                    return;
                }
                Err(error) => {
                    tracing::debug!(container = %container.name, error = %error, "container log stream failed");
                    return;
                }
            };
            for framed in framer.push(stream_index, &bytes) {
                if !out.send(framed).await {
                    return;
                }
            }
        }
        for stream_index in 0..2 {
            if let Some(framed) = framer.take(stream_index)
                && !out.send(framed).await
            {
                return;
            }
        }
        // The stream ends when the container stops; it may already run again.
        match docker.inspect_container(id, None).await {
            Ok(inspect)
                if inspect
                    .state
                    .as_ref()
                    .and_then(|s| s.running)
                    .unwrap_or(false) =>
            {
                tokio::time::sleep(REFOLLOW_DELAY).await;
            }
            _ => {
                tracing::debug!(container = %container.name, "container stopped; its log is read to the end");
                return;
            }
        }
    }
}

/// Where a follower's records go.
struct Out<'a> {
    container: &'a Arc<Container>,
    positions: &'a Positions,
    lines: &'a mpsc::Sender<LogLine>,
    budget: &'a Arc<Semaphore>,
}

impl Out<'_> {
    /// Sends one record to the batcher (waiting while it is busy or the queue holds too many bytes: backpressure)
    /// and records the position. `false` when the batcher is gone.
    async fn send(&self, (timestamp, record): Framed) -> bool {
        let bytes = record.body.as_ref().map_or(0, |b| b.encoded_len()) + 64;
        let permits = bytes.min(LINE_QUEUE_BYTES) as u32;
        let Ok(budget) = self.budget.clone().acquire_many_owned(permits).await else {
            return false;
        };
        let line = LogLine {
            container: self.container.clone(),
            timestamp,
            record,
            budget: Some(budget),
        };
        if self.lines.send(line).await.is_err() {
            return false;
        }
        if timestamp > 0 {
            self.positions.read_up_to(&self.container.id, timestamp);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::any_value;

    use super::*;

    #[test]
    fn timestamps_split_from_lines() {
        let check = |line: &str, time: Option<u64>, rest: &str| {
            assert_eq!(split_timestamp(line), (time, rest), "{line:?}");
        };
        check(
            "2026-11-25T04:01:28.096539950Z line 1\n",
            Some(1_795_579_288_096_539_950),
            "line 1\n",
        );
        // RFC3339Nano drops trailing zeros.
        check(
            "2026-11-25T04:01:28.5Z x",
            Some(1_795_579_288_500_000_000),
            "x",
        );
        check(
            "2026-11-25T04:01:28Z  two spaces",
            Some(1_795_579_288_000_000_000),
            " two spaces",
        );
        check(
            "2026-11-25T04:01:28Z\n",
            Some(1_795_579_288_000_000_000),
            "",
        );
        check("no timestamp here\n", None, "no timestamp here\n");
        check("2026-13-45T99:99:99Z bad", None, "2026-13-45T99:99:99Z bad");
        check("", None, "");
    }

    #[test]
    fn severity_is_guessed_from_json_and_logfmt() {
        let check = |line: &str, expected: Option<(i32, &str)>| {
            assert_eq!(
                detect_severity(line),
                expected.map(|(n, t)| (n, t.to_owned())),
                "{line:?}"
            );
        };
        check(r#"{"level":"error","msg":"boom"}"#, Some((17, "error")));
        check(
            r#"{"severity":"WARNING","msg":"hm"}"#,
            Some((13, "WARNING")),
        );
        check(r#"{"level":30,"msg":"pino number"}"#, None);
        check(r#"{"msg":"no level"}"#, None);
        check(r#"{"level":"info""#, None);
        check(r#"time=2024-05-01 level=debug msg="x""#, Some((5, "debug")));
        check(r#"lvl="warn" msg=y"#, Some((13, "warn")));
        check("level=verbose msg=y", None);
        check("plain text with level in it", None);
        check("", None);
    }

    fn body(record: &LogRecord) -> &str {
        match record.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    fn one(mut records: Vec<Framed>) -> Framed {
        assert_eq!(records.len(), 1, "{records:?}");
        records.remove(0)
    }

    #[test]
    fn frames_become_records_with_pieces_joined_and_old_lines_skipped() {
        let mut framer = Framer::new(1_795_579_288_000_000_000);
        assert!(
            framer
                .push(0, b"2026-11-25T04:01:28Z read before\n")
                .is_empty(),
            "at the checkpoint: skipped"
        );
        let (at, record) = one(framer.push(1, b"2026-11-25T04:01:29Z {\"level\":\"error\"}\r\n"));
        assert_eq!(at, 1_795_579_289_000_000_000);
        assert_eq!(record.time_unix_nano, at);
        assert_eq!(body(&record), "{\"level\":\"error\"}");
        assert_eq!(record.severity_number, 17);
        assert_eq!(record.attributes, vec![kv("log.iostream", "stderr")]);

        assert!(framer.push(0, b"2026-11-25T04:01:30Z first ").is_empty());
        one(framer.push(1, b"2026-11-25T04:01:30.5Z other stream\n"));
        let (at, record) = one(framer.push(0, b"2026-11-25T04:01:31Z second\n"));
        assert_eq!(body(&record), "first second");
        assert_eq!(record.time_unix_nano, 1_795_579_290_000_000_000);
        assert_eq!(
            at, 1_795_579_291_000_000_000,
            "the position is the last piece"
        );
        assert_eq!(record.attributes, vec![kv("log.iostream", "stdout")]);
        assert_eq!(record.severity_number, 0);

        assert!(
            framer
                .push(0, b"2026-11-25T04:01:32Z no newline at exit")
                .is_empty()
        );
        let (_, record) = framer.take(0).unwrap();
        assert_eq!(body(&record), "no newline at exit");
        assert!(framer.take(0).is_none());
        assert!(framer.take(1).is_none());
    }

    #[test]
    fn long_lines_are_cut_into_records() {
        let mut framer = Framer::new(0);
        let line = format!(
            "2026-11-25T04:01:28Z {}{}\n",
            "é".repeat(MAX_RECORD_BYTES),
            "tail"
        );
        let records = framer.push(0, line.as_bytes());
        let lengths: Vec<usize> = records.iter().map(|(_, r)| body(r).len()).collect();
        assert_eq!(lengths, [MAX_RECORD_BYTES, MAX_RECORD_BYTES, 4]);
        assert!(
            records
                .iter()
                .all(|(at, _)| *at == 1_795_579_288_000_000_000)
        );
        assert!(framer.take(0).is_none());
    }
}

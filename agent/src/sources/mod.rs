//! Sources of telemetry on the node; each turns what it reads into OTLP batches for the disk buffer.
//!
//! Every source is its own component: it owns its task or thread, builds OTLP export requests and hands them to
//! the buffer writer through a [`Sink`]. The file source talks to the writer directly (it pins its batches until
//! its checkpoint is written); the others use [`Sink::append`].

pub mod docker;
pub mod file;
pub mod host;

use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::buffer::{AppendOutcome, AppendRequest, BufferRecord, Signal};
use crate::telemetry::now_unix_nanos;

/// A handle on the buffer writer for sources that have no position to checkpoint (metrics, Docker, the OTLP
/// receiver). Cheap to clone.
#[derive(Clone)]
pub struct Sink {
    appends: mpsc::Sender<AppendRequest>,
}

/// The buffer writer has stopped (the agent is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the buffer writer stopped")]
pub struct WriterStopped;

impl Sink {
    /// A sink that sends to the buffer writer behind `appends`.
    pub fn new(appends: mpsc::Sender<AppendRequest>) -> Sink {
        Sink { appends }
    }

    /// Appends one encoded export request of `signal` holding `records` records (log records, data points or
    /// spans) and waits until it is durable ([`AppendOutcome::Appended`]) or refused.
    pub async fn append(
        &self,
        signal: Signal,
        payload: Vec<u8>,
        records: u32,
    ) -> Result<AppendOutcome, WriterStopped> {
        let (reply, answer) = oneshot::channel();
        let record = BufferRecord {
            signal,
            appended_unix_nanos: now_unix_nanos(),
            records,
            source_state: Vec::new(),
            payload,
        };
        self.appends
            .send(AppendRequest {
                record,
                pin: false,
                reply,
            })
            .await
            .map_err(|_| WriterStopped)?;
        answer.await.map_err(|_| WriterStopped)
    }
}

/// Encodes an `ExportLogsServiceRequest` with one `ResourceLogs` per group and the agent's scope, from records
/// already encoded as `ScopeLogs.log_records` entries (tag, length, `LogRecord`; see [`frame_log_records`]). The same
/// bytes as building the request and calling `encode_to_vec`, without prost's repeated length passes over every
/// record.
pub fn encode_logs<'a>(groups: impl IntoIterator<Item = (&'a Resource, &'a [u8])>) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
    fn framed(len: usize) -> usize {
        1 + encoded_len_varint(len as u64) + len
    }
    fn header(tag: u32, len: usize, out: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(len as u64, out);
    }
    let scope = agent_scope();
    let scope_len = scope.encoded_len();
    let mut out = Vec::new();
    for (resource, records) in groups {
        let scope_logs_len = framed(scope_len) + records.len();
        let resource_len = resource.encoded_len();
        let resource_logs_len = framed(resource_len) + framed(scope_logs_len);
        out.reserve(framed(resource_logs_len));
        // ExportLogsServiceRequest.resource_logs = 1; ResourceLogs.resource = 1, .scope_logs = 2;
        // ScopeLogs.scope = 1, .log_records = 2.
        header(1, resource_logs_len, &mut out);
        header(1, resource_len, &mut out);
        resource.encode_raw(&mut out);
        header(2, scope_logs_len, &mut out);
        header(1, scope_len, &mut out);
        scope.encode_raw(&mut out);
        out.extend_from_slice(records);
    }
    out
}

/// `records` as `ScopeLogs.log_records` entries, for [`encode_logs`].
pub fn frame_log_records(records: &[LogRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for record in records {
        prost::encoding::message::encode(2, record, &mut out);
    }
    out
}

/// An OTLP string value.
pub fn string_value(s: String) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s)),
    }
}

/// An OTLP string attribute.
pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(string_value(value.to_owned())),
        ..Default::default()
    }
}

/// An OTLP integer attribute.
pub fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// The instrumentation scope of everything the agent produces itself.
pub fn agent_scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "gantry-agent".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// The machine's host name (`/proc/sys/kernel/hostname`, then `/etc/hostname`, then `$HOSTNAME`).
pub fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};

    #[test]
    fn encode_logs_matches_prost() {
        let record = |body: &str, n: u64| LogRecord {
            time_unix_nano: n,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: Some(string_value(body.repeat(n as usize))),
            attributes: vec![kv("k", "v"), kv_int("n", n as i64)],
            ..Default::default()
        };
        let groups = [
            (
                Resource {
                    attributes: vec![kv("service.name", "a"), kv("host.name", "h")],
                    ..Default::default()
                },
                (1..200).map(|n| record("x", n)).collect::<Vec<_>>(),
            ),
            (Resource::default(), vec![record("", 0)]),
            (Resource::default(), Vec::new()),
        ];
        let expected = ExportLogsServiceRequest {
            resource_logs: groups
                .iter()
                .map(|(resource, records)| ResourceLogs {
                    resource: Some(resource.clone()),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(agent_scope()),
                        log_records: records.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        }
        .encode_to_vec();
        let framed: Vec<(Resource, Vec<u8>)> = groups
            .iter()
            .map(|(r, l)| (r.clone(), frame_log_records(l)))
            .collect();
        let ours = encode_logs(framed.iter().map(|(r, l)| (r, l.as_slice())));
        assert_eq!(ours, expected);
    }
}

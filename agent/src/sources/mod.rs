//! Sources of telemetry on the node; each turns what it reads into OTLP batches for the disk buffer.
//!
//! Every source is its own component: it owns its task or thread, builds OTLP export requests and hands them to
//! the buffer writer through a [`Sink`]. The file source talks to the writer directly (it pins its batches until
//! its checkpoint is written); the others use [`Sink::append`].

pub mod docker;
pub mod file;
pub mod host;

use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
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

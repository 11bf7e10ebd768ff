//! The log batcher: gathers the followers' records into one `ExportLogsServiceRequest` (one `ResourceLogs` per container), appends it to the buffer, then moves the checkpoints.
//!
//! A batch is cut at `batch_max_lines` records, [`BATCH_MAX_BYTES`] of bodies, or `batch_timeout` after its first
//! record. While the buffer is full the batch is kept and retried every [`FULL_RETRY`]; nothing is read from the
//! followers meanwhile, so they stop reading their docker streams (backpressure). When the agent stops, the batch
//! is appended if the buffer takes it at once and dropped otherwise: its lines are after the checkpoint, so the
//! next start reads them again.

use gantry_support::CancellationToken;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::checkpoint::Positions;
use super::container::Container;
use super::logs::LogLine;
use crate::buffer::{AppendOutcome, Signal};
use crate::sources::{Sink, agent_scope};
use crate::telemetry::Telemetry;

/// A batch is cut once its bodies reach this many bytes.
pub const BATCH_MAX_BYTES: usize = 1 << 20;
/// How often a batch refused by a full buffer is offered again.
pub const FULL_RETRY: Duration = Duration::from_millis(200);

/// Records of one container, in read order.
#[derive(Debug)]
struct Group {
    container: Arc<Container>,
    records: Vec<LogRecord>,
    /// Position of the last record that had one.
    last_timestamp: u64,
}

/// The batch being filled.
#[derive(Debug, Default)]
pub struct Batch {
    groups: Vec<Group>,
    by_id: HashMap<String, usize>,
    records: usize,
    bytes: usize,
    deadline: Option<Instant>,
}

impl Batch {
    /// Adds one line; the first one starts the batch's clock.
    pub fn push(&mut self, line: LogLine, timeout: Duration) {
        // The line leaves the queue: its bytes are now the batch's, bounded by `BATCH_MAX_BYTES`.
        drop(line.budget);
        self.deadline
            .get_or_insert_with(|| Instant::now() + timeout);
        self.records += 1;
        self.bytes += line.record.body.as_ref().map_or(0, |b| b.encoded_len());
        let index = *self
            .by_id
            .entry(line.container.id.clone())
            .or_insert_with(|| {
                self.groups.push(Group {
                    container: line.container.clone(),
                    records: Vec::new(),
                    last_timestamp: 0,
                });
                self.groups.len() - 1
            });
        let group = &mut self.groups[index];
        group.records.push(line.record);
        if line.timestamp > 0 {
            group.last_timestamp = line.timestamp;
        }
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Whether it must be cut now regardless of its clock.
    pub fn is_full(&self, max_lines: usize) -> bool {
        self.records >= max_lines || self.bytes >= BATCH_MAX_BYTES
    }

    /// The encoded export request, its record count, and each container's last position.
    pub fn encode(self) -> (Vec<u8>, u32, Vec<(String, u64)>) {
        let positions = self
            .groups
            .iter()
            .filter(|g| g.last_timestamp > 0)
            .map(|g| (g.container.id.clone(), g.last_timestamp))
            .collect();
        let request = ExportLogsServiceRequest {
            resource_logs: self
                .groups
                .into_iter()
                .map(|group| ResourceLogs {
                    resource: Some(Resource {
                        attributes: group.container.resource.clone(),
                        ..Default::default()
                    }),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(agent_scope()),
                        log_records: group.records,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        };
        (
            request.encode_to_vec(),
            u32::try_from(self.records).unwrap_or(u32::MAX),
            positions,
        )
    }
}

/// How a flush ended.
enum Flushed {
    /// Appended, or given up (dropped and counted); batching goes on.
    Done,
    /// The agent is stopping or the buffer writer is gone.
    Stopping,
}

/// The batcher's settings and handles.
pub struct Batcher {
    /// Cut at this many records.
    pub max_lines: usize,
    /// Cut this long after the first record.
    pub timeout: Duration,
    /// Where batches go.
    pub sink: Sink,
    /// Checkpoints moved after each append.
    pub positions: Arc<Positions>,
    /// Counters.
    pub telemetry: Arc<Telemetry>,
}

impl Batcher {
    /// Batches `lines` until `stop` turns true or every sender is gone, then offers the last batch once.
    pub async fn run(self, mut lines: mpsc::Receiver<LogLine>, stop: CancellationToken) {
        let mut batch = Batch::default();
        loop {
            let deadline = batch.deadline;
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    if let Flushed::Stopping = self.flush(std::mem::take(&mut batch), &stop).await {
                        return;
                    }
                }
                line = lines.recv() => match line {
                    Some(line) => {
                        batch.push(line, self.timeout);
                        if batch.is_full(self.max_lines)
                            && let Flushed::Stopping = self.flush(std::mem::take(&mut batch), &stop).await
                        {
                            return;
                        }
                    }
                    None => break,
                },
            }
        }
        if !batch.is_empty() {
            self.flush_once(batch).await;
        }
    }

    /// Appends `batch`, waiting (paused) while the buffer is full; gives up when the agent stops.
    async fn flush(&self, batch: Batch, stop: &CancellationToken) -> Flushed {
        let (payload, records, positions) = batch.encode();
        let mut paused = false;
        let flushed = loop {
            match self
                .sink
                .append(Signal::Logs, payload.clone(), records)
                .await
            {
                Ok(AppendOutcome::Appended(_)) => {
                    self.appended(records, &positions).await;
                    break Flushed::Done;
                }
                Ok(outcome @ (AppendOutcome::Full | AppendOutcome::Failed(_))) => {
                    // Full: wait for the shipper. Failed: the buffer recovers itself (a full disk, say). Either way
                    // the batch is kept and offered again, since the checkpoints cannot move past it.
                    if !paused {
                        paused = true;
                        self.telemetry
                            .sources_paused
                            .fetch_add(1, Ordering::Relaxed);
                        match &outcome {
                            AppendOutcome::Failed(message) => tracing::error!(
                                error = %message,
                                "disk buffer append failed; pausing container log reading and retrying"
                            ),
                            _ => tracing::warn!(
                                "disk buffer full; pausing container log reading until the shipper makes room"
                            ),
                        }
                    }
                    tokio::select! {
                        () = stop.cancelled() => {
                            tracing::debug!(records, "stopping with the buffer full: the batch is read again on the next start");
                            break Flushed::Stopping;
                        }
                        () = tokio::time::sleep(FULL_RETRY) => {}
                    }
                }
                Err(_) => break Flushed::Stopping,
            }
        };
        if paused {
            self.telemetry
                .sources_paused
                .fetch_sub(1, Ordering::Relaxed);
            if let Flushed::Done = flushed {
                tracing::info!("disk buffer has room again; resuming container log reading");
            }
        }
        flushed
    }

    /// Offers `batch` once (at shutdown): appended if the buffer takes it, dropped otherwise.
    async fn flush_once(&self, batch: Batch) {
        let (payload, records, positions) = batch.encode();
        match self.sink.append(Signal::Logs, payload, records).await {
            Ok(AppendOutcome::Appended(_)) => self.appended(records, &positions).await,
            Ok(outcome) => {
                tracing::debug!(
                    ?outcome,
                    records,
                    "last container log batch not appended; it is read again on the next start"
                );
            }
            Err(_) => {}
        }
    }

    /// Counts the records and moves the checkpoints of an appended batch.
    async fn appended(&self, records: u32, positions: &[(String, u64)]) {
        self.telemetry
            .produced
            .add("docker_logs", u64::from(records));
        let mut moved = false;
        for (id, at) in positions {
            moved |= self.positions.made_durable(id, *at);
        }
        if moved && let Err(error) = self.positions.persist().await {
            tracing::warn!(error = %error, "writing the docker checkpoints failed; lines may be read twice after a restart");
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::any_value;

    use super::*;
    use crate::sources::{kv, string_value};

    fn container(id: &str) -> Arc<Container> {
        Arc::new(Container {
            id: id.into(),
            name: format!("name-{id}"),
            service: "svc".into(),
            started_unix_nanos: 0,
            running: true,
            resource: vec![kv("container.id", id)],
        })
    }

    fn line(container: &Arc<Container>, timestamp: u64, body: &str) -> LogLine {
        LogLine {
            container: container.clone(),
            timestamp,
            record: LogRecord {
                time_unix_nano: timestamp,
                body: Some(string_value(body.into())),
                ..Default::default()
            },
            budget: None,
        }
    }

    #[test]
    fn one_resource_per_container_and_last_positions() {
        let (a, b) = (container("a"), container("b"));
        let mut batch = Batch::default();
        assert!(batch.is_empty());
        batch.push(line(&a, 10, "a1"), Duration::from_secs(1));
        batch.push(line(&b, 11, "b1"), Duration::from_secs(1));
        batch.push(line(&a, 12, "a2"), Duration::from_secs(1));
        batch.push(
            line(&a, 0, "a3 without a timestamp"),
            Duration::from_secs(1),
        );
        assert!(batch.is_full(4) && !batch.is_full(5));
        let (payload, records, positions) = batch.encode();
        assert_eq!(records, 4);
        assert_eq!(positions, vec![("a".into(), 12), ("b".into(), 11)]);
        let request = ExportLogsServiceRequest::decode(payload.as_slice()).unwrap();
        let bodies: Vec<(String, Vec<String>)> = request
            .resource_logs
            .iter()
            .map(|rl| {
                let id = match &rl.resource.as_ref().unwrap().attributes[0].value {
                    Some(v) => match &v.value {
                        Some(any_value::Value::StringValue(s)) => s.clone(),
                        other => panic!("{other:?}"),
                    },
                    None => panic!("no value"),
                };
                let bodies = rl.scope_logs[0]
                    .log_records
                    .iter()
                    .map(|r| match r.body.as_ref().and_then(|b| b.value.as_ref()) {
                        Some(any_value::Value::StringValue(s)) => s.clone(),
                        other => panic!("{other:?}"),
                    })
                    .collect();
                (id, bodies)
            })
            .collect();
        assert_eq!(
            bodies,
            vec![
                (
                    "a".into(),
                    vec!["a1".into(), "a2".into(), "a3 without a timestamp".into()]
                ),
                ("b".into(), vec!["b1".into()]),
            ]
        );
    }
}

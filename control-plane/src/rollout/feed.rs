//! The judge's per-request feed: the plane's intake hands every durably stored batch here; what concerns a
//! service under judgment becomes a [`Sample`], queued per service until the rollout loop takes it. Nothing is
//! kept for services not being judged, and the check for that is one read of a small map.
//!
//! - A canary's routed requests: the routers' spans (`gantry.router: true`), each with `service.version` (on its
//!   resource) and `gantry.route.share`, the probability the router had of picking that version, which gives the
//!   canary's share of that request exactly.
//! - Blue-green's mirrored pairs: the spans of mirrored copies (`gantry.mirror: true`), each carrying the live
//!   answer to the same request (`gantry.mirror.live.*`).
//! - The log rule's error logs: log records of either version with a severity of `ERROR` or above (severity
//!   number 17 and up, OTel logs data model; a record with no number counts by its text) and a trace id (a
//!   request's: the judge counts each request once, however many records it wrote).

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use gantry_judge::{Observation, Pair};
use gantry_proto::ExportRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use tokio::sync::Notify;

/// Observations kept per service between two rounds of the loop, at most (the rest are dropped and logged: the
/// judge loses evidence, never gains false evidence).
const QUEUE: usize = 200_000;

/// What the judge is fed.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// A request the routers sent to one version or the other (a canary's).
    Routed(Observation),
    /// A safe request answered by both versions (blue-green's preview).
    Mirrored(Pair),
    /// A `severity >= ERROR` log record of a request (the log rule): of the canary (`true`) or of the stable
    /// version, when it was written (ns since the epoch), and its trace id (hex; the request's).
    ErrorLog(bool, u64, String),
}

/// A sample with its service and the canary version it was extracted for.
pub type Tagged = (String, String, Sample);

/// A service under judgment: its versions, and what is extracted for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// The stable version's label.
    pub stable: String,
    /// The canary's.
    pub canary: String,
    /// Mirrored pairs (blue-green) rather than routed requests (a canary).
    pub mirrored: bool,
    /// Error logs too (the log rule).
    pub logs: bool,
}

/// The samples of the services under judgment.
#[derive(Debug, Default)]
pub struct Feed {
    watched: RwLock<HashMap<String, Watch>>,
    queues: Mutex<HashMap<String, Vec<Sample>>>,
    /// Notified when observations arrive.
    pub arrived: Notify,
}

impl Feed {
    /// Sets the services under judgment (the rollout loop calls this every round).
    pub fn watch(&self, watched: HashMap<String, Watch>) {
        let mut current = self.watched.write().unwrap_or_else(|e| e.into_inner());
        if *current != watched {
            // A service's queue goes with its watch: a new rollout starts with none of the last one's requests.
            self.queues
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|service, _| watched.get(service) == current.get(service));
            *current = watched;
        }
    }

    /// Takes the samples of `service` queued so far.
    pub fn take(&self, service: &str) -> Vec<Sample> {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(service)
            .unwrap_or_default()
    }

    /// The samples in `request` for the services under judgment (none when nothing is judged), each with its
    /// service and the canary version it was judged against.
    pub fn extract(&self, request: &ExportRequest) -> Vec<Tagged> {
        let watched = self.watched.read().unwrap_or_else(|e| e.into_inner());
        if watched.is_empty() {
            return Vec::new();
        }
        match request {
            ExportRequest::Traces(traces) => spans(&watched, traces),
            ExportRequest::Logs(logs) => error_logs(&watched, logs),
            ExportRequest::Metrics(_) => Vec::new(),
        }
    }

    /// Queues samples (after their batch is durable) and wakes the loop; those extracted for a rollout that
    /// is no longer the service's are dropped.
    pub fn push(&self, observations: Vec<Tagged>) {
        if observations.is_empty() {
            return;
        }
        let watched = self.watched.read().unwrap_or_else(|e| e.into_inner());
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let mut dropped = 0;
        for (service, canary, sample) in observations {
            if watched
                .get(&service)
                .is_none_or(|watch| watch.canary != canary)
            {
                continue;
            }
            let queue = queues.entry(service).or_default();
            if queue.len() < QUEUE {
                queue.push(sample);
            } else {
                dropped += 1;
            }
        }
        drop(queues);
        drop(watched);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "judge observations dropped: the rollout loop is behind"
            );
        }
        self.arrived.notify_one();
    }
}

/// The version of a resource of a watched service: (service, watch, whether it is the canary).
fn versioned<'a>(
    watched: &'a HashMap<String, Watch>,
    attributes: &'a [KeyValue],
) -> Option<(&'a str, &'a Watch, bool)> {
    let service = text(attributes, "service.name")?;
    let version = text(attributes, "service.version")?;
    let watch = watched.get(service)?;
    if version == watch.canary {
        Some((service, watch, true))
    } else if version == watch.stable {
        Some((service, watch, false))
    } else {
        None
    }
}

/// Whether a span's answer failed: a 5xx or no answer (status 0), or an error status.
fn failed(status: i64, error_status: bool) -> bool {
    status >= 500 || status == 0 || error_status
}

fn spans(
    watched: &HashMap<String, Watch>,
    traces: &opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
) -> Vec<Tagged> {
    let mut found = Vec::new();
    for resource_spans in &traces.resource_spans {
        let attributes = resource_spans
            .resource
            .as_ref()
            .map_or(&[][..], |r| &r.attributes[..]);
        let Some((service, watch, canary)) = versioned(watched, attributes) else {
            continue;
        };
        for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
            let status = match find(&span.attributes, "http.response.status_code") {
                Some(Value::IntValue(code)) => *code,
                _ => 0,
            };
            let error_status = span.status.as_ref().is_some_and(|s| s.code == 2);
            let latency_ns = span
                .end_time_unix_nano
                .saturating_sub(span.start_time_unix_nano);
            let sample = if watch.mirrored {
                // A copy sent to the new version, with the live answer of the stable one.
                if !canary
                    || !matches!(
                        find(&span.attributes, "gantry.mirror"),
                        Some(Value::BoolValue(true))
                    )
                {
                    continue;
                }
                if text(&span.attributes, "gantry.mirror.live.version")
                    != Some(watch.stable.as_str())
                {
                    continue;
                }
                let (Some(Value::IntValue(live_status)), Some(Value::IntValue(live_ns))) = (
                    find(&span.attributes, "gantry.mirror.live.status_code"),
                    find(&span.attributes, "gantry.mirror.live.duration_ns"),
                ) else {
                    continue;
                };
                Sample::Mirrored(Pair {
                    canary_error: failed(status, error_status),
                    stable_error: failed(*live_status, false),
                    canary_latency_ns: latency_ns,
                    stable_latency_ns: u64::try_from(*live_ns).unwrap_or(0),
                    trace_id: hex::encode(&span.trace_id),
                    time_ns: span.end_time_unix_nano,
                })
            } else {
                if !matches!(
                    find(&span.attributes, "gantry.router"),
                    Some(Value::BoolValue(true))
                ) {
                    continue;
                }
                let share = match find(&span.attributes, "gantry.route.share") {
                    Some(Value::DoubleValue(share)) if (0.0..=1.0).contains(share) => *share,
                    _ => continue,
                };
                Sample::Routed(Observation {
                    canary,
                    canary_share: if canary { share } else { 1.0 - share },
                    error: failed(status, error_status),
                    latency_ns,
                    trace_id: hex::encode(&span.trace_id),
                    time_ns: span.end_time_unix_nano,
                })
            };
            found.push((service.to_owned(), watch.canary.clone(), sample));
        }
    }
    found
}

/// `SEVERITY_NUMBER_ERROR` (OTel logs data model, "Field: SeverityNumber").
const SEVERITY_ERROR: i32 = 17;

fn error_logs(
    watched: &HashMap<String, Watch>,
    logs: &opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest,
) -> Vec<Tagged> {
    let mut found = Vec::new();
    for resource_logs in &logs.resource_logs {
        let attributes = resource_logs
            .resource
            .as_ref()
            .map_or(&[][..], |r| &r.attributes[..]);
        let Some((service, watch, canary)) = versioned(watched, attributes) else {
            continue;
        };
        if !watch.logs {
            continue;
        }
        for record in resource_logs.scope_logs.iter().flat_map(|s| &s.log_records) {
            let error = if record.severity_number > 0 {
                record.severity_number >= SEVERITY_ERROR
            } else {
                let level = record.severity_text.to_ascii_uppercase();
                ["ERR", "FATAL", "CRIT", "ALERT", "EMERG", "PANIC"]
                    .iter()
                    .any(|word| level.starts_with(word))
            };
            if !error || record.trace_id.iter().all(|b| *b == 0) {
                continue;
            }
            let time_ns = if record.time_unix_nano > 0 {
                record.time_unix_nano
            } else {
                record.observed_time_unix_nano
            };
            found.push((
                service.to_owned(),
                watch.canary.clone(),
                Sample::ErrorLog(canary, time_ns, hex::encode(&record.trace_id)),
            ));
        }
    }
    found
}

fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn text<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match find(attributes, key) {
        Some(Value::StringValue(text)) => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn resource(version: &str) -> Option<Resource> {
        Some(Resource {
            attributes: vec![
                kv("service.name", Value::StringValue("api".into())),
                kv("service.version", Value::StringValue(version.into())),
            ],
            ..Default::default()
        })
    }

    fn feed(mirrored: bool, logs: bool) -> Feed {
        let feed = Feed::default();
        feed.watch(HashMap::from([(
            "api".to_owned(),
            Watch {
                stable: "1".into(),
                canary: "2".into(),
                mirrored,
                logs,
            },
        )]));
        feed
    }

    fn traces(version: &str, attributes: Vec<KeyValue>) -> ExportRequest {
        ExportRequest::Traces(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: resource(version),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![7; 16],
                        start_time_unix_nano: 1_000,
                        end_time_unix_nano: 3_000,
                        attributes,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
    }

    #[test]
    fn a_mirrored_copy_is_a_pair_with_its_live_answer() {
        let copy = traces(
            "2",
            vec![
                kv("http.response.status_code", Value::IntValue(500)),
                kv("gantry.mirror", Value::BoolValue(true)),
                kv("gantry.mirror.live.version", Value::StringValue("1".into())),
                kv("gantry.mirror.live.status_code", Value::IntValue(200)),
                kv("gantry.mirror.live.duration_ns", Value::IntValue(1_500)),
            ],
        );
        let found = feed(true, false).extract(&copy);
        assert_eq!(found.len(), 1);
        let Sample::Mirrored(pair) = &found[0].2 else {
            panic!("{found:?}")
        };
        assert!(pair.canary_error && !pair.stable_error);
        assert_eq!(
            (pair.canary_latency_ns, pair.stable_latency_ns),
            (2_000, 1_500)
        );
        // A routed request is not a pair, and a copy is no routed request.
        let routed = traces(
            "2",
            vec![
                kv("http.response.status_code", Value::IntValue(200)),
                kv("gantry.router", Value::BoolValue(true)),
                kv("gantry.route.share", Value::DoubleValue(0.1)),
            ],
        );
        assert!(feed(true, false).extract(&routed).is_empty());
        assert!(feed(false, false).extract(&copy).is_empty());
        assert!(matches!(
            feed(false, false).extract(&routed)[0].2,
            Sample::Routed(Observation { canary: true, .. })
        ));
    }

    #[test]
    fn error_logs_count_only_with_the_log_rule() {
        let record = |severity_number: i32, severity_text: &str| LogRecord {
            time_unix_nano: 5,
            severity_number,
            severity_text: severity_text.to_owned(),
            trace_id: vec![1; 16],
            ..Default::default()
        };
        let logs = |version: &str| {
            ExportRequest::Logs(ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    resource: resource(version),
                    scope_logs: vec![ScopeLogs {
                        log_records: vec![
                            record(17, "ERROR"),
                            record(9, "INFO"),
                            record(0, "fatal"),
                            record(0, "warning"),
                            LogRecord {
                                trace_id: Vec::new(),
                                ..record(17, "ERROR")
                            },
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            })
        };
        let found = feed(false, true).extract(&logs("2"));
        assert_eq!(
            found.iter().map(|(_, _, s)| s.clone()).collect::<Vec<_>>(),
            [
                Sample::ErrorLog(true, 5, "01".repeat(16)),
                Sample::ErrorLog(true, 5, "01".repeat(16))
            ],
            "error records with a trace id only"
        );
        assert!(matches!(
            feed(false, true).extract(&logs("1"))[0].2,
            Sample::ErrorLog(false, _, _)
        ));
        assert!(feed(false, false).extract(&logs("2")).is_empty());
        assert!(
            feed(false, true).extract(&logs("3")).is_empty(),
            "another version"
        );
    }
}

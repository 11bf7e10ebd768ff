//! The judge's per-request feed: the plane's intake hands every durably stored batch of spans here; the routers'
//! spans (`gantry.router: true`) of a service under a canary become judge observations, queued per service until
//! the rollout loop takes them. Nothing is kept for services not being judged, and the check for that is one read
//! of a small map.
//!
//! A router span carries `service.version` (on its resource) and `gantry.route.share`, the probability the router
//! had of picking that version, which gives the canary's share of that request exactly.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use gantry_judge::Observation;
use gantry_proto::ExportRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use tokio::sync::Notify;

/// Observations kept per service between two rounds of the loop, at most (the rest are dropped and logged: the
/// judge loses evidence, never gains false evidence).
const QUEUE: usize = 200_000;

/// An observation with its service and the canary version it was extracted for.
pub type Tagged = (String, String, Observation);

/// The versions of a service under judgment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// The stable version's label.
    pub stable: String,
    /// The canary's.
    pub canary: String,
}

/// Router spans of the services under judgment, as observations.
#[derive(Debug, Default)]
pub struct Feed {
    watched: RwLock<HashMap<String, Watch>>,
    queues: Mutex<HashMap<String, Vec<Observation>>>,
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

    /// Takes the observations of `service` queued so far.
    pub fn take(&self, service: &str) -> Vec<Observation> {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(service)
            .unwrap_or_default()
    }

    /// The observations in `request` for the services under judgment (none when nothing is judged), each with
    /// its service and the canary version it was judged against.
    pub fn extract(&self, request: &ExportRequest) -> Vec<Tagged> {
        let ExportRequest::Traces(traces) = request else {
            return Vec::new();
        };
        let watched = self.watched.read().unwrap_or_else(|e| e.into_inner());
        if watched.is_empty() {
            return Vec::new();
        }
        let mut found = Vec::new();
        for resource_spans in &traces.resource_spans {
            let attributes = resource_spans
                .resource
                .as_ref()
                .map_or(&[][..], |r| &r.attributes[..]);
            let (Some(service), Some(version)) = (
                text(attributes, "service.name"),
                text(attributes, "service.version"),
            ) else {
                continue;
            };
            let Some(watch) = watched.get(service) else {
                continue;
            };
            let canary = if version == watch.canary {
                true
            } else if version == watch.stable {
                false
            } else {
                continue;
            };
            for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
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
                let status = match find(&span.attributes, "http.response.status_code") {
                    Some(Value::IntValue(code)) => *code,
                    _ => 0,
                };
                let failed_status = span.status.as_ref().is_some_and(|s| s.code == 2);
                found.push((
                    service.to_owned(),
                    watch.canary.clone(),
                    Observation {
                        canary,
                        canary_share: if canary { share } else { 1.0 - share },
                        error: status >= 500 || status == 0 || failed_status,
                        latency_ns: span
                            .end_time_unix_nano
                            .saturating_sub(span.start_time_unix_nano),
                        trace_id: hex::encode(&span.trace_id),
                        time_ns: span.end_time_unix_nano,
                    },
                ));
            }
        }
        found
    }

    /// Queues observations (after their batch is durable) and wakes the loop; those extracted for a rollout that
    /// is no longer the service's are dropped.
    pub fn push(&self, observations: Vec<Tagged>) {
        if observations.is_empty() {
            return;
        }
        let watched = self.watched.read().unwrap_or_else(|e| e.into_inner());
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let mut dropped = 0;
        for (service, canary, observation) in observations {
            if watched
                .get(&service)
                .is_none_or(|watch| watch.canary != canary)
            {
                continue;
            }
            let queue = queues.entry(service).or_default();
            if queue.len() < QUEUE {
                queue.push(observation);
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

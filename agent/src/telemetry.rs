//! The agent's own counters and gauges, read at each scrape of `/metrics` and written in the OpenMetrics text format
//! by `prometheus-client` (a `Collector` over these atomics; label values escaped by the encoder).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::DescriptorEncoder;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters keyed by a reason (rare events: a mutex is fine).
#[derive(Debug, Default)]
pub struct ReasonCounter(Mutex<BTreeMap<String, u64>>);

impl ReasonCounter {
    /// Adds `n` under `reason`.
    pub fn add(&self, reason: &str, n: u64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(reason.to_owned()).or_default() += n;
    }
    /// A copy of every (reason, count).
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Everything `/metrics` reports.
#[derive(Debug)]
pub struct Telemetry {
    /// Lines read, per file source pattern.
    lines_read: BTreeMap<String, Counter>,
    /// Records (after multi-line joining) read, per file source pattern.
    records_read: BTreeMap<String, Counter>,
    /// Files currently tailed.
    pub files_open: AtomicU64,
    /// Sources waiting for room in a full buffer (gauge).
    pub sources_paused: AtomicU64,
    /// Batches made durable in the buffer.
    pub buffer_appends: Counter,
    buffer_bytes: AtomicU64,
    buffer_max_bytes: AtomicU64,
    /// Batches in the buffer not yet acknowledged by the plane (gauge).
    pub unshipped_batches: AtomicU64,
    /// Append time of the oldest unshipped record (0: none).
    pub oldest_unshipped_unix_nanos: AtomicU64,
    /// Batches the plane acknowledged.
    pub sent_batches: Counter,
    /// Records in acknowledged batches.
    pub sent_records: Counter,
    /// Compressed bytes of acknowledged batches.
    pub sent_bytes: Counter,
    /// Attempts that failed and were retried.
    pub retries: Counter,
    /// Batches the plane refused for good, by reason.
    pub rejected: ReasonCounter,
    /// Records lost, by reason.
    pub dropped: ReasonCounter,
    /// Records (log records, data points, spans) made by the sources other than files, by source
    /// (`host_metrics`, `docker_logs`, `docker_metrics`, `otlp_logs`, `otlp_metrics`, `otlp_traces`).
    pub produced: ReasonCounter,
    /// Requests the local OTLP receiver answered with 503 (buffer full) or 4xx, by reason.
    pub receiver_refused: ReasonCounter,
    /// Files that matched a pattern but could not be read, by reason (`deleted_before_open`, `unreadable`).
    pub files_missed: ReasonCounter,
    /// Restarts of supervised components (the supervisors count into it).
    pub restarts: Arc<gantry_support::supervisor::RestartCounter>,
}

impl Telemetry {
    /// Counters for the given file source patterns.
    pub fn new(patterns: &[String]) -> Telemetry {
        let per_pattern = || {
            patterns
                .iter()
                .map(|p| (p.clone(), Counter::default()))
                .collect()
        };
        Telemetry {
            lines_read: per_pattern(),
            records_read: per_pattern(),
            files_open: AtomicU64::new(0),
            sources_paused: AtomicU64::new(0),
            buffer_appends: Counter::default(),
            buffer_bytes: AtomicU64::new(0),
            buffer_max_bytes: AtomicU64::new(0),
            unshipped_batches: AtomicU64::new(0),
            oldest_unshipped_unix_nanos: AtomicU64::new(0),
            sent_batches: Counter::default(),
            sent_records: Counter::default(),
            sent_bytes: Counter::default(),
            retries: Counter::default(),
            rejected: ReasonCounter::default(),
            dropped: ReasonCounter::default(),
            produced: ReasonCounter::default(),
            receiver_refused: ReasonCounter::default(),
            files_missed: ReasonCounter::default(),
            restarts: Arc::default(),
        }
    }

    /// Counts lines and records read by the source with `pattern`.
    pub fn read(&self, pattern: &str, lines: u64, records: u64) {
        if let Some(c) = self.lines_read.get(pattern) {
            c.add(lines);
        }
        if let Some(c) = self.records_read.get(pattern) {
            c.add(records);
        }
    }

    /// Updates the buffer gauges.
    pub fn set_buffer(&self, bytes: u64, max_bytes: u64) {
        self.buffer_bytes.store(bytes, Ordering::Relaxed);
        self.buffer_max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    /// Current size of the disk buffer.
    pub fn buffer_bytes(&self) -> u64 {
        self.buffer_bytes.load(Ordering::Relaxed)
    }

    /// The buffer's size limit.
    pub fn buffer_max_bytes(&self) -> u64 {
        self.buffer_max_bytes.load(Ordering::Relaxed)
    }

    /// Age of the oldest record not yet acknowledged (zero when everything is shipped).
    pub fn oldest_unshipped_age(&self) -> std::time::Duration {
        match self.oldest_unshipped_unix_nanos.load(Ordering::Relaxed) {
            0 => std::time::Duration::ZERO,
            oldest => std::time::Duration::from_nanos(now_unix_nanos().saturating_sub(oldest)),
        }
    }

    /// The exposition: these figures and the supervisor's restart counts.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self.clone()));
        registry.register(
            "gantry_agent_component_restarts",
            "Restarts of the agent's components after a failure, by group and component.",
            (*self.restarts).clone(),
        );
        gantry_support::metrics::encode(&registry)
    }
}

impl prometheus_client::collector::Collector for Telemetry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        use gantry_support::metrics::{counter, counter_family, gauge};
        let e = &mut encoder;
        let per_pattern = |counters: &BTreeMap<String, Counter>| {
            counters
                .iter()
                .map(|(p, c)| {
                    let labels = vec![("source", "file".to_owned()), ("pattern", p.clone())];
                    (labels, c.get())
                })
                .collect::<Vec<_>>()
        };
        let labelled = |key: &'static str, map: BTreeMap<String, u64>| {
            map.into_iter()
                .map(move |(value, n)| (vec![(key, value)], n))
                .collect::<Vec<_>>()
        };
        let gauge_of = |value: u64| value.min(i64::MAX as u64) as i64;
        counter_family(
            e,
            "gantry_agent_lines_read",
            "Lines read, per source.",
            per_pattern(&self.lines_read),
        )?;
        counter_family(
            e,
            "gantry_agent_records_read",
            "Records read (multi-line records joined), per source.",
            per_pattern(&self.records_read),
        )?;
        counter_family(
            e,
            "gantry_agent_source_records",
            "Records made by the sources other than files (log records, data points, spans), per source.",
            labelled("source", self.produced.snapshot()),
        )?;
        counter_family(
            e,
            "gantry_agent_receiver_refused",
            "Requests the local OTLP receiver refused, by reason (buffer_full answers 503 with Retry-After).",
            labelled("reason", self.receiver_refused.snapshot()),
        )?;
        counter_family(
            e,
            "gantry_agent_files_missed",
            "Files that matched a pattern but could not be read, by reason (deleted_before_open, unreadable).",
            labelled("reason", self.files_missed.snapshot()),
        )?;
        gauge(
            e,
            "gantry_agent_files_open",
            "Files being tailed.",
            gauge_of(self.files_open.load(Ordering::Relaxed)),
        )?;
        gauge(
            e,
            "gantry_agent_sources_paused",
            "Sources waiting for room in the full disk buffer.",
            gauge_of(self.sources_paused.load(Ordering::Relaxed)),
        )?;
        counter(
            e,
            "gantry_agent_buffer_appends",
            "Batches made durable in the disk buffer.",
            self.buffer_appends.get(),
        )?;
        gauge(
            e,
            "gantry_agent_buffer_bytes",
            "Size of the disk buffer.",
            gauge_of(self.buffer_bytes()),
        )?;
        gauge(
            e,
            "gantry_agent_buffer_max_bytes",
            "Size limit of the disk buffer.",
            gauge_of(self.buffer_max_bytes()),
        )?;
        gauge(
            e,
            "gantry_agent_buffer_unshipped_batches",
            "Batches in the disk buffer not yet acknowledged by the plane.",
            gauge_of(self.unshipped_batches.load(Ordering::Relaxed)),
        )?;
        gauge(
            e,
            "gantry_agent_buffer_oldest_age_seconds",
            "Age of the oldest record not yet acknowledged by the plane (0: none).",
            gauge_of(self.oldest_unshipped_age().as_secs()),
        )?;
        counter(
            e,
            "gantry_agent_sent_batches",
            "Batches acknowledged by the plane.",
            self.sent_batches.get(),
        )?;
        counter(
            e,
            "gantry_agent_sent_records",
            "Records in batches acknowledged by the plane.",
            self.sent_records.get(),
        )?;
        counter(
            e,
            "gantry_agent_sent_bytes",
            "Compressed bytes of batches acknowledged by the plane.",
            self.sent_bytes.get(),
        )?;
        counter(
            e,
            "gantry_agent_retries",
            "Send attempts that failed and were retried.",
            self.retries.get(),
        )?;
        counter_family(
            e,
            "gantry_agent_rejected_batches",
            "Batches the plane refused for good (not retried), by reason.",
            labelled("reason", self.rejected.snapshot()),
        )?;
        counter_family(
            e,
            "gantry_agent_dropped_records",
            "Records lost, by reason.",
            labelled("reason", self.dropped.snapshot()),
        )?;
        Ok(())
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labelled_and_plain_samples() {
        let t = Arc::new(Telemetry::new(&[
            "/var/log/*.log".to_owned(),
            "/x/\"q\".log".to_owned(),
        ]));
        t.read("/var/log/*.log", 3, 2);
        t.retries.add(2);
        t.rejected.add("http_400", 1);
        t.dropped.add("rejected_http_400", 5);
        let text = t.render();
        for line in [
            "gantry_agent_lines_read_total{source=\"file\",pattern=\"/var/log/*.log\"} 3",
            "gantry_agent_records_read_total{source=\"file\",pattern=\"/var/log/*.log\"} 2",
            "gantry_agent_retries_total 2",
            "gantry_agent_rejected_batches_total{reason=\"http_400\"} 1",
            "gantry_agent_dropped_records_total{reason=\"rejected_http_400\"} 5",
            "gantry_agent_buffer_oldest_age_seconds 0",
            r#"gantry_agent_lines_read_total{source="file",pattern="/x/\"q\".log"} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}

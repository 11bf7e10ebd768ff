//! Settings of the telemetry store.

use std::time::Duration;

/// Settings of the embedded telemetry store (validated by the plane's configuration).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Data older than this is rejected at ingest and dropped by retention.
    pub retention: Duration,
    /// Total disk budget for indexes, bytes; the oldest partitions go first when exceeded (0: no budget).
    pub max_disk_bytes: u64,
    /// Width of one time partition.
    pub partition: Duration,
    /// Capacity of the write queue, in batches; beyond it writes get [`crate::StoreError::Overloaded`].
    pub max_queue_batches: usize,
    /// How often new data is committed and made searchable.
    pub commit_interval: Duration,
    /// Indexing memory per signal, bytes.
    pub indexer_memory_bytes: usize,
    /// The budget every query runs under.
    pub query: crate::budget::QueryLimits,
}

impl StoreConfig {
    /// Defaults suited to one machine: 7 days of retention, day-wide partitions, no disk budget, 64 queued
    /// batches, a commit every 500 ms, 64 MiB of indexing memory, and the query budget of
    /// [`crate::budget::QueryLimits::default_embedded`].
    pub fn default_embedded() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            max_disk_bytes: 0,
            partition: Duration::from_secs(24 * 3600),
            max_queue_batches: 64,
            commit_interval: Duration::from_millis(500),
            indexer_memory_bytes: 64 << 20,
            query: crate::budget::QueryLimits::default_embedded(),
        }
    }
}

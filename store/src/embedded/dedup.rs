//! Batch-id deduplication: a batch sent again with the same `Gantry-Batch-Id` within [`DEDUP_WINDOW`] is not
//! stored twice.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use gantry_proto::Signal;

/// How long a batch id is remembered.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(600);

/// The dedup key of a batch: its id within its signal (`logs/ID`), so a logs batch and a traces batch may share an
/// id.
pub fn dedup_key(signal: Signal, id: &str) -> String {
    format!("{}/{id}", signal.as_str())
}

/// Batch ids seen in the last [`DEDUP_WINDOW`], with the Unix second they were first seen. An id is *pending* from
/// the moment its batch is taken until the WAL fsync (a duplicate arriving meanwhile is answered as a duplicate),
/// and *confirmed* after it: only confirmed ids are written to the checkpoint, so a restart never remembers an id
/// whose batch was not stored.
#[derive(Default)]
pub struct SeenIds(Mutex<Ids>);

#[derive(Default)]
struct Ids {
    confirmed: HashMap<String, i64>,
    pending: HashSet<String>,
}

impl SeenIds {
    /// Takes an id as pending; false when it is pending or was confirmed within the window.
    pub fn insert(&self, id: &str, now_s: i64) -> bool {
        let mut ids = self.lock();
        let fresh_confirmed = ids
            .confirmed
            .get(id)
            .is_some_and(|first| now_s - first < DEDUP_WINDOW.as_secs() as i64);
        if fresh_confirmed || ids.pending.contains(id) {
            return false;
        }
        ids.pending.insert(id.to_owned());
        true
    }

    /// The batch of a pending id is durable (or was replayed from the WAL).
    pub fn confirm(&self, id: &str, now_s: i64) {
        let mut ids = self.lock();
        ids.pending.remove(id);
        ids.confirmed.insert(id.to_owned(), now_s);
    }

    /// Remembers an id loaded from the checkpoint, first seen at `first_s`, unless it is older than the window.
    pub fn restore(&self, id: String, first_s: i64, now_s: i64) {
        if now_s - first_s < DEDUP_WINDOW.as_secs() as i64 {
            self.lock().confirmed.insert(id, first_s);
        }
    }

    /// The batch of a pending id was not stored.
    pub fn remove(&self, id: &str) {
        self.lock().pending.remove(id);
    }

    /// The confirmed ids still inside the window (older ones are forgotten here).
    pub fn snapshot(&self, now_s: i64) -> HashMap<String, i64> {
        let mut ids = self.lock();
        ids.confirmed
            .retain(|_, first| now_s - *first < DEDUP_WINDOW.as_secs() as i64);
        ids.confirmed.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ids> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_per_signal_pending_until_confirmed_and_forgotten_after_the_window() {
        let key = dedup_key(Signal::Logs, "b-1");
        assert_ne!(key, dedup_key(Signal::Traces, "b-1"));
        let seen = SeenIds::default();
        assert!(seen.insert(&key, 1_000));
        assert!(!seen.insert(&key, 1_000), "pending");
        assert!(
            seen.snapshot(1_000).is_empty(),
            "a pending id is not checkpointed"
        );
        seen.confirm(&key, 1_000);
        assert!(!seen.insert(&key, 1_000 + 599));
        assert_eq!(seen.snapshot(1_000).len(), 1);
        let failed = SeenIds::default();
        assert!(failed.insert("x", 1));
        failed.remove("x");
        assert!(failed.insert("x", 1), "a failed batch's id is forgotten");
        assert!(seen.insert(&key, 1_000 + 600), "forgotten after 10 minutes");
        let restored = SeenIds::default();
        restored.restore("old".into(), 0, 600);
        restored.restore("new".into(), 500, 600);
        assert_eq!(restored.snapshot(600).len(), 1);
    }
}

//! `DATA_DIR/docker-checkpoints.json`: per container, the docker timestamp of the last log line made durable in the buffer.
//!
//! Docker gives no offsets into a container's log, only a timestamp per line, so a container's position is that
//! timestamp (unix nanos). A follower asks the daemon for the lines since its second and skips those at or before
//! it. Two positions are kept per container:
//!
//! * `durable`: the last line of the last batch the buffer acknowledged. Only this one is written to disk, after
//!   the append returned, so a restart re-reads whatever was not durable (at least once).
//! * `read`: the last line handed to the batcher. A follower that starts again within one run of the agent (the
//!   container restarted, the daemon came back) resumes after it, so a line waiting in the batch is not read twice.
//!
//! The scheme relies on a container's timestamps increasing in stream order. Docker stamps stdout and stderr lines
//! as they are copied, so two lines of different streams written within microseconds may be stored out of order;
//! such a line can be read twice, or skipped after a restart that falls exactly between them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// Name of the checkpoint file inside the data dir.
pub const FILE_NAME: &str = "docker-checkpoints.json";

/// What the file holds.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointFile {
    /// Container id → timestamp (unix nanos) of its last durable line.
    containers: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Position {
    durable: u64,
    read: u64,
}

/// Every container's position, shared by the followers, the batcher and the session that prunes it.
#[derive(Debug)]
pub struct Positions {
    path: PathBuf,
    map: Mutex<HashMap<String, Position>>,
    /// Held while the file is written (until the write ends, even if the caller gave up waiting), so that
    /// snapshots reach the disk in the order they were taken and never two writes share the temporary file.
    writing: Arc<tokio::sync::Mutex<()>>,
}

impl Positions {
    /// Reads the checkpoint file in `data_dir`. A missing file is an empty one; an unreadable one is reported and
    /// ignored (every container is then read again from the beginning of its log: duplicates, no loss).
    pub async fn load(data_dir: &Path) -> Positions {
        let path = data_dir.join(FILE_NAME);
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || read_file(&path)).await
        };
        let containers = match read {
            Ok(Ok(file)) => file.containers,
            Ok(Err(error)) => {
                tracing::warn!(path = %path.display(), error = %error, "unreadable docker checkpoints; container logs are read again from their beginning");
                BTreeMap::new()
            }
            Err(error) => {
                tracing::warn!(error = %error, "reading the docker checkpoints failed");
                BTreeMap::new()
            }
        };
        Positions::with(path, containers)
    }

    fn with(path: PathBuf, containers: BTreeMap<String, u64>) -> Positions {
        let map = containers
            .into_iter()
            .map(|(id, at)| {
                (
                    id,
                    Position {
                        durable: at,
                        read: at,
                    },
                )
            })
            .collect();
        Positions {
            path,
            map: Mutex::new(map),
            writing: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Position>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where a follower of `id` starts: after the last line read in this run or made durable before (0: the
    /// beginning of the log). Starts tracking `id`.
    pub fn resume(&self, id: &str) -> u64 {
        let mut map = self.lock();
        let position = map.entry(id.to_owned()).or_default();
        position.read.max(position.durable)
    }

    /// Whether `id` has a position (it was followed before).
    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// The line at `at` of `id` went to the batcher.
    pub fn read_up_to(&self, id: &str, at: u64) {
        if let Some(position) = self.lock().get_mut(id) {
            position.read = position.read.max(at);
        }
    }

    /// The lines of `id` up to `at` are durable. Returns whether the position moved. A container forgotten
    /// meanwhile (removed) stays forgotten.
    pub fn made_durable(&self, id: &str, at: u64) -> bool {
        match self.lock().get_mut(id) {
            Some(position) if at > position.durable => {
                position.durable = at;
                position.read = position.read.max(at);
                true
            }
            _ => false,
        }
    }

    /// Forgets the containers not in `existing`. Returns whether any was forgotten.
    pub fn retain(&self, existing: &HashSet<String>) -> bool {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|id, _| existing.contains(id));
        map.len() != before
    }

    /// Forgets `id` (the container was removed). Returns whether it was known.
    pub fn forget(&self, id: &str) -> bool {
        self.lock().remove(id).is_some()
    }

    fn snapshot(&self) -> CheckpointFile {
        CheckpointFile {
            containers: self
                .lock()
                .iter()
                .filter(|(_, p)| p.durable > 0)
                .map(|(id, p)| (id.clone(), p.durable))
                .collect(),
        }
    }

    /// Writes the durable positions (temporary file, fsync, rename). Call after the appends they cover returned.
    pub async fn persist(&self) -> std::io::Result<()> {
        let writing = self.writing.clone().lock_owned().await;
        let bytes = serde_json::to_vec_pretty(&self.snapshot()).map_err(std::io::Error::other)?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let result = gantry_support::fs::write_atomic(&path, &bytes);
            drop(writing);
            result
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

fn read_file(path: &Path) -> std::io::Result<CheckpointFile> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(CheckpointFile::default()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn durable_positions_survive_a_restart_and_removed_containers_go() {
        let tmp = tempfile::tempdir().unwrap();
        let positions = Positions::load(tmp.path()).await;
        assert_eq!(positions.resume("a"), 0);
        assert_eq!(positions.resume("b"), 0);
        positions.read_up_to("a", 30);
        assert!(positions.made_durable("a", 20));
        assert!(!positions.made_durable("a", 10), "never moves back");
        assert!(positions.made_durable("b", 5));
        assert!(
            !positions.made_durable("gone", 5),
            "unknown ids are not added"
        );
        // Within a run, a follower resumes after what it read, not what is durable.
        assert_eq!(positions.resume("a"), 30);
        positions.persist().await.unwrap();

        let reloaded = Positions::load(tmp.path()).await;
        assert_eq!(reloaded.resume("a"), 20);
        assert_eq!(reloaded.resume("b"), 5);
        assert!(reloaded.retain(&HashSet::from(["a".to_owned()])));
        assert!(!reloaded.contains("b"));
        assert!(reloaded.forget("a"));
        reloaded.persist().await.unwrap();
        let text = std::fs::read_to_string(tmp.path().join(FILE_NAME)).unwrap();
        assert_eq!(
            serde_json::from_str::<CheckpointFile>(&text).unwrap(),
            CheckpointFile::default()
        );
    }

    #[tokio::test]
    async fn an_unreadable_file_starts_empty() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(FILE_NAME), "{not json").unwrap();
        let positions = Positions::load(tmp.path()).await;
        assert_eq!(positions.resume("a"), 0);
    }
}

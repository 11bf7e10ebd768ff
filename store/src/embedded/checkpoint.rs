//! `DATA_DIR/checkpoint.json`: the WAL seq every partition has committed, and the batch ids seen recently. The WAL
//! is cut only behind it, so it is written durably ([`gantry_support::fs::write_atomic`]: temporary file, fsync,
//! rename, directory fsync).

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What survives a restart besides the WAL and the indexes.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every record up to this seq is committed in every partition.
    pub seq: u64,
    /// Batch ids seen recently, with the Unix second first seen.
    pub batch_ids: HashMap<String, i64>,
}

/// How reading the checkpoint went.
#[derive(Debug, PartialEq)]
pub enum Loaded {
    /// A checkpoint was read.
    Read(Checkpoint),
    /// No checkpoint yet (a new data directory).
    Missing,
    /// The file is there but unreadable or not a checkpoint. Start-up stays safe without it: the whole WAL that is
    /// kept is replayed (partitions skip what they committed), only the batch ids older than the WAL are forgotten.
    Corrupt(String),
}

/// Reads the checkpoint at `path`.
pub fn read(path: &Path) -> Loaded {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(checkpoint) => Loaded::Read(checkpoint),
            Err(error) => Loaded::Corrupt(error.to_string()),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Loaded::Missing,
        Err(error) => Loaded::Corrupt(error.to_string()),
    }
}

/// Writes the checkpoint durably.
///
/// # Errors
/// The write, fsync or rename failed; the previous checkpoint is intact.
pub fn write(path: &Path, checkpoint: &Checkpoint) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(checkpoint).map_err(std::io::Error::other)?;
    gantry_support::fs::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tells_missing_from_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.json");
        assert_eq!(read(&path), Loaded::Missing);
        let checkpoint = Checkpoint {
            seq: 42,
            batch_ids: HashMap::from([("logs/a".to_owned(), 7)]),
        };
        write(&path, &checkpoint).unwrap();
        assert_eq!(read(&path), Loaded::Read(checkpoint));
        std::fs::write(&path, b"{\"seq\": 4").unwrap();
        assert!(matches!(read(&path), Loaded::Corrupt(_)));
    }
}

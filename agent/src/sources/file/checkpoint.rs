//! File positions: identity (device, inode and a [`Mark`]: first bytes, bytes before the offset, birth time) plus offset, persisted in `DATA_DIR/checkpoints.json` and carried in every buffered batch.
//!
//! # Protocol
//!
//! A batch's buffer record carries the positions of every tailed file as of the batch's cut
//! (each offset is the end of the last record in this or an earlier batch). The source writes
//! `checkpoints.json` (the positions plus the batch's buffer seq) only after the buffer answered
//! that the batch is fsynced. On start, the positions in buffer records after that seq (a crash
//! between the two steps) win over the file. So the resume point always equals what is durably
//! in the buffer: nothing read twice, nothing skipped.
//!
//! Whether a file found at start is still the one a position names is decided in [`super::identity`].

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::identity::{Fingerprint, Mark};

/// Where reading of one file stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition {
    /// Device id.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Leading bytes at the time, to tell a reused inode from the same file.
    pub fingerprint: Fingerprint,
    /// The bytes just before `offset` (absent in checkpoints of earlier agents: not checked then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<Fingerprint>,
    /// The file's birth time, nanoseconds since the Unix epoch (absent where the filesystem does not report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub born_unix_nanos: Option<u64>,
    /// The path it was last seen at.
    pub path: PathBuf,
    /// Every byte before this is in the buffer.
    pub offset: u64,
}

impl FilePosition {
    /// What a file must still show to be the one this position was taken from.
    pub fn mark(&self) -> Mark {
        Mark {
            offset: self.offset,
            head: self.fingerprint,
            tail: self.tail,
            born: self.born_unix_nanos,
        }
    }
}

/// What the file source stores in each buffer record (`BufferRecord::source_state`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceState {
    /// Positions of every tailed file when the batch was cut.
    pub file: Vec<FilePosition>,
}

/// `DATA_DIR/checkpoints.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoints {
    /// The buffer seq of the batch these positions were cut with (0: none yet).
    pub buffer_seq: u64,
    /// The positions.
    pub files: Vec<FilePosition>,
}

impl Checkpoints {
    /// Reads the file; a missing file is an empty checkpoint.
    pub fn load(path: &Path) -> anyhow::Result<Checkpoints> {
        let mut text = String::new();
        match std::fs::File::open(path) {
            Ok(mut file) => {
                file.read_to_string(&mut text)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Checkpoints::default());
            }
            Err(e) => return Err(e.into()),
        }
        serde_json::from_str(&text).map_err(|error| {
            anyhow::anyhow!(
                "{} is not a valid checkpoint file ({error}); move it away to start reading files from the beginning",
                path.display()
            )
        })
    }

    /// Writes the file atomically and durably (temp file, fsync, rename, fsync of the directory).
    pub fn store(&self, path: &Path) -> std::io::Result<()> {
        gantry_support::fs::write_atomic(
            path,
            &serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("checkpoints.json");
        assert_eq!(Checkpoints::load(&path).unwrap(), Checkpoints::default());
        let cp = Checkpoints {
            buffer_seq: 7,
            files: vec![FilePosition {
                dev: 1,
                ino: 2,
                fingerprint: Fingerprint { len: 3, crc: 4 },
                tail: Some(Fingerprint { len: 6, crc: 7 }),
                born_unix_nanos: Some(8),
                path: "/x".into(),
                offset: 5,
            }],
        };
        cp.store(&path).unwrap();
        assert_eq!(Checkpoints::load(&path).unwrap(), cp);
        std::fs::write(&path, "{").unwrap();
        assert!(Checkpoints::load(&path).is_err());
    }

    #[test]
    fn checkpoints_of_earlier_agents_still_load() {
        // Written by an agent without tail checksums and birth times: loaded with neither, so nothing is checked
        // that was not saved.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("checkpoints.json");
        std::fs::write(
            &path,
            r#"{"buffer_seq":3,"files":[{"dev":2049,"ino":12,"fingerprint":{"len":256,"crc":99},"path":"/var/log/app.log","offset":4096}]}"#,
        )
        .unwrap();
        let loaded = Checkpoints::load(&path).unwrap();
        assert_eq!(
            loaded.files[0].mark(),
            Mark {
                offset: 4096,
                head: Fingerprint { len: 256, crc: 99 },
                tail: None,
                born: None,
            }
        );
    }
}

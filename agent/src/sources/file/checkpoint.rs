//! File positions: identity (device, inode, fingerprint of the first bytes) plus offset, persisted in `DATA_DIR/checkpoints.json` and carried in every buffered batch.
//!
//! # Protocol
//!
//! A batch's buffer record carries the positions of every tailed file as of the batch's cut
//! (each offset is the end of the last record in this or an earlier batch). The source writes
//! `checkpoints.json` (the positions plus the batch's buffer seq) only after the buffer answered
//! that the batch is fsynced. On start, the positions in buffer records after that seq (a crash
//! between the two steps) win over the file. So the resume point always equals what is durably
//! in the buffer: nothing read twice, nothing skipped.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How many leading bytes identify a file's content (with its device and inode).
pub const FINGERPRINT_BYTES: usize = 256;

/// A crc32 of a file's first `len` bytes (`len` < [`FINGERPRINT_BYTES`] while the file is short).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Fingerprint {
    /// Bytes covered.
    pub len: u32,
    /// crc32 of those bytes.
    pub crc: u32,
}

impl Fingerprint {
    /// Fingerprint of up to [`FINGERPRINT_BYTES`] leading bytes of `file`.
    pub fn of(file: &std::fs::File) -> std::io::Result<Fingerprint> {
        Self::of_len(file, FINGERPRINT_BYTES)
    }

    /// Fingerprint of up to `len` leading bytes (fewer if the file is shorter).
    pub fn of_len(file: &std::fs::File, len: usize) -> std::io::Result<Fingerprint> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len.min(FINGERPRINT_BYTES)];
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read_at(&mut buf[filled..], filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        Ok(Fingerprint {
            len: filled as u32,
            crc: crc32fast::hash(&buf[..filled]),
        })
    }

    /// Whether `file` still starts with the bytes this fingerprint covers.
    pub fn matches(&self, file: &std::fs::File) -> std::io::Result<bool> {
        let now = Self::of_len(file, self.len as usize)?;
        Ok(now == *self)
    }
}

/// Where reading of one file stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition {
    /// Device id.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Leading bytes at the time, to tell a reused inode from the same file.
    pub fingerprint: Fingerprint,
    /// The path it was last seen at.
    pub path: PathBuf,
    /// Every byte before this is in the buffer.
    pub offset: u64,
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
    use std::io::Write;

    #[test]
    fn fingerprint_tells_rewritten_files_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, "hello\n").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let fp = Fingerprint::of(&file).unwrap();
        assert_eq!(fp.len, 6);
        // Growing keeps the prefix.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[b'x'; 400])
            .unwrap();
        assert!(fp.matches(&file).unwrap());
        assert_eq!(
            Fingerprint::of(&file).unwrap().len,
            FINGERPRINT_BYTES as u32
        );
        // Truncated and rewritten: the prefix differs.
        std::fs::write(&path, "other\n").unwrap();
        assert!(!fp.matches(&file).unwrap());
    }

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
                path: "/x".into(),
                offset: 5,
            }],
        };
        cp.store(&path).unwrap();
        assert_eq!(Checkpoints::load(&path).unwrap(), cp);
        std::fs::write(&path, "{").unwrap();
        assert!(Checkpoints::load(&path).is_err());
    }
}

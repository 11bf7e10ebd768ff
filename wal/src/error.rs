//! Error type for every fallible write-ahead-log operation.

use std::io;
use std::path::{Path, PathBuf};

/// Errors returned by [`Wal`](crate::Wal) and [`WalReader`](crate::WalReader).
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O operation on a file or directory failed.
    #[error("wal io error on {}: {source}", .path.display())]
    Io {
        /// The file or directory the operation touched.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// An append was larger than [`MAX_PAYLOAD`](crate::MAX_PAYLOAD).
    #[error("payload of {len} bytes exceeds the maximum of {max} bytes")]
    PayloadTooLarge {
        /// Length of the rejected payload.
        len: usize,
        /// The maximum payload length.
        max: usize,
    },
    /// Another [`Wal`](crate::Wal) (in this or another process) holds the directory lock.
    #[error("wal directory {} is locked by another instance", .0.display())]
    Locked(PathBuf),
    /// A segment has a valid magic but a format version this build does not understand.
    ///
    /// Opening refuses rather than truncating data written by a newer version.
    #[error("segment {} has unsupported format version {version}", .path.display())]
    UnsupportedVersion {
        /// The offending segment file.
        path: PathBuf,
        /// The version found in its header.
        version: u32,
    },
    /// A reader found a record that no longer validates (the data changed on disk after open).
    #[error("corrupt record in {} at offset {offset}: {reason}", .path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the record within the file.
        offset: u64,
        /// What failed to validate.
        reason: &'static str,
    },
    /// An earlier write or sync failed, so the on-disk tail is unknown; reopen the log to recover.
    #[error("wal is unusable after an earlier io error; reopen it to recover")]
    Poisoned,
    /// The sequence number space is used up.
    #[error("sequence numbers are exhausted")]
    SeqExhausted,
}

/// Attaches a path to an [`io::Error`].
pub(crate) trait IoContext<T> {
    /// Converts the error into [`WalError::Io`] for `path`.
    fn ctx(self, path: &Path) -> Result<T, WalError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, path: &Path) -> Result<T, WalError> {
        self.map_err(|source| WalError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

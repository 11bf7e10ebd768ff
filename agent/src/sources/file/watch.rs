//! File events from inotify (through the `notify` crate) beside the periodic scan: a file that appears under a
//! watched directory is opened at once, so that a file created, written and deleted between two scans is still
//! read (an open file stays readable after its deletion). The scan (every second) remains the source of truth; the
//! events only make it quicker. A directory that does not exist yet is watched as soon as a scan finds it; without
//! inotify (too many watches, an unsupported filesystem) the source says so once and relies on the scan.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use super::glob::Pattern;

/// The watches of one file source.
pub struct Watch {
    watcher: Option<RecommendedWatcher>,
    events: Receiver<notify::Result<notify::Event>>,
    /// Directories to watch, whether recursively, and whether the watch is in place.
    dirs: Vec<(PathBuf, RecursiveMode, bool)>,
}

impl Watch {
    /// Watches the directories of `patterns` (those that exist now; the others at [`Watch::retry`]).
    pub fn new(patterns: &[Pattern]) -> Watch {
        let (sender, events) = channel();
        let watcher = match notify::recommended_watcher(move |event| {
            let _ = sender.send(event);
        }) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(error = %error, "file events are unavailable; new files are found by the scan every second");
                None
            }
        };
        let mut dirs: Vec<(PathBuf, RecursiveMode, bool)> = Vec::new();
        for pattern in patterns {
            let (dir, deep) = pattern.watch_dir();
            let mode = if deep {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            if !dirs.iter().any(|(d, m, _)| *d == dir && *m == mode) {
                dirs.push((dir, mode, false));
            }
        }
        let mut watch = Watch {
            watcher,
            events,
            dirs,
        };
        watch.retry();
        watch
    }

    /// Puts in place the watches still missing (their directory may exist now).
    pub fn retry(&mut self) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        for (dir, mode, watched) in &mut self.dirs {
            if *watched || !dir.is_dir() {
                continue;
            }
            match watcher.watch(dir, *mode) {
                Ok(()) => *watched = true,
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), error = %error, "cannot watch for new files; the scan every second finds them");
                    // Not retried: the same error would repeat every second.
                    *watched = true;
                }
            }
        }
    }

    /// Waits up to `timeout` for file events and returns the paths that appeared or were written (possibly none).
    pub fn wait(&self, timeout: Duration) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        let first = match self.events.recv_timeout(timeout) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                if self.watcher.is_none() {
                    std::thread::sleep(timeout);
                }
                return paths;
            }
        };
        let mut collect = |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && matches!(
                    event.kind,
                    EventKind::Create(_) | EventKind::Modify(_) | EventKind::Any
                )
            {
                paths.extend(event.paths);
            }
        };
        collect(first);
        while let Ok(event) = self.events.try_recv() {
            collect(event);
        }
        paths.sort();
        paths.dedup();
        paths
    }
}

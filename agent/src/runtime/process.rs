//! The `process` runtime: an instance is a process on this node, started in a session (and so a process group) of
//! its own, so that a stop reaches every process it started; its stdout and stderr go straight to files in its
//! instance directory (opened `O_APPEND`), so that it keeps running, and its output keeps being recorded, while the
//! agent restarts.
//!
//! A process is known by its pid **and its start time** (`/proc/<pid>/stat`, field 22, clock ticks since boot), so
//! a pid the kernel has since given to another process is never mistaken for the instance.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A process as the agent knows it: pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// The pid, also the process group and session id (the process is their leader).
    pub pid: u32,
    /// `/proc/<pid>/stat` field 22: clock ticks after boot when it started.
    pub start_ticks: u64,
}

/// How a process ended, as far as the agent could see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// Its exit code, when the agent started it (and so could wait for it) and it exited.
    pub code: Option<i32>,
    /// The signal that ended it, likewise.
    pub signal: Option<i32>,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    /// The program.
    pub command: &'a str,
    /// Its arguments.
    pub args: &'a [String],
    /// Its whole environment (nothing is inherited from the agent but `PATH`, `HOME`, `LANG` and `TZ`).
    pub env: &'a BTreeMap<String, String>,
    /// Its working directory.
    pub working_dir: &'a Path,
    /// Where its stdout goes (appended).
    pub stdout: &'a Path,
    /// Where its stderr goes (appended).
    pub stderr: &'a Path,
}

/// The process runtime: starts, watches and stops processes. Children it started are kept to be reaped; processes
/// adopted from an earlier agent run are watched through `/proc`.
#[derive(Debug, Default)]
pub struct ProcessRuntime {
    children: Mutex<BTreeMap<u32, Child>>,
}

/// Variables passed through from the agent's environment.
const INHERITED: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

impl ProcessRuntime {
    /// Starts a process in a new session.
    ///
    /// # Errors
    /// The output files cannot be opened, or the program cannot be started (not found, not executable).
    pub fn start(&self, launch: &Launch<'_>) -> std::io::Result<ProcessId> {
        let append = |path: &Path| OpenOptions::new().create(true).append(true).open(path);
        let mut command = Command::new(launch.command);
        command
            .args(launch.args)
            .env_clear()
            .envs(
                INHERITED
                    .iter()
                    .filter_map(|key| std::env::var(key).ok().map(|v| (*key, v))),
            )
            .envs(launch.env)
            .current_dir(launch.working_dir)
            .stdin(Stdio::null())
            .stdout(append(launch.stdout)?)
            .stderr(append(launch.stderr)?);
        // SAFETY: `setsid` is async-signal-safe and touches no memory of the parent; it runs in the child between
        // fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        let pid = child.id();
        let start_ticks = start_ticks(pid).unwrap_or(0);
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid, child);
        Ok(ProcessId { pid, start_ticks })
    }

    /// `None` while the process runs; how it ended once it did (reaping it when it is a child of this agent).
    pub fn poll(&self, id: ProcessId) -> Option<Ended> {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(child) = children.get_mut(&id.pid) {
            return match child.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) => {
                    children.remove(&id.pid);
                    Some(Ended {
                        code: status.code(),
                        signal: status.signal(),
                    })
                }
                Err(_) => {
                    children.remove(&id.pid);
                    Some(Ended {
                        code: None,
                        signal: None,
                    })
                }
            };
        }
        drop(children);
        // Adopted: not ours to wait for; alive while the same process (pid and start time) runs and is no zombie.
        if is_running(id) {
            None
        } else {
            Some(Ended {
                code: None,
                signal: None,
            })
        }
    }

    /// Stops a process and everything in its process group: SIGTERM, then SIGKILL once `timeout` passed. Returns
    /// how it ended.
    pub async fn stop(&self, id: ProcessId, timeout: Duration) -> Ended {
        if let Some(ended) = self.poll(id) {
            kill_group(id.pid, libc::SIGKILL);
            return ended;
        }
        kill_group(id.pid, libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(ended) = self.poll(id) {
                // What it started may still run in its group: those go too.
                kill_group(id.pid, libc::SIGKILL);
                return ended;
            }
        }
        kill_group(id.pid, libc::SIGKILL);
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(ended) = self.poll(id) {
                return ended;
            }
        }
    }
}

/// Sends `signal` to the process group led by `pid`.
fn kill_group(pid: u32, signal: i32) {
    let Ok(pgid) = i32::try_from(pid) else { return };
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Whether the process `id` (same pid, same start time) runs and is not a zombie.
pub fn is_running(id: ProcessId) -> bool {
    match stat(id.pid) {
        Some((state, ticks)) => ticks == id.start_ticks && state != 'Z' && state != 'X',
        None => false,
    }
}

/// `/proc/<pid>/stat` field 22: the process's start time in clock ticks after boot.
pub fn start_ticks(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, ticks)| ticks)
}

/// The state letter and start time of a process, from `/proc/<pid>/stat` (proc(5)). The command name (field 2) is
/// in parentheses and may hold spaces and parentheses, so fields are counted after its last `)`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3), field 22 is the 19th.
    let ticks = fields.nth(18)?.parse().ok()?;
    Some((state, ticks))
}

/// A running session leader whose environment holds `GANTRY_INSTANCE=<instance_id>`: an instance started by an
/// agent that was killed before it could record the pid.
pub fn find_instance(instance_id: &str) -> Option<ProcessId> {
    let wanted = format!("GANTRY_INSTANCE={instance_id}");
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !environ
            .split(|b| *b == 0)
            .any(|var| var == wanted.as_bytes())
        {
            continue;
        }
        if session(pid) != Some(pid) {
            continue;
        }
        if let Some(start_ticks) = start_ticks(pid) {
            let id = ProcessId { pid, start_ticks };
            if is_running(id) {
                return Some(id);
            }
        }
    }
    None
}

/// `/proc/<pid>/stat` field 6: the session id.
fn session(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    after.split_whitespace().nth(3)?.parse().ok()
}

/// The last `n` lines of a file (reading at most its last 64 KiB).
pub fn last_lines(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(64 << 10);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.chars().take(2000).collect())
        .collect()
}

/// Copies `path` to `path.1` and truncates it once it passes `max_bytes` (copy-truncate: the process keeps its
/// `O_APPEND` descriptor and writes on at the new end; the file source recognises the copy and the truncation).
pub fn rotate_if_larger(path: &Path, max_bytes: u64) -> std::io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    let mut copy = path.as_os_str().to_owned();
    copy.push(".1");
    let copy = PathBuf::from(copy);
    std::fs::copy(path, &copy)?;
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_in_its_own_group_and_stops_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = ProcessRuntime::default();
        // A grandchild that ignores nothing, and a shell that waits for it.
        let args = vec![
            "-c".to_owned(),
            "sleep 300 & echo $! > child.pid; echo \"hello $GREETING\"; wait".to_owned(),
        ];
        let env = BTreeMap::from([("GREETING".to_owned(), "world".to_owned())]);
        let (out, err) = (dir.path().join("out.log"), dir.path().join("err.log"));
        let launch = Launch {
            command: "/bin/sh",
            args: &args,
            env: &env,
            working_dir: dir.path(),
            stdout: &out,
            stderr: &err,
        };
        let id = runtime.start(&launch).unwrap();
        assert!(id.start_ticks > 0);
        let child_pid_file = dir.path().join("child.pid");
        let mut waited = 0;
        while !child_pid_file.exists()
            || std::fs::read_to_string(&child_pid_file)
                .unwrap()
                .trim()
                .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += 1;
            assert!(waited < 250, "the shell never started its child");
        }
        let grandchild: u32 = std::fs::read_to_string(&child_pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let grandchild = ProcessId {
            pid: grandchild,
            start_ticks: start_ticks(grandchild).unwrap(),
        };
        assert!(runtime.poll(id).is_none());
        assert!(is_running(grandchild));
        let ended = runtime.stop(id, Duration::from_secs(5)).await;
        assert_eq!(ended.signal, Some(libc::SIGTERM));
        for _ in 0..100 {
            if !is_running(grandchild) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!is_running(grandchild), "the grandchild outlived the stop");
        assert_eq!(last_lines(&dir.path().join("out.log"), 5), ["hello world"]);
    }

    #[test]
    fn a_reused_pid_is_not_the_same_process() {
        let me = std::process::id();
        let ticks = start_ticks(me).unwrap();
        assert!(is_running(ProcessId {
            pid: me,
            start_ticks: ticks
        }));
        assert!(!is_running(ProcessId {
            pid: me,
            start_ticks: ticks + 1
        }));
    }

    #[test]
    fn rotation_copies_then_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        std::fs::write(&path, "x".repeat(100)).unwrap();
        assert!(!rotate_if_larger(&path, 1000).unwrap());
        assert!(rotate_if_larger(&path, 10).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("stdout.log.1"))
                .unwrap()
                .len(),
            100
        );
    }
}

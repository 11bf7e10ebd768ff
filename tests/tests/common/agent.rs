//! A `gantry-agent` process owned by one test: started with the test's plane and data dir, killed on drop.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::{EXIT_TIMEOUT, Plane, START_TIMEOUT, http_client, json_i64, repo_root, wait_until};

/// The `gantry-agent` binary: `$GANTRY_AGENT_BIN`, else `<repo>/target/debug/gantry-agent`.
pub fn agent_bin() -> Result<PathBuf> {
    let path = match std::env::var_os("GANTRY_AGENT_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join("target/debug/gantry-agent"),
    };
    ensure!(
        path.is_file(),
        "the gantry-agent binary was not found at {} — build it first with `cargo build -p gantry-agent` \
         (or point GANTRY_AGENT_BIN at it)",
        path.display()
    );
    Ok(path)
}

/// A running `gantry-agent` owned by one test. Dropping it kills it.
pub struct Agent {
    dir: PathBuf,
    files: Vec<String>,
    token: String,
    plane: String,
    child: Option<Child>,
    runs: usize,
    stderr_path: PathBuf,
    /// Address of the agent's `/metrics` and `/healthz`.
    pub http: String,
    /// The endpoints file the agent wrote (`http`, `otlp_grpc`, `otlp_http`).
    pub endpoints: Value,
    /// Arguments after the fixed ones; see [`Agent::QUIET`].
    args: Vec<String>,
}

impl Agent {
    /// Arguments that keep an agent to its file sources: no Docker, no host metrics, receivers on free ports.
    pub const QUIET: [&'static str; 6] = [
        "--no-docker",
        "--no-host-metrics",
        "--otlp-grpc-addr",
        "127.0.0.1:0",
        "--otlp-http-addr",
        "127.0.0.1:0",
    ];

    /// Starts an agent tailing `files` with [`Agent::QUIET`] settings.
    pub async fn start(dir: &Path, plane: &str, token: &str, files: &[String]) -> Result<Agent> {
        Agent::start_with(dir, plane, token, files, &Agent::QUIET).await
    }

    /// Starts an agent tailing `files` with `args` added after `--plane`, `--token`, `--data-dir`, `--http-addr`.
    pub async fn start_with(
        dir: &Path,
        plane: &str,
        token: &str,
        files: &[String],
        args: &[&str],
    ) -> Result<Agent> {
        let mut agent = Agent {
            dir: dir.to_path_buf(),
            files: files.to_vec(),
            token: token.to_owned(),
            plane: plane.to_owned(),
            child: None,
            runs: 0,
            stderr_path: PathBuf::new(),
            http: String::new(),
            endpoints: Value::Null,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        agent.spawn().await?;
        Ok(agent)
    }

    /// Starts (again) the agent process and waits for its endpoints file.
    pub async fn spawn(&mut self) -> Result<()> {
        let endpoints = self.dir.join("agent-endpoints.json");
        let _ = std::fs::remove_file(&endpoints);
        self.runs += 1;
        self.stderr_path = self
            .dir
            .with_file_name(format!("agent.stderr.{}.log", self.runs));
        let mut cmd = Command::new(agent_bin()?);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy().to_ascii_lowercase();
            if k.starts_with("gantry_") || k.ends_with("_proxy") {
                cmd.env_remove(&key);
            }
        }
        cmd.arg("--plane")
            .arg(&self.plane)
            .arg("--token")
            .arg(&self.token)
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--http-addr")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "info,gantry_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&self.stderr_path)?);
        for file in &self.files {
            cmd.arg("--file").arg(file);
        }
        cmd.args(&self.args);
        self.child = Some(cmd.spawn().context("spawning gantry-agent")?);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().context("child")?.try_wait()? {
                bail!("gantry-agent exited with {status}\n{}", self.stderr());
            }
            if let Ok(text) = std::fs::read_to_string(&endpoints)
                && let Ok(v) = serde_json::from_str::<Value>(&text)
                && let Some(http) = v.get("http").and_then(Value::as_str)
            {
                self.http = http.to_owned();
                self.endpoints = v.clone();
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "gantry-agent wrote no endpoints file\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stderr(&self) -> String {
        format!(
            "--- agent stderr ({}) ---\n{}",
            self.stderr_path.display(),
            std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
        )
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A `VmRSS`/`VmHWM`-style field of `/proc/PID/status`, KiB.
    pub fn proc_status_kib(&self, field: &str) -> Result<u64> {
        let pid = self.pid().context("agent not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {field} in /proc/{pid}/status"))
    }

    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("agent not running")?;
        let st = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        ensure!(st.success(), "kill -TERM failed");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().context("child")?.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill9()?;
                bail!("agent did not exit after SIGTERM\n{}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `/metrics` as (sample line without value → value).
    pub async fn metrics(&self) -> Result<BTreeMap<String, f64>> {
        let text = http_client()
            .get(format!("http://{}/metrics", self.http))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking()
            || std::env::var("GANTRY_TEST_PLANE_LOGS").is_ok_and(|v| v == "1")
        {
            eprintln!("{}", self.stderr());
        }
        let _ = self.kill9();
    }
}

/// Deadline for the agent to deliver lines (covers a retry backoff of a few seconds after an outage).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(45);

pub fn append(path: &Path, text: &str) -> Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Lines `"{run} {tag} {seq:05}"` for `range`.
pub fn numbered(run: &str, tag: &str, range: std::ops::Range<u32>) -> String {
    range.map(|i| format!("{run} {tag} {i:05}\n")).collect()
}

/// (tag, seq, timestamp_unix_nano, body) of hits whose body starts with the run word.
pub fn parse_hits(run: &str, hits: &[Value]) -> Vec<(String, u32, i64, String)> {
    hits.iter()
        .filter_map(|h| {
            let body = h.get("body")?.as_str()?.to_owned();
            let mut words = body.split_whitespace();
            (words.next()? == run).then_some(())?;
            let tag = words.next()?.to_owned();
            let seq = words.next()?.parse().ok()?;
            let ts = json_i64(h.get("timestamp_unix_nano")?)?;
            Some((tag, seq, ts, body))
        })
        .collect()
}

/// Waits until paging through `q` finds at least `n` hits; returns them all.
pub async fn wait_for_at_least(
    plane: &Plane,
    token: &str,
    q: &str,
    n: usize,
) -> Result<Vec<Value>> {
    wait_until(DELIVERY_TIMEOUT, &format!("{n} hits for {q}"), || async {
        let all = plane.all_logs(token, q, "-1h").await?;
        Ok((all.len() >= n).then_some(all))
    })
    .await
}

/// Picks a free loopback port by binding port 0 and releasing it.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

//! A `gantry-agent` process owned by one test: started with the test's plane and data dir, killed on drop.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::{EXIT_TIMEOUT, START_TIMEOUT, http_client, repo_root};

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


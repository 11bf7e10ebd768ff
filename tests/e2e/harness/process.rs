//! The processes a test owns: the `gantry` plane and the `gantry-agent` (located, started, stopped, killed on drop),
//! one-shot `gantry` CLI runs (tokens), and free loopback ports.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;
use tempfile::TempDir;

use super::api::http_client;
use super::unique;

/// Deadline for a process to write its endpoints file (and for a plane to answer 200 on /readyz).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for a process to exit after SIGTERM / for a one-shot plane run to exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Roles known to the plane.
pub const ROLES: [&str; 5] = ["ingest", "node", "viewer", "deployer", "admin"];

// ---------------------------------------------------------------------------------------------
// Locating things
// ---------------------------------------------------------------------------------------------

/// The repository root (parent of the `tests/` package).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The binary `name` of the workspace: `$var`, else `<repo>/target/debug/<name>`.
pub fn binary(var: &str, name: &str, package: &str) -> Result<PathBuf> {
    let path = match std::env::var_os(var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join("target/debug").join(name),
    };
    ensure!(
        path.is_file(),
        "the {name} binary was not found at {} — build it first with `cargo build -p {package}` \
         (or point {var} at it)",
        path.display()
    );
    Ok(path)
}

// ---------------------------------------------------------------------------------------------
// What the plane and the agent share
// ---------------------------------------------------------------------------------------------

/// Whether a dropped process should print its stderr: the test panicked, or `GANTRY_TEST_PLANE_LOGS=1` asks for it
/// (tests report failures as `Err`, not panics, and the temp dir holding the logs is deleted afterwards).
fn print_stderr_on_drop() -> bool {
    std::thread::panicking() || std::env::var("GANTRY_TEST_PLANE_LOGS").is_ok_and(|v| v == "1")
}

/// SIGKILLs `child` (if it runs) and reaps it.
fn kill9(child: &mut Option<Child>) -> Result<()> {
    if let Some(mut child) = child.take() {
        // `Child::kill` sends SIGKILL on unix.
        let _ = child.kill();
        child.wait().context("reaping a killed process")?;
    }
    Ok(())
}

/// Polls `child` until it exits or `timeout` passes; `None` if it still runs then.
async fn wait_for_exit(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// SIGTERMs `child` (`what` names it in errors) and waits up to [`EXIT_TIMEOUT`] for it to exit. Its exit status,
/// or `None` if it was still running at the deadline (it is SIGKILLed then).
async fn terminate(child: &mut Option<Child>, what: &str) -> Result<Option<ExitStatus>> {
    let running = child
        .as_mut()
        .with_context(|| format!("terminate: {what} is not running"))?;
    let pid = running.id();
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .context("running kill -TERM")?;
    ensure!(st.success(), "kill -TERM {pid} ({what}) failed: {st}");
    let status = wait_for_exit(running, EXIT_TIMEOUT).await?;
    match status {
        Some(_) => *child = None,
        None => kill9(child)?,
    }
    Ok(status)
}

/// A `Vm*` field of `/proc/PID/status` of `child`, in KiB (`VmHWM`: peak resident set size, `VmRSS`: current).
fn proc_status_kib(child: &Option<Child>, field: &str) -> Result<u64> {
    let pid = child
        .as_ref()
        .map(Child::id)
        .context("the process is not running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Picks a free loopback port by binding port 0 and releasing it.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

// ---------------------------------------------------------------------------------------------
// The gantry CLI
// ---------------------------------------------------------------------------------------------

/// A `Command` for the gantry binary with every inherited `GANTRY_*` variable removed, so the
/// developer's shell cannot change what a test sees.
fn gantry_command() -> Result<Command> {
    gantry_command_limited(None)
}

/// Like [`gantry_command`], run under `prlimit` with a soft and hard open-files limit of `open_files` when given.
fn gantry_command_limited(open_files: Option<u64>) -> Result<Command> {
    let bin = binary("GANTRY_BIN", "gantry", "gantry-plane")?;
    let mut cmd = match open_files {
        Some(n) => {
            let mut cmd = Command::new("prlimit");
            cmd.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin);
            cmd
        }
        None => Command::new(bin),
    };
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GANTRY_") {
            cmd.env_remove(&key);
        }
    }
    cmd.stdin(Stdio::null());
    Ok(cmd)
}

/// Runs `gantry ARGS...` to completion (CLI subcommands) and returns its output.
pub async fn gantry_cli(args: &[&str]) -> Result<Output> {
    let mut cmd = gantry_command()?;
    cmd.args(args);
    let args_s = args.join(" ");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .with_context(|| format!("running gantry {args_s}"))?;
    Ok(out)
}

/// Like [`gantry_cli`] but fails unless it exits 0; returns stdout.
async fn gantry_cli_ok(args: &[&str]) -> Result<String> {
    let out = gantry_cli(args).await?;
    ensure!(
        out.status.success(),
        "gantry {} exited with {}\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `gantry ARGS` with `input` on its standard input (a password); fails unless it exits 0.
pub async fn gantry_cli_stdin(args: &[&str], input: &str) -> Result<String> {
    let mut cmd = gantry_command()?;
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (args_s, input) = (args.join(" "), input.to_owned());
    let out = tokio::task::spawn_blocking(move || -> Result<Output> {
        let mut child = cmd.spawn()?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().context("stdin")?;
            stdin.write_all(input.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    })
    .await??;
    ensure!(
        out.status.success(),
        "gantry {args_s} exited with {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `gantry token create` against a data dir; returns the secret (checked to be one `gty_` line).
pub async fn create_token(data_dir: &Path, role: &str, name: &str) -> Result<String> {
    let dir = data_dir.to_str().context("utf-8 data dir")?;
    let stdout = gantry_cli_ok(&[
        "token",
        "create",
        "--data-dir",
        dir,
        "--role",
        role,
        "--name",
        name,
    ])
    .await?;
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(
        lines.len() == 1,
        "`gantry token create` must print the token alone on one line, got {stdout:?}"
    );
    let token = lines[0].trim().to_string();
    ensure!(
        token.starts_with("gty_") && token.len() > 8,
        "token must start with gty_, got {token:?}"
    );
    Ok(token)
}

/// `gantry token revoke --data-dir DIR ID_OR_NAME`.
pub async fn revoke_token(data_dir: &Path, id_or_name: &str) -> Result<()> {
    let dir = data_dir.to_str().context("utf-8 data dir")?;
    gantry_cli_ok(&["token", "revoke", "--data-dir", dir, id_or_name]).await?;
    Ok(())
}

/// `gantry token list --data-dir DIR` stdout.
pub async fn list_tokens(data_dir: &Path) -> Result<String> {
    let dir = data_dir.to_str().context("utf-8 data dir")?;
    gantry_cli_ok(&["token", "list", "--data-dir", dir]).await
}

// ---------------------------------------------------------------------------------------------
// The plane process
// ---------------------------------------------------------------------------------------------

/// The addresses from `DATA_DIR/endpoints.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub http: String,
    pub otlp_grpc: String,
    pub otlp_http: String,
}

impl Endpoints {
    fn read(data_dir: &Path) -> Result<Endpoints> {
        let path = data_dir.join("endpoints.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing {} = {text:?}", path.display()))?;
        let get = |k: &str| -> Result<String> {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .with_context(|| format!("endpoints.json has no string {k:?}: {text}"))
        };
        Ok(Endpoints {
            http: get("http")?,
            otlp_grpc: get("otlp_grpc")?,
            otlp_http: get("otlp_http")?,
        })
    }
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }
    pub fn otlp_http_url(&self) -> String {
        format!("http://{}", self.otlp_http)
    }
    pub fn otlp_grpc_url(&self) -> String {
        format!("http://{}", self.otlp_grpc)
    }
}

/// A plane in a fresh temp dir (`<tmp>/data`) with an ingest and a viewer token: (temp dir, plane, ingest, viewer).
/// Keep the temp dir bound (`_tmp`) for as long as the plane runs.
pub async fn fresh_plane() -> Result<(TempDir, Plane, String, String)> {
    let tmp = tempfile::tempdir()?;
    let (plane, [ingest, viewer]) =
        start_with_tokens(&tmp.path().join("data"), &[], &[], ["ingest", "viewer"]).await?;
    Ok((tmp, plane, ingest, viewer))
}

/// Creates one token per role in `dir` (before the start, so the plane loads them at boot and
/// no reload has to be waited for), then starts the plane with `extra_args` and `envs`.
pub async fn start_with_tokens<const N: usize>(
    dir: &Path,
    extra_args: &[&str],
    envs: &[(&str, &str)],
    roles: [&str; N],
) -> Result<(Plane, [String; N])> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tokens = Vec::with_capacity(N);
    for role in roles {
        tokens.push(create_token(dir, role, &unique(&format!("{role}-"))).await?);
    }
    let plane = Plane::start_with(dir, extra_args, envs).await?;
    let tokens: [String; N] = tokens
        .try_into()
        .map_err(|_| anyhow!("one token per role"))?;
    Ok((plane, tokens))
}

/// `plane --data-dir DIR` + default `127.0.0.1:0` listener flags (unless set in `extra` or
/// listed in `omit_default`) + `extra`.
fn plane_args(dir: &Path, extra: &[String], omit_default: &[String]) -> Vec<String> {
    let mut args = vec![
        "plane".to_string(),
        "--data-dir".to_string(),
        dir.to_string_lossy().into_owned(),
    ];
    for flag in ["--http-addr", "--otlp-grpc-addr", "--otlp-http-addr"] {
        let overridden = omit_default.iter().any(|f| f == flag)
            || extra
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
        if !overridden {
            args.push(flag.to_string());
            args.push("127.0.0.1:0".to_string());
        }
    }
    args.extend(extra.iter().cloned());
    args
}

/// Runs `gantry plane` (default listener flags, plus `extra_args`) expecting it to exit by
/// itself within [`EXIT_TIMEOUT`]; returns its exit status and stderr. If it is still running
/// at the deadline it is killed and this fails.
pub async fn run_plane_to_exit(
    dir: &Path,
    extra_args: &[&str],
    envs: &[(&str, &str)],
) -> Result<(ExitStatus, String)> {
    std::fs::create_dir_all(dir)?;
    let extra: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
    let stderr_path = dir.with_file_name("one-shot.stderr.log");
    let mut cmd = gantry_command()?;
    cmd.args(plane_args(dir, &extra, &[]))
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr_path)?);
    let mut child = Some(cmd.spawn().context("spawning gantry plane")?);
    let running = child.as_mut().context("child")?;
    let Some(status) = wait_for_exit(running, EXIT_TIMEOUT).await? else {
        kill9(&mut child)?;
        bail!(
            "gantry plane {extra_args:?} was expected to exit by itself but was still running \
             after {EXIT_TIMEOUT:?} (killed it); stderr:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
    };
    Ok((status, std::fs::read_to_string(&stderr_path)?))
}

/// A running (or stopped) `gantry plane` process owned by one test. Dropping it kills it.
pub struct Plane {
    /// The data dir passed as `--data-dir`.
    dir: PathBuf,
    extra_args: Vec<String>,
    envs: Vec<(String, String)>,
    omit_default: Vec<String>,
    child: Option<Child>,
    /// Where the current run's stderr goes.
    pub stderr_path: PathBuf,
    runs: usize,
    /// Soft and hard open-files limit of the process, when a test sets one (through `prlimit`).
    pub open_files: Option<u64>,
    pub endpoints: Endpoints,
    pub client: reqwest::Client,
}

impl Plane {
    /// Starts `gantry plane --data-dir DIR` on ephemeral loopback ports and waits until ready.
    pub async fn start(dir: &Path) -> Result<Plane> {
        Self::start_with(dir, &[], &[]).await
    }

    /// Like [`Plane::start`] with extra CLI args and env vars. The default
    /// `--http-addr/--otlp-grpc-addr/--otlp-http-addr 127.0.0.1:0` flags are left out for any of
    /// those that `extra_args` already sets.
    pub async fn start_with(
        dir: &Path,
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Plane> {
        Self::start_custom(dir, extra_args, envs, &[]).await
    }

    /// Like [`Plane::start_with`], and the default `127.0.0.1:0` is not passed for the flags in
    /// `omit_default` (e.g. `&["--http-addr"]` to let env or the config file choose it).
    pub async fn start_custom(
        dir: &Path,
        extra_args: &[&str],
        envs: &[(&str, &str)],
        omit_default: &[&str],
    ) -> Result<Plane> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut plane = Plane {
            dir: dir.to_path_buf(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            omit_default: omit_default.iter().map(|s| s.to_string()).collect(),
            child: None,
            stderr_path: PathBuf::new(),
            runs: 0,
            open_files: None,
            endpoints: Endpoints {
                http: String::new(),
                otlp_grpc: String::new(),
                otlp_http: String::new(),
            },
            client: http_client(),
        };
        plane.spawn_and_wait().await?;
        Ok(plane)
    }

    /// The full argument list for `gantry`.
    fn args(&self) -> Vec<String> {
        plane_args(&self.dir, &self.extra_args, &self.omit_default)
    }

    /// A file next to the data dir: `<data dir name>.<what>`.
    fn side_file(&self, what: &str) -> PathBuf {
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".into());
        self.dir.with_file_name(format!("{name}.{what}"))
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        // A stale endpoints.json from the previous run must not be mistaken for the new one.
        let endpoints_file = self.dir.join("endpoints.json");
        match std::fs::remove_file(&endpoints_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("removing stale endpoints.json"),
        }
        self.runs += 1;
        self.stderr_path = self.side_file(&format!("stderr.{}.log", self.runs));
        let stdout_path = self.side_file(&format!("stdout.{}.log", self.runs));
        let mut cmd = gantry_command_limited(self.open_files)?;
        cmd.args(self.args())
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(File::create(&stdout_path)?)
            .stderr(File::create(&self.stderr_path)?);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning gantry {:?}", self.args()))?;
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        // 1. endpoints.json
        let endpoints = loop {
            if let Some(status) = self.try_wait()? {
                bail!(
                    "gantry plane exited with {status} before writing endpoints.json\n{}",
                    self.stderr_tail(60)
                );
            }
            if let Ok(ep) = Endpoints::read(&self.dir) {
                break ep;
            }
            ensure!(
                Instant::now() < deadline,
                "gantry plane did not write {} within {START_TIMEOUT:?}\n{}",
                endpoints_file.display(),
                self.stderr_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.endpoints = endpoints;
        // 2. /readyz
        let url = format!("{}/readyz", self.endpoints.http_url());
        loop {
            if let Some(status) = self.try_wait()? {
                bail!(
                    "gantry plane exited with {status} before /readyz said 200\n{}",
                    self.stderr_tail(60)
                );
            }
            if let Ok(resp) = self.client.get(&url).send().await
                && resp.status().as_u16() == 200
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "GET {url} did not return 200 within {START_TIMEOUT:?}\n{}",
                self.stderr_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `Some(status)` if the plane process has exited.
    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("the plane is not running"),
        }
    }

    /// SIGKILL the plane and reap it.
    pub fn kill9(&mut self) -> Result<()> {
        kill9(&mut self.child).context("killing the plane")
    }

    /// SIGTERM the plane and wait (with a deadline) for it to exit; returns its exit status.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        match terminate(&mut self.child, "the plane").await? {
            Some(status) => Ok(status),
            None => bail!(
                "the plane did not exit within {EXIT_TIMEOUT:?} of SIGTERM (killed it)\n{}",
                self.stderr_tail(60)
            ),
        }
    }

    /// Starts the plane again with the same data dir, args and env (SIGKILLing it first if it is
    /// still running), waits until ready and re-reads endpoints.json (ports may change).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn_and_wait().await
    }

    /// The last `n` lines of the current run's stderr, for error messages.
    pub fn stderr_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(n);
        format!(
            "--- plane stderr ({}; last {} lines) ---\n{}\n--- end of plane stderr ---",
            self.stderr_path.display(),
            lines.len() - start,
            lines[start..].join("\n")
        )
    }

    /// A `Vm*` field of the plane's `/proc/PID/status`, KiB (`VmHWM`: peak resident set size).
    pub fn proc_status_kib(&self, field: &str) -> Result<u64> {
        proc_status_kib(&self.child, field).context("the plane")
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        if print_stderr_on_drop() && !self.stderr_path.as_os_str().is_empty() {
            eprintln!("{}", self.stderr_tail(80));
        }
        let _ = self.kill9();
    }
}

// ---------------------------------------------------------------------------------------------
// The agent process
// ---------------------------------------------------------------------------------------------

/// A running `gantry-agent` owned by one test, started with the test's plane and data dir. Dropping it kills it.
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
        let mut cmd = Command::new(binary("GANTRY_AGENT_BIN", "gantry-agent", "gantry-agent")?);
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

    /// The address of one of the agent's listeners (`otlp_http`, `otlp_grpc`) from its endpoints file.
    pub fn endpoint(&self, key: &str) -> Result<&str> {
        self.endpoints[key]
            .as_str()
            .with_context(|| format!("no {key} in the agent's endpoints {}", self.endpoints))
    }

    /// The whole stderr of the current run, for error messages.
    pub fn stderr(&self) -> String {
        format!(
            "--- agent stderr ({}) ---\n{}",
            self.stderr_path.display(),
            std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
        )
    }

    /// A `Vm*` field of the agent's `/proc/PID/status`, KiB (`VmRSS`, `VmHWM`).
    pub fn proc_status_kib(&self, field: &str) -> Result<u64> {
        proc_status_kib(&self.child, field).context("the agent")
    }

    /// SIGKILL the agent and reap it.
    pub fn kill9(&mut self) -> Result<()> {
        kill9(&mut self.child).context("killing the agent")
    }

    /// SIGTERM the agent and wait (with a deadline) for it to exit; returns its exit status.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        match terminate(&mut self.child, "the agent").await? {
            Some(status) => Ok(status),
            None => bail!("agent did not exit after SIGTERM\n{}", self.stderr()),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if print_stderr_on_drop() {
            eprintln!("{}", self.stderr());
        }
        let _ = self.kill9();
    }
}

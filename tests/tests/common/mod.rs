//! Shared harness for the end-to-end tests: starts the real `gantry` binary, talks to it over HTTP, OTLP and gRPC, and builds OTLP payloads.
//!
//! Every test owns its own temp dir and its own plane process; nothing here is shared between
//! tests. Waits are always "poll a condition until a deadline", never fixed sleeps or timing
//! asserts.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use serde_json::Value;

pub mod agent;

/// Deadline for a plane to write endpoints.json and answer 200 on /readyz.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for acknowledged data to show up in the query API (contract: ~1 s).
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a plane to exit after SIGTERM / for a one-shot plane run to exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

pub const CT_PROTOBUF: &str = "application/x-protobuf";
pub const CT_JSON: &str = "application/json";

/// Roles known to the plane.
pub const ROLES: [&str; 4] = ["ingest", "viewer", "deployer", "admin"];

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

/// The `gantry` binary: `$GANTRY_BIN`, else `<repo>/target/debug/gantry`.
pub fn gantry_bin() -> Result<PathBuf> {
    let path = match std::env::var_os("GANTRY_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join("target/debug/gantry"),
    };
    ensure!(
        path.is_file(),
        "the gantry binary was not found at {} — build it first with `cargo build -p gantry-plane` \
         (or point GANTRY_BIN at it)",
        path.display()
    );
    Ok(path)
}

/// `tests/python/send_sdk.py` run by `python` against `endpoint` over `protocol` (`http` or `grpc`), as a command
/// whose environment cannot leak into the test: no `OTEL_*` configuration and no proxy for loopback traffic.
pub fn send_sdk_command(
    python: &Path,
    endpoint: &str,
    protocol: &str,
    token: &str,
    run_id: &str,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(repo_root().join("tests/python/send_sdk.py"))
        .args(["--endpoint", endpoint, "--protocol", protocol])
        .args(["--token", token, "--run-id", run_id])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy().to_ascii_lowercase();
        if k.starts_with("otel_") || k.ends_with("_proxy") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    cmd
}

/// The Python interpreter with the OpenTelemetry SDK, or `None` if the test should be skipped.
///
/// `$GANTRY_PYTHON` overrides the default `<repo>/.venv/bin/python`. When it is missing the test
/// fails under `CI=true` and is skipped (with a loud message) otherwise.
pub fn python_or_skip(test: &str) -> Result<Option<PathBuf>> {
    let path = match std::env::var_os("GANTRY_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            // The default venv is made on first use, so `cargo test` alone works on a fresh machine.
            static VENV: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
            let made = VENV.get_or_init(|| make_venv().map_err(|error| format!("{error:#}")));
            if let Err(error) = made {
                eprintln!("could not create the test venv: {error}");
            }
            repo_root().join(".venv/bin/python")
        }
    };
    if path.exists() && sdk_importable(&path) {
        return Ok(Some(path));
    }
    let msg = format!(
        "python with the OpenTelemetry SDK not found at {}; create it with: python3 -m venv {} && \
         {}/bin/pip install -r {}",
        path.display(),
        repo_root().join(".venv").display(),
        repo_root().join(".venv").display(),
        repo_root().join("tests/python/requirements.txt").display(),
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        bail!("{msg} (CI=true, so this is a failure)");
    }
    eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! SKIP {test}: {msg}");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
    Ok(None)
}

fn sdk_importable(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http, opentelemetry.exporter.otlp.proto.grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Creates `<repo>/.venv` with the pinned SDK unless it already has it. Test binaries run one after another, and
/// the tests of one binary share the `OnceLock` above, so no two of these run at once.
fn make_venv() -> Result<()> {
    let venv = repo_root().join(".venv");
    let python = venv.join("bin/python");
    if python.exists() && sdk_importable(&python) {
        return Ok(());
    }
    let status = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()?;
    ensure!(status.success(), "python3 -m venv failed: {status}");
    let status = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(repo_root().join("tests/python/requirements.txt"))
        .status()?;
    ensure!(status.success(), "pip install failed: {status}");
    Ok(())
}

/// A `Command` for the gantry binary with every inherited `GANTRY_*` variable removed, so the
/// developer's shell cannot change what a test sees.
pub fn gantry_command() -> Result<Command> {
    let mut cmd = Command::new(gantry_bin()?);
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
pub async fn gantry_cli_ok(args: &[&str]) -> Result<String> {
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
// Small utilities
// ---------------------------------------------------------------------------------------------

/// A random lowercase alphanumeric word (safe for any tokenizer), e.g. `zqw3f9a0c1d2e3f4a5b`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

pub const HOUR_NANOS: u64 = 3_600 * 1_000_000_000;
pub const DAY_NANOS: u64 = 24 * HOUR_NANOS;

pub fn random_trace_id() -> Vec<u8> {
    rand::random::<[u8; 16]>().to_vec()
}

pub fn random_span_id() -> Vec<u8> {
    rand::random::<[u8; 8]>().to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip into a Vec");
    enc.finish().expect("gzip into a Vec")
}

/// Polls `f` until it returns `Ok(Some(v))` or `timeout` passes. `Ok(None)` and `Err` both mean
/// "not yet"; the last error (if any) is included in the timeout message.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(25);
    let mut last_err: Option<anyhow::Error> = None;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            return Err(match last_err {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

/// A reqwest client that never goes through a proxy and never hangs forever.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client")
}

/// Reads a JSON field that may be a number or a string holding a number (OTLP JSON int64).
pub fn json_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// `obj[a]` or `obj[b]` (camelCase vs snake_case in OTLP JSON responses).
pub fn field<'a>(obj: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    obj.get(camel).or_else(|| obj.get(snake))
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
    pub fn read(data_dir: &Path) -> Result<Endpoints> {
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

/// Which listener an OTLP/HTTP request goes to (the contract serves OTLP/HTTP on both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Http,
    OtlpHttp,
}

pub const BOTH_PORTS: [Port; 2] = [Port::Http, Port::OtlpHttp];

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
pub fn plane_args(dir: &Path, extra: &[String], omit_default: &[String]) -> Vec<String> {
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
    let mut child = cmd.spawn().context("spawning gantry plane")?;
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "gantry plane {extra_args:?} was expected to exit by itself but was still running \
                 after {EXIT_TIMEOUT:?} (killed it); stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    Ok((status, std::fs::read_to_string(&stderr_path)?))
}

/// A running (or stopped) `gantry plane` process owned by one test. Dropping it kills it.
pub struct Plane {
    /// The data dir passed as `--data-dir`.
    pub dir: PathBuf,
    extra_args: Vec<String>,
    envs: Vec<(String, String)>,
    omit_default: Vec<String>,
    child: Option<Child>,
    /// Where the current run's stderr goes.
    pub stderr_path: PathBuf,
    runs: usize,
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
        let mut cmd = gantry_command()?;
        cmd.args(self.args())
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(File::create(&stdout_path)?)
            .stderr(File::create(&self.stderr_path)?);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning gantry {:?}", self.args()))?;
        self.child = Some(child);

        let dir = self.dir.clone();
        let deadline = Instant::now() + START_TIMEOUT;
        // 1. endpoints.json
        let endpoints = loop {
            if let Some(status) = self.try_wait()? {
                bail!(
                    "gantry plane exited with {status} before writing endpoints.json\n{}",
                    self.stderr_tail(60)
                );
            }
            if let Ok(ep) = Endpoints::read(&dir) {
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

    /// The process id of the running plane.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` if the plane process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("the plane is not running"),
        }
    }

    /// SIGKILL the plane and reap it.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on unix.
            let _ = child.kill();
            child.wait().context("reaping killed plane")?;
        }
        Ok(())
    }

    /// SIGTERM the plane and wait (with a deadline) for it to exit; returns its exit status.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        let pid = self.pid().context("terminate: the plane is not running")?;
        let st = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .context("running kill -TERM")?;
        ensure!(st.success(), "kill -TERM {pid} failed: {st}");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill9()?;
                bail!(
                    "the plane did not exit within {EXIT_TIMEOUT:?} of SIGTERM (killed it)\n{}",
                    self.stderr_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
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

    /// Creates a token with `gantry token create` (name `<role>-<random>`).
    ///
    /// The contract lets a running plane pick CLI-created tokens up with a delay, so when the
    /// plane runs this waits (with a deadline) until the token is known to it:
    /// `GET /api/v1/tokens` answers something other than 401 (403 for non-admins).
    pub async fn token(&self, role: &str) -> Result<String> {
        let token = create_token(&self.dir, role, &unique(&format!("{role}-"))).await?;
        if self.child.is_some() {
            self.wait_token_known(&token).await?;
        }
        Ok(token)
    }

    /// Waits until the running plane accepts `token` as a valid credential.
    pub async fn wait_token_known(&self, token: &str) -> Result<()> {
        wait_until(
            SEARCH_TIMEOUT,
            "the plane to accept a new token",
            || async {
                let (status, _) = self.api_get("/api/v1/tokens", token).await?;
                Ok((status != 401).then_some(()))
            },
        )
        .await
    }

    pub fn url(&self, port: Port, path: &str) -> String {
        match port {
            Port::Http => format!("{}{path}", self.endpoints.http_url()),
            Port::OtlpHttp => format!("{}{path}", self.endpoints.otlp_http_url()),
        }
    }

    /// `GET` on the HTTP API; `token` may be empty for "no Authorization header". Returns the
    /// status and the body parsed as JSON (`Value::String(raw)` if it is not JSON).
    pub async fn api_get(&self, path: &str, token: &str) -> Result<(u16, Value)> {
        self.api_get_query(path, &[], token).await
    }

    /// `GET path?query` on the HTTP API (query values are URL-encoded here).
    pub async fn api_get_query(
        &self,
        path: &str,
        query: &[(&str, &str)],
        token: &str,
    ) -> Result<(u16, Value)> {
        let mut req = self.client.get(self.url(Port::Http, path)).query(query);
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("GET {path} {query:?}"))?;
        json_response(resp).await
    }

    /// Sends a request with a JSON body to the HTTP API.
    pub async fn api_send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: &str,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .client
            .request(method.clone(), self.url(Port::Http, path));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        json_response(resp).await
    }

    /// POSTs an OTLP/HTTP request. `headers` are extra headers (e.g. `Content-Encoding`).
    pub async fn post_otlp(
        &self,
        port: Port,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        token: &str,
        headers: &[(&str, &str)],
    ) -> Result<reqwest::Response> {
        let mut req = self
            .client
            .post(self.url(port, path))
            .header("Content-Type", content_type)
            .body(body);
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
            .await
            .with_context(|| format!("POST {path} ({content_type})"))
    }

    /// POSTs a protobuf logs request to `port` and requires a 200; returns the response.
    pub async fn send_logs(
        &self,
        port: Port,
        token: &str,
        req: &ExportLogsServiceRequest,
    ) -> Result<opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse> {
        let body = prost::Message::encode_to_vec(req);
        let resp = self
            .post_otlp(port, "/v1/logs", CT_PROTOBUF, body, token, &[])
            .await?;
        let bytes = expect_200(resp).await?;
        prost::Message::decode(bytes.as_slice()).context("decoding ExportLogsServiceResponse")
    }

    pub async fn send_traces(
        &self,
        port: Port,
        token: &str,
        req: &ExportTraceServiceRequest,
    ) -> Result<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse> {
        let body = prost::Message::encode_to_vec(req);
        let resp = self
            .post_otlp(port, "/v1/traces", CT_PROTOBUF, body, token, &[])
            .await?;
        let bytes = expect_200(resp).await?;
        prost::Message::decode(bytes.as_slice()).context("decoding ExportTraceServiceResponse")
    }

    pub async fn send_metrics(
        &self,
        port: Port,
        token: &str,
        req: &ExportMetricsServiceRequest,
    ) -> Result<opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse>
    {
        let body = prost::Message::encode_to_vec(req);
        let resp = self
            .post_otlp(port, "/v1/metrics", CT_PROTOBUF, body, token, &[])
            .await?;
        let bytes = expect_200(resp).await?;
        prost::Message::decode(bytes.as_slice()).context("decoding ExportMetricsServiceResponse")
    }

    /// `GET /api/v1/logs` with `q`, `from=-1h` and `limit`; requires 200, returns the body.
    pub async fn search_logs(&self, token: &str, q: &str, limit: usize) -> Result<Value> {
        let limit = limit.to_string();
        let (status, body) = self
            .api_get_query(
                "/api/v1/logs",
                &[("q", q), ("from", "-1h"), ("limit", &limit)],
                token,
            )
            .await?;
        ensure!(
            status == 200,
            "GET /api/v1/logs?q={q:?} -> {status}: {body}"
        );
        Ok(body)
    }

    /// Waits until `GET /api/v1/logs?q=...` returns exactly `n` hits; returns them.
    pub async fn wait_for_logs(&self, token: &str, q: &str, n: usize) -> Result<Vec<Value>> {
        let last = std::sync::Mutex::new(Value::Null);
        let res = wait_until(
            SEARCH_TIMEOUT,
            &format!("{n} log hit(s) for q={q:?}"),
            || {
                let last = &last;
                async move {
                    let body = self.search_logs(token, q, n.max(10) * 2).await?;
                    let hits = hits(&body)?;
                    *last.lock().expect("lock") = body;
                    Ok((hits.len() == n).then_some(hits))
                }
            },
        )
        .await;
        res.with_context(|| format!("last response: {}", last.lock().expect("lock")))
    }

    /// Pages through `GET /api/v1/logs?q=&from=&limit=500` with `cursor` until there is no
    /// `next_cursor`; returns every hit.
    pub async fn all_logs(&self, token: &str, q: &str, from: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _page in 0..10_000 {
            let mut query = vec![("q", q), ("from", from), ("limit", "500")];
            if let Some(c) = cursor.as_deref() {
                query.push(("cursor", c));
            }
            let (status, body) = self.api_get_query("/api/v1/logs", &query, token).await?;
            ensure!(
                status == 200,
                "GET /api/v1/logs {query:?} -> {status}: {body}"
            );
            let page = hits(&body)?;
            let next = body
                .get("next_cursor")
                .and_then(Value::as_str)
                .map(str::to_string);
            ensure!(
                !(page.is_empty() && next.is_some()),
                "empty page with a next_cursor: {body}"
            );
            out.extend(page);
            match next {
                Some(c) if !c.is_empty() => cursor = Some(c),
                _ => return Ok(out),
            }
        }
        bail!("more than 10000 pages for q={q:?}: the cursor never ends")
    }

    /// Waits until paging through `q` yields exactly `n` hits; returns them.
    pub async fn wait_for_all_logs(&self, token: &str, q: &str, n: usize) -> Result<Vec<Value>> {
        let last = std::sync::Mutex::new(0usize);
        let res = wait_until(
            SEARCH_TIMEOUT,
            &format!("{n} log hit(s) for q={q:?}"),
            || {
                let last = &last;
                async move {
                    let all = self.all_logs(token, q, "-1h").await?;
                    *last.lock().expect("lock") = all.len();
                    Ok((all.len() == n).then_some(all))
                }
            },
        )
        .await;
        res.with_context(|| format!("last count: {}", last.lock().expect("lock")))
    }

    /// A gRPC channel to the OTLP/gRPC listener.
    pub async fn grpc_channel(&self) -> Result<tonic::transport::Channel> {
        let ep = tonic::transport::Endpoint::from_shared(self.endpoints.otlp_grpc_url())?
            .timeout(Duration::from_secs(60));
        ep.connect()
            .await
            .with_context(|| format!("connecting to {}", self.endpoints.otlp_grpc))
    }

    /// Peak resident set size of the plane process in KiB (`VmHWM` from /proc).
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let pid = self.pid().context("plane not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .context("no VmHWM in /proc/PID/status")
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        // Tests report failures as `Err`, not panics: set GANTRY_TEST_PLANE_LOGS=1 to see the
        // plane's stderr for every test (the temp dir holding it is deleted afterwards).
        let verbose = std::env::var("GANTRY_TEST_PLANE_LOGS").is_ok_and(|v| v == "1");
        if (std::thread::panicking() || verbose) && !self.stderr_path.as_os_str().is_empty() {
            eprintln!("{}", self.stderr_tail(80));
        }
        let _ = self.kill9();
    }
}

/// Reads a response into (status, JSON body).
pub async fn json_response(resp: reqwest::Response) -> Result<(u16, Value)> {
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body))
}

/// Requires a 200 and returns the body bytes (error includes the body on failure).
pub async fn expect_200(resp: reqwest::Response) -> Result<Vec<u8>> {
    let status = resp.status();
    let url = resp.url().clone();
    let bytes = resp.bytes().await?.to_vec();
    ensure!(
        status.as_u16() == 200,
        "POST {url} -> {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    Ok(bytes)
}

/// `body.hits` as a Vec.
pub fn hits(body: &Value) -> Result<Vec<Value>> {
    body.get("hits")
        .and_then(Value::as_array)
        .cloned()
        .with_context(|| format!("response has no hits array: {body}"))
}

/// The `gRPC` authorization metadata value for a token.
pub fn grpc_request<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if !token.is_empty() {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii token"),
        );
    }
    req
}

// ---------------------------------------------------------------------------------------------
// OTLP payload builders
// ---------------------------------------------------------------------------------------------

pub fn str_value(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_string())),
    }
}

pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(str_value(value)),
        ..Default::default()
    }
}

pub fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

pub fn resource(service: &str) -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", service),
            kv("service.version", "0.0.1-test"),
        ],
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "gantry-e2e".into(),
        version: "1".into(),
        ..Default::default()
    }
}

/// An INFO log record.
pub fn log_record(body: &str, time_unix_nano: u64, attributes: Vec<KeyValue>) -> LogRecord {
    LogRecord {
        time_unix_nano,
        observed_time_unix_nano: time_unix_nano,
        severity_number: 9,
        severity_text: "INFO".into(),
        body: Some(str_value(body)),
        attributes,
        ..Default::default()
    }
}

pub fn logs_request(service: &str, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource(service)),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A log record with a given severity number and text.
pub fn log_with_severity(
    body: &str,
    time_unix_nano: u64,
    severity_number: i32,
    severity_text: &str,
    attributes: Vec<KeyValue>,
) -> LogRecord {
    LogRecord {
        severity_number,
        severity_text: severity_text.into(),
        ..log_record(body, time_unix_nano, attributes)
    }
}

/// A logs request with one resource per `(resource attributes, records)` group.
pub fn logs_request_multi(
    groups: Vec<(Vec<KeyValue>, Vec<LogRecord>)>,
) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: groups
            .into_iter()
            .map(|(attributes, records)| ResourceLogs {
                resource: Some(Resource {
                    attributes,
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope()),
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// RFC3339 with nanoseconds, UTC, for a unix-nanosecond timestamp.
pub fn rfc3339(unix_nano: u64) -> String {
    chrono::DateTime::from_timestamp(
        (unix_nano / 1_000_000_000) as i64,
        (unix_nano % 1_000_000_000) as u32,
    )
    .expect("timestamp in range")
    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// A span; `status_code` 0 unset, 1 ok, 2 error; `kind` as the OTLP enum (2 = server).
#[allow(clippy::too_many_arguments)]
pub fn make_span(
    trace_id: &[u8],
    span_id: &[u8],
    parent_span_id: &[u8],
    name: &str,
    kind: span::SpanKind,
    start: u64,
    end: u64,
    status_code: i32,
) -> Span {
    Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        parent_span_id: parent_span_id.to_vec(),
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        status: Some(Status {
            code: status_code,
            message: if status_code == 2 {
                "boom".into()
            } else {
                String::new()
            },
        }),
        ..Default::default()
    }
}

pub fn traces_request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource(service)),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub fn number_point(value: f64, time_unix_nano: u64, attributes: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: time_unix_nano.saturating_sub(1_000_000_000),
        time_unix_nano,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    }
}

pub fn gauge_metric(name: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: "1".into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: points,
        })),
        ..Default::default()
    }
}

/// A monotonic cumulative sum (a counter).
pub fn counter_metric(name: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: "1".into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

pub fn metrics_request(service: &str, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(service)),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One metric series: labels and `(unix_ms, value)` points.
pub type Series = (BTreeMap<String, Value>, Vec<(i64, f64)>);

/// `body.series` as (labels, points) pairs.
pub fn series(body: &Value) -> Result<Vec<Series>> {
    let arr = body
        .get("series")
        .and_then(Value::as_array)
        .with_context(|| format!("no series array in {body}"))?;
    let mut out = Vec::new();
    for s in arr {
        let labels = s
            .get("labels")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let mut points = Vec::new();
        for p in s
            .get("points")
            .and_then(Value::as_array)
            .with_context(|| format!("series without points: {s}"))?
        {
            let pair = p
                .as_array()
                .with_context(|| format!("point not an array: {p}"))?;
            ensure!(pair.len() == 2, "point is not [ts, value]: {p}");
            let ts = json_i64(&pair[0]).with_context(|| format!("bad point ts {p}"))?;
            let v = match &pair[1] {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            }
            .with_context(|| format!("bad point value {p}"))?;
            points.push((ts, v));
        }
        out.push((labels, points));
    }
    Ok(out)
}

//! The real OpenTelemetry Python SDK as a client: the venv that holds it (made on first use) and
//! `tests/python/send_sdk.py`, which sends one checkout's logs, trace and metrics and prints the trace id.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};

use super::process::repo_root;
use super::skip_unless_ci;

/// Which OTLP transport the SDK's exporters use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    /// The exporter endpoint for OTLP listeners at these `host:port` addresses: a URL for HTTP, the bare address
    /// for gRPC.
    pub fn endpoint(self, otlp_http: &str, otlp_grpc: &str) -> String {
        match self {
            Protocol::Http => format!("http://{otlp_http}"),
            Protocol::Grpc => otlp_grpc.to_owned(),
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// The Python interpreter with the OpenTelemetry SDK, or `None` if the test should be skipped.
///
/// `$GANTRY_PYTHON` overrides the default `<repo>/.venv/bin/python`, which is made on first use. When there is
/// none the test fails under `CI=true` and is skipped (with a loud message) otherwise.
pub fn python_or_skip(test: &str) -> Result<Option<PathBuf>> {
    let path = match std::env::var_os("GANTRY_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            // The default venv is made on first use, so `cargo test` alone works on a fresh machine. All tests
            // run in one binary and share this `OnceLock`, so no two of them make it at once.
            static VENV: OnceLock<Result<(), String>> = OnceLock::new();
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
    let venv = repo_root().join(".venv");
    skip_unless_ci(
        test,
        anyhow!(
            "python with the OpenTelemetry SDK not found at {}; create it with: python3 -m venv {} && \
             {}/bin/pip install -r {}",
            path.display(),
            venv.display(),
            venv.display(),
            repo_root().join("tests/python/requirements.txt").display(),
        ),
    )?;
    Ok(None)
}

fn sdk_importable(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http, opentelemetry.exporter.otlp.proto.grpc, prometheus_client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Creates `<repo>/.venv` with the pinned SDK unless it already has it.
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

/// Runs `tests/python/send_sdk.py` with `python` against `endpoint` over `protocol`, within 120 s, and returns
/// the trace id it printed (checked to be 32 hex digits).
///
/// The script's environment cannot leak into the test: no `OTEL_*` configuration and no proxy for loopback
/// traffic.
pub async fn send_sdk(
    python: &Path,
    protocol: Protocol,
    endpoint: &str,
    token: &str,
    run_id: &str,
) -> Result<String> {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(repo_root().join("tests/python/send_sdk.py"))
        .args(["--endpoint", endpoint, "--protocol", protocol.arg()])
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
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .context("send_sdk.py did not finish within 120 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "send_sdk.py --protocol {} to {endpoint} failed ({}):\nstdout: {stdout}\nstderr: {}",
        protocol.arg(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let trace_id = stdout.lines().last().map(str::trim).unwrap_or_default();
    ensure!(
        trace_id.len() == 32 && trace_id.chars().all(|c| c.is_ascii_hexdigit()),
        "send_sdk.py should print a 32-hex-digit trace id, printed {stdout:?}"
    );
    Ok(trace_id.to_owned())
}

/// One sample of an exposition, as `prometheus_client`'s parser read it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Sample {
    /// The sample's name (`gantry_ingest_records_total`).
    pub name: String,
    /// Its labels, unescaped.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Parses an exposition with the reference parser of `prometheus_client` (`openmetrics` or `text`, the Prometheus
/// 0.0.4 text format) and returns its samples; a parse error is an error with the parser's message.
pub async fn parse_metrics(python: &Path, format: &str, exposition: &str) -> Result<Vec<Sample>> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(python)
        .arg(repo_root().join("tests/python/parse_metrics.py"))
        .arg(format)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting parse_metrics.py")?;
    let mut stdin = child.stdin.take().context("parse_metrics.py stdin")?;
    stdin.write_all(exposition.as_bytes()).await?;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .context("parse_metrics.py did not finish within 60 s")??;
    ensure!(
        out.status.success(),
        "the {format} parser refused the exposition: {}\n{exposition}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)?
        .lines()
        .map(|line| serde_json::from_str(line).context("a sample line"))
        .collect()
}

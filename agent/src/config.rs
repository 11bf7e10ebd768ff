//! The agent's configuration: [`RawConfig`] as written (TOML file, `GANTRY_AGENT_*` variables, flags) and the
//! validated [`AgentConfig`] it runs with.
//!
//! Layering (`gantry_support::config::layered`): the file, then environment variables, then flags; clap reads the
//! last two with each field's own type. `--file` patterns replace the file's `[[files]]`; `--label`s join its
//! `[labels]`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry_proto::{MAX_NODE_LABEL_KEY_CHARS, MAX_NODE_LABEL_VALUE_CHARS, MAX_NODE_LABELS};
pub use gantry_support::config::ConfigError;
use regex::Regex;
use serde::{Deserialize, Serialize};

/// Default address of the local OTLP/gRPC receiver: the plane's 4317 plus two, so that a plane and an agent
/// on one machine do not clash.
pub const DEFAULT_OTLP_GRPC_ADDR: &str = "127.0.0.1:4319";
/// Default address of the local OTLP/HTTP receiver (the plane's 4318 plus two).
pub const DEFAULT_OTLP_HTTP_ADDR: &str = "127.0.0.1:4320";

/// Default `buffer_max_bytes`: 256 MiB.
pub const DEFAULT_BUFFER_MAX_BYTES: u64 = 256 << 20;
/// Default `batch_max_lines`: with the 1 MiB cut on bytes, batches of a busy file carry about 1 MiB, which halves the
/// agent's CPU per byte against 1000-line batches (BENCHMARKS.md) for a few MiB more memory.
pub const DEFAULT_BATCH_MAX_LINES: usize = 2500;
/// Smallest accepted `buffer_max_bytes`: the buffer needs room for a few segments.
pub const MIN_BUFFER_MAX_BYTES: u64 = 1 << 20;

/// The configuration as written: every field optional; unknown keys in the file are rejected. Each scalar field is
/// also a flag (`--buffer-max-bytes`) and a variable (`GANTRY_AGENT_BUFFER_MAX_BYTES`).
#[derive(Default, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The plane's base URL, e.g. http://10.0.0.5:8700.
    #[arg(long, env = "GANTRY_AGENT_PLANE", value_name = "URL")]
    pub plane: Option<String>,
    /// An ingest token (`gantry token create --role ingest`).
    #[arg(
        long,
        env = "GANTRY_AGENT_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Where the agent keeps its id, disk buffer and checkpoints [default: ./gantry-agent-data].
    #[arg(long, env = "GANTRY_AGENT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the agent's own /metrics and /healthz; port 0 picks one [default: 127.0.0.1:8701].
    #[arg(long, env = "GANTRY_AGENT_HTTP_ADDR", value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// Disk buffer size limit, bytes; file sources pause when it is reached [default: 268435456].
    #[arg(long, env = "GANTRY_AGENT_BUFFER_MAX_BYTES", value_name = "BYTES")]
    pub buffer_max_bytes: Option<u64>,
    /// A batch is cut at this many records [default: 2500].
    #[arg(long, env = "GANTRY_AGENT_BATCH_MAX_LINES", value_name = "N")]
    pub batch_max_lines: Option<usize>,
    /// A non-empty batch is cut at the latest this long after its first record, ms [default: 1000].
    #[arg(long, env = "GANTRY_AGENT_BATCH_TIMEOUT_MS", value_name = "MS")]
    pub batch_timeout_ms: Option<u64>,
    /// How long the shipper keeps sending after SIGTERM, ms [default: 5000].
    #[arg(long, env = "GANTRY_AGENT_SHUTDOWN_TIMEOUT_MS", value_name = "MS")]
    pub shutdown_timeout_ms: Option<u64>,
    /// Read container output and stats from the Docker daemon [default: true].
    #[arg(long, env = "GANTRY_AGENT_DOCKER", value_name = "BOOL", hide = true)]
    pub docker: Option<bool>,
    /// Collect host metrics [default: true].
    #[arg(
        long,
        env = "GANTRY_AGENT_HOST_METRICS",
        value_name = "BOOL",
        hide = true
    )]
    pub host_metrics: Option<bool>,
    /// How often host and container metrics are collected, ms [default: 10000].
    #[arg(long, env = "GANTRY_AGENT_METRICS_INTERVAL_MS", value_name = "MS")]
    pub metrics_interval_ms: Option<u64>,
    /// Local OTLP/gRPC receiver address; `off` disables [default: 127.0.0.1:4319].
    #[arg(long, env = "GANTRY_AGENT_OTLP_GRPC_ADDR", value_name = "ADDR")]
    pub otlp_grpc_addr: Option<String>,
    /// Local OTLP/HTTP receiver address; `off` disables [default: 127.0.0.1:4320].
    #[arg(long, env = "GANTRY_AGENT_OTLP_HTTP_ADDR", value_name = "ADDR")]
    pub otlp_http_addr: Option<String>,
    /// How often the agent heartbeats to the plane, ms [default: 5000].
    #[arg(long, env = "GANTRY_AGENT_HEARTBEAT_INTERVAL_MS", value_name = "MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Run the instances the plane places on this node (needs a `node` token) [default: true].
    #[arg(long, env = "GANTRY_AGENT_RUN_INSTANCES", value_name = "BOOL")]
    pub run_instances: Option<bool>,
    /// The address instances listen on and other nodes reach them and this node's routed services at (an address
    /// of this machine) [default: 127.0.0.1].
    #[arg(long, env = "GANTRY_AGENT_SERVICE_ADDR", value_name = "IP")]
    pub service_addr: Option<String>,
    /// Stop every instance when the agent stops (the demo does; a real node leaves them running) [default: false].
    #[arg(
        long,
        env = "GANTRY_AGENT_STOP_INSTANCES_ON_EXIT",
        value_name = "BOOL",
        hide = true
    )]
    pub stop_instances_on_exit: Option<bool>,
    /// Labels of the node (`[labels]` in the file; `--label` on the command line).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// File sources (`[[files]]` in the file; `--file` on the command line).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<RawFileSource>,
}

/// The agent's command line: the settings, plus the repeatable and negative flags that have no single key.
#[derive(Debug, Default, clap::Args)]
pub struct Flags {
    /// The settings also found in the file and in `GANTRY_AGENT_*` variables.
    #[command(flatten)]
    pub settings: RawConfig,
    /// A glob of files to tail, e.g. '/var/log/app/*.log' (repeatable); replaces the file's `[[files]]`.
    #[arg(long = "file", value_name = "GLOB")]
    pub files: Vec<String>,
    /// A node label, KEY=VALUE, reported to the plane (repeatable); joins the file's `[labels]`.
    #[arg(long = "label", value_parser = parse_label, value_name = "KEY=VALUE")]
    pub labels: Vec<(String, String)>,
    /// Do not read container output and stats from the Docker daemon.
    #[arg(long)]
    pub no_docker: bool,
    /// Do not collect host metrics.
    #[arg(long)]
    pub no_host_metrics: bool,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

impl Flags {
    /// What the command line sets, as a [`RawConfig`] to put over the file.
    pub fn into_raw(self) -> RawConfig {
        let mut raw = self.settings;
        if self.no_docker {
            raw.docker = Some(false);
        }
        if self.no_host_metrics {
            raw.host_metrics = Some(false);
        }
        raw.labels.extend(self.labels);
        if !self.files.is_empty() {
            raw.files = self
                .files
                .into_iter()
                .map(|path| RawFileSource {
                    path,
                    ..RawFileSource::default()
                })
                .collect();
        }
        raw
    }
}

/// One `[[files]]` table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileSource {
    /// Glob pattern (`*`, `?` and `[...]` inside path components).
    pub path: String,
    /// `service.name` of the records; default: the file stem.
    pub service: Option<String>,
    /// Regex that starts a record; other lines continue the previous one.
    pub multiline_start_pattern: Option<String>,
    /// Regex with named groups `time`, `level` and `msg` for lines that are neither JSON nor logfmt.
    pub parse_regex: Option<String>,
}

/// The validated configuration the agent runs with.
#[derive(Clone)]
pub struct AgentConfig {
    /// Base URL of the plane, without a trailing slash (`http://host:8700`).
    pub plane: String,
    /// A `node` token (an `ingest` one ships telemetry, but the plane gives its node no instances).
    pub token: String,
    /// Agent id, buffer, checkpoints, cursor.
    pub data_dir: PathBuf,
    /// The agent's own `/metrics` and `/healthz`.
    pub http_addr: SocketAddr,
    /// Disk buffer size limit; file sources pause when it is reached.
    pub buffer_max_bytes: u64,
    /// A batch is cut at this many records.
    pub batch_max_lines: usize,
    /// A non-empty batch is cut at the latest this long after its first record.
    pub batch_timeout: Duration,
    /// How long the shipper keeps sending after SIGTERM.
    pub shutdown_timeout: Duration,
    /// File sources, one per pattern.
    pub files: Vec<FileSourceConfig>,
    /// Read container output and stats from the Docker daemon when one is reachable.
    pub docker: bool,
    /// Collect host metrics.
    pub host_metrics: bool,
    /// How often host and container metrics are collected.
    pub metrics_interval: Duration,
    /// Local OTLP/gRPC receiver, `None` when off.
    pub otlp_grpc_addr: Option<SocketAddr>,
    /// Local OTLP/HTTP receiver, `None` when off.
    pub otlp_http_addr: Option<SocketAddr>,
    /// How often the agent heartbeats to the plane.
    pub heartbeat_interval: Duration,
    /// Labels of the node, reported with its heartbeat.
    pub labels: BTreeMap<String, String>,
    /// Run the instances the plane places here.
    pub run_instances: bool,
    /// Where instances listen and are reached.
    pub service_addr: std::net::IpAddr,
    /// Stop every instance when the agent stops.
    pub stop_instances_on_exit: bool,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("plane", &self.plane)
            .field("token", &"<redacted>")
            .field("data_dir", &self.data_dir)
            .field("http_addr", &self.http_addr)
            .field("buffer_max_bytes", &self.buffer_max_bytes)
            .field("batch_max_lines", &self.batch_max_lines)
            .field("batch_timeout", &self.batch_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("files", &self.files)
            .field("docker", &self.docker)
            .field("host_metrics", &self.host_metrics)
            .field("metrics_interval", &self.metrics_interval)
            .field("otlp_grpc_addr", &self.otlp_grpc_addr)
            .field("otlp_http_addr", &self.otlp_http_addr)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("labels", &self.labels)
            .field("run_instances", &self.run_instances)
            .field("service_addr", &self.service_addr)
            .finish()
    }
}

impl fmt::Debug for RawConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawConfig")
            .field("plane", &self.plane)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("data_dir", &self.data_dir)
            .field("http_addr", &self.http_addr)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// One validated file source.
#[derive(Debug, Clone)]
pub struct FileSourceConfig {
    /// The glob pattern as written (also the `pattern` label of its metrics).
    pub pattern: String,
    /// Fixed `service.name`, or `None` for the file stem.
    pub service: Option<String>,
    /// Start-of-record rule for multi-line records.
    pub multiline: Multiline,
    /// Extra parser for lines that are neither JSON nor logfmt.
    pub parse_regex: Option<Regex>,
    /// The files are instances' output: `service.name`, `service.version` and `service.instance.id` come from
    /// the `instance.json` beside each file.
    pub instance_output: bool,
}

/// How lines are grouped into records.
#[derive(Debug, Clone)]
pub enum Multiline {
    /// A line that starts with whitespace or `Caused by:` continues the previous one.
    Default,
    /// A line that does not match the regex continues the previous one.
    StartPattern(Regex),
}

fn value_error(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        key,
        message: message.into(),
    }
}

impl RawConfig {
    /// The file at `file` (when given) with what `flags` set on top.
    ///
    /// # Errors
    /// The file cannot be read, or names an unknown key or a value of the wrong type.
    pub fn layered(file: Option<&Path>, flags: Flags) -> Result<RawConfig, ConfigError> {
        gantry_support::config::layered(file, &flags.into_raw())
    }

    /// Parses TOML text; `origin` names it in errors.
    ///
    /// # Errors
    /// Malformed TOML, an unknown key or a value of the wrong type.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        gantry_support::config::from_toml(text, origin)
    }

    /// Checks every value and fills in defaults.
    pub fn validate(self) -> Result<AgentConfig, ConfigError> {
        let plane = self.plane.ok_or_else(|| {
            value_error(
                "plane",
                "missing: pass --plane http://HOST:8700 or set GANTRY_AGENT_PLANE",
            )
        })?;
        let plane = plane.trim_end_matches('/').to_owned();
        let Some(host) = plane.strip_prefix("http://") else {
            return Err(value_error(
                "plane",
                format!("`{plane}` must be an http:// URL such as http://10.0.0.5:8700"),
            ));
        };
        if host.is_empty() || host.contains('/') {
            return Err(value_error(
                "plane",
                format!("`{plane}` must be the plane's base URL, http://HOST:PORT, without a path"),
            ));
        }
        let token = self.token.unwrap_or_default();
        if token.trim().is_empty() {
            return Err(value_error(
                "token",
                "missing: pass --token with a node token (`gantry token create --role node`)",
            ));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(value_error("token", "must not contain whitespace"));
        }
        let http_addr = self.http_addr.as_deref().unwrap_or("127.0.0.1:8701");
        let http_addr = http_addr.parse().map_err(|_| {
            value_error(
                "http_addr",
                format!("`{http_addr}` is not a host:port address such as 127.0.0.1:8701"),
            )
        })?;
        let buffer_max_bytes = self.buffer_max_bytes.unwrap_or(DEFAULT_BUFFER_MAX_BYTES);
        if buffer_max_bytes < MIN_BUFFER_MAX_BYTES {
            return Err(value_error(
                "buffer_max_bytes",
                format!("must be at least {MIN_BUFFER_MAX_BYTES} (1 MiB)"),
            ));
        }
        let batch_max_lines = self.batch_max_lines.unwrap_or(DEFAULT_BATCH_MAX_LINES);
        if batch_max_lines == 0 || batch_max_lines > 100_000 {
            return Err(value_error(
                "batch_max_lines",
                "must be between 1 and 100000",
            ));
        }
        let batch_timeout_ms = self.batch_timeout_ms.unwrap_or(1000);
        if batch_timeout_ms == 0 {
            return Err(value_error("batch_timeout_ms", "must be greater than 0"));
        }
        let metrics_interval_ms = self.metrics_interval_ms.unwrap_or(10_000);
        if !(1000..=3_600_000).contains(&metrics_interval_ms) {
            return Err(value_error(
                "metrics_interval_ms",
                "must be between 1000 (1 s) and 3600000 (1 h)",
            ));
        }
        let heartbeat_interval_ms = self.heartbeat_interval_ms.unwrap_or(5000);
        if !(100..=300_000).contains(&heartbeat_interval_ms) {
            return Err(value_error(
                "heartbeat_interval_ms",
                "must be between 100 and 300000 (5 min)",
            ));
        }
        let otlp_grpc_addr = optional_addr(
            "otlp_grpc_addr",
            self.otlp_grpc_addr
                .as_deref()
                .unwrap_or(DEFAULT_OTLP_GRPC_ADDR),
        )?;
        let otlp_http_addr = optional_addr(
            "otlp_http_addr",
            self.otlp_http_addr
                .as_deref()
                .unwrap_or(DEFAULT_OTLP_HTTP_ADDR),
        )?;
        if let (Some(grpc), Some(http)) = (otlp_grpc_addr, otlp_http_addr)
            && grpc == http
            && grpc.port() != 0
        {
            return Err(value_error(
                "otlp_http_addr",
                format!("`{http}` is also the OTLP/gRPC address; give each its own port"),
            ));
        }
        if self.labels.len() > MAX_NODE_LABELS {
            return Err(value_error(
                "labels",
                format!("{} labels; at most {MAX_NODE_LABELS}", self.labels.len()),
            ));
        }
        for (key, value) in &self.labels {
            if key.chars().count() > MAX_NODE_LABEL_KEY_CHARS
                || value.chars().count() > MAX_NODE_LABEL_VALUE_CHARS
            {
                return Err(value_error(
                    "labels",
                    format!(
                        "`{key}`: keys are at most {MAX_NODE_LABEL_KEY_CHARS} characters, values at most {MAX_NODE_LABEL_VALUE_CHARS}"
                    ),
                ));
            }
            let valid_key = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
            if !valid_key {
                return Err(value_error(
                    "labels",
                    format!("`{key}` is not a label name (letters, digits, `.`, `_`, `-`, `/`)"),
                ));
            }
            if value.chars().any(char::is_control) {
                return Err(value_error(
                    "labels",
                    format!("the value of `{key}` holds a control character"),
                ));
            }
        }
        let files = self
            .files
            .into_iter()
            .map(RawFileSource::validate)
            .collect::<Result<_, _>>()?;
        let service_addr_text = self.service_addr.as_deref().unwrap_or("127.0.0.1");
        let service_addr: std::net::IpAddr = service_addr_text.parse().map_err(|_| {
            value_error(
                "service_addr",
                format!("`{service_addr_text}` is not an IP address such as 127.0.0.1 or 10.0.0.5"),
            )
        })?;
        if service_addr.is_unspecified() {
            return Err(value_error(
                "service_addr",
                "must be an address other nodes can reach, not 0.0.0.0",
            ));
        }
        Ok(AgentConfig {
            plane,
            token,
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from("gantry-agent-data")),
            http_addr,
            buffer_max_bytes,
            batch_max_lines,
            batch_timeout: Duration::from_millis(batch_timeout_ms),
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms.unwrap_or(5000)),
            files,
            docker: self.docker.unwrap_or(true),
            host_metrics: self.host_metrics.unwrap_or(true),
            metrics_interval: Duration::from_millis(metrics_interval_ms),
            otlp_grpc_addr,
            otlp_http_addr,
            heartbeat_interval: Duration::from_millis(heartbeat_interval_ms),
            labels: self.labels,
            run_instances: self.run_instances.unwrap_or(true),
            service_addr,
            stop_instances_on_exit: self.stop_instances_on_exit.unwrap_or(false),
        })
    }
}

/// A listen address, or `None` for `off`.
fn optional_addr(key: &'static str, text: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        value_error(
            key,
            format!("`{text}` is not a host:port address such as 127.0.0.1:4319 (or `off`)"),
        )
    })
}

impl RawFileSource {
    fn validate(self) -> Result<FileSourceConfig, ConfigError> {
        if !self.path.starts_with('/') {
            return Err(value_error(
                "files.path",
                format!("`{}` must be an absolute path pattern", self.path),
            ));
        }
        crate::sources::file::glob::Pattern::new(&self.path)
            .map_err(|message| value_error("files.path", message))?;
        if let Some(service) = &self.service
            && service.trim().is_empty()
        {
            return Err(value_error("files.service", "must not be empty"));
        }
        let regex = |key: &'static str, text: Option<String>| {
            text.map(|text| {
                Regex::new(&text)
                    .map_err(|error| value_error(key, format!("`{text}` is not a regex: {error}")))
            })
            .transpose()
        };
        let multiline = match regex(
            "files.multiline_start_pattern",
            self.multiline_start_pattern,
        )? {
            Some(regex) => Multiline::StartPattern(regex),
            None => Multiline::Default,
        };
        let parse_regex = regex("files.parse_regex", self.parse_regex)?;
        if let Some(regex) = &parse_regex
            && !regex.capture_names().flatten().any(|name| name == "msg")
        {
            return Err(value_error(
                "files.parse_regex",
                "needs a named group `msg` (and optionally `time` and `level`)",
            ));
        }
        Ok(FileSourceConfig {
            pattern: self.path,
            service: self.service,
            multiline,
            parse_regex,
            instance_output: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "plane = \"http://127.0.0.1:8700\"\ntoken = \"gty_x\"\n[[files]]\npath = \"/var/log/*.log\"\n";

    /// Parses `toml` and validates; `Ok(())` or the error text.
    fn outcome(toml: &str) -> Result<AgentConfig, String> {
        RawConfig::from_toml(toml, "test.toml")
            .and_then(RawConfig::validate)
            .map_err(|error| error.to_string())
    }

    /// `toml` fails and the message contains every one of `needles`.
    fn check_err(toml: &str, needles: &[&str]) {
        let error = outcome(toml).expect_err(toml);
        for needle in needles {
            assert!(error.contains(needle), "{error:?} lacks {needle:?}");
        }
    }

    #[test]
    fn invalid_configs_name_the_key() {
        check_err(&format!("{MINIMAL}frobnicate = 1\n"), &["frobnicate"]);
        check_err(
            &format!("{MINIMAL}service = \"x\"\nbogus_file_key = 2\n"),
            &["bogus_file_key"],
        );
        check_err("token = \"t\"\n[[files]]\npath = \"/a\"\n", &["plane"]);
        check_err(
            "plane = \"https://x:1\"\ntoken = \"t\"\n[[files]]\npath = \"/a\"\n",
            &["plane", "http://"],
        );
        check_err(
            "plane = \"http://x:1/v1\"\ntoken = \"t\"\n[[files]]\npath = \"/a\"\n",
            &["plane"],
        );
        check_err(
            "plane = \"http://x:1\"\n[[files]]\npath = \"/a\"\n",
            &["token"],
        );
        check_err(
            &format!("otlp_grpc_addr = \"4319\"\n{MINIMAL}"),
            &["otlp_grpc_addr"],
        );
        check_err(
            &format!(
                "otlp_grpc_addr = \"127.0.0.1:9\"\notlp_http_addr = \"127.0.0.1:9\"\n{MINIMAL}"
            ),
            &["otlp_http_addr", "gRPC"],
        );
        check_err(
            &format!("metrics_interval_ms = 10\n{MINIMAL}"),
            &["metrics_interval_ms"],
        );
        check_err(
            &format!("heartbeat_interval_ms = 0\n{MINIMAL}"),
            &["heartbeat_interval_ms"],
        );
        check_err(&format!("docker = \"yes\"\n{MINIMAL}"), &["docker"]);
        check_err(
            &format!("{MINIMAL}[labels]\n\"bad key\" = \"x\"\n"),
            &["labels", "bad key"],
        );
        check_err(
            &format!("{MINIMAL}\nmultiline_start_pattern = \"(\"\n"),
            &["multiline_start_pattern"],
        );
        check_err(
            &format!("{MINIMAL}\nparse_regex = \"(?P<level>\\\\w+)\"\n"),
            &["parse_regex", "msg"],
        );
        check_err(
            "plane = \"http://x:1\"\ntoken = \"t\"\n[[files]]\npath = \"rel/*.log\"\n",
            &["files.path", "absolute"],
        );
        check_err(
            &format!("buffer_max_bytes = 10\n{MINIMAL}"),
            &["buffer_max_bytes"],
        );
        check_err(
            &format!("batch_max_lines = 0\n{MINIMAL}"),
            &["batch_max_lines"],
        );
        check_err(&format!("http_addr = \"nope\"\n{MINIMAL}"), &["http_addr"]);
        check_err(
            &format!("batch_max_lines = \"many\"\n{MINIMAL}"),
            &["batch_max_lines"],
        );
    }

    #[test]
    fn valid_config_gets_defaults() {
        let config = outcome(MINIMAL).unwrap();
        assert_eq!(config.plane, "http://127.0.0.1:8700");
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:8701");
        assert_eq!(config.buffer_max_bytes, DEFAULT_BUFFER_MAX_BYTES);
        assert_eq!(config.files.len(), 1);
        assert!(matches!(config.files[0].multiline, Multiline::Default));
        assert!(config.docker && config.host_metrics);
        assert_eq!(
            config.otlp_grpc_addr.map(|a| a.to_string()).as_deref(),
            Some(DEFAULT_OTLP_GRPC_ADDR)
        );
        assert_eq!(
            config.otlp_http_addr.map(|a| a.to_string()).as_deref(),
            Some(DEFAULT_OTLP_HTTP_ADDR)
        );
        // No file source is fine: host metrics, Docker and the receiver are sources too.
        let config = outcome("plane = \"http://x:1\"\ntoken = \"t\"\notlp_grpc_addr = \"off\"\n[labels]\nzone = \"eu-1\"\n").unwrap();
        assert!(config.files.is_empty());
        assert_eq!(config.otlp_grpc_addr, None);
        assert_eq!(config.labels.get("zone").map(String::as_str), Some("eu-1"));
        let config = outcome(&MINIMAL.replace(":8700", ":8700/")).unwrap();
        assert_eq!(config.plane, "http://127.0.0.1:8700");
    }

    /// The agent's flags parsed as the binary parses them.
    fn flags(args: &[&str]) -> Flags {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            flags: Flags,
        }
        <Cli as clap::Parser>::try_parse_from(
            std::iter::once("gantry-agent").chain(args.iter().copied()),
        )
        .unwrap()
        .flags
    }

    #[test]
    fn flags_beat_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "http_addr = \"127.0.0.1:1\"\nbuffer_max_bytes = 2000000\nplane = \"http://a:1\"\ntoken = \"file\"\n\
             [labels]\nzone = \"eu\"\n[[files]]\npath = \"/from/file\"\n",
        )
        .unwrap();
        let config = RawConfig::layered(
            Some(&path),
            flags(&[
                "--plane",
                "http://c:3",
                "--token",
                "12345",
                "--no-docker",
                "--file",
                "/from/flag/*.log",
                "--label",
                "rack=r7",
            ]),
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(config.http_addr.port(), 1);
        assert_eq!(config.token, "12345", "a numeric token stays a string");
        assert_eq!(config.plane, "http://c:3");
        assert_eq!(config.buffer_max_bytes, 2_000_000);
        assert!(!config.docker);
        assert_eq!(config.files.len(), 1, "flag patterns replace the file's");
        assert_eq!(config.files[0].pattern, "/from/flag/*.log");
        assert_eq!(config.labels.len(), 2, "flag labels join the file's");

        let only_file = RawConfig::layered(Some(&path), flags(&[]))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(only_file.files[0].pattern, "/from/file");
        assert!(only_file.docker);
    }

    #[test]
    fn token_is_redacted_in_debug() {
        let config = outcome(&MINIMAL.replace("gty_x", "gty_supersecret")).unwrap();
        let text = format!("{config:?}");
        assert!(!text.contains("supersecret"), "{text}");
        let raw = RawConfig::from_toml(&MINIMAL.replace("gty_x", "gty_supersecret"), "t").unwrap();
        assert!(!format!("{raw:?}").contains("supersecret"));
    }
}

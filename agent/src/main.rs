//! The `gantry-agent` binary: parses flags, reads the config file and `GANTRY_AGENT_*` variables, and runs the agent until SIGTERM.

use std::path::PathBuf;

use clap::Parser;
use gantry_agent::config::{Overrides, RawConfig};

/// Gantry's node agent: ships the node's log files, container output, host and container metrics and local
/// OTLP to the plane, at least once.
#[derive(Debug, Parser)]
#[command(name = "gantry-agent", version)]
struct Cli {
    /// TOML config file (unknown keys are an error).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The plane's base URL, e.g. http://10.0.0.5:8700.
    #[arg(long)]
    plane: Option<String>,
    /// An ingest token (`gantry token create --role ingest`).
    #[arg(long)]
    token: Option<String>,
    /// Where the agent keeps its id, disk buffer and checkpoints.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A glob of files to tail, e.g. '/var/log/app/*.log' (repeatable).
    #[arg(long = "file")]
    files: Vec<String>,
    /// Address for the agent's own /metrics and /healthz (port 0 picks one).
    #[arg(long)]
    http_addr: Option<String>,
    /// Do not read container output and stats from the Docker daemon.
    #[arg(long)]
    no_docker: bool,
    /// Do not collect host metrics.
    #[arg(long)]
    no_host_metrics: bool,
    /// Local OTLP/gRPC receiver address (default 127.0.0.1:4319; `off` disables).
    #[arg(long)]
    otlp_grpc_addr: Option<String>,
    /// Local OTLP/HTTP receiver address (default 127.0.0.1:4320; `off` disables).
    #[arg(long)]
    otlp_http_addr: Option<String>,
    /// A node label, KEY=VALUE, reported to the plane (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let raw = match &cli.config {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::default(),
    };
    let config = raw
        .with_env(std::env::vars())?
        .with_overrides(Overrides {
            plane: cli.plane,
            token: cli.token,
            data_dir: cli.data_dir,
            http_addr: cli.http_addr,
            files: cli.files,
            no_docker: cli.no_docker,
            no_host_metrics: cli.no_host_metrics,
            otlp_grpc_addr: cli.otlp_grpc_addr,
            otlp_http_addr: cli.otlp_http_addr,
            labels: cli.labels,
        })
        .validate()?;
    tracing::debug!(?config, "configuration");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(gantry_agent::run(config, termination()));
    // A blocking read stuck on a dead network mount (host metrics) must not keep the process from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

//! The `gantry-agent` binary: reads the config file, `GANTRY_AGENT_*` variables and flags, and runs the agent until
//! SIGTERM.

use std::path::PathBuf;

use clap::Parser;
use gantry_agent::config::{Flags, RawConfig};

/// Gantry's node agent: ships the node's log files, container output, host and container metrics and local
/// OTLP to the plane, at least once.
#[derive(Debug, Parser)]
#[command(name = "gantry-agent", version)]
struct Cli {
    /// TOML config file (unknown keys are an error); `GANTRY_AGENT_*` variables override it, flags override both.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: Flags,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    gantry_support::logging::init("info");
    gantry_support::process::raise_open_files_limit();
    let config = RawConfig::layered(cli.config.as_deref(), cli.flags)?.validate()?;
    tracing::debug!(?config, "configuration");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        gantry_agent::run(config, gantry_support::shutdown::cancel_on_termination()).await
    });
    // A blocking read stuck on a dead network mount (host metrics) must not keep the process from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

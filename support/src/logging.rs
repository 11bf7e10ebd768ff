//! The `tracing` subscriber of the Gantry binaries: human-readable lines on stderr, filtered by `RUST_LOG`.

use std::io::IsTerminal;

/// Installs the global subscriber: `RUST_LOG` when set (e.g. `RUST_LOG=debug,tantivy=warn`), else `default_filter`;
/// colours only when stderr is a terminal. Calling it twice keeps the first subscriber.
pub fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

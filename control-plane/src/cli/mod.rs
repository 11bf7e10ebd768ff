//! The subcommands of the `gantry` binary that do more than call into the plane library.

pub mod demo;
pub mod deploy;
pub mod platform;
pub mod remote;
pub mod token;
pub mod user;

/// Log filter when `RUST_LOG` is not set.
pub const LOG_FILTER: &str = "info,tantivy=warn";

/// A multi-threaded tokio runtime.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

//! What the Gantry plane and the node agent both need and is not a wire type:
//!
//! - [`config`]: configuration layering (TOML file, then `GANTRY_*` variables and flags through clap) and the
//!   error type that names the file, key or variable at fault;
//! - [`logging`]: the `tracing` subscriber both binaries install;
//! - [`fs`]: durable small-file replacement ([`fs::write_atomic`]);
//! - [`shutdown`]: the termination signal, and [`supervisor`]: components run under one cancellation token and task
//!   tracker, restarted with backoff when they fail;
//! - [`metrics`]: Prometheus/OpenMetrics exposition through `prometheus-client`;
//! - [`process`]: the open-files limit, raised at start.
//!
//! **Nothing here speaks HTTP or touches telemetry storage**: it sits below the plane, the agent and the store.
#![warn(missing_docs)]

pub mod config;
pub mod fs;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod shutdown;
pub mod supervisor;

pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

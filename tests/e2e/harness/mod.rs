//! The harness of the end-to-end tests, one file per role: the processes a test owns ([`process`]), the client
//! side and waiting ([`api`]), one OTLP/HTTP exchange checked in one line ([`exchange`]), OTLP payloads
//! ([`otlp`]) and the OpenTelemetry Python SDK ([`sdk`]).
//!
//! Every test owns its temp dir and its processes; nothing here is shared between tests. Ports are picked by the
//! OS. Waits poll a condition until a deadline ([`api::wait_until`]), never fixed sleeps or timing asserts.

pub mod api;
pub mod browser;
pub mod exchange;
pub mod otlp;
pub mod process;
pub mod sdk;

use anyhow::{Error, Result};

/// A random lowercase alphanumeric word (safe for any tokenizer), e.g. `zqw3f9a0c1d2e3f4a5b`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

/// For a test that needs something this machine lacks (`why`): under `CI=true` the test fails with `why`; elsewhere
/// it says loudly that `test` is skipped and returns `Ok`, for the test to return early.
pub fn skip_unless_ci(test: &str, why: Error) -> Result<()> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        return Err(why.context(format!("{test} cannot run (CI=true, so this is a failure)")));
    }
    eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! SKIP {test}: {why:#}; CI=true makes this a failure");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
    Ok(())
}

//! The termination signal both binaries stop on.

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C) and logs which arrived.
///
/// # Panics
/// When the signal handlers cannot be installed (no signal support at all: not a Unix process).
pub async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received; draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received; draining"),
    }
}

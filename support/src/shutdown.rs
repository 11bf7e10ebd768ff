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

/// A token cancelled on the first SIGTERM or SIGINT. Call it inside a tokio runtime: it spawns the task that waits.
pub fn cancel_on_termination() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        termination().await;
        cancel.cancel();
    });
    token
}

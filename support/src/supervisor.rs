//! Components run under supervision: one [`CancellationToken`] and one [`TaskTracker`] per group, and a component
//! that fails is logged and restarted with backoff instead of silently ending.
//!
//! A binary makes one [`Supervisor`] per shutdown stage and stops the stages in order: the agent stops its sources
//! first (nothing new is read), then lets the buffer writer drain, then gives the shipper its deadline, and stops
//! its own HTTP endpoint last. Components are `async` functions of a cancellation token; blocking work runs inside
//! them through `spawn_blocking` or a thread they join.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// First wait before a failed component is restarted.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between restarts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A component that ran this long before failing starts again from [`INITIAL_BACKOFF`].
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// The labels of the restart counter: which component of which group.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    /// The supervisor's group (`sources`, `shipper`, ...).
    pub group: &'static str,
    /// The component's name.
    pub component: &'static str,
}

/// Restarts per component; register it in a registry to expose it (`..._component_restarts_total`).
pub type RestartCounter = Family<ComponentLabels, Counter>;

/// A group of components stopped together.
#[derive(Debug, Clone)]
pub struct Supervisor {
    group: &'static str,
    cancel: CancellationToken,
    tracker: TaskTracker,
    restarts: Arc<RestartCounter>,
    /// The components' tasks, aborted when a stop's deadline passes.
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

/// Aborts a component's current run when its supervising task is dropped (aborted).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Supervisor {
    /// An empty group; `restarts` counts the restarts of its components.
    pub fn new(group: &'static str, restarts: Arc<RestartCounter>) -> Supervisor {
        Supervisor {
            group,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            restarts,
            tasks: Arc::default(),
        }
    }

    /// The token cancelled when the group stops.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Runs `component` until the group stops. `run` is called with the group's token to start (and to restart) the
    /// component. When its future returns `Err` or panics before the group stops, the error is logged and the
    /// component is started again after a backoff (100 ms doubling to 30 s, back to 100 ms after a minute of
    /// running). `Ok(())` before the stop means the component has nothing (more) to do: it is not restarted.
    pub fn spawn<F, Fut>(&self, component: &'static str, mut run: F)
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let group = self.group;
        let cancel = self.cancel.clone();
        let restarts = self.restarts.clone();
        let task = self.tracker.spawn(async move {
            let mut backoff = INITIAL_BACKOFF;
            loop {
                let started = Instant::now();
                // Its own task, so that a panic is caught here as a `JoinError`.
                let current = tokio::spawn(run(cancel.clone()));
                let guard = AbortOnDrop(current.abort_handle());
                let outcome = current.await;
                drop(guard);
                let stopping = cancel.is_cancelled();
                match outcome {
                    Ok(Ok(())) => {
                        if !stopping {
                            tracing::info!(group, component, "component finished");
                        }
                        return;
                    }
                    Ok(Err(error)) if stopping => {
                        tracing::error!(group, component, error = %format!("{error:#}"), "component failed while stopping");
                        return;
                    }
                    Err(error) if stopping => {
                        tracing::error!(group, component, error = %error, "component panicked while stopping");
                        return;
                    }
                    Ok(Err(error)) => {
                        tracing::error!(group, component, error = %format!("{error:#}"), retry_in_ms = backoff.as_millis() as u64, "component failed; restarting");
                    }
                    Err(error) => {
                        tracing::error!(group, component, error = %error, retry_in_ms = backoff.as_millis() as u64, "component panicked; restarting");
                    }
                }
                restarts
                    .get_or_create(&ComponentLabels { group, component })
                    .inc();
                if started.elapsed() >= STABLE_AFTER {
                    backoff = INITIAL_BACKOFF;
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task.abort_handle());
    }

    /// Cancels the group and waits until every component returned, for at most `deadline` (none: as long as it
    /// takes). Returns false when the deadline passed first; the components still running are then aborted.
    pub async fn stop(&self, deadline: Option<Duration>) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        let Some(deadline) = deadline else {
            self.tracker.wait().await;
            return true;
        };
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
        {
            return true;
        }
        for task in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            task.abort();
        }
        self.tracker.wait().await;
        false
    }

    /// Resolves when every component has returned by itself (or the group was stopped).
    pub async fn finished(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failed_components_restart_until_stopped() {
        let restarts = Arc::new(RestartCounter::default());
        let supervisor = Supervisor::new("test", restarts.clone());
        let starts = Arc::new(AtomicU32::new(0));
        let counted = starts.clone();
        supervisor.spawn("flaky", move |cancel| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    if n == 1 {
                        panic!("second start panics");
                    }
                    anyhow::bail!("start {n} fails");
                }
                cancel.cancelled().await;
                Ok(())
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 4);
        let labels = ComponentLabels {
            group: "test",
            component: "flaky",
        };
        assert_eq!(restarts.get_or_create(&labels).get(), 3);
        assert!(supervisor.stop(Some(Duration::from_secs(1))).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_component_past_the_deadline_is_aborted() {
        let supervisor = Supervisor::new("test", Arc::default());
        supervisor.spawn("stuck", |_| async {
            std::future::pending::<()>().await;
            Ok(())
        });
        assert!(!supervisor.stop(Some(Duration::from_secs(1))).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_component_is_not_restarted() {
        let supervisor = Supervisor::new("test", Arc::default());
        let starts = Arc::new(AtomicU32::new(0));
        let counted = starts.clone();
        supervisor.spawn("once", move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        });
        supervisor.finished().await;
        assert_eq!(starts.load(Ordering::SeqCst), 1);
    }
}

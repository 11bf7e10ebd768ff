//! The Docker source: stdout and stderr of every running container and per-container stats, through bollard.
//!
//! ```text
//!  run: connect ──► session: list containers, then events (type=container: start, die, destroy)
//!                    │ per container                          │ every metrics_interval
//!                    ▼                                        ▼
//!          follower task: logs follow=true       stats::collect: stats stream=false per running
//!          timestamps=true ──LogLine──►          container ──► one ExportMetricsServiceRequest
//!          (bounded channel: backpressure)
//!                    ▼
//!          batch::Batcher ──► Sink::append(Logs) ──► checkpoint::Positions ──► docker-checkpoints.json
//! ```
//!
//! * **Discovery.** A session lists every container, follows the running ones and those whose log it had begun
//!   to read before (they may have written lines while the agent was down), then follows the containers that
//!   start. The event stream is asked from a second before the list, so a container starting in between is seen
//!   twice rather than never; a container is followed by one task at a time.
//! * **Positions.** A follower asks for the lines since its container's checkpoint (see [`checkpoint`]) and skips
//!   those at or before it. **A container never seen before is read from the beginning of its log**, so that lines
//!   written before the agent (or before the agent noticed the container) are not lost. Checkpoints of containers
//!   that no longer exist are dropped when a session starts and when a container is removed.
//! * **No daemon.** Without a daemon (socket missing, refused, or not answering) the source says so once, retries
//!   every [`RETRY_INTERVAL`] silently, and says when it connects. It never fails the agent.

pub mod batch;
pub mod checkpoint;
pub mod container;
pub mod logs;
pub mod stats;

use gantry_support::CancellationToken;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use bollard::Docker;
use bollard::models::{ContainerSummaryStateEnum, EventMessage};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_stream::StreamExt;

use crate::sources::Sink;
use crate::telemetry::{Telemetry, now_unix_nanos};
use batch::Batcher;
use checkpoint::Positions;
use container::Container;
use logs::LogLine;

/// How often a missing daemon is tried again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(10);
/// Longest wait for the daemon's first answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Log records on their way from the followers to the batcher (their bytes are bounded too:
/// [`logs::LINE_QUEUE_BYTES`]).
const LINE_QUEUE: usize = 1024;

/// What the Docker source needs from the agent's configuration.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// The agent's data dir (the source keeps its checkpoints there).
    pub data_dir: PathBuf,
    /// How often container stats are collected.
    pub metrics_interval: Duration,
    /// Resource attributes of the host (`host.name`), added to every container's own.
    pub host_resource: Vec<KeyValue>,
    /// A log batch is cut at this many records.
    pub batch_max_lines: usize,
    /// A non-empty log batch is cut at the latest this long after its first record.
    pub batch_timeout: Duration,
}

/// Follows the daemon's containers until `stop` turns true. Never fails the agent: without a daemon it says so
/// once and retries. `reachable` tells whether the daemon answers.
pub async fn run(
    config: DockerConfig,
    sink: Sink,
    telemetry: Arc<Telemetry>,
    reachable: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let positions = Arc::new(Positions::load(&config.data_dir).await);
    let (lines, lines_rx) = mpsc::channel(LINE_QUEUE);
    let batcher = tokio::spawn(
        Batcher {
            max_lines: config.batch_max_lines,
            timeout: config.batch_timeout,
            sink: sink.clone(),
            positions: positions.clone(),
            telemetry: telemetry.clone(),
        }
        .run(lines_rx, stop.clone()),
    );
    let mut session = Session {
        config,
        sink,
        telemetry,
        positions,
        lines,
        budget: Arc::new(Semaphore::new(logs::LINE_QUEUE_BYTES)),
    };
    // Whether the daemon's absence was reported (a lost session reports its own).
    let mut reported = false;
    while !stop.is_cancelled() {
        let connected = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            connected = connect() => connected,
        };
        match connected {
            Ok(docker) => {
                reachable.store(true, Ordering::Relaxed);
                tracing::info!("connected to the docker daemon; following its containers");
                let end = session.run(&docker, &stop).await;
                reachable.store(false, Ordering::Relaxed);
                match end {
                    SessionEnd::Stopped => break,
                    SessionEnd::Lost(error) => {
                        tracing::warn!(
                            error = %error,
                            "lost the docker daemon; retrying every {}s (--no-docker turns the docker source off)",
                            RETRY_INTERVAL.as_secs()
                        );
                        reported = true;
                    }
                }
            }
            Err(error) if !reported => {
                tracing::warn!(
                    error = %format!("{error:#}"),
                    "docker is unavailable; retrying every {}s (--no-docker turns the docker source off)",
                    RETRY_INTERVAL.as_secs()
                );
                reported = true;
            }
            Err(error) => {
                tracing::trace!(error = %format!("{error:#}"), "docker still unavailable")
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(RETRY_INTERVAL) => {}
        }
    }
    drop(session);
    if let Err(error) = batcher.await {
        tracing::error!(error = %error, "the docker log batcher failed");
    }
}

/// A client for the local daemon (`DOCKER_HOST` if it is a `unix://` address), speaking the daemon's API version
/// if it is older than bollard's.
async fn connect() -> anyhow::Result<Docker> {
    let docker =
        Docker::connect_with_local_defaults().context("connecting to the docker socket")?;
    tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
        .await
        .context("the docker daemon did not answer")?
        .context("asking the docker daemon for its version")
}

/// Why a session ended.
enum SessionEnd {
    /// The agent is stopping.
    Stopped,
    /// The daemon went away (or failed); the message says how.
    Lost(String),
}

/// What lives across sessions: a session is one connection to the daemon.
struct Session {
    config: DockerConfig,
    sink: Sink,
    telemetry: Arc<Telemetry>,
    positions: Arc<Positions>,
    lines: mpsc::Sender<LogLine>,
    /// Bytes the followers may have on their way to the batcher.
    budget: Arc<Semaphore>,
}

/// The task following one container's log.
struct Follower {
    /// Start time of the container run it follows: a finished follower is replaced only for a new run.
    started_unix_nanos: u64,
    task: JoinHandle<()>,
}

/// The containers of one session.
#[derive(Default)]
struct Tracked {
    /// One follower task per container.
    followers: HashMap<String, Follower>,
    /// Running containers, whose stats are collected.
    running: HashMap<String, Arc<Container>>,
}

impl Session {
    /// Follows the daemon's containers until the agent stops or the daemon goes away, then stops the followers.
    async fn run(&mut self, docker: &Docker, stop: &CancellationToken) -> SessionEnd {
        let mut tracked = Tracked::default();
        let mut metrics: Option<JoinHandle<()>> = None;
        // Every await of a session can be given up: what it changes is in memory, or written by its own task.
        let end = tokio::select! {
            biased;
            () = stop.cancelled() => SessionEnd::Stopped,
            end = self.follow_containers(docker, &mut tracked, &mut metrics) => end,
        };
        for follower in tracked.followers.values() {
            follower.task.abort();
        }
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        end
    }

    async fn follow_containers(
        &mut self,
        docker: &Docker,
        tracked: &mut Tracked,
        metrics: &mut Option<JoinHandle<()>>,
    ) -> SessionEnd {
        // Events are replayed from a second before the list: a container starting in between is not missed.
        let since = (now_unix_nanos() / 1_000_000_000).saturating_sub(1);
        let listed = match docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                ..Default::default()
            }))
            .await
        {
            Ok(listed) => listed,
            Err(error) => return SessionEnd::Lost(format!("listing containers: {error}")),
        };
        let existing: HashSet<String> = listed.iter().filter_map(|c| c.id.clone()).collect();
        if self.positions.retain(&existing) {
            self.persist().await;
        }
        for summary in &listed {
            let Some(id) = summary.id.as_deref() else {
                continue;
            };
            // A stopped container is read only if it was followed before: it may have written lines meanwhile.
            let alive = matches!(
                summary.state,
                Some(
                    ContainerSummaryStateEnum::RUNNING
                        | ContainerSummaryStateEnum::PAUSED
                        | ContainerSummaryStateEnum::RESTARTING
                )
            );
            if alive || self.positions.contains(id) {
                self.discover(docker, tracked, id).await;
            }
        }
        tracing::debug!(
            containers = existing.len(),
            followed = tracked.followers.len(),
            "docker containers listed"
        );

        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            (
                "event".to_owned(),
                vec!["start".to_owned(), "die".to_owned(), "destroy".to_owned()],
            ),
        ]);
        let mut events = docker.events(Some(EventsOptions {
            since: Some(since.to_string()),
            until: None,
            filters: Some(filters),
        }));
        let mut ticker = tokio::time::interval(self.config.metrics_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => self.on_event(docker, tracked, event).await,
                    Some(Err(error)) => return SessionEnd::Lost(format!("event stream: {error}")),
                    None => return SessionEnd::Lost("the event stream ended".into()),
                },
                _ = ticker.tick() => {
                    // One collection at a time: a slow daemon skips intervals rather than piling them up.
                    if metrics.as_ref().is_none_or(|m| m.is_finished()) && !tracked.running.is_empty() {
                        *metrics = Some(tokio::spawn(stats::collect(
                            docker.clone(),
                            tracked.running.values().cloned().collect(),
                            self.sink.clone(),
                            self.telemetry.clone(),
                        )));
                    }
                }
            }
        }
    }

    async fn on_event(&mut self, docker: &Docker, tracked: &mut Tracked, event: EventMessage) {
        let Some(id) = event.actor.and_then(|a| a.id) else {
            return;
        };
        match event.action.as_deref() {
            Some("start") => self.discover(docker, tracked, &id).await,
            Some("die") => {
                tracked.running.remove(&id);
            }
            Some("destroy") => {
                tracked.running.remove(&id);
                tracked.followers.remove(&id);
                if self.positions.forget(&id) {
                    self.persist().await;
                }
            }
            _ => {}
        }
    }

    /// Inspects container `id`, follows its log unless a follower already does (a running follower goes on
    /// after a restart by itself; a finished one read its run to the end, or was refused), and collects its stats
    /// while it runs.
    async fn discover(&mut self, docker: &Docker, tracked: &mut Tracked, id: &str) {
        let inspect = match docker.inspect_container(id, None).await {
            Ok(inspect) => inspect,
            Err(error) => {
                tracing::debug!(container = id, error = %error, "inspecting a container failed (removed meanwhile?)");
                return;
            }
        };
        let Some(container) = Container::from_inspect(inspect, &self.config.host_resource) else {
            return;
        };
        let container = Arc::new(container);
        if container.running {
            tracked
                .running
                .insert(container.id.clone(), container.clone());
        }
        let followed = tracked.followers.get(&container.id).is_some_and(|f| {
            !f.task.is_finished() || f.started_unix_nanos == container.started_unix_nanos
        });
        if !followed {
            tracing::debug!(container = %container.name, service = %container.service, "new container");
            let task = tokio::spawn(logs::follow(
                docker.clone(),
                container.clone(),
                self.positions.clone(),
                self.lines.clone(),
                self.budget.clone(),
            ));
            let follower = Follower {
                started_unix_nanos: container.started_unix_nanos,
                task,
            };
            tracked.followers.insert(container.id.clone(), follower);
        }
    }

    async fn persist(&self) {
        if let Err(error) = self.positions.persist().await {
            tracing::warn!(error = %error, "writing the docker checkpoints failed");
        }
    }
}

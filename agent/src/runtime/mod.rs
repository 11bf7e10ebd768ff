//! Running the instances the plane places on this node. The agent pulls its assignments (a long poll on
//! `GET /api/v1/nodes/{id}/assignments`), starts what is missing, stops what is no longer wanted, restarts what
//! crashed with exponential backoff, checks health, and posts every instance's state to the plane. **Agents pull;
//! the plane never dials in.**
//!
//! Instances outlive the agent: each runs in a session of its own and writes its output straight to files, so a
//! stopped or crashed agent leaves them running; the next agent re-adopts them from `DATA_DIR/instances/state.json`
//! by pid and start time, starts no duplicate, and restarts one that died meanwhile. The record holds the
//! assignment, environment included, so an instance can be restarted while the plane is away; the file is mode
//! 0600 in the 0700 data directory.
//!
//! Layout: `DATA_DIR/instances/<instance id>/` holds `instance.json` (service, version, instance id: what the file
//! source tags the output with), `stdout.log`, `stderr.log` (copy-truncated past 10 MiB) and `work/`, the default
//! working directory.

pub mod health;
pub mod process;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use gantry_proto::instances::{
    Assignment, Assignments, Exit, InstanceReport, InstanceState, Phase,
};
use gantry_support::CancellationToken;
use gantry_support::fs::write_atomic;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;

use health::{Checks, Verdict};
use process::{Ended, Launch, ProcessId, ProcessRuntime};

/// The first restart delay after a crash; it doubles with each crash up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest restart delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// An instance that ran this long before it ended is restarted after [`FIRST_BACKOFF`] again.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Crashes in a row (without a stable run between) from which an instance is reported crash-looping.
pub const CRASH_LOOP_AFTER: u32 = 3;
/// A log file is copy-truncated past this size.
pub const MAX_LOG_BYTES: u64 = 10 << 20;
/// How long an instance no longer assigned keeps running after it is reported `stopping`, so that every router
/// has dropped it from its table before it gets SIGTERM (in-flight requests then get `kill_timeout` to finish).
pub const DRAIN_DELAY: Duration = Duration::from_secs(2);
/// Output lines kept with a crash report.
pub const LAST_LINES: usize = 10;

/// The instance runtime's settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The plane's base URL.
    pub plane: String,
    /// The agent's `node` token.
    pub token: String,
    /// This node's agent id.
    pub agent_id: String,
    /// `DATA_DIR/instances`.
    pub dir: PathBuf,
    /// The address instances listen on and other nodes reach them at (`GANTRY_HOST`).
    pub host: IpAddr,
    /// The agent's OTLP/HTTP receiver, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp_http: Option<SocketAddr>,
    /// How often the whole state is reported even without a change.
    pub report_interval: Duration,
}

/// What the agent keeps of one instance, in `state.json`.
#[derive(Clone, Serialize, Deserialize)]
struct Record {
    assignment: Assignment,
    port: u16,
    process: Option<ProcessId>,
    phase: Phase,
    restarts: u32,
    /// Crashes since the last stable run.
    crashes: u32,
    last_exit: Option<Exit>,
    reason: String,
    last_lines: Vec<String>,
    since: String,
    /// `since`, ms since the Unix epoch (0 in records written before it was kept: the age is then unknown).
    #[serde(default)]
    since_ms: u64,
    /// When the current process started, ms since the Unix epoch.
    started_ms: u64,
    /// When to start again after a crash, ms since the Unix epoch.
    restart_at_ms: Option<u64>,
    /// Being stopped (no longer assigned).
    #[serde(default)]
    stopping: bool,
    #[serde(skip)]
    checks: Checks,
    #[serde(skip)]
    next_check: Option<Instant>,
    #[serde(skip)]
    probing: bool,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("assignment", &self.assignment)
            .field("port", &self.port)
            .field("process", &self.process)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    instances: BTreeMap<String, Record>,
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The latest assignments, as the poller sees them (`None` until the first answer).
pub type AssignmentsWatch = watch::Receiver<Option<Arc<Assignments>>>;

/// Long-polls the plane for this node's assignments until `stop`, publishing each answer.
pub async fn poll_assignments(
    config: RuntimeConfig,
    client: reqwest::Client,
    sender: watch::Sender<Option<Arc<Assignments>>>,
    stop: CancellationToken,
) {
    let mut generation: Option<u64> = None;
    let mut backoff = Duration::from_secs(1);
    let mut warned = false;
    let url = format!(
        "{}/api/v1/nodes/{}/assignments",
        config.plane, config.agent_id
    );
    loop {
        let mut request = client
            .get(&url)
            .bearer_auth(&config.token)
            .timeout(Duration::from_secs(45));
        if let Some(generation) = generation {
            request = request.query(&[
                ("generation", generation.to_string()),
                ("wait_ms", "25000".to_owned()),
            ]);
        }
        let answer = tokio::select! {
            () = stop.cancelled() => return,
            answer = request.send() => answer,
        };
        let result = match answer {
            Ok(response) if response.status().is_success() => response
                .json::<Assignments>()
                .await
                .map_err(|error| format!("the plane's answer does not parse: {error}")),
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                Err(format!("the plane answered {status}: {body}"))
            }
            Err(error) => Err(format!("cannot reach the plane: {error}")),
        };
        match result {
            Ok(assignments) => {
                if warned {
                    tracing::info!("assignments received again");
                }
                warned = false;
                backoff = Duration::from_secs(1);
                generation = Some(assignments.generation);
                sender.send_replace(Some(Arc::new(assignments)));
            }
            Err(error) => {
                if !warned {
                    // A 404 before the first heartbeat registered the node is expected and brief.
                    tracing::warn!(%error, "assignments not received; instances keep running as they are; retrying");
                    warned = true;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(15));
            }
        }
    }
}

/// What finished in the background.
enum Done {
    /// A health check of an instance.
    Probe(String, u64, Result<(), String>),
    /// An instance stopped for good.
    Stopped(String, Ended),
}

/// The instance manager: reconciles what runs with the assignments until `stop`. Instances keep running after it
/// returns.
pub struct Manager {
    config: RuntimeConfig,
    runtime: Arc<ProcessRuntime>,
    client: reqwest::Client,
    records: BTreeMap<String, Record>,
    background: JoinSet<Done>,
    changed: bool,
    last_report: Option<Instant>,
    /// The bytes of the last `state.json` written.
    saved: Vec<u8>,
}

impl Manager {
    /// Loads `DATA_DIR/instances/state.json` and re-adopts the instances it lists: one still running (same pid,
    /// same start time) is watched again; one that died meanwhile is restarted.
    ///
    /// # Errors
    /// The directory cannot be created or the state file is unreadable.
    pub fn open(config: RuntimeConfig, client: reqwest::Client) -> anyhow::Result<Manager> {
        gantry_support::fs::create_private_dir(&config.dir)
            .with_context(|| format!("creating {}", config.dir.display()))?;
        let path = config.dir.join("state.json");
        let state: StateFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is damaged; move it away to start afresh",
                    path.display()
                )
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        };
        let runtime = Arc::new(ProcessRuntime::default());
        let mut records = state.instances;
        for (id, record) in &mut records {
            // Killed between starting a process and saving its pid: find it by the variable it was given.
            if record.process.is_none_or(|p| !process::is_running(p))
                && !record.stopping
                && let Some(found) = process::find_instance(id)
            {
                tracing::info!(instance = %id, pid = found.pid, "instance found by its GANTRY_INSTANCE");
                record.process = Some(found);
            }
            match record.process {
                Some(process) if process::is_running(process) => {
                    tracing::info!(instance = %id, pid = process.pid, "instance re-adopted");
                }
                Some(process) => {
                    tracing::warn!(instance = %id, pid = process.pid, "instance ended while the agent was away");
                    record.process = None;
                    record.last_exit = Some(Exit {
                        code: None,
                        signal: None,
                        at: now_rfc3339(),
                    });
                    record.restarts += 1;
                    record.restart_at_ms = Some(now_ms());
                    record.phase = Phase::Starting;
                    record.reason = "ended while the agent was away; restarting".to_owned();
                    record.since = now_rfc3339();
                    record.since_ms = now_ms();
                }
                None => {}
            }
            record.next_check = Some(Instant::now());
        }
        Ok(Manager {
            config,
            runtime,
            client,
            records,
            background: JoinSet::new(),
            changed: true,
            last_report: None,
            saved: Vec::new(),
        })
    }

    /// The instance ids the manager holds, with their pids (for tests and `/metrics`).
    pub fn pids(&self) -> BTreeMap<String, Option<u32>> {
        self.records
            .iter()
            .map(|(id, record)| (id.clone(), record.process.map(|p| p.pid)))
            .collect()
    }

    /// Runs until `stop`; then returns, leaving instances running (unless `stop_instances` is set, as `gantry
    /// demo` does at Ctrl-C).
    pub async fn run(
        mut self,
        mut assignments: AssignmentsWatch,
        stop: CancellationToken,
        stop_instances: bool,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
                _ = assignments.changed() => {}
                Some(done) = self.background.join_next(), if !self.background.is_empty() => {
                    if let Ok(done) = done {
                        self.finished(done);
                    }
                }
            }
            let wanted = assignments.borrow().clone();
            self.reconcile(wanted.as_deref());
            self.save();
            self.report().await;
        }
        if stop_instances {
            for (id, record) in &self.records {
                if let Some(process) = record.process {
                    tracing::info!(instance = %id, "stopping instance");
                    self.runtime
                        .stop(
                            process,
                            Duration::from_millis(record.assignment.kill_timeout_ms),
                        )
                        .await;
                }
            }
            self.records.clear();
            self.changed = true;
            self.save();
            self.last_report = None;
            self.report().await;
        }
    }

    fn finished(&mut self, done: Done) {
        match done {
            Done::Probe(id, started_ms, result) => {
                let Some(record) = self.records.get_mut(&id) else {
                    return;
                };
                record.probing = false;
                // A result for an earlier process of the instance does not count.
                if record.started_ms != started_ms || record.process.is_none() || record.stopping {
                    return;
                }
                let Some(check) = record.assignment.health.clone() else {
                    return;
                };
                let in_start = now_ms().saturating_sub(record.started_ms) < check.start_period_ms;
                match record.checks.record(&check, result.is_ok(), in_start) {
                    Verdict::BecameHealthy => {
                        set_phase(record, Phase::Healthy, String::new());
                        self.changed = true;
                    }
                    Verdict::BecameUnhealthy => {
                        let why = result.err().unwrap_or_default();
                        set_phase(record, Phase::Unhealthy, why);
                        self.changed = true;
                    }
                    Verdict::Same => {}
                }
            }
            Done::Stopped(id, ended) => {
                if let Some(record) = self.records.remove(&id) {
                    tracing::info!(instance = %id, pid = ?record.process.map(|p| p.pid), ?ended, "instance stopped");
                    self.changed = true;
                }
            }
        }
    }

    fn reconcile(&mut self, wanted: Option<&Assignments>) {
        // Until the plane has answered once, what runs stays as it is.
        if let Some(wanted) = wanted {
            let by_id: BTreeMap<&str, &Assignment> = wanted
                .instances
                .iter()
                .map(|a| (a.instance_id.as_str(), a))
                .collect();
            for (id, record) in &mut self.records {
                if !by_id.contains_key(id.as_str()) && !record.stopping {
                    record.stopping = true;
                    set_phase(
                        record,
                        Phase::Stopping,
                        "no longer assigned to this node".to_owned(),
                    );
                    self.changed = true;
                    let (runtime, id, process) = (self.runtime.clone(), id.clone(), record.process);
                    let timeout = Duration::from_millis(record.assignment.kill_timeout_ms);
                    self.background.spawn(async move {
                        let ended = match process {
                            Some(process) => {
                                // Reported `stopping` first: routers drop it before it is asked to end.
                                tokio::time::sleep(DRAIN_DELAY).await;
                                runtime.stop(process, timeout).await
                            }
                            None => Ended {
                                code: None,
                                signal: None,
                            },
                        };
                        Done::Stopped(id, ended)
                    });
                }
            }
            for assignment in &wanted.instances {
                if !self.records.contains_key(&assignment.instance_id) {
                    match self.new_record(assignment) {
                        Ok(record) => {
                            self.records.insert(assignment.instance_id.clone(), record);
                        }
                        Err(error) => {
                            tracing::error!(instance = %assignment.instance_id, error = %format!("{error:#}"), "instance cannot be prepared")
                        }
                    }
                    self.changed = true;
                }
            }
        }
        let now = now_ms();
        let ids: Vec<String> = self.records.keys().cloned().collect();
        for id in ids {
            if self.step(&id, now) {
                // A started process is on disk before anything else happens.
                self.save();
            }
        }
    }

    /// One instance: watch its process, start it when due, check its health. Returns whether it started one.
    fn step(&mut self, id: &str, now: u64) -> bool {
        let Some(record) = self.records.get_mut(id) else {
            return false;
        };
        if record.stopping {
            return false;
        }
        let mut started = false;
        let dir = self.config.dir.join(id);
        if let Some(process) = record.process
            && let Some(ended) = self.runtime.poll(process)
        {
            let ran = Duration::from_millis(now.saturating_sub(record.started_ms));
            record.process = None;
            record.restarts += 1;
            record.crashes = if ran >= STABLE_AFTER {
                1
            } else {
                record.crashes + 1
            };
            let exit = Exit {
                code: ended.code,
                signal: ended.signal,
                at: now_rfc3339(),
            };
            let backoff = backoff(record.crashes);
            record.restart_at_ms = Some(now + backoff.as_millis() as u64);
            record.last_lines = crash_lines(&dir);
            let phase = if record.crashes >= CRASH_LOOP_AFTER {
                Phase::CrashLooping
            } else {
                Phase::Starting
            };
            let why = format!("{exit}; restarting in {} s", backoff.as_secs_f64());
            tracing::warn!(instance = %id, %exit, restarts = record.restarts, backoff_ms = backoff.as_millis() as u64, "instance ended");
            record.last_exit = Some(exit);
            set_phase(record, phase, why);
            self.changed = true;
        }
        if record.process.is_none() && record.restart_at_ms.is_none_or(|at| at <= now) {
            match start(&self.runtime, &self.config, record, &dir) {
                Ok(process) => {
                    tracing::info!(instance = %id, pid = process.pid, port = record.port, "instance started");
                    started = true;
                    record.process = Some(process);
                    record.started_ms = now_ms();
                    record.restart_at_ms = None;
                    record.checks = Checks::default();
                    record.next_check = Some(Instant::now());
                    let (phase, why) = if record.assignment.health.is_some() {
                        (Phase::Starting, String::new())
                    } else {
                        (Phase::Healthy, String::new())
                    };
                    set_phase(record, phase, why);
                }
                Err(error) => {
                    let backoff = backoff(record.crashes + 1);
                    record.crashes += 1;
                    record.restart_at_ms = Some(now + backoff.as_millis() as u64);
                    let why = format!(
                        "cannot start: {error:#}; retrying in {} s",
                        backoff.as_secs_f64()
                    );
                    tracing::error!(instance = %id, error = %why, "instance not started");
                    let phase = if record.crashes >= CRASH_LOOP_AFTER {
                        Phase::CrashLooping
                    } else {
                        Phase::Starting
                    };
                    set_phase(record, phase, why);
                }
            }
            self.changed = true;
        }
        // Rotation and health, while it runs.
        if record.process.is_some() {
            for stream in ["stdout.log", "stderr.log"] {
                if let Err(error) = process::rotate_if_larger(&dir.join(stream), MAX_LOG_BYTES) {
                    tracing::warn!(instance = %id, %error, "log rotation failed");
                }
            }
            if let (Some(check), false) = (record.assignment.health.clone(), record.probing)
                && record.next_check.is_none_or(|at| at <= Instant::now())
            {
                record.probing = true;
                record.next_check = Some(Instant::now() + Duration::from_millis(check.interval_ms));
                let address = SocketAddr::new(self.config.host, record.port);
                let (client, id, started) = (self.client.clone(), id.to_owned(), record.started_ms);
                let working_dir = working_dir(&dir, &record.assignment);
                self.background.spawn(async move {
                    let timeout = Duration::from_millis(check.timeout_ms);
                    let result =
                        health::probe(&check.probe, address, timeout, &client, &working_dir).await;
                    Done::Probe(id, started, result)
                });
            }
        }
        started
    }

    fn new_record(&self, assignment: &Assignment) -> anyhow::Result<Record> {
        let dir = self.config.dir.join(&assignment.instance_id);
        std::fs::create_dir_all(dir.join("work"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let meta = serde_json::json!({
            "service": assignment.service,
            "version": assignment.version,
            "instance_id": assignment.instance_id,
        });
        write_atomic(&dir.join("instance.json"), &serde_json::to_vec(&meta)?)?;
        let port = free_port(self.config.host)?;
        Ok(Record {
            assignment: assignment.clone(),
            port,
            process: None,
            phase: Phase::Starting,
            restarts: 0,
            crashes: 0,
            last_exit: None,
            reason: String::new(),
            last_lines: Vec::new(),
            since: now_rfc3339(),
            since_ms: now_ms(),
            started_ms: 0,
            restart_at_ms: None,
            stopping: false,
            checks: Checks::default(),
            next_check: None,
            probing: false,
        })
    }

    /// Writes `state.json` when what it holds changed (an fsynced write: before a start is reported, its pid is
    /// on disk, so a restarted agent adopts rather than duplicates it).
    fn save(&mut self) {
        let state = StateFile {
            instances: self.records.clone(),
        };
        let path = self.config.dir.join("state.json");
        let bytes = match serde_json::to_vec(&state) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, "instance state not serialisable");
                return;
            }
        };
        if bytes == self.saved {
            return;
        }
        match write_atomic(&path, &bytes) {
            Ok(()) => self.saved = bytes,
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "instance state not saved")
            }
        }
    }

    async fn report(&mut self) {
        let due = self
            .last_report
            .is_none_or(|at| at.elapsed() >= self.config.report_interval);
        if !self.changed && !due {
            return;
        }
        let report = InstanceReport {
            instances: self
                .records
                .iter()
                .map(|(id, record)| InstanceState {
                    instance_id: id.clone(),
                    phase: record.phase,
                    pid: record.process.map(|p| p.pid),
                    address: Some(SocketAddr::new(self.config.host, record.port).to_string()),
                    restarts: record.restarts,
                    last_exit: record.last_exit.clone(),
                    reason: record.reason.clone(),
                    last_lines: record.last_lines.clone(),
                    since: record.since.clone(),
                    phase_age_ms: (record.since_ms > 0)
                        .then(|| now_ms().saturating_sub(record.since_ms)),
                })
                .collect(),
        };
        let url = format!(
            "{}/api/v1/nodes/{}/instances",
            self.config.plane, self.config.agent_id
        );
        let sent = self
            .client
            .post(&url)
            .bearer_auth(&self.config.token)
            .timeout(Duration::from_secs(10))
            .json(&report)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                self.changed = false;
                self.last_report = Some(Instant::now());
            }
            Ok(response) => {
                tracing::debug!(status = %response.status(), "instance report refused; retrying");
                self.last_report = Some(Instant::now());
            }
            Err(error) => {
                tracing::debug!(%error, "instance report not sent; retrying");
                self.last_report = Some(Instant::now());
            }
        }
    }
}

fn set_phase(record: &mut Record, phase: Phase, reason: String) {
    if record.phase != phase || record.reason != reason {
        record.since = now_rfc3339();
        record.since_ms = now_ms();
    }
    record.phase = phase;
    record.reason = reason;
}

/// The restart delay after `crashes` crashes in a row: 1 s, 2 s, 4 s, ... up to 60 s.
pub fn backoff(crashes: u32) -> Duration {
    let exponent = crashes.saturating_sub(1).min(16);
    (FIRST_BACKOFF * 2u32.pow(exponent)).min(MAX_BACKOFF)
}

fn working_dir(dir: &Path, assignment: &Assignment) -> PathBuf {
    match &assignment.process.working_dir {
        Some(path) if Path::new(path).is_absolute() => PathBuf::from(path),
        Some(path) => dir.join("work").join(path),
        None => dir.join("work"),
    }
}

/// The instance's environment: what Gantry sets, then the assignment's own.
fn environment(config: &RuntimeConfig, record: &Record) -> BTreeMap<String, String> {
    let a = &record.assignment;
    let mut env = BTreeMap::new();
    env.insert("PORT".to_owned(), record.port.to_string());
    env.insert("GANTRY_HOST".to_owned(), config.host.to_string());
    env.insert("GANTRY_SERVICE".to_owned(), a.service.clone());
    env.insert("GANTRY_VERSION".to_owned(), a.version.clone());
    env.insert("GANTRY_INSTANCE".to_owned(), a.instance_id.clone());
    env.insert("GANTRY_REVISION".to_owned(), a.revision.to_string());
    if let Some(otlp) = config.otlp_http {
        env.insert(
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            format!("http://{otlp}"),
        );
        env.insert(
            "OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(),
            "http/protobuf".to_owned(),
        );
    }
    env.insert("OTEL_SERVICE_NAME".to_owned(), a.service.clone());
    env.insert(
        "OTEL_RESOURCE_ATTRIBUTES".to_owned(),
        format!(
            "service.name={},service.version={},service.instance.id={}",
            a.service, a.version, a.instance_id
        ),
    );
    let own: Vec<(String, String)> = a
        .process
        .env
        .iter()
        .map(|(key, value)| (key.clone(), expand(value, &env)))
        .collect();
    for (key, value) in own {
        env.entry(key).or_insert(value);
    }
    env
}

/// `${PORT}`, `${GANTRY_HOST}`, `${GANTRY_SERVICE}`, `${GANTRY_VERSION}` and `${GANTRY_INSTANCE}` in an argument
/// or an environment value, replaced by their values (for programs that take their port as an argument, or reach
/// other services through this node's routers at `${GANTRY_HOST}`).
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_owned();
    for key in [
        "PORT",
        "GANTRY_HOST",
        "GANTRY_SERVICE",
        "GANTRY_VERSION",
        "GANTRY_INSTANCE",
    ] {
        if let Some(value) = env.get(key) {
            out = out.replace(&format!("${{{key}}}"), value);
        }
    }
    out
}

fn start(
    runtime: &ProcessRuntime,
    config: &RuntimeConfig,
    record: &Record,
    dir: &Path,
) -> anyhow::Result<ProcessId> {
    let env = environment(config, record);
    let args: Vec<String> = record
        .assignment
        .process
        .args
        .iter()
        .map(|a| expand(a, &env))
        .collect();
    let working_dir = working_dir(dir, &record.assignment);
    std::fs::create_dir_all(&working_dir)
        .with_context(|| format!("creating {}", working_dir.display()))?;
    let launch = Launch {
        command: &record.assignment.process.command,
        args: &args,
        env: &env,
        working_dir: &working_dir,
        stdout: &dir.join("stdout.log"),
        stderr: &dir.join("stderr.log"),
    };
    runtime
        .start(&launch)
        .with_context(|| format!("starting `{}`", record.assignment.process.command))
}

/// The last lines of an instance's stderr, then stdout.
fn crash_lines(dir: &Path) -> Vec<String> {
    let mut lines = process::last_lines(&dir.join("stderr.log"), LAST_LINES);
    if lines.len() < LAST_LINES {
        let more = process::last_lines(&dir.join("stdout.log"), LAST_LINES - lines.len());
        lines.extend(more);
    }
    lines
}

/// A port free on `host` now (the kernel's pick; held again by the instance when it binds it).
fn free_port(host: IpAddr) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(SocketAddr::new(host, 0))
        .with_context(|| format!("finding a free port on {host}"))?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute() {
        let seconds: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(seconds, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn arguments_expand_the_instance_variables() {
        let env = BTreeMap::from([
            ("PORT".to_owned(), "4100".to_owned()),
            ("GANTRY_HOST".to_owned(), "127.0.0.2".to_owned()),
        ]);
        assert_eq!(
            expand("--bind=${GANTRY_HOST}:${PORT}", &env),
            "--bind=127.0.0.2:4100"
        );
        assert_eq!(expand("${UNKNOWN}", &env), "${UNKNOWN}");
    }
}

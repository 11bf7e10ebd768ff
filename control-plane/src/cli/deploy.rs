//! `gantry deploy`, `gantry rollback`, `gantry pause|resume|promote|abort` and `gantry deployments`: rollouts
//! from a terminal or a CI pipeline. `deploy --wait` prints each step and verdict as it happens (`--json`: one
//! JSON object per event) and its exit code says how the rollout ended; see [`DeployArgs`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use gantry_proto::deployments::{
    DeployRequest, Deployment, DeploymentList, Event, EventPage, Outcome, RollbackRequest, Status,
};
use gantry_proto::platform::Strategy;
use reqwest::Method;

use super::remote::{CliError, Remote};
use super::runtime;

/// Exit codes of `gantry deploy` (and `gantry rollback --wait`).
pub mod exit {
    /// The rollout succeeded.
    pub const SUCCEEDED: u8 = 0;
    /// The canary judge found a regression; the rollout was rolled back.
    pub const ROLLED_BACK_BY_JUDGE: u8 = 1;
    /// Bad usage, or the token was refused.
    pub const USAGE: u8 = 2;
    /// Waiting timed out (the rollout goes on), or the plane could not be reached.
    pub const TIMED_OUT: u8 = 3;
    /// The deployment was refused: another rollout runs (without `--queue`), the change is invalid, or the
    /// revision was rolled back before; or, queued, it was refused when its turn came or aborted.
    pub const REFUSED: u8 = 4;
    /// Rolled back for health (new instances not healthy, progress deadline) or by hand.
    pub const ROLLED_BACK: u8 = 5;
    /// Paused, waiting for a human (an inconclusive verdict, or a step that waits for `gantry promote`).
    pub const PAUSED: u8 = 6;
}

/// A strategy on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StrategyArg {
    /// Replace instances a few at a time.
    Rolling,
    /// Weighted steps judged against the stable version.
    Canary,
    /// The new version at full size, then a switch.
    BlueGreen,
}

/// `gantry deploy SERVICE --version V`.
///
/// Exit codes: 0 succeeded; 1 rolled back by the canary judge; 2 bad usage or auth; 3 timed out waiting (the
/// rollout goes on) or the plane unreachable; 4 refused (another rollout running without `--queue`, invalid
/// change, a revision rolled back before; or queued and then refused or aborted); 5 rolled back for health,
/// progress deadline or by hand; 6 paused waiting for a human.
#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The service.
    service: String,
    /// The new version label.
    #[arg(long)]
    version: String,
    /// Set an environment variable, `KEY=VALUE` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Remove an environment variable (repeatable).
    #[arg(long = "unset", value_name = "KEY")]
    unset: Vec<String>,
    /// A new program to run.
    #[arg(long)]
    command: Option<String>,
    /// New arguments (repeatable; replaces them all).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    args: Vec<String>,
    /// The strategy for this deployment only.
    #[arg(long, value_enum)]
    strategy: Option<StrategyArg>,
    /// Deploy even settings that were rolled back before.
    #[arg(long)]
    force: bool,
    /// When another rollout of the service runs, wait in line behind it (its changes apply to what the service
    /// runs when its turn comes) instead of being refused; `--wait` waits through the queue.
    #[arg(long)]
    queue: bool,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    remote: Remote,
}

/// `gantry rollback SERVICE`.
#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The service.
    service: String,
    /// The revision to return to (default: the last earlier one with other instances that was not rolled back).
    #[arg(long)]
    to: Option<u64>,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    remote: Remote,
}

/// `--wait` and `--timeout` of `gantry deploy` and `gantry rollback`.
#[derive(Args, Debug)]
pub struct WaitArgs {
    /// Wait for the outcome, printing each step and verdict (the exit code says how it ended).
    #[arg(long)]
    wait: bool,
    /// How long to wait (`--wait`).
    #[arg(long, default_value = "15m")]
    timeout: String,
}

impl WaitArgs {
    /// The timeout, or the usage exit code with its message printed.
    fn timeout(&self) -> Result<Duration, ExitCode> {
        humantime::parse_duration(&self.timeout).map_err(|error| {
            finish(
                exit::USAGE,
                Some(format!("error: --timeout {}: {error}", self.timeout)),
            )
        })
    }
}

/// `gantry pause|resume|promote|abort SERVICE`.
#[derive(Args, Debug)]
pub struct ControlArgs {
    /// The service whose rollout to act on.
    service: String,
    /// `promote` only: straight to 100%.
    #[arg(long)]
    full: bool,
    /// Act on this deployment of the service (e.g. `abort --id N` cancels a queued one) rather than on its running
    /// rollout.
    #[arg(long)]
    id: Option<u64>,
    #[command(flatten)]
    remote: Remote,
}

/// `gantry deployments [SERVICE | --id ID]`.
#[derive(Args, Debug)]
pub struct DeploymentsArgs {
    /// Only this service's.
    service: Option<String>,
    /// Show one deployment with its decision records.
    #[arg(long)]
    id: Option<u64>,
    /// How many, newest first.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    #[command(flatten)]
    remote: Remote,
}

/// An exit code (see [`exit`]).
type ExitCode = u8;

/// An exit code with its message printed to stderr.
fn finish(code: u8, message: Option<String>) -> ExitCode {
    if let Some(message) = message {
        eprintln!("{message}");
    }
    code
}

/// The exit code of a refused or failed request: 2 for auth, 3 unreachable, 4 refused.
fn refused(error: anyhow::Error) -> ExitCode {
    let message = format!("error: {error:#}");
    match error.downcast_ref::<CliError>() {
        Some(CliError::Unreachable(_)) => finish(exit::TIMED_OUT, Some(message)),
        Some(CliError::Refused(text))
            if text.contains("401 Unauthorized") || text.contains("403 Forbidden") =>
        {
            finish(exit::USAGE, Some(message))
        }
        Some(CliError::Refused(_)) => finish(exit::REFUSED, Some(message)),
        None => finish(exit::USAGE, Some(message)),
    }
}

/// Runs `gantry deploy`.
pub fn deploy(args: DeployArgs) -> ExitCode {
    let mut set = BTreeMap::new();
    for pair in &args.set {
        let Some((key, value)) = pair.split_once('=') else {
            return finish(
                exit::USAGE,
                Some(format!("error: --set {pair}: write KEY=VALUE")),
            );
        };
        set.insert(key.to_owned(), value.to_owned());
    }
    let timeout = match args.wait.timeout() {
        Ok(timeout) => timeout,
        Err(code) => return code,
    };
    let request = DeployRequest {
        service: args.service.clone(),
        version: args.version.clone(),
        set,
        unset: args.unset.clone(),
        command: args.command.clone(),
        args: (!args.args.is_empty()).then(|| args.args.clone()),
        strategy: args.strategy.map(|s| match s {
            StrategyArg::Rolling => Strategy::Rolling,
            StrategyArg::Canary => Strategy::Canary,
            StrategyArg::BlueGreen => Strategy::BlueGreen,
        }),
        force: args.force,
        queue: args.queue,
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(error) => return finish(exit::USAGE, Some(format!("error: {error:#}"))),
    };
    let created: Deployment = match runtime.block_on(args.remote.call(
        Method::POST,
        &["api", "v1", "deployments"],
        &[],
        Some(&request),
    )) {
        Ok(created) => created,
        Err(error) => return refused(error),
    };
    follow(&runtime, &args.remote, created, args.wait.wait, timeout)
}

/// Runs `gantry rollback`.
pub fn rollback(args: RollbackArgs) -> ExitCode {
    let timeout = match args.wait.timeout() {
        Ok(timeout) => timeout,
        Err(code) => return code,
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(error) => return finish(exit::USAGE, Some(format!("error: {error:#}"))),
    };
    let created: Deployment = match runtime.block_on(args.remote.call(
        Method::POST,
        &["api", "v1", "services", &args.service, "rollback"],
        &[],
        Some(&RollbackRequest { to: args.to }),
    )) {
        Ok(created) => created,
        Err(error) => return refused(error),
    };
    follow(&runtime, &args.remote, created, args.wait.wait, timeout)
}

/// Prints a started deployment and, with `wait`, its events until it ends, pauses for a human, or `timeout`.
fn follow(
    runtime: &tokio::runtime::Runtime,
    remote: &Remote,
    created: Deployment,
    wait: bool,
    timeout: Duration,
) -> ExitCode {
    if !wait {
        if remote.json {
            println!("{}", serde_json::to_string(&created).unwrap_or_default());
        } else if created.status == Status::Queued {
            println!(
                "deployment {} queued: {} {} starts when the running rollout ends; follow it with `gantry deployments --id {}`",
                created.id, created.service, created.to_version, created.id
            );
        } else {
            println!(
                "deployment {} started: {} r{} ({}) -> r{} ({}), {}; follow it with `gantry deployments --id {}`",
                created.id,
                created.service,
                created.from_revision,
                created.from_version,
                created.to_revision,
                created.to_version,
                strategy_name(created.strategy),
                created.id
            );
        }
        return exit::SUCCEEDED;
    }
    let started = Instant::now();
    let mut after = 0;
    let id = created.id.to_string();
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return finish(
                exit::TIMED_OUT,
                Some(format!(
                    "timed out after {} waiting for deployment {id}; the rollout goes on: `gantry deployments --id {id}`",
                    humantime::format_duration(timeout)
                )),
            );
        }
        let wait_ms = left.min(Duration::from_secs(20)).as_millis().to_string();
        let page: EventPage = match runtime.block_on(remote.call(
            Method::GET,
            &["api", "v1", "deployments", &id, "events"],
            &[("after", after.to_string()), ("wait_ms", wait_ms)],
            None::<&()>,
        )) {
            Ok(page) => page,
            Err(error) => {
                // Lost contact is not an outcome: retry until the timeout.
                if matches!(
                    error.downcast_ref::<CliError>(),
                    Some(CliError::Unreachable(_))
                ) {
                    eprintln!("warning: {error:#}; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
                return refused(error);
            }
        };
        for event in &page.events {
            after = after.max(event.seq);
            print_event(event, remote.json);
        }
        let deployment = &page.deployment;
        if deployment.status.ended() {
            return outcome(deployment, remote.json);
        }
        if deployment.status == Status::Paused && deployment.paused_until.is_none() {
            if remote.json {
                println!(
                    "{}",
                    serde_json::json!({"kind": "waiting", "deployment": deployment})
                );
            }
            return finish(
                exit::PAUSED,
                Some(format!(
                    "deployment {id} is paused: {}",
                    deployment
                        .pause_reason
                        .as_deref()
                        .unwrap_or("waiting for a human")
                )),
            );
        }
    }
}

/// The exit code of an ended deployment, with a summary line.
fn outcome(deployment: &Deployment, json: bool) -> ExitCode {
    if json {
        println!(
            "{}",
            serde_json::json!({"kind": "outcome", "deployment": deployment})
        );
    }
    let code = match deployment.outcome {
        // Refused when its turn came, or aborted while queued.
        _ if deployment.status == Status::Cancelled => exit::REFUSED,
        Some(Outcome::Succeeded) => exit::SUCCEEDED,
        Some(Outcome::RolledBackByJudge) => exit::ROLLED_BACK_BY_JUDGE,
        Some(Outcome::RolledBackForHealth | Outcome::Aborted) | None => exit::ROLLED_BACK,
    };
    let summary = format!(
        "deployment {} of {} {}: {}",
        deployment.id,
        deployment.service,
        match deployment.status {
            Status::Succeeded => "succeeded",
            Status::Cancelled => "was cancelled",
            _ => "was rolled back",
        },
        deployment.reason
    );
    if code == exit::SUCCEEDED {
        if !json {
            println!("{summary}");
        }
        exit::SUCCEEDED
    } else {
        finish(code, Some(summary))
    }
}

/// One event: a line (and a decision record's table), or a JSON object.
fn print_event(event: &Event, json: bool) {
    if json {
        println!("{}", serde_json::to_string(event).unwrap_or_default());
        return;
    }
    println!(
        "{}  {}",
        &event.time[11..23.min(event.time.len())],
        event.message
    );
    if event.kind == "verdict"
        && let Some(decision) = event.detail.as_ref().and_then(|d| {
            serde_json::from_value::<gantry_proto::deployments::Decision>(d.clone()).ok()
        })
    {
        print!("{}", render_decision(&decision));
    }
    if event.kind == "weight"
        && let Some(detail) = &event.detail
        && let Some(first) = detail
            .get("canary_first_request_ms")
            .and_then(serde_json::Value::as_u64)
    {
        println!(
            "              the canary's first request to its weight at 0: {:.1} s",
            event.time_ms.saturating_sub(first) as f64 / 1000.0
        );
    }
}

/// A decision record as a small table.
pub fn render_decision(decision: &gantry_proto::deployments::Decision) -> String {
    let record = &decision.record;
    let (stable_version, canary_version) = &decision.versions;
    // Blue-green's preview compares the live version with the new one on the same requests.
    let (stable, canary) = if record.paired {
        (
            format!("live {stable_version}"),
            format!("new {canary_version}"),
        )
    } else {
        (
            format!("stable {stable_version}"),
            format!("canary {canary_version}"),
        )
    };
    let percent = |x: f64| format!("{:.2}%", x * 100.0);
    let interval = |i: &gantry_judge::interval::Interval, f: &dyn Fn(f64) -> String| {
        if i.high.is_finite() {
            format!("[{}, {}]", f(i.low), f(i.high))
        } else {
            format!("[{}, -]", f(i.low))
        }
    };
    let ms = |x: f64| format!("{x:.1} ms");
    let mut out = String::new();
    if record.paired {
        out.push_str(&format!(
            "              on {} mirrored requests, each answered by both versions\n",
            record.errors.canary.requests
        ));
    }
    out.push_str(&format!(
        "              errors   {stable}: {}/{} = {} {}   {canary}: {}/{} = {} {}   e-value {} (fails at {:.0})\n",
        record.errors.stable.errors,
        record.errors.stable.requests,
        percent(record.errors.stable.ratio),
        interval(&record.errors.stable.interval, &percent),
        record.errors.canary.errors,
        record.errors.canary.requests,
        percent(record.errors.canary.ratio),
        interval(&record.errors.canary.interval, &percent),
        gantry_judge::compact(record.errors.e_value),
        record.errors.threshold
    ));
    out.push_str(&format!(
        "              latency  {stable} p99 {} {}   {canary} p99 {} {}   {} slower in {} of {} pairs   e-value {} (fails at {:.0})\n",
        ms(record.latency.stable.p99_ms),
        interval(&record.latency.stable.p99_interval_ms, &ms),
        ms(record.latency.canary.p99_ms),
        interval(&record.latency.canary.p99_interval_ms, &ms),
        if record.paired { "new" } else { "canary" },
        record.latency.slower,
        record.latency.pairs,
        gantry_judge::compact(record.latency.e_value),
        record.latency.threshold
    ));
    if let Some(logs) = &record.logs {
        out.push_str(&format!(
            "              error logs  {stable}: {} ({:.3} per request)   {canary}: {} ({:.3} per request)   e-value {} (fails at {:.0})\n",
            logs.stable,
            logs.stable_per_request,
            logs.canary,
            logs.canary_per_request,
            gantry_judge::compact(logs.e_value),
            logs.threshold
        ));
    }
    if !record.exemplars.is_empty() {
        out.push_str(&format!(
            "              exemplar traces: {}\n",
            record.exemplars.join(" ")
        ));
    }
    out
}

/// The running deployment of `service`, for `pause`, `resume`, `promote` and `abort`.
async fn running(remote: &Remote, service: &str) -> anyhow::Result<Deployment> {
    let list: DeploymentList = remote
        .call(
            Method::GET,
            &["api", "v1", "deployments"],
            &[("service", service.to_owned()), ("limit", "500".to_owned())],
            None::<&()>,
        )
        .await?;
    list.deployments
        .into_iter()
        .find(|d| d.status.active())
        .with_context(|| format!("`{service}` has no rollout under way"))
        .map_err(|e| CliError::Refused(e.to_string()).into())
}

/// Deployment `id`.
async fn one(remote: &Remote, id: u64) -> anyhow::Result<Deployment> {
    remote
        .call(
            Method::GET,
            &["api", "v1", "deployments", &id.to_string()],
            &[],
            None::<&()>,
        )
        .await
}

/// Runs `gantry pause|resume|promote|abort`.
pub fn control(action: &str, args: ControlArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let id = match args.id {
            Some(id) => {
                let deployment = one(&args.remote, id).await?;
                if deployment.service != args.service {
                    return Err(CliError::Refused(format!(
                        "deployment {id} is of `{}`, not `{}`",
                        deployment.service, args.service
                    ))
                    .into());
                }
                id.to_string()
            }
            None => running(&args.remote, &args.service).await?.id.to_string(),
        };
        let query = if action == "promote" && args.full {
            vec![("full", "true".to_owned())]
        } else {
            Vec::new()
        };
        let after: Deployment = args
            .remote
            .call(
                Method::POST,
                &["api", "v1", "deployments", &id, action],
                &query,
                None::<&()>,
            )
            .await?;
        if args.remote.json {
            return Remote::print_json(&after);
        }
        println!(
            "deployment {id} of {}: {} ({}{})",
            after.service,
            after.status.as_str().replace('_', " "),
            after.phase,
            after
                .pause_reason
                .as_deref()
                .map(|r| format!("; {r}"))
                .unwrap_or_default()
        );
        Ok(())
    })
}

/// Runs `gantry deployments`.
pub fn list(args: DeploymentsArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        if let Some(id) = args.id {
            let deployment = one(&args.remote, id).await?;
            if args.remote.json {
                return Remote::print_json(&deployment);
            }
            print_deployment(&deployment);
            for decision in &deployment.decisions {
                println!(
                    "  {}  step {} at {}%: {}: {}",
                    decision.time,
                    decision.step + 1,
                    decision.weight,
                    decision.verdict,
                    decision.reason
                );
                print!("{}", render_decision(decision));
            }
            return Ok(());
        }
        let mut query = vec![("limit", args.limit.to_string())];
        if let Some(service) = &args.service {
            query.push(("service", service.clone()));
        }
        let list: DeploymentList = args
            .remote
            .call(
                Method::GET,
                &["api", "v1", "deployments"],
                &query,
                None::<&()>,
            )
            .await?;
        if args.remote.json {
            return Remote::print_json(&list);
        }
        if list.deployments.is_empty() {
            println!("no deployments");
        }
        for deployment in &list.deployments {
            print_deployment(deployment);
        }
        Ok(())
    })
}

/// A strategy's name as specs write it.
fn strategy_name(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::Rolling => "rolling",
        Strategy::Canary => "canary",
        Strategy::BlueGreen => "blue-green",
    }
}

fn print_deployment(d: &Deployment) {
    // A deployment that has not started (queued, or cancelled before its turn) has no revision yet.
    let to = if d.to_revision == 0 {
        format!("({})", d.to_version)
    } else {
        format!("r{} ({})", d.to_revision, d.to_version)
    };
    println!(
        "{:>5}  {}  {:<16} r{} ({}) -> {to}  {}  {}{}  {}",
        d.id,
        d.started,
        d.service,
        d.from_revision,
        d.from_version,
        strategy_name(d.strategy),
        d.status.as_str(),
        d.outcome
            .map(|o| format!(" ({})", o.as_str()))
            .unwrap_or_default(),
        if d.reason.is_empty() {
            d.pause_reason.clone().unwrap_or_default()
        } else {
            d.reason.clone()
        }
    );
}

//! The rollout engine: drives every running deployment one round at a time (every 100 ms, and as soon as judge
//! observations or instance reports arrive). A round reads the deployment, the service's slots and what the
//! agents report, decides, and writes the decision in one transaction: the placements (replacements begun,
//! completed or cancelled), the routers' weight, the judge's state, the deployment's step and phase, its events and
//! its audit entries. Every action is a desired state (an instance id is a slot, a template and a generation), so
//! a round repeated after a crash starts nothing twice, and a plane killed at any moment resumes from the database.
//!
//! Phases:
//! - rolling (`rolling`): [`plan::rolling`] replaces slots a batch at a time; a new instance counts once healthy
//!   for `min_healthy_time`; past `progress_deadline`, or when a new instance crash-loops, the rollout fails.
//! - canary: `starting` (the step's canary instances, `ceil(weight × replicas)` beside the stable ones, until
//!   available), `judging` (the routers send the step's weight to the canary; the judge sees every request),
//!   `passed` (a step's pause), then the next step, and `promoting` (the new version at full size, then 100%,
//!   then the old instances stop).
//! - blue-green: `starting` (the new version at full size beside the old, reachable with the header
//!   `x-gantry-version`), then the switch (100% at once) and `scaling_down` (the old kept `scale_down_delay` for an
//!   instant switch back).
//! - rolling back: the routers' weight to the new version goes to 0 in the round that decides it, a copy of the
//!   stable revision becomes current (the rolled-back revision is marked rejected), replacements of the new version
//!   are dropped, and slots already moved are rolled back, fast-tracked.

pub mod feed;
pub mod plan;
mod strategies;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_proto::TokenInfo;
use gantry_proto::deployments::{Decision, Outcome, Status};
use gantry_proto::instances::Phase;
use gantry_proto::platform::Strategy;
use gantry_support::CancellationToken;
use rusqlite::{Connection, params};

use crate::instances::InstanceRegistry;
use crate::placement::Slot;
use crate::state::audit::{self, Action};
use crate::state::deployments::{self, Row};
use crate::state::placements::{self, StoredSlot};
use crate::state::{StateDb, StateError, now_ms, platform, rfc3339_ms};
use feed::{Feed, Sample, Watch};
use plan::{Budget, SlotView};

/// How often the loop runs a round when nothing wakes it (what a `min_healthy_time` or a step's minimum duration
/// may overrun by, at most).
pub const INTERVAL: Duration = Duration::from_millis(100);
/// A new instance that has restarted this often during a rollout fails it.
const CRASH_RESTARTS: u32 = 3;

/// The rollout engine.
#[derive(Debug)]
pub struct Rollouts {
    db: Arc<StateDb>,
    instances: Arc<InstanceRegistry>,
    /// The judge's per-request feed, filled by the intake.
    pub feed: Arc<Feed>,
    /// Since when each healthy instance has been healthy, ms since the epoch (the plane's clock): when first seen
    /// healthy, less the time its agent reports it had been healthy by then (measured on the agent's clock, so
    /// skew between the clocks does not matter). A restarted plane counts `min_healthy_time` from when the instance
    /// became healthy, not from when the plane saw it again.
    healthy_since: Mutex<HashMap<String, u64>>,
    /// The earliest time an instance seen healthy will have been so for `min_healthy_time`, ms since the epoch: the
    /// loop runs a round then rather than at its next tick.
    next_due: Mutex<Option<u64>>,
    wake: tokio::sync::Notify,
}

/// The actor of the engine's own actions in the audit log.
fn engine() -> TokenInfo {
    TokenInfo {
        id: String::new(),
        name: "gantry (rollout)".to_owned(),
        role: gantry_proto::Role::Admin,
        created: String::new(),
        services: None,
    }
}

impl Rollouts {
    /// An engine over the state database and the agents' reports, judging what `feed` receives.
    pub fn new(db: Arc<StateDb>, instances: Arc<InstanceRegistry>, feed: Arc<Feed>) -> Rollouts {
        Rollouts {
            db,
            instances,
            feed,
            healthy_since: Mutex::new(HashMap::new()),
            next_due: Mutex::new(None),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Runs a round soon (after a deployment was started or acted on, or instances reported).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs rounds until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due = self
                .next_due
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .map(|due| Duration::from_millis(due.saturating_sub(now_ms())));
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
                () = self.feed.arrived.notified() => {}
                () = self.wake.notified() => {}
                () = tokio::time::sleep(due.unwrap_or(INTERVAL)), if due.is_some() => {}
            }
            let engine = self.clone();
            match tokio::task::spawn_blocking(move || engine.round()).await {
                Ok(Ok(true)) => self.instances.bump(),
                Ok(Ok(false)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "rollout round failed; retrying"),
                Err(error) => tracing::error!(%error, "rollout round panicked"),
            }
        }
    }

    /// One round over every running deployment; returns whether what agents or routers are told changed. Blocking.
    ///
    /// # Errors
    /// The state database failed; the round's changes of the failing deployment are not kept.
    pub fn round(&self) -> Result<bool, StateError> {
        let now = now_ms();
        // A queued deployment whose turn came starts (or is cancelled with the reason).
        // A failure here holds up the queue only: the running rollouts go on.
        let mut started = false;
        match self.db.read(deployments::any_queued) {
            Ok(true) => {
                match self.db.write(|transaction| {
                    platform::start_next(transaction).map_err(|e| self.db.error(e))
                }) {
                    Ok(one) => started = one,
                    Err(error) => {
                        tracing::warn!(%error, "a queued deployment could not start; retrying")
                    }
                }
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "the deployment queue could not be read; retrying")
            }
        }
        let running = self.db.read(deployments::active)?;
        self.note_health(now);
        let mut watched = HashMap::new();
        for deployment in &running {
            let judged = match deployment.strategy {
                Strategy::Canary => true,
                Strategy::BlueGreen => matches!(deployment.phase.as_str(), "judging" | "passed"),
                Strategy::Rolling => false,
            };
            if judged && deployment.status != Status::RollingBack {
                let (stable, canary) = self.db.read(|c| {
                    Ok((
                        deployments::version(c, &deployment.service, deployment.from_revision)?,
                        deployments::version(c, &deployment.service, deployment.to_revision)?,
                    ))
                })?;
                watched.insert(
                    deployment.service.clone(),
                    Watch {
                        stable,
                        canary,
                        mirrored: deployment.strategy == Strategy::BlueGreen,
                        logs: deployment.strategy == Strategy::Canary
                            && deployment.policy.judge.log_errors,
                    },
                );
            }
        }
        self.feed.watch(watched);
        let mut changed = started;
        let mut failed = None;
        for deployment in running {
            let samples = self.feed.take(&deployment.service);
            let id = deployment.id;
            let outcome = self.db.write(|transaction| {
                // Read again inside the transaction: an API action may have changed it since.
                let Some(mut row) =
                    deployments::get(transaction, deployment.id).map_err(|e| self.db.error(e))?
                else {
                    return Ok(false);
                };
                if !row.status.active() {
                    return Ok(false);
                }
                let before = format!("{row:?}");
                let mut round = Round {
                    engine: self,
                    c: transaction,
                    now,
                    changed: false,
                };
                round
                    .advance(&mut row, samples)
                    .map_err(|e| self.db.error(e))?;
                if format!("{row:?}") != before {
                    deployments::save(transaction, &row).map_err(|e| self.db.error(e))?;
                }
                Ok::<_, StateError>(round.changed)
            });
            // One deployment's failing round does not hold up the others.
            match outcome {
                Ok(one) => changed |= one,
                Err(error) => {
                    tracing::warn!(deployment = id, %error, "rollout round failed; retrying");
                    failed = Some(error);
                }
            }
        }
        match failed {
            Some(error) if !changed => Err(error),
            _ => Ok(changed),
        }
    }

    /// Records when instances became healthy.
    fn note_health(&self, now: u64) {
        let ready = self.instances.ready();
        let mut since = self.healthy_since.lock().unwrap_or_else(|e| e.into_inner());
        since.retain(|id, _| ready.contains_key(id));
        for (id, (agent, _)) in &ready {
            since.entry(id.clone()).or_insert_with(|| {
                let age = self
                    .instances
                    .state(agent, id)
                    .and_then(|state| state.phase_age_ms)
                    .unwrap_or(0);
                now.saturating_sub(age)
            });
        }
    }

    /// Whether instance `id` on `node` has been healthy for `min_healthy_ms` by `now`.
    fn available(&self, node: &str, id: &str, min_healthy_ms: u64, now: u64) -> bool {
        let healthy = self
            .instances
            .state(node, id)
            .is_some_and(|state| state.phase == Phase::Healthy);
        if !healthy {
            return false;
        }
        let Some(since) = self
            .healthy_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied()
        else {
            return false;
        };
        let ready_at = since.saturating_add(min_healthy_ms);
        if now >= ready_at {
            return true;
        }
        let mut due = self.next_due.lock().unwrap_or_else(|e| e.into_inner());
        *due = Some(due.map_or(ready_at, |d| d.min(ready_at)));
        false
    }

    /// Why instance `id` on `node` is failing, when it crash-loops.
    fn crashing(&self, node: &str, id: &str) -> Option<String> {
        let state = self.instances.state(node, id)?;
        (state.phase == Phase::CrashLooping || state.restarts >= CRASH_RESTARTS).then(|| {
            format!(
                "new instance {id} is crash-looping ({} restarts{}{})",
                state.restarts,
                state
                    .last_exit
                    .as_ref()
                    .map(|exit| format!(", last exit: {exit:?}"))
                    .unwrap_or_default(),
                if state.reason.is_empty() {
                    String::new()
                } else {
                    format!("; {}", state.reason)
                }
            )
        })
    }
}

/// One deployment's round inside its transaction.
struct Round<'a> {
    engine: &'a Rollouts,
    c: &'a Connection,
    now: u64,
    /// Whether agents' assignments or routes changed.
    changed: bool,
}

impl Round<'_> {
    fn advance(&mut self, row: &mut Row, samples: Vec<Sample>) -> rusqlite::Result<()> {
        if row.status == Status::RollingBack {
            return self.roll_back(row);
        }
        // Paused: hold (a judge goes on seeing requests, and timed pauses end, in `canary` and `blue_green`).
        if row.status == Status::Paused && row.strategy == Strategy::Rolling {
            return Ok(());
        }
        match row.strategy {
            Strategy::Rolling => self.rolling(row),
            Strategy::Canary => self.canary(row, samples),
            Strategy::BlueGreen => self.blue_green(row, samples),
        }
    }

    fn slots(&self, service: &str) -> rusqlite::Result<BTreeMap<Slot, StoredSlot>> {
        placements::load(self.c, Some(service))
    }

    fn min_healthy(&self, row: &Row) -> u64 {
        row.policy.min_healthy_time_ms
    }

    fn event(
        &self,
        row: &Row,
        kind: &str,
        message: &str,
        detail: Option<&serde_json::Value>,
    ) -> rusqlite::Result<()> {
        tracing::info!(deployment = row.id, service = %row.service, kind, "{message}");
        deployments::event(self.c, row.id, self.now, kind, message, detail)?;
        Ok(())
    }

    fn audit(&self, row: &Row, action: &str, detail: &str) -> rusqlite::Result<()> {
        audit::append(
            self.c,
            &Action {
                actor: &engine(),
                action,
                target: &row.service,
                outcome: "ok",
                detail,
            },
        )
    }

    /// Planner views of the slots towards `target`.
    fn views(&self, row: &Row, slots: &BTreeMap<Slot, StoredSlot>) -> Vec<SlotView> {
        slots
            .iter()
            .filter(|(_, stored)| stored.node.is_some())
            .map(|(slot, stored)| {
                let node = stored.node.as_deref().unwrap_or_default();
                SlotView {
                    index: slot.index,
                    template: stored.template,
                    available: self
                        .engine
                        .available(node, &stored.instance_id(slot), 0, self.now),
                    next: stored.next.as_ref().map(|next| {
                        let id = placements::instance_id(
                            &slot.service,
                            slot.index,
                            next.template,
                            next.epoch,
                        );
                        (
                            next.template,
                            self.engine
                                .available(&next.node, &id, self.min_healthy(row), self.now),
                        )
                    }),
                }
            })
            .collect()
    }

    /// Applies planner actions towards `target`.
    fn apply(
        &mut self,
        slots: &BTreeMap<Slot, StoredSlot>,
        actions: &[plan::Action],
        target: u64,
    ) -> rusqlite::Result<()> {
        for action in actions {
            let index = match action {
                plan::Action::Begin(i) | plan::Action::Complete(i) | plan::Action::Cancel(i) => *i,
            };
            let Some((slot, stored)) = slots.iter().find(|(slot, _)| slot.index == index) else {
                continue;
            };
            match action {
                plan::Action::Begin(_) => {
                    let Some(node) = &stored.node else { continue };
                    placements::begin_replacement(self.c, slot, node, stored.epoch + 1, target)?;
                }
                plan::Action::Complete(_) => placements::complete_replacement(self.c, slot)?,
                plan::Action::Cancel(_) => placements::cancel_replacement(self.c, slot)?,
            }
            self.changed = true;
        }
        Ok(())
    }

    /// Whether `slot`'s instance at the new template is available: begins it beside the current one when the slot
    /// has none, and cancels a replacement at another template first (a restart or a drain under way when the
    /// rollout began), so that only the new version counts.
    fn new_instance_ready(
        &mut self,
        row: &Row,
        slot: &Slot,
        stored: &StoredSlot,
    ) -> rusqlite::Result<bool> {
        let Some(node) = &stored.node else {
            return Ok(false);
        };
        match &stored.next {
            Some(next) if next.template == row.to_template => {
                let id =
                    placements::instance_id(&slot.service, slot.index, next.template, next.epoch);
                Ok(self
                    .engine
                    .available(&next.node, &id, self.min_healthy(row), self.now))
            }
            Some(_) => {
                placements::cancel_replacement(self.c, slot)?;
                self.changed = true;
                Ok(false)
            }
            None => {
                placements::begin_replacement(
                    self.c,
                    slot,
                    node,
                    stored.epoch + 1,
                    row.to_template,
                )?;
                self.changed = true;
                Ok(false)
            }
        }
    }

    /// A new instance of `template` that crash-loops, if any.
    fn crash(&self, slots: &BTreeMap<Slot, StoredSlot>, template: u64) -> Option<String> {
        slots.iter().find_map(|(slot, stored)| {
            let next = stored
                .next
                .as_ref()
                .filter(|next| next.template == template)?;
            let id = placements::instance_id(&slot.service, slot.index, next.template, next.epoch);
            self.engine.crashing(&next.node, &id)
        })
    }

    /// Whether the rollout has gone `progress_deadline` without progress (Kubernetes' progress deadline: the clock
    /// restarts at each completed replacement, step and resume, in `step_started_ms`).
    fn stalled(&self, row: &Row) -> bool {
        let since_progress = row.step_started_ms.unwrap_or(row.started_ms);
        self.now.saturating_sub(since_progress) > row.policy.progress_deadline_ms
    }

    fn budget(&self, row: &Row, replicas: u32) -> Budget {
        let surge = row.policy.max_surge.resolve(replicas, true);
        let unavailable = row.policy.max_unavailable.resolve(replicas, false);
        Budget {
            surge,
            unavailable: if surge == 0 {
                unavailable.max(1)
            } else {
                unavailable
            },
        }
    }

    fn replicas(&self, service: &str) -> rusqlite::Result<u32> {
        Ok(platform::current(self.c)?
            .get(service)
            .map_or(0, |s| if s.stopped { 0 } else { s.replicas }))
    }

    fn rolling(&mut self, row: &mut Row) -> rusqlite::Result<()> {
        let slots = self.slots(&row.service)?;
        let views = self.views(row, &slots);
        if plan::done(&views, row.to_template) {
            return self.finish(
                row,
                Status::Succeeded,
                Outcome::Succeeded,
                format!("r{} runs on every instance", row.to_revision),
            );
        }
        if let Some(why) = self.crash(&slots, row.to_template) {
            return self.fail(row, Outcome::RolledBackForHealth, why);
        }
        if self.stalled(row) {
            let moved = views
                .iter()
                .filter(|v| v.template == row.to_template)
                .count();
            return self.fail(
                row,
                Outcome::RolledBackForHealth,
                format!(
                    "progress deadline of {} s passed with {moved} of {} instances at r{}",
                    row.policy.progress_deadline_ms / 1000,
                    views.len(),
                    row.to_revision
                ),
            );
        }
        let replicas = self.replicas(&row.service)?;
        let actions = plan::rolling(&views, row.to_template, self.budget(row, replicas));
        let completed = actions
            .iter()
            .filter(|a| matches!(a, plan::Action::Complete(_)))
            .count();
        if completed > 0 {
            row.step_started_ms = Some(self.now);
            let at_target = views
                .iter()
                .filter(|v| v.template == row.to_template)
                .count()
                + completed;
            let message = format!(
                "{at_target} of {} instances at r{}",
                views.len(),
                row.to_revision
            );
            self.event(row, "progress", &message, None)?;
        }
        self.apply(&slots, &actions, row.to_template)
    }

    /// Records a verdict with the judge's record.
    fn decide(&mut self, row: &mut Row, verdict: &str, reason: &str) -> rusqlite::Result<()> {
        let Some(judge) = &row.judge else {
            return Ok(());
        };
        let decision = Decision {
            time: rfc3339_ms(self.now),
            step: row.step,
            weight: row.weight,
            verdict: verdict.to_owned(),
            reason: reason.to_owned(),
            versions: (
                deployments::version(self.c, &row.service, row.from_revision)?,
                deployments::version(self.c, &row.service, row.to_revision)?,
            ),
            record: judge.record(),
        };
        let detail = serde_json::to_value(&decision).unwrap_or_default();
        row.decisions.push(decision);
        self.event(
            row,
            "verdict",
            &if row.strategy == Strategy::BlueGreen {
                format!("preview: {verdict}: {reason}")
            } else {
                format!("step {}: {verdict}: {reason}", row.step + 1)
            },
            Some(&detail),
        )?;
        self.audit(row, "deployment.verdict", &format!("{verdict}: {reason}"))
    }

    /// Fails the rollout: the new version's weight goes to 0 in this round, then [`Round::roll_back`].
    fn fail(&mut self, row: &mut Row, outcome: Outcome, reason: String) -> rusqlite::Result<()> {
        row.status = Status::RollingBack;
        row.phase = "rolling_back".to_owned();
        row.outcome = Some(outcome);
        row.reason = reason;
        self.roll_back(row)
    }

    /// Returns to the stable revision (idempotent: each part is done once, whatever round it is).
    fn roll_back(&mut self, row: &mut Row) -> rusqlite::Result<()> {
        if row.weight != 0.0 {
            row.weight = 0.0;
            self.changed = true;
            let first = row
                .judge
                .as_ref()
                .map(|judge| judge.record().canary_first_ns / 1_000_000)
                .filter(|ms| *ms > 0);
            self.event(
                row,
                "weight",
                &format!(
                    "0% of requests to r{}: rolling back ({})",
                    row.to_revision, row.reason
                ),
                Some(&serde_json::json!({"weight": 0.0, "canary_first_request_ms": first})),
            )?;
        }
        let current = platform::current(self.c)?;
        let Some(service) = current.get(&row.service) else {
            return self.finish(
                row,
                Status::RolledBack,
                row.outcome.unwrap_or(Outcome::Aborted),
                row.reason.clone(),
            );
        };
        if service.template != row.from_template {
            // A new version that failed is marked; a rollback that was aborted returns to where it started and
            // marks nothing.
            if row.kind == gantry_proto::deployments::Kind::Deploy {
                self.c.execute(
                    "UPDATE revisions SET rejected = ?3 WHERE service = ?1 AND revision = ?2 AND rejected IS NULL",
                    params![row.service, row.to_revision as i64, row.reason],
                )?;
            }
            let copy = platform::copy_revision(
                self.c,
                &row.service,
                row.from_revision,
                "gantry (rollout)",
                &format!("rollback of deployment {}: {}", row.id, row.reason),
            )?;
            let message = format!(
                "rolling back to r{} (as r{copy}): {}; r{} is marked rolled back",
                row.from_revision, row.reason, row.to_revision
            );
            self.event(row, "rollback", &message, None)?;
            self.audit(row, "deployment.rollback", &message)?;
        }
        let slots = self.slots(&row.service)?;
        let views = self.views(row, &slots);
        if plan::done(&views, row.from_template) {
            let outcome = row.outcome.unwrap_or(Outcome::Aborted);
            return self.finish(row, Status::RolledBack, outcome, row.reason.clone());
        }
        // Fast-tracked: as many at once as surge and unavailability allow together.
        let replicas = self.replicas(&row.service)?;
        let mut budget = self.budget(row, replicas);
        budget.surge = budget.surge.max(budget.unavailable).max(1);
        let actions = plan::rolling(&views, row.from_template, budget);
        self.apply(&slots, &actions, row.from_template)
    }

    fn finish(
        &mut self,
        row: &mut Row,
        status: Status,
        outcome: Outcome,
        reason: String,
    ) -> rusqlite::Result<()> {
        row.status = status;
        row.phase = "done".to_owned();
        row.outcome = Some(outcome);
        row.reason = reason;
        row.finished_ms = Some(self.now);
        row.paused_until_ms = None;
        row.pause_reason = None;
        self.changed = true;
        let message = format!(
            "{} {} {}: {}",
            match row.kind {
                gantry_proto::deployments::Kind::Deploy => "deployment",
                gantry_proto::deployments::Kind::Rollback => "rollback",
            },
            row.id,
            match status {
                Status::Succeeded => "succeeded",
                _ => "rolled back",
            },
            row.reason
        );
        self.event(
            row,
            "finished",
            &message,
            Some(&serde_json::json!({"outcome": outcome})),
        )?;
        self.audit(row, "deployment.finish", &message)
    }
}

/// When a step with too few canary requests becomes inconclusive: ten times its minimum duration, and at least
/// five minutes more than it, ms.
pub fn step_deadline(min_duration_ms: u64) -> u64 {
    (min_duration_ms.saturating_mul(10)).max(min_duration_ms.saturating_add(300_000))
}

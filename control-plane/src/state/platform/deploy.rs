//! Starting rollouts and acting on them: `gantry deploy` (a new revision from changes to the current spec, rolled
//! out with the service's strategy or an override), `gantry rollback` (a new revision copying an earlier one, or the
//! abort of the rollout under way), and pause, resume, promote and abort. Each is one transaction with its audit
//! entry and its event; the rollout loop (`crate::rollout`) does the rest.

use gantry_proto::TokenInfo;
use gantry_proto::deployments::{DeployRequest, Deployment, Kind, Outcome, Status};
use gantry_proto::platform::{
    CanaryStep, Change, Pause, RuntimeSpec, ServicePlan, ServiceSpec, Strategy,
};
use rusqlite::{Connection, OptionalExtension, params};

use super::audit::{self, Action};
use super::{PlatformError, PlatformStore, current, insert_revision, not_found, same_template};
use crate::spec::{self, diff::diff};
use crate::state::deployments::{self, Row};
use crate::state::{StateError, now_ms, now_rfc3339, secrets};

/// A control action on a running deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Hold where it is.
    Pause,
    /// Go on after a pause (an inconclusive step is judged again, with a new deadline).
    Resume,
    /// Skip to the next step (`full`: straight to 100%).
    Promote {
        /// Promote to the end at once.
        full: bool,
    },
    /// Roll back to the stable revision now.
    Abort,
}

/// The canary steps a deployment gets when `--strategy canary` overrides a service whose policy has none.
pub fn default_steps() -> Vec<CanaryStep> {
    [5.0, 25.0, 50.0]
        .into_iter()
        .map(|weight_percent| CanaryStep {
            weight_percent,
            min_requests: 100,
            min_duration_ms: 30_000,
            pause: Pause::None,
        })
        .collect()
}

impl PlatformStore {
    /// Starts a deployment of a new version of `request.service`, as `by`. Blocking.
    ///
    /// # Errors
    /// [`PlatformError::Forbidden`] for a token limited to other services; [`PlatformError::NotFound`];
    /// [`PlatformError::Invalid`] for a bad version, variable or secret reference;
    /// [`PlatformError::Conflict`] when a rollout of the service is under way (named), when nothing changes, or
    /// when the revision was rolled back before (without `force`); or the database failed.
    pub fn deploy(
        &self,
        request: &DeployRequest,
        by: &TokenInfo,
    ) -> Result<Deployment, PlatformError> {
        super::may_change(by, &request.service)?;
        let result = self.db.write(|transaction| {
            let outcome =
                deploy_in(transaction, request, by, None).map_err(|e| self.db.error(e))?;
            Ok::<_, StateError>(outcome)
        })?;
        if let Err(error @ (PlatformError::Conflict(_) | PlatformError::Invalid(_))) = &result {
            self.refused(by, "deploy", &request.service, &error.to_string());
        }
        result
    }

    /// Rolls `service` back, as `by`: aborts its rollout under way, or else rolls out a copy of revision `to`
    /// (default: the last earlier revision with another template that was not rolled back itself), fast-tracked
    /// (rolling, no canary steps). Blocking.
    ///
    /// # Errors
    /// [`PlatformError::NotFound`] for the service or the revision; [`PlatformError::Conflict`] when there is
    /// nothing to roll back to; or the database failed.
    pub fn rollback(
        &self,
        service: &str,
        to: Option<u64>,
        by: &TokenInfo,
    ) -> Result<Deployment, PlatformError> {
        super::may_change(by, service)?;
        let result = self.db.write(|transaction| {
            let outcome =
                rollback_in(transaction, service, to, by).map_err(|e| self.db.error(e))?;
            Ok::<_, StateError>(outcome)
        })?;
        if let Err(error @ PlatformError::Conflict(_)) = &result {
            self.refused(by, "rollback", service, &error.to_string());
        }
        result
    }

    /// Pauses, resumes, promotes or aborts deployment `id`, as `by`. Blocking.
    ///
    /// # Errors
    /// [`PlatformError::NotFound`]; [`PlatformError::Conflict`] when it has ended or the action does not apply;
    /// or the database failed.
    pub fn control(
        &self,
        id: u64,
        control: Control,
        by: &TokenInfo,
    ) -> Result<Deployment, PlatformError> {
        self.db.write(|transaction| {
            let outcome = control_in(transaction, id, control, by).map_err(|e| self.db.error(e))?;
            Ok::<_, StateError>(outcome)
        })?
    }

    /// One deployment.
    ///
    /// # Errors
    /// [`PlatformError::NotFound`], or the database failed.
    pub fn deployment(&self, id: u64) -> Result<Deployment, PlatformError> {
        self.db
            .read(|c| {
                deployments::get(c, id)?
                    .map(|row| deployments::to_api(c, &row))
                    .transpose()
            })?
            .ok_or_else(|| PlatformError::NotFound(format!("no deployment {id}")))
    }
}

/// The refusal for a service with a rollout under way.
pub(super) fn busy(running: &Row) -> PlatformError {
    if running.status == Status::Queued {
        return PlatformError::Conflict(format!(
            "deployment {} of `{}` is queued: wait for it, deploy with --queue to wait in line behind it, or cancel it with `gantry abort {} --id {}`",
            running.id, running.service, running.service, running.id
        ));
    }
    PlatformError::Conflict(format!(
        "deployment {} of `{}` (r{} -> r{}) is {}: wait for it, deploy with --queue to wait in line, or `gantry abort {}`",
        running.id,
        running.service,
        running.from_revision,
        running.to_revision,
        running.status.as_str().replace('_', " "),
        running.service
    ))
}

/// Starts the deployment `request` asks for, as `by`; `queued`: the id of the queued deployment whose turn came
/// (it becomes that deployment). When another rollout runs, a request with `queue` is queued behind it (and
/// behind those queued before it) rather than refused.
pub(super) fn deploy_in(
    c: &Connection,
    request: &DeployRequest,
    by: &TokenInfo,
    queued: Option<u64>,
) -> rusqlite::Result<Result<Deployment, PlatformError>> {
    let services = current(c)?;
    let Some(now) = services.get(&request.service) else {
        return Ok(Err(not_found(&request.service)));
    };
    let version = request.version.trim();
    if version.is_empty()
        || version.len() > 128
        || version
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control())
    {
        return Ok(Err(PlatformError::Invalid(format!(
            "`{}` is not a version: 1-128 characters without spaces",
            request.version
        ))));
    }
    if queued.is_none() {
        let running = deployments::active_for(c, &request.service)?;
        let ahead = deployments::queued(c, Some(&request.service))?;
        match (running, ahead.first()) {
            (None, None) => {}
            (running, _) if request.queue => {
                let behind = ahead
                    .last()
                    .map_or_else(|| running.as_ref().map_or(0, |r| r.id), |(row, _)| row.id);
                return super::queue::queue(c, now, request, by, behind).map(Ok);
            }
            (Some(running), _) => return Ok(Err(busy(&running))),
            (None, Some((first, _))) => return Ok(Err(busy(first))),
        }
    }
    let mut spec = now.spec.clone();
    spec.version = Some(version.to_owned());
    let RuntimeSpec::Process(process) = &mut spec.runtime;
    let known = secrets::names(c)?;
    for (key, value) in &request.set {
        if !spec::valid_env_name(key) {
            return Ok(Err(PlatformError::Invalid(format!(
                "--set {key}=...: `{key}` is not a variable name (a letter or `_`, then letters, digits or `_`)"
            ))));
        }
        match spec::secret_references(value) {
            Err(error) => return Ok(Err(PlatformError::Invalid(format!("--set {key}: {error}")))),
            Ok(names) => {
                if let Some(missing) = names.iter().find(|name| !known.contains(**name)) {
                    return Ok(Err(PlatformError::Invalid(format!(
                        "--set {key}: no secret `{missing}`: `gantry secret set {missing}` first"
                    ))));
                }
            }
        }
        process.env.insert(key.clone(), value.clone());
    }
    for key in &request.unset {
        process.env.remove(key);
    }
    if let Some(command) = &request.command {
        process.command = command.clone();
    }
    if let Some(args) = &request.args {
        process.args = args.clone();
    }
    // A strategy override is this deployment's only: the revision keeps the service's policy.
    let mut policy = spec.rollout.clone();
    if let Some(strategy) = request.strategy {
        policy.strategy = strategy;
        if strategy == Strategy::Canary && policy.steps.is_empty() {
            policy.steps = default_steps();
        }
        if strategy != Strategy::Canary {
            policy.steps.clear();
        }
    }
    if spec == now.spec {
        return Ok(Err(PlatformError::Conflict(format!(
            "nothing to deploy: `{}` already runs version {version} with these settings (r{})",
            request.service, now.revision
        ))));
    }
    if policy.strategy != Strategy::Rolling && now.version == version {
        return Ok(Err(PlatformError::Invalid(format!(
            "version {version} is the running one: a {} rollout tells versions apart by their label, give a new --version",
            strategy_word(policy.strategy)
        ))));
    }
    if !request.force
        && let Some((revision, why)) = rejected_like(c, &spec)?
    {
        return Ok(Err(PlatformError::Conflict(format!(
            "r{revision} with the same settings was rolled back ({why}): deploy with --force to try it again"
        ))));
    }
    let revision = now.revision + 1;
    let plan = ServicePlan {
        service: spec.name.clone(),
        change: Change::Update,
        previous_revision: Some(now.revision),
        revision: Some(revision),
        diff: diff(Some(&now.spec), &spec),
    };
    insert_revision(
        c,
        &spec,
        revision,
        by,
        &now_rfc3339(),
        "gantry deploy",
        &plan,
    )?;
    let id = start(
        c,
        &spec.name,
        policy.clone(),
        now.revision,
        revision,
        Kind::Deploy,
        &by.name,
        now.replicas == 0 || now.stopped,
        queued,
    )?;
    let detail = format!(
        "deployment {id}: r{} -> r{revision} ({version}), {}",
        now.revision,
        strategy_word(policy.strategy)
    );
    audit::append(
        c,
        &Action {
            actor: by,
            action: "deploy",
            target: &spec.name,
            outcome: "ok",
            detail: &detail,
        },
    )?;
    let row = deployments::get(c, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    Ok(Ok(deployments::to_api(c, &row)?))
}

fn strategy_word(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::Rolling => "rolling",
        Strategy::Canary => "canary",
        Strategy::BlueGreen => "blue-green",
    }
}

/// Inserts the deployment row of a new revision of `service` with `policy` (or turns the queued deployment
/// `queued` into it), and its `started` event; returns its id. A rollback, and a service with nothing running or
/// whose versions cannot be told apart (`plain`), rolls by replacement.
#[allow(clippy::too_many_arguments)]
pub(super) fn start(
    c: &Connection,
    service: &str,
    policy: gantry_proto::platform::RolloutPolicy,
    from_revision: u64,
    to_revision: u64,
    kind: Kind,
    by: &str,
    plain: bool,
    queued: Option<u64>,
) -> rusqlite::Result<u64> {
    let strategy = if plain || kind == Kind::Rollback {
        Strategy::Rolling
    } else {
        policy.strategy
    };
    let row = Row {
        from_revision,
        to_revision,
        strategy,
        phase: if strategy == Strategy::Rolling {
            "rolling"
        } else {
            "starting"
        }
        .to_owned(),
        step_started_ms: Some(now_ms()),
        ..Row::new(service, kind, policy, Status::Progressing, by)
    };
    let id = match queued {
        Some(id) => {
            deployments::start_queued(c, id, &row)?;
            id
        }
        None => deployments::insert(c, &row)?,
    };
    let message = match kind {
        Kind::Deploy => format!(
            "deployment {id} started: {service} r{from_revision} -> r{to_revision}, {}",
            strategy_word(strategy)
        ),
        Kind::Rollback => {
            format!("rollback {id} started: {service} r{from_revision} -> r{to_revision}")
        }
    };
    deployments::event(c, id, now_ms(), "started", &message, None)?;
    Ok(id)
}

/// An earlier revision with the same template settings as `spec` that was rolled back: (revision, why).
pub(super) fn rejected_like(
    c: &Connection,
    spec: &ServiceSpec,
) -> rusqlite::Result<Option<(u64, String)>> {
    let mut statement = c.prepare(
        "SELECT revision, spec, rejected FROM revisions WHERE service = ?1 AND rejected IS NOT NULL ORDER BY revision DESC",
    )?;
    let rows = statement.query_map([&spec.name], |row| {
        Ok((
            row.get::<_, i64>(0)? as u64,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (revision, text, why) = row?;
        if let Ok(earlier) = serde_json::from_str::<ServiceSpec>(&text)
            && same_template(&earlier, spec)
        {
            return Ok(Some((revision, why)));
        }
    }
    Ok(None)
}

/// Inserts a new revision of `service` copying revision `of` (its template, so its instances are the ones that
/// revision ran), makes it current, and returns its number.
pub(crate) fn copy_revision(
    c: &Connection,
    service: &str,
    of: u64,
    author: &str,
    source: &str,
) -> rusqlite::Result<u64> {
    let (template, version, text): (i64, String, String) = c.query_row(
        "SELECT template, version, spec FROM revisions WHERE service = ?1 AND revision = ?2",
        params![service, of as i64],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;
    let (current, before): (i64, String) = c.query_row(
        "SELECT s.revision, r.spec FROM services s JOIN revisions r ON r.service = s.name AND r.revision = s.revision
         WHERE s.name = ?1",
        [service],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let newest: i64 = c.query_row(
        "SELECT MAX(revision) FROM revisions WHERE service = ?1",
        [service],
        |row| row.get(0),
    )?;
    let revision = newest.max(current) + 1;
    let changes = match (
        serde_json::from_str::<ServiceSpec>(&before),
        serde_json::from_str::<ServiceSpec>(&text),
    ) {
        (Ok(before), Ok(after)) => {
            serde_json::to_string(&diff(Some(&before), &after)).unwrap_or_default()
        }
        _ => "[]".to_owned(),
    };
    c.execute(
        "INSERT INTO revisions (service, revision, template, version, author, created, source, diff, spec)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![service, revision, template, version, author, now_rfc3339(), source, changes, text],
    )?;
    c.execute(
        "UPDATE services SET revision = ?2, updated = ?3 WHERE name = ?1",
        params![service, revision, now_rfc3339()],
    )?;
    Ok(revision as u64)
}

/// A rollback by hand: [`rollback_start`], then the service's queued deployments are cancelled (an emergency's
/// rollback is not to be followed by what waited behind the rollout it replaced).
fn rollback_in(
    c: &Connection,
    service: &str,
    to: Option<u64>,
    by: &TokenInfo,
) -> rusqlite::Result<Result<Deployment, PlatformError>> {
    let result = rollback_start(c, service, to, by)?;
    if result.is_ok() {
        super::queue::cancel_queued(
            c,
            service,
            &format!("cancelled by the rollback of {}", by.name),
            by,
        )?;
    }
    Ok(result)
}

fn rollback_start(
    c: &Connection,
    service: &str,
    to: Option<u64>,
    by: &TokenInfo,
) -> rusqlite::Result<Result<Deployment, PlatformError>> {
    if let Some(running) = deployments::active_for(c, service)? {
        return control_in(c, running.id, Control::Abort, by);
    }
    let services = current(c)?;
    let Some(now) = services.get(service) else {
        return Ok(Err(not_found(service)));
    };
    let target: Option<(u64, u64)> = match to {
        Some(revision) => c
            .query_row(
                "SELECT revision, template FROM revisions WHERE service = ?1 AND revision = ?2",
                params![service, revision as i64],
                |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)),
            )
            .optional()?,
        None => c
            .query_row(
                "SELECT revision, template FROM revisions WHERE service = ?1 AND revision < ?2 AND template != ?3
                 AND rejected IS NULL ORDER BY revision DESC LIMIT 1",
                params![service, now.revision as i64, now.template as i64],
                |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)),
            )
            .optional()?,
    };
    let Some((revision, template)) = target else {
        return Ok(Err(match to {
            Some(revision) => {
                PlatformError::NotFound(format!("`{service}` has no revision {revision}"))
            }
            None => PlatformError::Conflict(format!(
                "`{service}` has no earlier revision to roll back to: `gantry services` shows its history"
            )),
        }));
    };
    if template == now.template {
        return Ok(Err(PlatformError::Conflict(format!(
            "r{revision} runs the same instances as the current r{}: nothing to roll back",
            now.revision
        ))));
    }
    let reason = format!("rolled back by {} to r{revision}", by.name);
    c.execute(
        "UPDATE revisions SET rejected = ?3 WHERE service = ?1 AND revision = ?2",
        params![service, now.revision as i64, reason],
    )?;
    let new = copy_revision(
        c,
        service,
        revision,
        &by.name,
        &format!("gantry rollback (to r{revision})"),
    )?;
    let spec: ServiceSpec = serde_json::from_str(&c.query_row(
        "SELECT spec FROM revisions WHERE service = ?1 AND revision = ?2",
        params![service, new as i64],
        |row| row.get::<_, String>(0),
    )?)
    .map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let id = start(
        c,
        service,
        spec.rollout.clone(),
        now.revision,
        new,
        Kind::Rollback,
        &by.name,
        false,
        None,
    )?;
    let detail = format!(
        "deployment {id}: r{} -> r{new} (copy of r{revision})",
        now.revision
    );
    audit::append(
        c,
        &Action {
            actor: by,
            action: "rollback",
            target: service,
            outcome: "ok",
            detail: &detail,
        },
    )?;
    let row = deployments::get(c, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    Ok(Ok(deployments::to_api(c, &row)?))
}

fn control_in(
    c: &Connection,
    id: u64,
    control: Control,
    by: &TokenInfo,
) -> rusqlite::Result<Result<Deployment, PlatformError>> {
    let Some(mut row) = deployments::get(c, id)? else {
        return Ok(Err(PlatformError::NotFound(format!("no deployment {id}"))));
    };
    if let Err(error) = super::may_change(by, &row.service) {
        return Ok(Err(error));
    }
    if row.status == Status::Queued {
        if control != Control::Abort {
            return Ok(Err(PlatformError::Conflict(format!(
                "deployment {id} is queued: it can only be aborted until it starts"
            ))));
        }
        let reason = format!("aborted by {} while queued", by.name);
        super::queue::cancel(c, row, &reason, Some(Outcome::Aborted), Some(by))?;
        let row = deployments::get(c, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        return Ok(Ok(deployments::to_api(c, &row)?));
    }
    if !row.status.active() {
        return Ok(Err(PlatformError::Conflict(format!(
            "deployment {id} has ended ({})",
            row.status.as_str().replace('_', " ")
        ))));
    }
    let now = now_ms();
    let (action, message) = match control {
        Control::Pause => {
            if row.status != Status::Progressing {
                return Ok(Err(PlatformError::Conflict(format!(
                    "deployment {id} is {}",
                    row.status.as_str().replace('_', " ")
                ))));
            }
            row.status = Status::Paused;
            row.pause_reason = Some(format!("paused by {}", by.name));
            // Blue-green's scale-down time is kept: it is not a pause's end.
            if row.phase != "scaling_down" {
                row.paused_until_ms = None;
            }
            ("deployment.pause", format!("paused by {}", by.name))
        }
        Control::Resume => {
            if row.status != Status::Paused {
                return Ok(Err(PlatformError::Conflict(format!(
                    "deployment {id} is not paused"
                ))));
            }
            row.status = Status::Progressing;
            row.pause_reason = None;
            match row.phase.as_str() {
                // A passed step's pause ends now: the next round moves to the next step.
                "passed" => {
                    row.paused_until_ms = Some(now);
                    row.status = Status::Paused;
                }
                "scaling_down" => {}
                // Judged again at the same weight, with a new deadline; the progress deadline counts from now.
                _ => {
                    row.paused_until_ms = None;
                    row.step_started_ms = Some(now);
                }
            }
            ("deployment.resume", format!("resumed by {}", by.name))
        }
        Control::Promote { full } => {
            if row.status == Status::RollingBack {
                return Ok(Err(PlatformError::Conflict(format!(
                    "deployment {id} has no step to promote (it is rolling back)"
                ))));
            }
            match row.strategy {
                Strategy::Canary => {
                    row.status = Status::Progressing;
                    row.pause_reason = None;
                    row.paused_until_ms = None;
                    if full || row.step as usize + 1 >= row.policy.steps.len() {
                        row.phase = "promoting".to_owned();
                    } else {
                        row.step += 1;
                        row.phase = "starting".to_owned();
                    }
                    row.step_started_ms = Some(now);
                    (
                        "deployment.promote",
                        if full {
                            format!("promoted to 100% by {}", by.name)
                        } else {
                            format!("promoted to the next step by {}", by.name)
                        },
                    )
                }
                // Blue-green's preview ends: the switch, whatever the judge has seen.
                Strategy::BlueGreen if matches!(row.phase.as_str(), "judging" | "passed") => {
                    row.status = Status::Progressing;
                    row.pause_reason = None;
                    row.paused_until_ms = None;
                    row.phase = "switching".to_owned();
                    (
                        "deployment.promote",
                        format!("promoted by {}: switching to r{}", by.name, row.to_revision),
                    )
                }
                _ => {
                    return Ok(Err(PlatformError::Conflict(format!(
                        "deployment {id} has no step to promote ({})",
                        if row.strategy == Strategy::BlueGreen {
                            "a blue-green rollout is promoted during its preview, once the new version runs at full size"
                        } else {
                            "a rolling rollout has no steps"
                        }
                    ))));
                }
            }
        }
        Control::Abort => {
            if row.status == Status::RollingBack {
                return Ok(Err(PlatformError::Conflict(format!(
                    "deployment {id} is already rolling back"
                ))));
            }
            row.status = Status::RollingBack;
            row.phase = "rolling_back".to_owned();
            row.outcome = Some(Outcome::Aborted);
            row.reason = format!("aborted by {}", by.name);
            (
                "deployment.abort",
                format!(
                    "aborted by {}: rolling back to r{}",
                    by.name, row.from_revision
                ),
            )
        }
    };
    deployments::save(c, &row)?;
    deployments::event(
        c,
        id,
        now,
        action.trim_start_matches("deployment."),
        &message,
        None,
    )?;
    audit::append(
        c,
        &Action {
            actor: by,
            action,
            target: &row.service,
            outcome: "ok",
            detail: &format!("deployment {id}"),
        },
    )?;
    Ok(Ok(deployments::to_api(c, &row)?))
}

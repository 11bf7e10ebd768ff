//! The `services` and `revisions` tables: what the platform should run. `apply` turns a platform spec into a plan
//! (create, update, unchanged, per service) and, unless it is a dry run, writes one new immutable revision per
//! changed service, the services' current revisions and an audit entry, all in one transaction: an apply happens
//! whole or not at all, and applying the same file again changes nothing.
//!
//! Secrets are also managed here, since a secret in use by a current revision may not be deleted.

use std::collections::BTreeMap;
use std::sync::Arc;

use gantry_proto::TokenInfo;
use gantry_proto::platform::{
    ApplyRequest, ApplyResponse, AuditEntry, Change, DeployedService, Revision, RuntimeSpec,
    SecretInfo, ServicePlan, ServiceSpec,
};
use rusqlite::{Connection, OptionalExtension, params};

use super::audit::{self, Action};
use super::{StateDb, StateError, now_rfc3339, secrets};
use crate::spec::{self, SpecError, diff::diff};

mod assignments;
mod deploy;
mod queue;

pub use assignments::{NodeWork, RoutedService};
pub(crate) use deploy::copy_revision;
pub use deploy::{Control, default_steps};
pub use queue::start_next;

/// Why a platform change was not made.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The spec is refused; nothing changed.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A name does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The change contradicts the current state (e.g. deleting a secret in use).
    #[error("{0}")]
    Conflict(String),
    /// A parameter is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The caller's token is limited to other services (or to services, for a change that is not a service's).
    #[error("{0}")]
    Forbidden(String),
    /// The state database failed: a retry can succeed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// The platform's desired state in the state database.
#[derive(Debug, Clone)]
pub struct PlatformStore {
    db: Arc<StateDb>,
}

/// A service as it stands: its current revision, with the service row's settings. Every view of the current
/// services (plans, placement demands, assignments, restarts, listings) is derived from this one read.
#[derive(Debug, Clone)]
pub struct CurrentService {
    /// The current revision.
    pub revision: u64,
    /// The revision whose instance template runs (instance ids carry it).
    pub template: u64,
    /// The revision's version label.
    pub version: String,
    /// Desired instances (the spec's, or `gantry scale`'s).
    pub replicas: u32,
    /// Stopped with `gantry stop`.
    pub stopped: bool,
    /// Every slot's instance must be of this generation or later (`gantry restart` raises it).
    pub restart_epoch: u64,
    /// When the revision or replicas last changed, RFC 3339.
    pub updated: String,
    /// The revision's spec.
    pub spec: ServiceSpec,
}

impl PlatformStore {
    /// The platform in `db`.
    pub fn new(db: Arc<StateDb>) -> PlatformStore {
        PlatformStore { db }
    }

    /// The state database.
    pub fn db(&self) -> &Arc<StateDb> {
        &self.db
    }

    /// A service's current revision and its stored slots.
    ///
    /// # Errors
    /// [`PlatformError::NotFound`] for a service never applied, or the database failed.
    pub fn placements(
        &self,
        service: &str,
    ) -> Result<
        (
            DeployedService,
            BTreeMap<crate::placement::Slot, super::placements::StoredSlot>,
        ),
        PlatformError,
    > {
        let deployed = self
            .deployed()?
            .into_iter()
            .find(|d| d.service == service)
            .ok_or_else(|| {
                PlatformError::NotFound(format!(
                    "no service `{service}`: `gantry services` lists them"
                ))
            })?;
        let slots = self
            .db
            .read(|c| super::placements::load(c, Some(service)))?;
        Ok((deployed, slots))
    }

    /// Plans a platform spec and, unless `request.dry_run`, applies it as `author`. Blocking (a committed write).
    ///
    /// # Errors
    /// [`PlatformError::Spec`] for a refused spec (recorded in the audit log), or the database failed.
    pub fn apply(
        &self,
        request: &ApplyRequest,
        author: &TokenInfo,
    ) -> Result<ApplyResponse, PlatformError> {
        if author.limited() {
            let planned = self
                .db
                .read(|c| plan_in(c, request))
                .map_err(PlatformError::from)?;
            if let Ok((response, _)) = &planned {
                for plan in &response.services {
                    if matches!(plan.change, Change::Create | Change::Update) {
                        may_change(author, &plan.service)?;
                    }
                }
            }
        }
        let result = if request.dry_run {
            self.db
                .read(|c| plan_in(c, request))
                .map_err(PlatformError::from)
                .and_then(|planned| planned.map(|(response, _)| response))
        } else {
            self.db.write(|transaction| {
                let planned = plan_in(transaction, request).map_err(|e| self.db.error(e))?;
                let (response, specs) = match planned {
                    Ok(planned) => planned,
                    Err(error) => return Ok(Err(error)),
                };
                let now = now_rfc3339();
                // A service with a rollout under way, or a template rolled back before, stops the whole apply.
                for plan in &response.services {
                    if plan.change != Change::Update {
                        continue;
                    }
                    if let Some(running) = super::deployments::active_for(transaction, &plan.service)
                        .map_err(|e| self.db.error(e))?
                    {
                        return Ok(Err(deploy::busy(&running)));
                    }
                    // Nor does an apply jump the queue.
                    if let Some((queued, _)) = super::deployments::queued(transaction, Some(&plan.service))
                        .map_err(|e| self.db.error(e))?
                        .into_iter()
                        .next()
                    {
                        return Ok(Err(deploy::busy(&queued)));
                    }
                    if let Some(spec) = specs.get(&plan.service)
                        && !request.force
                        && let Some((revision, why)) =
                            deploy::rejected_like(transaction, spec).map_err(|e| self.db.error(e))?
                    {
                        return Ok(Err(PlatformError::Conflict(format!(
                            "{}: r{revision} with the same settings was rolled back ({why}): apply with --force to roll it out again",
                            plan.service
                        ))));
                    }
                }
                let mut written = Vec::new();
                let current_services = current(transaction).map_err(|e| self.db.error(e))?;
                for plan in &response.services {
                    if !matches!(plan.change, Change::Create | Change::Update) {
                        continue;
                    }
                    let (Some(revision), Some(spec)) = (plan.revision, specs.get(&plan.service))
                    else {
                        continue;
                    };
                    insert_revision(
                        transaction,
                        spec,
                        revision,
                        author,
                        &now,
                        &request.file,
                        plan,
                    )
                    .map_err(|e| self.db.error(e))?;
                    written.push(format!("{} r{revision}", plan.service));
                    // A new template of a running service is rolled out with its strategy.
                    if let (Some(before), Some(previous)) =
                        (current_services.get(&plan.service), plan.previous_revision)
                    {
                        let template: i64 = transaction
                            .query_row(
                                "SELECT template FROM revisions WHERE service = ?1 AND revision = ?2",
                                params![plan.service, revision as i64],
                                |row| row.get(0),
                            )
                            .map_err(|e| self.db.error(e))?;
                        if template as u64 != before.template {
                            let trivial = before.stopped || before.replicas == 0;
                            // A canary or blue-green tells versions apart by their label: with the same
                            // label, the new template rolls.
                            // (Without a `version` the label is `r<template>`: always new.)
                            let same_label = spec.version.as_deref() == Some(before.version.as_str());
                            let id = deploy::start(
                                transaction,
                                &spec.name,
                                spec.rollout.clone(),
                                previous,
                                revision,
                                gantry_proto::deployments::Kind::Deploy,
                                &author.name,
                                trivial || same_label,
                                None,
                            )
                            .map_err(|e| self.db.error(e))?;
                            written.push(format!("(deployment {id})"));
                        }
                    }
                }
                let detail = if written.is_empty() {
                    "no change".to_owned()
                } else {
                    written.join(", ")
                };
                audit::append(
                    transaction,
                    &Action {
                        actor: author,
                        action: "apply",
                        target: &request.file,
                        outcome: "ok",
                        detail: &detail,
                    },
                )
                .map_err(|e| self.db.error(e))?;
                Ok::<_, StateError>(Ok(response))
            })?
        };
        if let Err(PlatformError::Spec(error)) = &result {
            self.refused(author, "apply", &request.file, &error.to_string());
        }
        result
    }

    /// Records a refused action in the audit log (a failure to record is logged, not returned: the caller's answer
    /// is the refusal).
    pub fn refused(&self, actor: &TokenInfo, action: &str, target: &str, why: &str) {
        let outcome = format!("refused: {why}");
        let entry = Action {
            actor,
            action,
            target,
            outcome: &outcome,
            detail: "",
        };
        if let Err(error) = audit::record(&self.db, &entry) {
            tracing::warn!(%error, action, "a refusal could not be recorded in the audit log");
        }
    }

    /// A service's revisions, newest first.
    ///
    /// # Errors
    /// [`PlatformError::NotFound`] for a service never applied, or the database failed.
    pub fn revisions(&self, service: &str) -> Result<Vec<Revision>, PlatformError> {
        let revisions = self.db.read(|c| {
            let mut statement = c.prepare(
                "SELECT service, revision, version, author, created, source, diff, spec, template FROM revisions
                 WHERE service = ?1 ORDER BY revision DESC",
            )?;
            let rows = statement.query_map([service], |row| {
                Ok(Revision {
                    service: row.get(0)?,
                    revision: row.get::<_, i64>(1)? as u64,
                    template_revision: row.get::<_, i64>(8)? as u64,
                    version: row.get(2)?,
                    author: row.get(3)?,
                    created: row.get(4)?,
                    source: row.get(5)?,
                    diff: json_column(row, 6)?,
                    spec: json_column(row, 7)?,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        if revisions.is_empty() {
            return Err(PlatformError::NotFound(format!(
                "no service `{service}`: `gantry services` lists them"
            )));
        }
        Ok(revisions)
    }

    /// The services the plane runs, by name.
    ///
    /// # Errors
    /// The database failed.
    pub fn deployed(&self) -> Result<Vec<DeployedService>, PlatformError> {
        let services = self.db.read(current)?;
        Ok(services
            .into_iter()
            .map(|(name, service)| DeployedService {
                service: name,
                revision: service.revision,
                template_revision: service.template,
                version: service.version,
                replicas: service.replicas,
                stopped: service.stopped,
                port: service.spec.port,
                updated: service.updated,
            })
            .collect())
    }

    /// Sets a service's desired instances as `by` (no new revision: the instances' template is unchanged); returns
    /// the number before. Blocking.
    ///
    /// # Errors
    /// [`PlatformError::NotFound`], [`PlatformError::Invalid`] past [`spec::MAX_REPLICAS`], or the database failed.
    pub fn scale(
        &self,
        service: &str,
        replicas: u32,
        by: &TokenInfo,
    ) -> Result<u32, PlatformError> {
        may_change(by, service)?;
        if replicas > spec::MAX_REPLICAS {
            return Err(PlatformError::Invalid(format!(
                "at most {} replicas per service",
                spec::MAX_REPLICAS
            )));
        }
        self.db.write(|transaction| {
            let before: Option<i64> = transaction
                .query_row(
                    "SELECT replicas FROM services WHERE name = ?1",
                    [service],
                    |row| row.get(0),
                )
                .optional()
                .map_err(|e| self.db.error(e))?;
            let Some(before) = before else {
                return Ok(Err(not_found(service)));
            };
            transaction
                .execute(
                    "UPDATE services SET replicas = ?2, updated = ?3 WHERE name = ?1",
                    params![service, i64::from(replicas), now_rfc3339()],
                )
                .map_err(|e| self.db.error(e))?;
            let detail = format!("replicas {before} -> {replicas}");
            audit::append(
                transaction,
                &Action {
                    actor: by,
                    action: "scale",
                    target: service,
                    outcome: "ok",
                    detail: &detail,
                },
            )
            .map_err(|e| self.db.error(e))?;
            Ok::<_, StateError>(Ok(before as u32))
        })?
    }

    /// Stops (`stopped`) or starts a service as `by`: a stopped service runs no instance, whatever its replicas.
    /// Blocking.
    ///
    /// # Errors
    /// [`PlatformError::NotFound`], or the database failed.
    pub fn set_stopped(
        &self,
        service: &str,
        stopped: bool,
        by: &TokenInfo,
    ) -> Result<(), PlatformError> {
        may_change(by, service)?;
        self.db.write(|transaction| {
            let changed = transaction
                .execute(
                    "UPDATE services SET stopped = ?2, updated = ?3 WHERE name = ?1",
                    params![service, i64::from(stopped), now_rfc3339()],
                )
                .map_err(|e| self.db.error(e))?;
            if changed == 0 {
                return Ok(Err(not_found(service)));
            }
            let action = if stopped { "stop" } else { "start" };
            audit::append(
                transaction,
                &Action {
                    actor: by,
                    action,
                    target: service,
                    outcome: "ok",
                    detail: "",
                },
            )
            .map_err(|e| self.db.error(e))?;
            Ok::<_, StateError>(Ok(()))
        })?
    }

    /// Asks for every instance of `service` to be replaced, a few at a time (as its rollout policy's surge allows),
    /// each new instance healthy before the old one stops. Blocking.
    ///
    /// # Errors
    /// [`PlatformError::NotFound`], or the database failed.
    pub fn restart(&self, service: &str, by: &TokenInfo) -> Result<u64, PlatformError> {
        may_change(by, service)?;
        self.db.write(|transaction| {
            let newest: Option<i64> = transaction
                .query_row(
                    "SELECT MAX(s.restart_epoch, COALESCE((SELECT MAX(epoch) FROM placements WHERE service = s.name), 0))
                     FROM services s WHERE s.name = ?1",
                    [service],
                    |row| row.get(0),
                )
                .optional()
                .map_err(|e| self.db.error(e))?;
            let Some(newest) = newest else {
                return Ok(Err(not_found(service)));
            };
            let epoch = newest + 1;
            transaction
                .execute(
                    "UPDATE services SET restart_epoch = ?2, updated = ?3 WHERE name = ?1",
                    params![service, epoch, now_rfc3339()],
                )
                .map_err(|e| self.db.error(e))?;
            let detail = format!("generation {epoch}");
            audit::append(
                transaction,
                &Action { actor: by, action: "restart", target: service, outcome: "ok", detail: &detail },
            )
            .map_err(|e| self.db.error(e))?;
            Ok::<_, StateError>(Ok(epoch as u64))
        })?
    }

    /// Drains a node (its instances move elsewhere, each replacement healthy before the old one stops; it takes no
    /// new ones) or makes it eligible again, as `by`. Blocking.
    ///
    /// # Errors
    /// The database failed.
    pub fn drain(
        &self,
        agent_id: &str,
        drained: bool,
        by: &TokenInfo,
    ) -> Result<bool, PlatformError> {
        may_change_all(by, "nodes")?;
        Ok(self.db.write(|transaction| {
            let changed = super::placements::set_drained(transaction, agent_id, drained)
                .map_err(|e| self.db.error(e))?;
            let action = if drained {
                "node.drain"
            } else {
                "node.activate"
            };
            let detail = if changed { "" } else { "no change" };
            audit::append(
                transaction,
                &Action {
                    actor: by,
                    action,
                    target: agent_id,
                    outcome: "ok",
                    detail,
                },
            )
            .map_err(|e| self.db.error(e))?;
            Ok::<_, StateError>(changed)
        })?)
    }

    /// The drained nodes.
    ///
    /// # Errors
    /// The database failed.
    pub fn drained(&self) -> Result<std::collections::BTreeSet<String>, PlatformError> {
        Ok(self.db.read(super::placements::drained)?)
    }

    /// Sets a secret as `by`; returns whether it is new. Blocking.
    ///
    /// # Errors
    /// [`PlatformError::Invalid`] for a bad name, or the database failed.
    pub fn set_secret(
        &self,
        name: &str,
        value: &str,
        by: &TokenInfo,
    ) -> Result<bool, PlatformError> {
        may_change_all(by, "secrets")?;
        if !spec::valid_secret_name(name) {
            return Err(PlatformError::Invalid(format!(
                "`{name}` is not a secret name: 1-128 letters, digits, `-`, `_` or `.`"
            )));
        }
        Ok(self.db.write(|transaction| {
            let created =
                secrets::set(transaction, name, value, &by.name).map_err(|e| self.db.error(e))?;
            let detail = if created { "created" } else { "changed" };
            audit::append(
                transaction,
                &Action {
                    actor: by,
                    action: "secret.set",
                    target: name,
                    outcome: "ok",
                    detail,
                },
            )
            .map_err(|e| self.db.error(e))?;
            Ok::<_, StateError>(created)
        })?)
    }

    /// Deletes a secret as `by`, unless a current revision references it. Blocking.
    ///
    /// # Errors
    /// [`PlatformError::NotFound`], [`PlatformError::Conflict`] naming the services that use it, or the database
    /// failed.
    pub fn delete_secret(&self, name: &str, by: &TokenInfo) -> Result<(), PlatformError> {
        may_change_all(by, "secrets")?;
        self.db.write(|transaction| {
            let users: Vec<String> = current(transaction)
                .map_err(|e| self.db.error(e))?
                .into_values()
                .filter(|current| references(&current.spec, name))
                .map(|current| current.spec.name)
                .collect();
            if !users.is_empty() {
                return Ok(Err(PlatformError::Conflict(format!(
                    "secret `{name}` is used by {}: apply a spec without it first",
                    users.join(", ")
                ))));
            }
            if !secrets::delete(transaction, name).map_err(|e| self.db.error(e))? {
                return Ok(Err(PlatformError::NotFound(format!("no secret `{name}`"))));
            }
            audit::append(
                transaction,
                &Action {
                    actor: by,
                    action: "secret.delete",
                    target: name,
                    outcome: "ok",
                    detail: "",
                },
            )
            .map_err(|e| self.db.error(e))?;
            Ok::<_, StateError>(Ok(()))
        })?
    }

    /// Every secret's metadata.
    ///
    /// # Errors
    /// The database failed.
    pub fn secrets(&self) -> Result<Vec<SecretInfo>, PlatformError> {
        Ok(secrets::list(&self.db)?)
    }

    /// The audit log, newest first (see [`audit::list`]).
    ///
    /// # Errors
    /// The database failed.
    pub fn audit(
        &self,
        limit: usize,
        target: Option<&str>,
        before: Option<u64>,
    ) -> Result<Vec<AuditEntry>, PlatformError> {
        Ok(audit::list(&self.db, limit, target, before)?)
    }

    /// Records a successful action of another component (e.g. token changes) in the audit log.
    ///
    /// # Errors
    /// The database failed.
    pub fn record(&self, entry: &Action<'_>) -> Result<(), PlatformError> {
        Ok(audit::record(&self.db, entry)?)
    }
}

/// Refuses a change of `service` by a token limited to other services.
///
/// # Errors
/// [`PlatformError::Forbidden`] naming the services the token may change.
pub fn may_change(by: &TokenInfo, service: &str) -> Result<(), PlatformError> {
    if by.may_change(service) {
        return Ok(());
    }
    Err(PlatformError::Forbidden(format!(
        "token `{}` may change only {}, not `{service}`",
        by.name,
        by.services.as_deref().unwrap_or_default().join(", ")
    )))
}

/// Refuses a change that is not a service's (secrets, nodes) by a token limited to services.
///
/// # Errors
/// [`PlatformError::Forbidden`].
pub fn may_change_all(by: &TokenInfo, what: &str) -> Result<(), PlatformError> {
    if by.limited() {
        return Err(PlatformError::Forbidden(format!(
            "token `{}` is limited to services ({}): it may not change {what}",
            by.name,
            by.services.as_deref().unwrap_or_default().join(", ")
        )));
    }
    Ok(())
}

/// A plan: the answer, and the new specs by name.
type Planned = (ApplyResponse, BTreeMap<String, ServiceSpec>);

/// What each service asks of the placement planner: its current revision's resources and constraints, and its
/// desired replicas.
///
/// # Errors
/// SQLite failed, or a stored spec does not parse.
pub fn demands(connection: &Connection) -> rusqlite::Result<Vec<crate::placement::Demand>> {
    Ok(current(connection)?
        .into_iter()
        .map(|(name, service)| crate::placement::Demand {
            service: name,
            replicas: if service.stopped { 0 } else { service.replicas },
            resources: service.spec.resources,
            constraints: service.spec.constraints,
        })
        .collect())
}

/// Parses and plans `request` against the state `connection` sees.
fn plan_in(
    connection: &Connection,
    request: &ApplyRequest,
) -> rusqlite::Result<Result<Planned, PlatformError>> {
    let known_secrets = secrets::names(connection)?;
    let specs = match spec::parse(&request.file, &request.content, &|name| {
        known_secrets.contains(name)
    }) {
        Ok(specs) => specs,
        Err(error) => return Ok(Err(error.into())),
    };
    let current = current(connection)?;
    let services = plan(&current, &specs);
    let by_name = specs
        .into_iter()
        .map(|spec| (spec.name.clone(), spec))
        .collect();
    Ok(Ok((
        ApplyResponse {
            dry_run: request.dry_run,
            services,
        },
        by_name,
    )))
}

/// What applying `specs` does to each service: pure.
fn plan(current: &BTreeMap<String, CurrentService>, specs: &[ServiceSpec]) -> Vec<ServicePlan> {
    let mut plans: Vec<ServicePlan> = specs
        .iter()
        .map(|spec| match current.get(&spec.name) {
            None => ServicePlan {
                service: spec.name.clone(),
                change: Change::Create,
                previous_revision: None,
                revision: Some(1),
                diff: diff(None, spec),
            },
            Some(now) if now.spec == *spec => ServicePlan {
                service: spec.name.clone(),
                change: Change::Unchanged,
                previous_revision: Some(now.revision),
                revision: Some(now.revision),
                diff: Vec::new(),
            },
            Some(now) => ServicePlan {
                service: spec.name.clone(),
                change: Change::Update,
                previous_revision: Some(now.revision),
                revision: Some(now.revision + 1),
                diff: diff(Some(&now.spec), spec),
            },
        })
        .collect();
    for (name, now) in current {
        if !specs.iter().any(|spec| spec.name == *name) {
            plans.push(ServicePlan {
                service: name.clone(),
                change: Change::NotInFile,
                previous_revision: Some(now.revision),
                revision: Some(now.revision),
                diff: Vec::new(),
            });
        }
    }
    plans
}

impl CurrentService {
    /// How many of its instances may be replaced at once during a restart or a drain, and whether the new ones
    /// start beside the old (surge) rather than after them: `max_surge` of its desired replicas when above 0
    /// (rounded up), else `max_unavailable` (rounded down, at least 1), as Kubernetes resolves them.
    pub fn replacement_batch(&self) -> (u32, bool) {
        let replicas = self.replicas.max(1);
        let rollout = &self.spec.rollout;
        match rollout.max_surge.resolve(replicas, true) {
            0 => (
                rollout.max_unavailable.resolve(replicas, false).max(1),
                false,
            ),
            surge => (surge, true),
        }
    }
}

/// Every service as it stands, by name (one read of `services` joined with their current revisions).
///
/// # Errors
/// SQLite failed, or a stored spec does not parse.
pub fn current(connection: &Connection) -> rusqlite::Result<BTreeMap<String, CurrentService>> {
    let mut statement = connection.prepare(
        "SELECT s.name, s.revision, r.template, r.version, s.replicas, s.stopped, s.restart_epoch, s.updated, r.spec
         FROM services s JOIN revisions r ON r.service = s.name AND r.revision = s.revision",
    )?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            CurrentService {
                revision: row.get::<_, i64>(1)? as u64,
                template: row.get::<_, i64>(2)? as u64,
                version: row.get(3)?,
                replicas: row.get::<_, i64>(4)?.clamp(0, i64::from(u32::MAX)) as u32,
                stopped: row.get::<_, i64>(5)? != 0,
                restart_epoch: row.get::<_, i64>(6)? as u64,
                updated: row.get(7)?,
                spec: json_column(row, 8)?,
            },
        ))
    })?;
    rows.collect()
}

fn insert_revision(
    connection: &Connection,
    spec: &ServiceSpec,
    revision: u64,
    author: &TokenInfo,
    now: &str,
    source: &str,
    plan: &ServicePlan,
) -> rusqlite::Result<()> {
    // A change of replicas alone keeps the template (and so the instances) of the revision before.
    let previous: Option<(i64, String)> = connection
        .query_row(
            "SELECT template, spec FROM revisions WHERE service = ?1 AND revision = ?2",
            params![spec.name, revision as i64 - 1],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let template = match previous {
        Some((template, before)) => {
            let before: Option<ServiceSpec> = serde_json::from_str(&before).ok();
            if before.is_some_and(|before| same_template(&before, spec)) {
                template as u64
            } else {
                revision
            }
        }
        None => revision,
    };
    let version = spec
        .version
        .clone()
        .unwrap_or_else(|| format!("r{template}"));
    connection.execute(
        "INSERT INTO revisions (service, revision, template, version, author, created, source, diff, spec)
         VALUES (?1, ?2, ?9, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            spec.name,
            revision as i64,
            version,
            author.name,
            now,
            source,
            json(&plan.diff),
            json(spec),
            template as i64
        ],
    )?;
    connection.execute(
        "INSERT INTO services (name, revision, replicas, updated) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET revision = excluded.revision, replicas = excluded.replicas,
         updated = excluded.updated",
        params![spec.name, revision as i64, i64::from(spec.replicas), now],
    )?;
    Ok(())
}

fn not_found(service: &str) -> PlatformError {
    PlatformError::NotFound(format!(
        "no service `{service}`: `gantry services` lists them"
    ))
}

/// Whether two specs run the same instances: equal but for `replicas` and the rollout policy (as a Deployment's
/// replicas and strategy are not part of its pod template).
fn same_template(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    let mut a = a.clone();
    a.replicas = b.replicas;
    a.rollout = b.rollout.clone();
    a == *b
}

/// Plain data as JSON (the proto types always serialize: string keys, no custom serializers).
fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn json_column<T: serde::de::DeserializeOwned>(
    row: &rusqlite::Row<'_>,
    index: usize,
) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            Box::new(error),
        )
    })
}

/// Whether a spec references a secret.
fn references(spec: &ServiceSpec, secret: &str) -> bool {
    let RuntimeSpec::Process(process) = &spec.runtime;
    process
        .env
        .values()
        .any(|value| spec::secret_references(value).is_ok_and(|names| names.contains(&secret)))
}

#[cfg(test)]
mod tests {
    use super::CurrentService;

    fn service(rollout: &str, replicas: u32) -> CurrentService {
        let yaml = format!(
            "services:\n  api:\n    runtime: {{process: {{command: x}}}}\n    rollout: {rollout}\n"
        );
        let spec = crate::spec::parse("t.yaml", &yaml, &|_| true)
            .unwrap()
            .remove(0);
        CurrentService {
            revision: 1,
            template: 1,
            version: "r1".into(),
            replicas,
            stopped: false,
            restart_epoch: 0,
            updated: String::new(),
            spec,
        }
    }

    #[test]
    fn replacement_batches_follow_the_desired_replicas() {
        assert_eq!(
            service("{}", 8).replacement_batch(),
            (2, true),
            "25% surge of 8"
        );
        assert_eq!(
            service("{}", 1).replacement_batch(),
            (1, true),
            "surge rounds up"
        );
        let no_surge = "{max_surge: 0, max_unavailable: 50%}";
        assert_eq!(service(no_surge, 8).replacement_batch(), (4, false));
        assert_eq!(
            service(no_surge, 1).replacement_batch(),
            (1, false),
            "at least one"
        );
    }
}

//! `gantry deploy --queue`: a deployment asked for while another rollout of the service runs waits as a `queued`
//! row of `deployments` (its request and author kept beside it) and keeps its id; the rollout engine starts the
//! oldest of each service whose rollout ended ([`start_next`]), or cancels it with the reason.

use gantry_proto::TokenInfo;
use gantry_proto::deployments::{DeployRequest, Deployment, Kind, Outcome, Status};
use rusqlite::Connection;

use super::audit::{self, Action};
use crate::state::deployments::{self, Row};
use crate::state::now_ms;

/// Queues `request` behind deployment `behind` (the running one, or the last queued): a `queued` deployment
/// row holding the request and its author, started by [`start_next`] when its turn comes.
pub(super) fn queue(
    c: &Connection,
    now: &super::CurrentService,
    request: &DeployRequest,
    by: &TokenInfo,
    behind: u64,
) -> rusqlite::Result<Deployment> {
    let mut policy = now.spec.rollout.clone();
    if let Some(strategy) = request.strategy {
        policy.strategy = strategy;
    }
    let at = now_ms();
    let row = Row {
        from_revision: now.revision,
        phase: "queued".to_owned(),
        started_ms: at,
        ..Row::new(
            &request.service,
            Kind::Deploy,
            policy,
            Status::Queued,
            &by.name,
        )
    };
    let id = deployments::insert(c, &row)?;
    deployments::set_queued(c, id, request, by)?;
    let message = format!(
        "deployment {id} queued: {} {} starts after deployment {behind}",
        request.service, request.version
    );
    deployments::event(c, id, at, "queued", &message, None)?;
    audit::append(
        c,
        &Action {
            actor: by,
            action: "deploy.queue",
            target: &request.service,
            outcome: "ok",
            detail: &message,
        },
    )?;
    let row = deployments::get(c, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    deployments::to_api(c, &row)
}

/// Starts the oldest queued deployment of each service with no rollout running, as the author who queued it;
/// one that cannot start (its version runs already, its settings were rolled back, a secret is gone, the author
/// may no longer deploy the service) is cancelled with the reason, and the next in line is tried at once.
/// Returns whether one started. Part of the rollout engine's round, in its transaction.
///
/// # Errors
/// The database failed.
pub fn start_next(c: &Connection) -> rusqlite::Result<bool> {
    let mut started = false;
    let running = deployments::active_services(c)?;
    let mut seen = std::collections::BTreeSet::new();
    for (row, queued) in deployments::queued(c, None)? {
        if running.contains(&row.service) || !seen.insert(row.service.clone()) {
            continue;
        }
        let (refusal, by) = match queued {
            None => (Some("its stored request cannot be read".to_owned()), None),
            Some((request, by)) => {
                // The author as it stands now: revoked, demoted or limited to other services since, it may not
                // deploy.
                let refusal = match crate::state::tokens::current(c, &by.id)? {
                    None => Some(format!("its author `{}` no longer exists", by.name)),
                    Some(now)
                        if !matches!(
                            now.role,
                            gantry_proto::Role::Deployer | gantry_proto::Role::Admin
                        ) =>
                    {
                        Some(format!("its author `{}` may no longer deploy", by.name))
                    }
                    Some(now) => match super::may_change(&now, &row.service) {
                        Err(error) => Some(error.to_string()),
                        Ok(()) => {
                            match super::deploy::deploy_in(c, &request, &now, Some(row.id))? {
                                Ok(_) => None,
                                Err(error) => Some(error.to_string()),
                            }
                        }
                    },
                };
                (refusal, Some(by))
            }
        };
        match refusal {
            None => started = true,
            Some(why) => {
                let service = row.service.clone();
                cancel(
                    c,
                    row,
                    &format!("refused when its turn came: {why}"),
                    None,
                    by.as_ref(),
                )?;
                // The next in line is tried at once.
                seen.remove(&service);
            }
        }
    }
    Ok(started)
}

/// Ends queued deployment `row` before it started (`cancelled`, with `reason`; `outcome` `aborted` for an abort),
/// with its event and an audit entry under `by` (its author when known).
pub(super) fn cancel(
    c: &Connection,
    mut row: Row,
    reason: &str,
    outcome: Option<Outcome>,
    by: Option<&TokenInfo>,
) -> rusqlite::Result<()> {
    let at = now_ms();
    row.status = Status::Cancelled;
    row.phase = "done".to_owned();
    row.outcome = outcome;
    row.reason = reason.to_owned();
    row.finished_ms = Some(at);
    deployments::save(c, &row)?;
    deployments::event(c, row.id, at, "finished", &row.reason, None)?;
    let unknown = TokenInfo {
        id: String::new(),
        name: row.created_by.clone(),
        role: gantry_proto::Role::Deployer,
        created: String::new(),
        services: None,
    };
    audit::append(
        c,
        &Action {
            actor: by.unwrap_or(&unknown),
            action: "deploy",
            target: &row.service,
            outcome: if outcome == Some(Outcome::Aborted) {
                "aborted"
            } else {
                "refused"
            },
            detail: &format!("deployment {}: {}", row.id, row.reason),
        },
    )
}

/// Cancels every queued deployment of `service` (a rollback by hand: what was queued behind the rollout it
/// replaces must not follow it), with `reason`, under `by`.
pub(super) fn cancel_queued(
    c: &Connection,
    service: &str,
    reason: &str,
    by: &TokenInfo,
) -> rusqlite::Result<()> {
    for (row, _) in deployments::queued(c, Some(service))? {
        cancel(c, row, reason, Some(Outcome::Aborted), Some(by))?;
    }
    Ok(())
}

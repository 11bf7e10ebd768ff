//! The `deployments` and `deployment_events` tables: each rollout's whole state (so a plane killed at any moment
//! resumes it where it was) and what happened to it, in order.

use std::collections::{BTreeSet, HashMap};

use gantry_proto::deployments::{Decision, Deployment, Event, Kind, Outcome, Status};
use gantry_proto::platform::{RolloutPolicy, ServiceSpec, Strategy};
use rusqlite::{Connection, OptionalExtension, params};

/// One deployment as stored.
#[derive(Debug, Clone)]
pub struct Row {
    /// Its id (0 before it is inserted).
    pub id: u64,
    /// The service.
    pub service: String,
    /// The stable revision.
    pub from_revision: u64,
    /// The revision rolled out.
    pub to_revision: u64,
    /// The stable revision's template.
    pub from_template: u64,
    /// The new revision's template.
    pub to_template: u64,
    /// Deploy or rollback.
    pub kind: Kind,
    /// The strategy in effect.
    pub strategy: Strategy,
    /// The rollout policy in effect.
    pub policy: RolloutPolicy,
    /// Where it stands.
    pub status: Status,
    /// What it does now (see `rollout`).
    pub phase: String,
    /// The canary step, 0-based.
    pub step: u32,
    /// The new version's share of requests at the routers, percent.
    pub weight: f64,
    /// When the current step's weight took effect, ms since the epoch.
    pub step_started_ms: Option<u64>,
    /// When a timed pause ends, ms since the epoch.
    pub paused_until_ms: Option<u64>,
    /// Why it is paused.
    pub pause_reason: Option<String>,
    /// How it ended or is ending.
    pub outcome: Option<Outcome>,
    /// Why, in words.
    pub reason: String,
    /// The token that started it.
    pub created_by: String,
    /// ms since the epoch.
    pub started_ms: u64,
    /// ms since the epoch.
    pub finished_ms: Option<u64>,
    /// The canary judge's state.
    pub judge: Option<gantry_judge::Judge>,
    /// The judge's verdicts.
    pub decisions: Vec<Decision>,
}

impl Row {
    /// A deployment of `service` not yet inserted, with `status`, started now by `created_by`: no revisions, no
    /// step, weight or judge yet, the strategy of `policy`, phase `rolling`.
    pub fn new(
        service: &str,
        kind: Kind,
        policy: RolloutPolicy,
        status: Status,
        created_by: &str,
    ) -> Row {
        Row {
            id: 0,
            service: service.to_owned(),
            from_revision: 0,
            to_revision: 0,
            from_template: 0,
            to_template: 0,
            kind,
            strategy: policy.strategy,
            policy,
            status,
            phase: "rolling".to_owned(),
            step: 0,
            weight: 0.0,
            step_started_ms: None,
            paused_until_ms: None,
            pause_reason: None,
            outcome: None,
            reason: String::new(),
            created_by: created_by.to_owned(),
            started_ms: super::now_ms(),
            finished_ms: None,
            judge: None,
            decisions: Vec::new(),
        }
    }
}

const COLUMNS: &str = "d.id, d.service, d.from_revision, d.to_revision, d.kind, d.strategy, d.policy, d.status,
    d.phase, d.step, d.weight, d.step_started_ms, d.paused_until_ms, d.pause_reason, d.outcome, d.reason,
    d.created_by, d.started_ms, d.finished_ms, d.judge, d.decisions,
    (SELECT template FROM revisions WHERE service = d.service AND revision = d.from_revision),
    (SELECT template FROM revisions WHERE service = d.service AND revision = d.to_revision)";

fn strategy_name(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::Rolling => "rolling",
        Strategy::Canary => "canary",
        Strategy::BlueGreen => "blue-green",
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Deploy => "deploy",
        Kind::Rollback => "rollback",
    }
}

fn invalid(index: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        index,
        rusqlite::types::Type::Text,
        format!("unknown {what}").into(),
    )
}

fn json<T: serde::de::DeserializeOwned>(text: &str, index: usize) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            Box::new(error),
        )
    })
}

fn row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let kind: String = row.get(4)?;
    let strategy: String = row.get(5)?;
    let policy: String = row.get(6)?;
    let status: String = row.get(7)?;
    let outcome: Option<String> = row.get(14)?;
    let judge: Option<String> = row.get(19)?;
    let decisions: String = row.get(20)?;
    let millis = |value: Option<i64>| value.map(|v| v.max(0) as u64);
    Ok(Row {
        id: row.get::<_, i64>(0)? as u64,
        service: row.get(1)?,
        from_revision: row.get::<_, i64>(2)? as u64,
        to_revision: row.get::<_, i64>(3)? as u64,
        kind: match kind.as_str() {
            "deploy" => Kind::Deploy,
            "rollback" => Kind::Rollback,
            _ => return Err(invalid(4, "kind")),
        },
        strategy: match strategy.as_str() {
            "rolling" => Strategy::Rolling,
            "canary" => Strategy::Canary,
            "blue-green" => Strategy::BlueGreen,
            _ => return Err(invalid(5, "strategy")),
        },
        policy: json(&policy, 6)?,
        status: Status::parse(&status).ok_or_else(|| invalid(7, "status"))?,
        phase: row.get(8)?,
        step: row.get::<_, i64>(9)? as u32,
        weight: row.get(10)?,
        step_started_ms: millis(row.get(11)?),
        paused_until_ms: millis(row.get(12)?),
        pause_reason: row.get(13)?,
        outcome: match outcome {
            Some(text) => Some(Outcome::parse(&text).ok_or_else(|| invalid(14, "outcome"))?),
            None => None,
        },
        reason: row.get(15)?,
        created_by: row.get(16)?,
        started_ms: row.get::<_, i64>(17)?.max(0) as u64,
        finished_ms: millis(row.get(18)?),
        judge: judge.map(|text| json(&text, 19)).transpose()?,
        decisions: json(&decisions, 20)?,
        from_template: row.get::<_, Option<i64>>(21)?.unwrap_or(0) as u64,
        to_template: row.get::<_, Option<i64>>(22)?.unwrap_or(0) as u64,
    })
}

/// Inserts a new deployment; returns its id. Fails with a constraint violation when the service has one running
/// (the `deployments_one_active` index).
///
/// # Errors
/// SQLite failed.
pub fn insert(connection: &Connection, deployment: &Row) -> rusqlite::Result<u64> {
    connection.execute(
        "INSERT INTO deployments (service, from_revision, to_revision, kind, strategy, policy, status, phase,
         created_by, started_ms, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            deployment.service,
            deployment.from_revision as i64,
            deployment.to_revision as i64,
            kind_name(deployment.kind),
            strategy_name(deployment.strategy),
            serde_json::to_string(&deployment.policy).unwrap_or_default(),
            deployment.status.as_str(),
            deployment.phase,
            deployment.created_by,
            deployment.started_ms as i64,
            deployment.reason,
        ],
    )?;
    Ok(connection.last_insert_rowid() as u64)
}

/// Writes a deployment's changing fields.
///
/// # Errors
/// SQLite failed.
pub fn save(connection: &Connection, deployment: &Row) -> rusqlite::Result<()> {
    let judge = deployment
        .judge
        .as_ref()
        .map(|judge| serde_json::to_string(judge).unwrap_or_default());
    connection.execute(
        "UPDATE deployments SET status = ?2, phase = ?3, step = ?4, weight = ?5, step_started_ms = ?6,
         paused_until_ms = ?7, pause_reason = ?8, outcome = ?9, reason = ?10, finished_ms = ?11, judge = ?12,
         decisions = ?13 WHERE id = ?1",
        params![
            deployment.id as i64,
            deployment.status.as_str(),
            deployment.phase,
            i64::from(deployment.step),
            deployment.weight,
            deployment.step_started_ms.map(|v| v as i64),
            deployment.paused_until_ms.map(|v| v as i64),
            deployment.pause_reason,
            deployment.outcome.map(Outcome::as_str),
            deployment.reason,
            deployment.finished_ms.map(|v| v as i64),
            judge,
            serde_json::to_string(&deployment.decisions).unwrap_or_default(),
        ],
    )?;
    Ok(())
}

/// One deployment.
///
/// # Errors
/// SQLite failed.
pub fn get(connection: &Connection, id: u64) -> rusqlite::Result<Option<Row>> {
    connection
        .query_row(
            &format!("SELECT {COLUMNS} FROM deployments d WHERE d.id = ?1"),
            [id as i64],
            row,
        )
        .optional()
}

/// The deployments still running, oldest first.
///
/// # Errors
/// SQLite failed.
pub fn active(connection: &Connection) -> rusqlite::Result<Vec<Row>> {
    let mut statement = connection.prepare(&format!(
        "SELECT {COLUMNS} FROM deployments d WHERE d.status IN ('progressing', 'paused', 'rolling_back') ORDER BY d.id"
    ))?;
    let rows = statement.query_map([], row)?;
    rows.collect()
}

/// The running deployment of `service`, if any.
///
/// # Errors
/// SQLite failed.
pub fn active_for(connection: &Connection, service: &str) -> rusqlite::Result<Option<Row>> {
    Ok(active(connection)?
        .into_iter()
        .find(|deployment| deployment.service == service))
}

/// The queued deployments, oldest first (of one service, or all), each with the request and the author it was
/// queued with (`None` when the stored request cannot be read).
///
/// # Errors
/// SQLite failed.
#[allow(clippy::type_complexity)]
pub fn queued(
    connection: &Connection,
    service: Option<&str>,
) -> rusqlite::Result<
    Vec<(
        Row,
        Option<(
            gantry_proto::deployments::DeployRequest,
            gantry_proto::TokenInfo,
        )>,
    )>,
> {
    let mut statement = connection.prepare(&format!(
        "SELECT {COLUMNS}, d.request FROM deployments d WHERE d.status = 'queued' AND (?1 IS NULL OR d.service = ?1)
         ORDER BY d.id"
    ))?;
    let rows = statement.query_map([service], |r| {
        let stored: Option<String> = r.get(23)?;
        let queued = stored
            .and_then(|text| serde_json::from_str::<Queued>(&text).ok())
            .map(|q| (q.request, q.by));
        Ok((row(r)?, queued))
    })?;
    rows.collect()
}

/// Whether any deployment is queued (one read of the `deployments_queued` index: the rollout loop asks every
/// round).
///
/// # Errors
/// SQLite failed.
pub fn any_queued(connection: &Connection) -> rusqlite::Result<bool> {
    connection.query_row(
        "SELECT EXISTS (SELECT 1 FROM deployments WHERE status = 'queued')",
        [],
        |row| row.get(0),
    )
}

/// What a queued deployment keeps until its turn.
#[derive(serde::Serialize, serde::Deserialize)]
struct Queued {
    request: gantry_proto::deployments::DeployRequest,
    by: gantry_proto::TokenInfo,
}

/// Stores the request and author of queued deployment `id`.
///
/// # Errors
/// SQLite failed.
pub fn set_queued(
    connection: &Connection,
    id: u64,
    request: &gantry_proto::deployments::DeployRequest,
    by: &gantry_proto::TokenInfo,
) -> rusqlite::Result<()> {
    let text = serde_json::to_string(&Queued {
        request: request.clone(),
        by: by.clone(),
    })
    .unwrap_or_default();
    connection.execute(
        "UPDATE deployments SET request = ?2 WHERE id = ?1",
        params![id as i64, text],
    )?;
    Ok(())
}

/// Turns queued deployment `id` into the deployment `started` describes (its revisions, strategy, policy, status
/// and start time), keeping its id; the request it was queued with is dropped.
///
/// # Errors
/// SQLite failed, or the service has a deployment running (the `deployments_one_active` index).
pub fn start_queued(connection: &Connection, id: u64, started: &Row) -> rusqlite::Result<()> {
    connection.execute(
        "UPDATE deployments SET from_revision = ?2, to_revision = ?3, kind = ?4, strategy = ?5, policy = ?6,
         status = ?7, phase = ?8, step_started_ms = ?9, started_ms = ?10, request = NULL WHERE id = ?1",
        params![
            id as i64,
            started.from_revision as i64,
            started.to_revision as i64,
            kind_name(started.kind),
            strategy_name(started.strategy),
            serde_json::to_string(&started.policy).unwrap_or_default(),
            started.status.as_str(),
            started.phase,
            started.step_started_ms.map(|v| v as i64),
            started.started_ms as i64,
        ],
    )?;
    Ok(())
}

/// The services with a deployment running.
///
/// # Errors
/// SQLite failed.
pub fn active_services(connection: &Connection) -> rusqlite::Result<BTreeSet<String>> {
    let mut statement = connection.prepare(
        "SELECT service FROM deployments WHERE status IN ('progressing', 'paused', 'rolling_back')",
    )?;
    let rows = statement.query_map([], |row| row.get(0))?;
    rows.collect()
}

/// Deployments newest first: of one service or all, started in `[from_ms, to_ms)`, at most `limit`.
///
/// # Errors
/// SQLite failed.
pub fn list(
    connection: &Connection,
    service: Option<&str>,
    from_ms: u64,
    to_ms: u64,
    limit: usize,
) -> rusqlite::Result<Vec<Row>> {
    let mut statement = connection.prepare(&format!(
        "SELECT {COLUMNS} FROM deployments d WHERE (?1 IS NULL OR d.service = ?1)
         AND d.started_ms >= ?2 AND d.started_ms < ?3 ORDER BY d.id DESC LIMIT ?4"
    ))?;
    let rows = statement.query_map(
        params![
            service,
            from_ms.min(i64::MAX as u64) as i64,
            to_ms.min(i64::MAX as u64) as i64,
            limit as i64
        ],
        row,
    )?;
    rows.collect()
}

/// Appends an event; returns its sequence number.
///
/// # Errors
/// SQLite failed.
pub fn event(
    connection: &Connection,
    deployment: u64,
    time_ms: u64,
    kind: &str,
    message: &str,
    detail: Option<&serde_json::Value>,
) -> rusqlite::Result<u64> {
    connection.execute(
        "INSERT INTO deployment_events (deployment, time_ms, kind, message, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            deployment as i64,
            time_ms as i64,
            kind,
            message,
            detail.map(serde_json::Value::to_string)
        ],
    )?;
    Ok(connection.last_insert_rowid() as u64)
}

/// The events of `deployments` after sequence number `after`, oldest first, at most `limit`.
///
/// # Errors
/// SQLite failed.
pub fn events(
    connection: &Connection,
    deployments: &[u64],
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<Event>> {
    let mut statement = connection.prepare(
        "SELECT seq, deployment, time_ms, kind, message, detail FROM deployment_events
         WHERE deployment = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let mut all = Vec::new();
    for id in deployments {
        let rows = statement.query_map(params![*id as i64, after as i64, limit as i64], |row| {
            let time_ms = row.get::<_, i64>(2)?.max(0) as u64;
            let detail: Option<String> = row.get(5)?;
            Ok(Event {
                seq: row.get::<_, i64>(0)? as u64,
                deployment: row.get::<_, i64>(1)? as u64,
                time: super::rfc3339_ms(time_ms),
                time_ms,
                kind: row.get(3)?,
                message: row.get(4)?,
                detail: detail.and_then(|text| serde_json::from_str(&text).ok()),
            })
        })?;
        for event in rows {
            all.push(event?);
        }
    }
    all.sort_by_key(|event| event.seq);
    all.truncate(limit);
    Ok(all)
}

/// The template a new slot of each service runs: its current revision's, or during a canary or blue-green
/// rollout the stable one's (the new version runs only where the rollout puts it).
///
/// # Errors
/// SQLite failed.
pub fn slot_templates(connection: &Connection) -> rusqlite::Result<HashMap<String, u64>> {
    let mut templates: HashMap<String, u64> = super::platform::current(connection)?
        .into_iter()
        .map(|(name, service)| (name, service.template))
        .collect();
    for deployment in active(connection)? {
        if deployment.strategy != Strategy::Rolling && deployment.status != Status::RollingBack {
            templates.insert(deployment.service.clone(), deployment.from_template);
        }
    }
    Ok(templates)
}

/// Every template revision of every service: (service, template) → (version, spec).
///
/// # Errors
/// SQLite failed, or a stored spec does not parse.
pub fn templates(
    connection: &Connection,
) -> rusqlite::Result<HashMap<(String, u64), (String, ServiceSpec)>> {
    let mut statement = connection.prepare(
        "SELECT service, revision, version, spec FROM revisions WHERE revision = template",
    )?;
    let rows = statement.query_map([], |row| {
        let spec: String = row.get(3)?;
        Ok((
            (row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64),
            (row.get::<_, String>(2)?, json::<ServiceSpec>(&spec, 3)?),
        ))
    })?;
    rows.collect()
}

/// A revision's version label.
///
/// # Errors
/// SQLite failed.
pub fn version(connection: &Connection, service: &str, revision: u64) -> rusqlite::Result<String> {
    Ok(connection
        .query_row(
            "SELECT version FROM revisions WHERE service = ?1 AND revision = ?2",
            params![service, revision as i64],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or_default())
}

/// A stored deployment as the API shows it.
///
/// # Errors
/// SQLite failed.
pub fn to_api(connection: &Connection, deployment: &Row) -> rusqlite::Result<Deployment> {
    Ok(Deployment {
        id: deployment.id,
        service: deployment.service.clone(),
        kind: deployment.kind,
        strategy: deployment.strategy,
        status: deployment.status,
        phase: deployment.phase.clone(),
        from_revision: deployment.from_revision,
        from_version: version(connection, &deployment.service, deployment.from_revision)?,
        to_revision: deployment.to_revision,
        to_version: if deployment.to_revision == 0 {
            // Queued, or cancelled before it started: no revision, the version asked for.
            connection
                .query_row(
                    "SELECT request FROM deployments WHERE id = ?1",
                    [deployment.id as i64],
                    |row| row.get::<_, Option<String>>(0),
                )
                .optional()?
                .flatten()
                .and_then(|text| serde_json::from_str::<Queued>(&text).ok())
                .map(|queued| queued.request.version)
                .unwrap_or_default()
        } else {
            version(connection, &deployment.service, deployment.to_revision)?
        },
        step: deployment.step,
        steps: deployment
            .policy
            .steps
            .iter()
            .map(|step| step.weight_percent)
            .collect(),
        weight: deployment.weight,
        pause_reason: deployment.pause_reason.clone(),
        paused_until: deployment.paused_until_ms.map(super::rfc3339_ms),
        outcome: deployment.outcome,
        reason: deployment.reason.clone(),
        created_by: deployment.created_by.clone(),
        started: super::rfc3339_ms(deployment.started_ms),
        finished: deployment.finished_ms.map(super::rfc3339_ms),
        decisions: deployment.decisions.clone(),
    })
}

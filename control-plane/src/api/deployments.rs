//! `/api/v1/deployments`: start a rollout, follow it, act on it, and read the history (deploy markers).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gantry_proto::deployments::{
    DeployRequest, Deployment, DeploymentList, EventPage, RollbackRequest,
};
use serde::Deserialize;

use super::platform::replan;
use super::{ApiError, AppState, Caller, DeployAccess, JsonBody, Params, ReadAccess, blocking};
use crate::state::deployments;
use crate::state::platform::Control;

/// The longest `GET .../events` waits for a new event.
const MAX_WAIT_MS: u64 = 30_000;

/// `POST /api/v1/deployments`: 201 with the deployment, or 202 with it `queued` (a request with `queue: true`
/// while another rollout of the service runs).
pub async fn create(
    caller: Caller<DeployAccess>,
    State(state): State<AppState>,
    JsonBody(request): JsonBody<DeployRequest>,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    let by = caller.token.clone();
    let deployment = blocking(&state.platform, move |platform| {
        platform.deploy(&request, &by)
    })
    .await?;
    if deployment.status == gantry_proto::deployments::Status::Queued {
        tracing::info!(by = %caller.token.name, id = deployment.id, service = %deployment.service, "deployment queued");
        return Ok((StatusCode::ACCEPTED, Json(deployment)));
    }
    tracing::info!(by = %caller.token.name, id = deployment.id, service = %deployment.service, "deployment started");
    state.rollouts.wake();
    replan(&state).await;
    Ok((StatusCode::CREATED, Json(deployment)))
}

/// `POST /api/v1/services/{name}/rollback`: 201 with the rollback's deployment (or the aborted rollout's).
pub async fn rollback(
    caller: Caller<DeployAccess>,
    State(state): State<AppState>,
    Path(service): Path<String>,
    JsonBody(request): JsonBody<RollbackRequest>,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    let by = caller.token.clone();
    let deployment = blocking(&state.platform, move |platform| {
        platform.rollback(&service, request.to, &by)
    })
    .await?;
    state.rollouts.wake();
    replan(&state).await;
    Ok((StatusCode::CREATED, Json(deployment)))
}

/// `?full=true` of `promote`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteQuery {
    /// Straight to 100%.
    #[serde(default)]
    pub full: bool,
}

/// `POST /api/v1/deployments/{id}/{action}`: pause, resume, promote (`?full=true`) or abort.
pub async fn control(
    caller: Caller<DeployAccess>,
    State(state): State<AppState>,
    Path((id, action)): Path<(u64, String)>,
    Params(query): Params<PromoteQuery>,
) -> Result<Json<Deployment>, ApiError> {
    let control = match action.as_str() {
        "pause" => Control::Pause,
        "resume" => Control::Resume,
        "promote" => Control::Promote { full: query.full },
        "abort" => Control::Abort,
        other => {
            return Err(ApiError::NotFound(format!(
                "no action `{other}`: pause, resume, promote or abort"
            )));
        }
    };
    let by = caller.token.clone();
    let deployment = blocking(&state.platform, move |platform| {
        platform.control(id, control, &by)
    })
    .await?;
    state.rollouts.wake();
    Ok(Json(deployment))
}

/// `GET /api/v1/deployments/{id}`.
pub async fn get(
    _: Caller<ReadAccess>,
    State(state): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Json<Deployment>, ApiError> {
    Ok(Json(
        blocking(&state.platform, move |platform| platform.deployment(id)).await?,
    ))
}

/// `?after=SEQ&wait_ms=MS` of `GET .../events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Events after this sequence number (0: all).
    #[serde(default)]
    pub after: u64,
    /// Wait this long for a new event when there is none (at most 30 000).
    #[serde(default)]
    pub wait_ms: u64,
}

/// `GET /api/v1/deployments/{id}/events`: the deployment and its events after `after`; a long poll with `wait_ms`.
pub async fn events(
    _: Caller<ReadAccess>,
    State(state): State<AppState>,
    Path(id): Path<u64>,
    Params(query): Params<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_millis(query.wait_ms.min(MAX_WAIT_MS));
    loop {
        let after = query.after;
        let page = blocking(&state.platform, move |platform| {
            let deployment = platform.deployment(id)?;
            let events = platform
                .db()
                .read(|c| deployments::events(c, &[id], after, 1000))
                .map_err(crate::state::platform::PlatformError::from)?;
            Ok::<_, crate::state::platform::PlatformError>(EventPage { deployment, events })
        })
        .await?;
        if !page.events.is_empty()
            || page.deployment.status.ended()
            || tokio::time::Instant::now() >= deadline
        {
            return Ok(Json(page));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `?service=&from=&to=&limit=` of `GET /api/v1/deployments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this service's.
    pub service: Option<String>,
    /// Started at or after: RFC 3339 or a duration back from now (`-24h`); default: all.
    pub from: Option<String>,
    /// Started before; default: now.
    pub to: Option<String>,
    /// At most this many (default 50, at most 500).
    pub limit: Option<usize>,
}

/// `GET /api/v1/deployments`: the history, newest first, with each deployment's events as deploy markers.
pub async fn list(
    _: Caller<ReadAccess>,
    State(state): State<AppState>,
    Params(query): Params<ListQuery>,
) -> Result<Json<DeploymentList>, ApiError> {
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    let from_ms = match &query.from {
        Some(text) => (super::time::parse_time("from", text, now_ns)? / 1_000_000).max(0) as u64,
        None => 0,
    };
    let to_ms = match &query.to {
        Some(text) => (super::time::parse_time("to", text, now_ns)? / 1_000_000).max(0) as u64,
        None => u64::MAX,
    };
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let service = query.service.clone();
    let list = blocking(&state.platform, move |platform| {
        platform
            .db()
            .read(|c| {
                let rows = deployments::list(c, service.as_deref(), from_ms, to_ms, limit)?;
                let ids: Vec<u64> = rows.iter().map(|row| row.id).collect();
                let markers = deployments::events(c, &ids, 0, 10_000)?;
                let deployments = rows
                    .iter()
                    .map(|row| deployments::to_api(c, row))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(DeploymentList {
                    deployments,
                    markers,
                })
            })
            .map_err(crate::state::platform::PlatformError::from)
    })
    .await?;
    Ok(Json(list))
}

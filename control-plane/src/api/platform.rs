//! The platform's desired state over HTTP: `POST /api/v1/apply` (plan or apply a platform spec),
//! `GET /api/v1/services/{name}` (revision and placements), `GET /api/v1/services/{name}/revisions`, the secrets specs reference (`GET /api/v1/secrets`,
//! `PUT|DELETE /api/v1/secrets/{name}`) and `GET /api/v1/audit`.
//!
//! Changes need a `deployer` or `admin` token and are written to the audit log with the change itself; each is a
//! committed (fsynced) write, so it runs on a blocking thread.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gantry_proto::platform::{
    ApplyRequest, ApplyResponse, AuditResponse, InstanceStatus, Revision, ScaleRequest, SecretInfo,
    ServiceStatus, SetSecretRequest,
};
use serde::Deserialize;

use super::{ApiError, AppState, Caller, DeployAccess, JsonBody, Params, ReadAccess, blocking};
use crate::state::platform::PlatformError;

impl From<PlatformError> for ApiError {
    fn from(error: PlatformError) -> Self {
        match error {
            PlatformError::Spec(error) => ApiError::Spec(error),
            PlatformError::NotFound(message) => ApiError::NotFound(message),
            PlatformError::Conflict(message) => ApiError::Conflict(message),
            PlatformError::Forbidden(message) => ApiError::Forbidden(message),
            PlatformError::Invalid(message) => ApiError::BadRequest(message),
            // Busy or failing database: a retry can succeed.
            PlatformError::State(error) => ApiError::Unavailable {
                message: error.to_string(),
                retry_after: std::time::Duration::from_secs(1),
            },
        }
    }
}

/// `POST /api/v1/apply`: a platform spec, planned (`dry_run`) or applied.
pub async fn apply(
    caller: Caller<DeployAccess>,
    State(state): State<AppState>,
    JsonBody(request): JsonBody<ApplyRequest>,
) -> Result<Json<ApplyResponse>, ApiError> {
    let author = caller.token.clone();
    let file = request.file.clone();
    let response = blocking(&state.platform, move |platform| {
        platform.apply(&request, &author)
    })
    .await?;
    if !response.dry_run {
        tracing::info!(by = %caller.token.name, file = %file, "platform spec applied");
        // New revisions change instance ids: agents' long polls answer.
        state.instances.bump();
        // Place the new slots now rather than at the next round; the apply is committed either way.
        let scheduler = state.scheduler.clone();
        match tokio::task::spawn_blocking(move || scheduler.reconcile()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "placement after apply failed; the next round retries")
            }
            Err(error) => tracing::error!(%error, "placement after apply panicked"),
        }
    }
    Ok(Json(response))
}

/// After a change of what should run: agents' long polls answer, and the new slots are placed now rather than at
/// the next round (the change is committed either way; a failure here is retried by the next round).
pub(crate) async fn replan(state: &AppState) {
    state.instances.bump();
    let scheduler = state.scheduler.clone();
    match tokio::task::spawn_blocking(move || scheduler.reconcile()).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "placement after a change failed; the next round retries")
        }
        Err(error) => tracing::error!(%error, "placement after a change panicked"),
    }
}

/// `POST /api/v1/services/{name}/scale`: desired instances, without a new revision. 200 with the service.
pub async fn scale(
    caller: Caller<DeployAccess>,
    State(state): State<AppState>,
    Path(service): Path<String>,
    JsonBody(request): JsonBody<ScaleRequest>,
) -> Result<Json<ServiceStatus>, ApiError> {
    let (by, name) = (caller.token.clone(), service.clone());
    blocking(&state.platform, move |platform| {
        platform.scale(&name, request.replicas, &by)
    })
    .await?;
    replan(&state).await;
    status(Caller::from(caller), State(state), Path(service)).await
}

/// `POST /api/v1/services/{name}/restart`: every instance replaced, a few at a time, each new one healthy before
/// the old one stops. 200 with the service.
pub async fn restart(
    caller: Caller<DeployAccess>,
    State(state): State<AppState>,
    Path(service): Path<String>,
) -> Result<Json<ServiceStatus>, ApiError> {
    let (by, name) = (caller.token.clone(), service.clone());
    blocking(&state.platform, move |platform| {
        platform.restart(&name, &by)
    })
    .await?;
    replan(&state).await;
    status(Caller::from(caller), State(state), Path(service)).await
}

/// `POST /api/v1/services/{name}/stop`: no instance runs until `start`. 200 with the service.
pub async fn stop(
    caller: Caller<DeployAccess>,
    State(state): State<AppState>,
    Path(service): Path<String>,
) -> Result<Json<ServiceStatus>, ApiError> {
    set_stopped(caller, state, service, true).await
}

/// `POST /api/v1/services/{name}/start`: its replicas run again. 200 with the service.
pub async fn start(
    caller: Caller<DeployAccess>,
    State(state): State<AppState>,
    Path(service): Path<String>,
) -> Result<Json<ServiceStatus>, ApiError> {
    set_stopped(caller, state, service, false).await
}

async fn set_stopped(
    caller: Caller<DeployAccess>,
    state: AppState,
    service: String,
    stopped: bool,
) -> Result<Json<ServiceStatus>, ApiError> {
    let (by, name) = (caller.token.clone(), service.clone());
    blocking(&state.platform, move |platform| {
        platform.set_stopped(&name, stopped, &by)
    })
    .await?;
    replan(&state).await;
    status(Caller::from(caller), State(state), Path(service)).await
}

/// `GET /api/v1/services/{name}/revisions`: newest first.
pub async fn revisions(
    _: Caller<ReadAccess>,
    State(state): State<AppState>,
    Path(service): Path<String>,
) -> Result<Json<Vec<Revision>>, ApiError> {
    Ok(Json(
        blocking(&state.platform, move |platform| {
            platform.revisions(&service)
        })
        .await?,
    ))
}

/// `GET /api/v1/services/{name}`: the current revision and where each instance should run.
pub async fn status(
    _: Caller<ReadAccess>,
    State(state): State<AppState>,
    Path(service): Path<String>,
) -> Result<Json<ServiceStatus>, ApiError> {
    let (deployed, slots) = blocking(&state.platform, move |platform| {
        platform.placements(&service)
    })
    .await?;
    let instances = instance_statuses(&state, slots);
    Ok(Json(ServiceStatus {
        service: deployed,
        instances,
    }))
}

/// Each stored slot with its node and what the node's agent last reported of it.
pub fn instance_statuses(
    state: &AppState,
    slots: std::collections::BTreeMap<crate::placement::Slot, crate::state::placements::StoredSlot>,
) -> Vec<InstanceStatus> {
    slots
        .into_iter()
        .map(|(slot, stored)| {
            let node = stored.node.as_deref().and_then(|id| state.nodes.get(id));
            let instance_id = stored.instance_id(&slot);
            let replacement = stored
                .next_instance_id(&slot)
                .zip(stored.next.as_ref().map(|next| next.node.clone()));
            let actual = stored
                .node
                .as_deref()
                .and_then(|node| state.instances.state(node, &instance_id));
            InstanceStatus {
                instance_id,
                replacement,
                actual,
                instance: slot.to_string(),
                slot: slot.index,
                hostname: node.as_ref().map(|n| n.facts.hostname.clone()),
                node_status: node.as_ref().map(|n| n.status),
                state: if stored.node.is_some() {
                    "placed"
                } else {
                    "unplaced"
                }
                .to_owned(),
                node: stored.node,
                reason: stored.reason,
                since: stored.updated,
            }
        })
        .collect()
}

/// `GET /api/v1/secrets`: names and who set them, never values.
pub async fn list_secrets(
    _: Caller<ReadAccess>,
    State(state): State<AppState>,
) -> Result<Json<Vec<SecretInfo>>, ApiError> {
    Ok(Json(
        blocking(&state.platform, |platform| platform.secrets()).await?,
    ))
}

/// `PUT /api/v1/secrets/{name}`: 201 when created, 204 when changed.
pub async fn set_secret(
    caller: Caller<DeployAccess>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<SetSecretRequest>,
) -> Result<StatusCode, ApiError> {
    let by = caller.token.clone();
    let created = blocking(&state.platform, move |platform| {
        platform.set_secret(&name, &request.value, &by)
    })
    .await?;
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

/// `DELETE /api/v1/secrets/{name}`: 409 while a current revision references it.
pub async fn delete_secret(
    caller: Caller<DeployAccess>,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let by = caller.token.clone();
    blocking(&state.platform, move |platform| {
        platform.delete_secret(&name, &by)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query string of `GET /api/v1/audit`.
#[derive(Debug, Deserialize)]
pub struct AuditParams {
    /// Entries per page (default 100, at most 1000).
    limit: Option<usize>,
    /// Only entries about this target.
    target: Option<String>,
    /// Only entries older than this id (the next page).
    before: Option<u64>,
}

/// `GET /api/v1/audit`: newest first.
pub async fn audit(
    _: Caller<ReadAccess>,
    State(state): State<AppState>,
    Params(params): Params<AuditParams>,
) -> Result<Json<AuditResponse>, ApiError> {
    let entries = blocking(&state.platform, move |platform| {
        platform.audit(
            params.limit.unwrap_or(100),
            params.target.as_deref(),
            params.before,
        )
    })
    .await?;
    Ok(Json(AuditResponse { entries }))
}

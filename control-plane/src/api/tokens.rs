//! Token administration: create (the secret is in this one answer), list, revoke. Admin only.
//!
//! Each change is a committed (fsynced) write to the state database, so it runs on a blocking thread.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gantry_proto::{CreateTokenRequest, CreatedToken, TokenInfo};

use super::{AdminAccess, ApiError, AppState, Caller, JsonBody, blocking};
use crate::state::audit::Action;

/// `POST /api/v1/tokens`.
pub async fn create(
    caller: Caller<AdminAccess>,
    State(state): State<AppState>,
    JsonBody(request): JsonBody<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let created = blocking(&state.tokens, move |tokens| {
        tokens.create_limited(&request.name, request.role, request.services)
    })
    .await?;
    tracing::info!(by = %caller.token.name, name = %created.info.name, role = %created.info.role, "token created");
    let detail = match &created.info.services {
        Some(services) => format!(
            "role {}, id {}, limited to {}",
            created.info.role,
            created.info.id,
            services.join(", ")
        ),
        None => format!("role {}, id {}", created.info.role, created.info.id),
    };
    audit(&state, &caller, "token.create", &created.info.name, &detail).await;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /api/v1/tokens`.
pub async fn list(
    _: Caller<AdminAccess>,
    State(state): State<AppState>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(blocking(&state.tokens, |tokens| tokens.list()).await?))
}

/// `DELETE /api/v1/tokens/{id}`.
pub async fn revoke(
    caller: Caller<AdminAccess>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let revoked = blocking(&state.tokens, move |tokens| tokens.revoke(&id)).await?;
    tracing::info!(by = %caller.token.name, name = %revoked.name, "token revoked");
    let detail = format!("id {}", revoked.id);
    audit(&state, &caller, "token.revoke", &revoked.name, &detail).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Records a token change in the audit log; the change is made, so a failure to record is logged, not returned.
async fn audit(
    state: &AppState,
    caller: &Caller<AdminAccess>,
    action: &'static str,
    target: &str,
    detail: &str,
) {
    let (actor, target, detail) = (caller.token.clone(), target.to_owned(), detail.to_owned());
    let recorded = blocking(&state.platform, move |platform| {
        platform.record(&Action {
            actor: &actor,
            action,
            target: &target,
            outcome: "ok",
            detail: &detail,
        })
    })
    .await;
    if let Err(error) = recorded {
        tracing::warn!(%error, action, "a token change could not be recorded in the audit log");
    }
}

/// `POST /api/v1/users`: a dashboard user (admin only); 201 with the user, never its password.
pub async fn create_user(
    caller: Caller<AdminAccess>,
    State(state): State<AppState>,
    JsonBody(request): JsonBody<gantry_proto::CreateUserRequest>,
) -> Result<(StatusCode, Json<gantry_proto::UserInfo>), ApiError> {
    let created = blocking(&state.users, move |users| {
        users.create(request.name.trim(), request.role, &request.password)
    })
    .await?;
    tracing::info!(by = %caller.token.name, name = %created.name, role = %created.role, "user created");
    let detail = format!("role {}, id {}", created.role, created.id);
    audit(&state, &caller, "user.create", &created.name, &detail).await;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /api/v1/users`: every dashboard user, by name (admin only).
pub async fn list_users(
    _: Caller<AdminAccess>,
    State(state): State<AppState>,
) -> Result<Json<Vec<gantry_proto::UserInfo>>, ApiError> {
    Ok(Json(blocking(&state.users, |users| users.list()).await?))
}

/// `DELETE /api/v1/users/{name}`: the user and its sessions (admin only; the last admin stays: 409).
pub async fn delete_user(
    caller: Caller<AdminAccess>,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let deleted = blocking(&state.users, move |users| users.delete(&name)).await?;
    tracing::info!(by = %caller.token.name, name = %deleted.name, "user deleted");
    let detail = format!("id {}", deleted.id);
    audit(&state, &caller, "user.delete", &deleted.name, &detail).await;
    Ok(StatusCode::NO_CONTENT)
}

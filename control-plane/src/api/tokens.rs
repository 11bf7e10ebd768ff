//! Token administration: create (the secret is in this one answer), list, revoke. Admin only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gantry_proto::{CreateTokenRequest, CreatedToken, TokenInfo};

use super::{AdminAccess, ApiError, AppState, Caller, JsonBody};

/// `POST /api/v1/tokens`.
pub async fn create(
    caller: Caller<AdminAccess>,
    State(state): State<AppState>,
    JsonBody(request): JsonBody<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let created = state.tokens.create(&request.name, request.role)?;
    tracing::info!(by = %caller.token.name, name = %created.info.name, role = %created.info.role, "token created");
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /api/v1/tokens`.
pub async fn list(
    _: Caller<AdminAccess>,
    State(state): State<AppState>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(state.tokens.list()?))
}

/// `DELETE /api/v1/tokens/{id}`.
pub async fn revoke(
    caller: Caller<AdminAccess>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let revoked = state.tokens.revoke(&id)?;
    tracing::info!(by = %caller.token.name, name = %revoked.name, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

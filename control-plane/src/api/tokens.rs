//! Token administration: create (the secret is in this one answer), list, revoke. Admin only.
//!
//! Each change is a committed (fsynced) write to the state database, so it runs on a blocking thread.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gantry_proto::{CreateTokenRequest, CreatedToken, TokenInfo};

use super::{AdminAccess, ApiError, AppState, Caller, JsonBody};
use crate::state::tokens::{TokenError, TokenStore};

async fn blocking<T: Send + 'static>(
    tokens: &TokenStore,
    work: impl FnOnce(&TokenStore) -> Result<T, TokenError> + Send + 'static,
) -> Result<T, ApiError> {
    let tokens = tokens.clone();
    tokio::task::spawn_blocking(move || work(&tokens))
        .await
        .map_err(|error| ApiError::Internal(format!("token task failed: {error}")))?
        .map_err(ApiError::from)
}

/// `POST /api/v1/tokens`.
pub async fn create(
    caller: Caller<AdminAccess>,
    State(state): State<AppState>,
    JsonBody(request): JsonBody<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let created = blocking(&state.tokens, move |tokens| {
        tokens.create(&request.name, request.role)
    })
    .await?;
    tracing::info!(by = %caller.token.name, name = %created.info.name, role = %created.info.role, "token created");
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
    Ok(StatusCode::NO_CONTENT)
}

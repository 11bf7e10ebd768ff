//! Nodes: agents heartbeat with an `ingest` token (the first heartbeat registers the node); readers list them and
//! look one up by agent id.

use axum::Json;
use axum::extract::{Path, State};
use gantry_proto::{HeartbeatAck, NodeHeartbeat, NodeInfo, NodesResponse, Role};

use super::{ApiError, AppState, Caller, IngestAccess, JsonBody, ReadAccess};
use crate::nodes::{NodeError, Sender};

impl From<NodeError> for ApiError {
    fn from(error: NodeError) -> Self {
        match error {
            // A full registry is not fixed by retrying: the operator has to act, so not a 429 or a 503.
            NodeError::Invalid { .. } | NodeError::Full | NodeError::TokenFull { .. } => {
                ApiError::BadRequest(error.to_string())
            }
            NodeError::TooFrequent { .. } => ApiError::TooManyRequests {
                message: error.to_string(),
                retry_after: std::time::Duration::from_secs(1),
            },
            // Another token's node: the caller is authenticated but may not act on it.
            NodeError::Owned { .. } => ApiError::Conflict(error.to_string()),
            NodeError::State(_) => ApiError::Unavailable {
                message: error.to_string(),
                retry_after: std::time::Duration::from_secs(1),
            },
        }
    }
}

/// `POST /api/v1/nodes/heartbeat`.
///
/// When the heartbeat registered the node or changed its facts, the answer waits for the node to be written to the
/// state database. A failed write is logged and retried with the next heartbeat, and the heartbeat is still
/// acknowledged: the node is registered in memory, and the database only serves restarts.
pub async fn heartbeat(
    caller: Caller<IngestAccess>,
    State(state): State<AppState>,
    JsonBody(heartbeat): JsonBody<NodeHeartbeat>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    let heard = {
        // A token that cannot be checked counts as existing: the node stays with its owner.
        let token_exists = |id: &str| state.tokens.exists(id).unwrap_or(true);
        let sender = Sender {
            token_id: &caller.token.id,
            admin: caller.token.role == Role::Admin,
            token_exists: &token_exists,
        };
        state.nodes.heartbeat(heartbeat, &sender)?
    };
    if heard.unsaved {
        let nodes = state.nodes.clone();
        match tokio::task::spawn_blocking(move || nodes.save_if_changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(error = %error, "node registry not saved; retrying with the next heartbeat");
            }
            Err(error) => {
                tracing::error!(error = %error, "node registry save task failed; retrying with the next heartbeat");
            }
        }
    }
    Ok(Json(HeartbeatAck {
        registered: heard.registered,
    }))
}

/// `GET /api/v1/nodes`.
pub async fn list(
    _: Caller<ReadAccess>,
    State(state): State<AppState>,
) -> Result<Json<NodesResponse>, ApiError> {
    // Copying and sorting many nodes is not for an async worker.
    let nodes = state.nodes.clone();
    let listed = tokio::task::spawn_blocking(move || nodes.list())
        .await
        .map_err(|error| ApiError::Internal(format!("node listing failed: {error}")))?;
    Ok(Json(listed))
}

/// `GET /api/v1/nodes/{agent_id}`.
pub async fn by_id(
    _: Caller<ReadAccess>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    state.nodes.get(&agent_id).map(Json).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no node with agent id `{agent_id}`: GET /api/v1/nodes lists the known nodes"
        ))
    })
}

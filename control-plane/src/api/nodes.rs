//! Nodes: agents heartbeat with a `node` token (or an `ingest` one, for a node that only ships telemetry; the first
//! heartbeat registers the node); readers list them and look one up by agent id; an agent long-polls its node's
//! assignments and reports its instances.

use axum::Json;
use axum::extract::{Path, State};
use gantry_proto::instances::{
    Assignments, AssignmentsQuery, Endpoint, InstanceReport, ServiceRoute,
};
use gantry_proto::{HeartbeatAck, NodeHeartbeat, NodeInfo, NodesResponse, Role};

use super::{ApiError, AppState, Caller, IngestAccess, JsonBody, NodeAccess, Params, ReadAccess};
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
    let mut listed = listed;
    listed.drained = super::blocking(&state.platform, |platform| platform.drained())
        .await?
        .into_iter()
        .collect();
    Ok(Json(listed))
}

/// `POST /api/v1/nodes/{agent_id}/drain`: its instances move elsewhere (each replacement healthy before the old one
/// stops) and it takes no new ones, until `activate`. 204.
pub async fn drain(
    caller: Caller<super::DeployAccess>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    set_drained(caller, state, agent_id, true).await
}

/// `POST /api/v1/nodes/{agent_id}/activate`: the node takes instances again. 204.
pub async fn activate(
    caller: Caller<super::DeployAccess>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    set_drained(caller, state, agent_id, false).await
}

async fn set_drained(
    caller: Caller<super::DeployAccess>,
    state: AppState,
    agent_id: String,
    drained: bool,
) -> Result<axum::http::StatusCode, ApiError> {
    if state.nodes.get(&agent_id).is_none() {
        return Err(ApiError::NotFound(format!(
            "no node `{agent_id}`: `gantry nodes` lists them"
        )));
    }
    let by = caller.token.clone();
    super::blocking(&state.platform, move |platform| {
        platform.drain(&agent_id, drained, &by)
    })
    .await?;
    super::platform::replan(&state).await;
    Ok(axum::http::StatusCode::NO_CONTENT)
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

/// The caller's own node: 404 for an unknown one (heartbeat first), 403 for another token's (unless admin).
fn own_node(
    state: &AppState,
    caller: &gantry_proto::TokenInfo,
    agent_id: &str,
) -> Result<(), ApiError> {
    let Some(owner) = state.nodes.owner(agent_id) else {
        return Err(ApiError::NotFound(format!(
            "no node `{agent_id}`: an agent heartbeats before it asks for work"
        )));
    };
    if owner != caller.id && caller.role != Role::Admin {
        return Err(ApiError::Auth(crate::auth::AuthError::Forbidden {
            role: caller.role,
        }));
    }
    Ok(())
}

/// `GET /api/v1/nodes/{agent_id}/assignments`: what the node should run and where routed services' ready instances
/// are. A long poll: with the `generation` of its last answer and `wait_ms`, the answer waits for a change.
pub async fn assignments(
    caller: Caller<NodeAccess>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    Params(query): Params<AssignmentsQuery>,
) -> Result<Json<Assignments>, ApiError> {
    own_node(&state, &caller.token, &agent_id)?;
    let seen = query.generation.unwrap_or(0);
    let generation = if seen == state.instances.generation() {
        let wait = std::time::Duration::from_millis(query.wait_ms.unwrap_or(0));
        state.instances.wait_for_change(seen, wait).await
    } else {
        state.instances.generation()
    };
    let node = agent_id.clone();
    let work =
        super::blocking(&state.platform, move |platform| platform.assignments(&node)).await?;
    let ready = state.instances.ready();
    // Start order: an instance not started yet waits until every service it depends on has a ready instance.
    let ready_services: std::collections::HashSet<&str> = work
        .placed
        .iter()
        .filter(|(_, id)| ready.contains_key(id))
        .map(|(service, _)| service.as_str())
        .collect();
    let instances =
        work.assignments
            .into_iter()
            .filter(|assignment| {
                let started = state
                    .instances
                    .state(&agent_id, &assignment.instance_id)
                    .is_some();
                started
                    || work.depends_on.get(&assignment.service).is_none_or(|deps| {
                        deps.iter().all(|dep| ready_services.contains(dep.as_str()))
                    })
            })
            .collect();
    let routed = work.routed;
    let routes = routed
        .into_iter()
        .map(|service| ServiceRoute {
            endpoints: service
                .instances
                .iter()
                .filter_map(|(id, version)| {
                    ready.get(id).map(|(_, address)| Endpoint {
                        instance_id: id.clone(),
                        version: version.clone(),
                        address: address.clone(),
                    })
                })
                .collect(),
            service: service.service,
            port: service.port,
            weights: service.weights,
            sticky: service.sticky,
            mirror: service.mirror,
        })
        .collect();
    Ok(Json(Assignments {
        generation,
        instances,
        routes,
    }))
}

/// `POST /api/v1/nodes/{agent_id}/instances`: the node's instances as they are (the whole set). 204.
pub async fn report_instances(
    caller: Caller<NodeAccess>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    JsonBody(report): JsonBody<InstanceReport>,
) -> Result<axum::http::StatusCode, ApiError> {
    own_node(&state, &caller.token, &agent_id)?;
    if report.instances.len() > 10_000 {
        return Err(ApiError::BadRequest(
            "at most 10000 instances per report".to_owned(),
        ));
    }
    if state.instances.report(&agent_id, report) {
        // A rollout's new instance may have become healthy.
        state.rollouts.wake();
        // A replacement may have become healthy: the next restart or drain step need not wait for the round.
        let scheduler = state.scheduler.clone();
        tokio::spawn(async move {
            if let Ok(Err(error)) = tokio::task::spawn_blocking(move || scheduler.reconcile()).await
            {
                tracing::warn!(%error, "placement after a report failed; the next round retries");
            }
        });
    }
    Ok(axum::http::StatusCode::NO_CONTENT)
}

//! `GET /nodes`: every agent with its status, last heartbeat, facts, instances, shipping rate and buffer backlog;
//! `POST /nodes/{agent_id}/{drain|activate}` for admins.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Form, Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use gantry_proto::platform::InstanceStatus;
use gantry_proto::{Access, NodeInfo};

use super::{CsrfForm, Layout, UiError, Viewer, blocking, format, html};
use crate::api::AppState;

/// One node and what runs on it.
pub struct NodeRow {
    /// The node.
    pub node: NodeInfo,
    /// Drained by an operator.
    pub drained: bool,
    /// Its instances.
    pub instances: Vec<InstanceStatus>,
}

#[derive(Template)]
#[template(path = "nodes.html")]
struct NodesPage {
    layout: Layout,
    rows: Vec<NodeRow>,
}

impl NodesPage {
    fn bytes(&self, n: &u64) -> String {
        format::bytes(*n)
    }
    fn num(&self, n: &f64) -> String {
        format::number(*n)
    }
    fn ago(&self, time: &str) -> String {
        format::ago(time)
    }
}

/// `GET /nodes`.
pub async fn page(viewer: Viewer, State(state): State<AppState>) -> Result<Response, UiError> {
    let slots = blocking(&state.platform, |platform| {
        platform
            .db()
            .read(|c| crate::state::placements::load(c, None))
            .map_err(crate::state::platform::PlatformError::from)
    })
    .await?;
    let mut by_node: HashMap<String, Vec<InstanceStatus>> = HashMap::new();
    for instance in crate::api::platform::instance_statuses(&state, slots) {
        if let Some(node) = instance.node.clone() {
            by_node.entry(node).or_default().push(instance);
        }
    }
    let listing = state.nodes.list();
    let rows = listing
        .nodes
        .into_iter()
        .map(|node| NodeRow {
            drained: listing.drained.contains(&node.facts.agent_id),
            instances: by_node.remove(&node.facts.agent_id).unwrap_or_default(),
            node,
        })
        .collect();
    let page = NodesPage {
        layout: viewer.layout("nodes", "Nodes".into()),
        rows,
    };
    Ok(html(&page))
}

/// `POST /nodes/{agent_id}/{drain|activate}`: admins only.
pub async fn act(
    viewer: Viewer,
    State(state): State<AppState>,
    Path((agent_id, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, UiError> {
    viewer.check(&form.csrf, Access::Admin)?;
    let drained = match action.as_str() {
        "drain" => true,
        "activate" => false,
        other => {
            return Err(UiError::NotFound(format!(
                "no action `{other}`: drain or activate"
            )));
        }
    };
    if state.nodes.get(&agent_id).is_none() {
        return Err(UiError::NotFound(format!("no node `{agent_id}`")));
    }
    let by = viewer.session.actor();
    let node = agent_id.clone();
    blocking(&state.platform, move |platform| {
        platform.drain(&node, drained, &by)
    })
    .await?;
    crate::api::platform::replan(&state).await;
    tracing::info!(user = %viewer.session.user.name, node = %agent_id, %action, "node action from the dashboard");
    Ok(Redirect::to("/nodes").into_response())
}

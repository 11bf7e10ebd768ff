//! The role × route matrix in-process: every route of `app(state)` called through `tower::ServiceExt::oneshot`
//! with no token, an unknown token and a token of each role (axum's `examples/testing`). The end-to-end suite runs
//! the same matrix against the real binary; this one runs in milliseconds and fails on the route that is wrong.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use gantry_proto::{ExportRequest, Role, Signal};
use gantry_store::StoreConfig;
use gantry_store::embedded::EmbeddedStore;
use tower::ServiceExt;

use super::{AppState, app};
use crate::nodes::NodeRegistry;
use crate::state::StateDb;

/// A plane's state over a fresh data directory, with its store ready.
async fn state(dir: &std::path::Path) -> AppState {
    let db = Arc::new(StateDb::open(dir).unwrap());
    let nodes = Arc::new(NodeRegistry::open(db.clone(), 3).unwrap());
    let (store, replayed) = EmbeddedStore::start(dir, StoreConfig::default_embedded());
    replayed.await.unwrap().unwrap();
    AppState::new(store, db, nodes, 1 << 20)
}

/// Who may use a route.
#[derive(Clone, Copy, Debug)]
enum Who {
    Anyone,
    Writers,
    Readers,
    Deployers,
    Nodes,
    Admins,
}

impl Who {
    fn admits(self, role: Role) -> bool {
        match self {
            Who::Anyone => true,
            Who::Writers => matches!(role, Role::Ingest | Role::Node | Role::Admin),
            Who::Readers => matches!(role, Role::Viewer | Role::Deployer | Role::Admin),
            Who::Deployers => matches!(role, Role::Deployer | Role::Admin),
            Who::Nodes => matches!(role, Role::Node | Role::Admin),
            Who::Admins => role == Role::Admin,
        }
    }
}

fn heartbeat() -> serde_json::Value {
    serde_json::json!({
        "facts": {
            "agent_id": "matrix-node", "hostname": "matrix.example", "addresses": [], "cpus": 2,
            "memory_bytes": 1024, "os": "linux", "agent_version": "0.1.0", "labels": {}, "runtimes": []
        },
        "shipping": {
            "sent_records": 0, "sent_bytes": 0, "records_per_sec": 0.0, "bytes_per_sec": 0.0,
            "buffer_bytes": 0, "buffer_max_bytes": 0, "oldest_unshipped_secs": 0.0, "dropped_records": 0
        },
        "interval_ms": 5000
    })
}

/// A request body: content type and bytes.
type RequestBody = Option<(&'static str, Vec<u8>)>;

/// Every route, with a body where it takes one, and who may use it.
fn routes() -> Vec<(Method, String, RequestBody, Who)> {
    let json =
        |value: serde_json::Value| Some(("application/json", value.to_string().into_bytes()));
    let otlp = |signal| {
        Some((
            "application/x-protobuf",
            ExportRequest::empty(signal).encode_to_vec(),
        ))
    };
    let get = |path: &str, who| (Method::GET, path.to_owned(), None, who);
    vec![
        get("/healthz", Who::Anyone),
        get("/readyz", Who::Anyone),
        get("/metrics", Who::Readers),
        get("/api/v1/logs?q=x", Who::Readers),
        get("/api/v1/logs/histogram", Who::Readers),
        get("/api/v1/traces", Who::Readers),
        get(
            "/api/v1/traces/5b8efff798038103d269b633813fc60c",
            Who::Readers,
        ),
        get("/api/v1/services", Who::Readers),
        get("/api/v1/metrics?name=x", Who::Readers),
        get("/api/v1/nodes", Who::Readers),
        get("/api/v1/nodes/nobody", Who::Readers),
        get("/api/v1/services/nothing/revisions", Who::Readers),
        get("/api/v1/secrets", Who::Readers),
        get("/api/v1/audit", Who::Readers),
        (
            Method::POST,
            "/api/v1/apply".into(),
            json(serde_json::json!({"file": "m.yaml", "content": "services: {}", "dry_run": true})),
            Who::Deployers,
        ),
        (
            Method::PUT,
            "/api/v1/secrets/matrix".into(),
            json(serde_json::json!({"value": "v"})),
            Who::Deployers,
        ),
        (
            Method::DELETE,
            "/api/v1/secrets/no-such-secret".into(),
            None,
            Who::Deployers,
        ),
        get("/api/v1/nodes/nobody/assignments", Who::Nodes),
        (
            Method::POST,
            "/api/v1/services/nothing/scale".into(),
            json(serde_json::json!({"replicas": 2})),
            Who::Deployers,
        ),
        (
            Method::POST,
            "/api/v1/services/nothing/restart".into(),
            None,
            Who::Deployers,
        ),
        (
            Method::POST,
            "/api/v1/nodes/nobody/drain".into(),
            None,
            Who::Deployers,
        ),
        (
            Method::POST,
            "/api/v1/nodes/nobody/activate".into(),
            None,
            Who::Deployers,
        ),
        (
            Method::POST,
            "/api/v1/services/nothing/stop".into(),
            None,
            Who::Deployers,
        ),
        (
            Method::POST,
            "/api/v1/services/nothing/start".into(),
            None,
            Who::Deployers,
        ),
        (
            Method::POST,
            "/api/v1/nodes/nobody/instances".into(),
            json(serde_json::json!({"instances": []})),
            Who::Nodes,
        ),
        get("/api/v1/tokens", Who::Admins),
        (
            Method::POST,
            "/api/v1/tokens".into(),
            json(serde_json::json!({"name": "made-in-matrix", "role": "viewer"})),
            Who::Admins,
        ),
        (
            Method::DELETE,
            "/api/v1/tokens/no-such-token".into(),
            None,
            Who::Admins,
        ),
        (
            Method::POST,
            gantry_proto::HEARTBEAT_PATH.into(),
            json(heartbeat()),
            Who::Writers,
        ),
        (
            Method::POST,
            "/v1/logs".into(),
            otlp(Signal::Logs),
            Who::Writers,
        ),
        (
            Method::POST,
            "/v1/traces".into(),
            otlp(Signal::Traces),
            Who::Writers,
        ),
        (
            Method::POST,
            "/v1/metrics".into(),
            otlp(Signal::Metrics),
            Who::Writers,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_route_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path()).await;
    let mut callers: Vec<(String, Option<String>, Option<Role>)> = vec![
        ("no token".into(), None, None),
        (
            "unknown token".into(),
            Some(format!("Bearer gty_{}", "0".repeat(48))),
            None,
        ),
        ("not bearer".into(), Some("Basic dXNlcjpwYXNz".into()), None),
    ];
    for role in Role::ALL {
        let created = state
            .tokens
            .create(&format!("matrix-{role}"), role)
            .unwrap();
        callers.push((
            role.to_string(),
            Some(format!("bearer {}", created.token)),
            Some(role),
        ));
    }
    let mut wrong = Vec::new();
    for (method, path, body, who) in routes() {
        for (label, authorization, role) in &callers {
            let mut request = Request::builder().method(method.clone()).uri(&path);
            if let Some(value) = authorization {
                request = request.header(header::AUTHORIZATION, value);
            }
            let request = match &body {
                Some((content_type, bytes)) => request
                    .header(header::CONTENT_TYPE, *content_type)
                    .body(Body::from(bytes.clone())),
                None => request.body(Body::empty()),
            }
            .unwrap();
            let status = app(state.clone()).oneshot(request).await.unwrap().status();
            let allowed = match (who, role) {
                (Who::Anyone, _) => true,
                (_, Some(role)) => who.admits(*role),
                (_, None) => false,
            };
            let right = if allowed {
                status != StatusCode::UNAUTHORIZED
                    && status != StatusCode::FORBIDDEN
                    && !status.is_server_error()
            } else if role.is_some() {
                status == StatusCode::FORBIDDEN
            } else {
                status == StatusCode::UNAUTHORIZED
            };
            if !right {
                wrong.push(format!("{method} {path} as {label}: {status}"));
            }
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    state.store.shutdown().await;
}

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
        get("/api/v1/red", Who::Readers),
        get("/api/v1/service-map", Who::Readers),
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
        get("/api/v1/deployments?service=nothing", Who::Readers),
        get("/api/v1/deployments/1", Who::Readers),
        get("/api/v1/deployments/1/events", Who::Readers),
        (
            Method::POST,
            "/api/v1/deployments".into(),
            json(serde_json::json!({"service": "nothing", "version": "2"})),
            Who::Deployers,
        ),
        (
            Method::POST,
            "/api/v1/deployments/1/pause".into(),
            None,
            Who::Deployers,
        ),
        (
            Method::POST,
            "/api/v1/services/nothing/rollback".into(),
            json(serde_json::json!({})),
            Who::Deployers,
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
        get("/api/v1/users", Who::Admins),
        (
            Method::POST,
            "/api/v1/users".into(),
            json(
                serde_json::json!({"name": "made-in-matrix", "role": "viewer", "password": "a long enough password"}),
            ),
            Who::Admins,
        ),
        (
            Method::DELETE,
            "/api/v1/users/no-such-user".into(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployer_token_limited_to_services_changes_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path()).await;
    let limited = state
        .tokens
        .create_limited("ci-alpha", Role::Deployer, Some(vec!["alpha".to_owned()]))
        .unwrap();
    assert!(
        state
            .tokens
            .create_limited("viewer-alpha", Role::Viewer, Some(vec!["alpha".to_owned()]))
            .is_err(),
        "only deployer tokens are limited to services"
    );
    let call = |method: Method, path: &str, body: serde_json::Value| {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", limited.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let app = app(state.clone());
        async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    let spec = |name: &str| serde_json::json!({"file": "p.yaml", "content": format!("services:\n  {name}:\n    runtime: {{process: {{command: x}}}}\n")});
    let (status, body) = call(Method::POST, "/api/v1/apply", spec("beta")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("may change only alpha"), "{body}");
    let (status, body) = call(Method::POST, "/api/v1/apply", spec("alpha")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let deploy = |service: &str| serde_json::json!({"service": service, "version": "2"});
    let (status, body) = call(Method::POST, "/api/v1/deployments", deploy("beta")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = call(Method::POST, "/api/v1/deployments", deploy("alpha")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = call(
        Method::POST,
        "/api/v1/services/beta/scale",
        serde_json::json!({"replicas": 3}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = call(
        Method::PUT,
        "/api/v1/secrets/shared",
        serde_json::json!({"value": "v"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    state.store.shutdown().await;
}

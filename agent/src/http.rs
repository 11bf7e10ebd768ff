//! The agent's own HTTP endpoints: `/metrics` (Prometheus text) and `/healthz`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::telemetry::Telemetry;

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// Counters and gauges.
    pub telemetry: Arc<Telemetry>,
    /// This agent's id.
    pub agent_id: Arc<str>,
}

/// The router, without a socket (tests call it directly).
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    (
        [(
            header::CONTENT_TYPE,
            gantry_support::metrics::content_type(accept),
        )],
        state.telemetry.render(),
    )
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    Json(json!({
        "status": "ok",
        "agent_id": &*state.agent_id,
        "buffer_bytes": state.telemetry.buffer_bytes(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;

    /// Calls the router once without a socket.
    async fn call(app: Router, req: Request<Body>) -> (u16, String) {
        let resp = tower::ServiceExt::oneshot(app, req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let telemetry = Arc::new(Telemetry::new(&["/x/*.log".to_owned()]));
        telemetry.retries.add(3);
        let state = AppState {
            telemetry,
            agent_id: "abc".into(),
        };
        let (status, body) = call(
            app(state.clone()),
            Request::get("/metrics").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        assert!(body.contains("gantry_agent_retries_total 3"), "{body}");
        let (status, body) = call(
            app(state),
            Request::get("/healthz").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        assert!(body.contains("\"agent_id\":\"abc\""), "{body}");
    }
}

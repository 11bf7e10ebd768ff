//! The plane's own state in SQLite (`DATA_DIR/state.db`): a token made by the CLI while the plane runs works on the
//! very next request (no reload to wait for), and tokens and nodes survive a SIGKILL of the plane.

use std::os::unix::fs::PermissionsExt;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::harness::api::{CT_PROTOBUF, Port};
use crate::harness::otlp::{log_record, logs_request, now_nanos};
use crate::harness::process::{Plane, create_token};
use crate::harness::unique;

fn heartbeat(agent_id: &str) -> Value {
    json!({
        "facts": {
            "agent_id": agent_id, "hostname": "kill.example", "addresses": ["10.0.0.9"], "cpus": 2,
            "memory_bytes": 4_294_967_296_u64, "os": "linux", "agent_version": "0.1.0",
            "labels": {"zone": "eu-1"}, "runtimes": ["process"]
        },
        "shipping": {
            "sent_records": 0, "sent_bytes": 0, "records_per_sec": 0.0, "bytes_per_sec": 0.0,
            "buffer_bytes": 0, "buffer_max_bytes": 0, "oldest_unshipped_secs": 0.0, "dropped_records": 0
        },
        "interval_ms": 1000
    })
}

async fn ingest_status(plane: &Plane, token: &str) -> Result<u16> {
    let body = prost::Message::encode_to_vec(&logs_request(
        "state",
        vec![log_record("state", now_nanos(), vec![])],
    ));
    let response = plane
        .post_otlp(Port::OtlpHttp, "/v1/logs", CT_PROTOBUF, body, token, &[])
        .await?;
    Ok(response.status().as_u16())
}

#[tokio::test]
async fn cli_tokens_work_at_once_and_state_survives_sigkill() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // The data directory does not exist yet: the first step of the README creates it.
    let dir = tmp.path().join("data");
    let viewer = create_token(&dir, "viewer", "boot-viewer").await?;
    let mut plane = Plane::start(&dir).await?;

    // Each token made while the plane runs is usable on the next request, without waiting.
    let mut tokens = Vec::new();
    for _ in 0..5 {
        let token = create_token(&dir, "ingest", &unique("live-")).await?;
        let status = ingest_status(&plane, &token).await?;
        ensure!(
            status == 200,
            "a token made by the CLI got {status} on its first use"
        );
        tokens.push(token);
    }

    let agent_id = unique("node-");
    let (status, body) = plane
        .api_send(
            reqwest::Method::POST,
            "/api/v1/nodes/heartbeat",
            Some(heartbeat(&agent_id)),
            &tokens[0],
        )
        .await?;
    ensure!(
        status == 200 && body["registered"] == true,
        "heartbeat: {status} {body}"
    );

    plane.kill9()?;
    plane.restart().await?;

    for token in &tokens {
        let status = ingest_status(&plane, token).await?;
        ensure!(
            status == 200,
            "a token lost its power across a SIGKILL: {status}"
        );
    }
    let (status, node) = plane
        .api_get(&format!("/api/v1/nodes/{agent_id}"), &viewer)
        .await?;
    ensure!(
        status == 200,
        "the node is gone after a SIGKILL: {status} {node}"
    );
    ensure!(
        node["facts"]["labels"]["zone"] == "eu-1" && node["facts"]["hostname"] == "kill.example",
        "the node's facts changed: {node}"
    );

    // The state holds token hashes: only the plane's user reads it.
    let mode = |path: &std::path::Path| -> Result<u32> {
        Ok(std::fs::metadata(path)
            .with_context(|| path.display().to_string())?
            .permissions()
            .mode()
            & 0o777)
    };
    ensure!(
        mode(&dir.join("state.db"))? == 0o600,
        "state.db is not 0600"
    );
    Ok(())
}

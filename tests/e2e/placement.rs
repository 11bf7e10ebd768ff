//! Placement in the real plane: nodes that heartbeat (sent here as an agent would) get a service's instances
//! spread across them, constraint labels honoured; a node silent for longer than the grace period has its
//! instances placed elsewhere, and when it returns nothing moves back (the surplus it ran is no longer placed on
//! it); what no node can take is reported with the reason; a node registered with an `ingest` token gets nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::harness::api::wait_until;
use crate::harness::process::{Plane, gantry_cli, start_with_tokens};

const WAIT: Duration = Duration::from_secs(40);

fn heartbeat(agent_id: &str, zone: &str) -> Value {
    json!({
        "facts": {
            "agent_id": agent_id, "hostname": format!("{agent_id}.example"), "addresses": [], "cpus": 4,
            "memory_bytes": 8_589_934_592_u64, "os": "linux", "agent_version": "0.1.0",
            "labels": {"zone": zone}, "runtimes": ["process"]
        },
        "shipping": {
            "sent_records": 0, "sent_bytes": 0, "records_per_sec": 0.0, "bytes_per_sec": 0.0,
            "buffer_bytes": 0, "buffer_max_bytes": 0, "oldest_unshipped_secs": 0.0, "dropped_records": 0
        },
        "interval_ms": 500
    })
}

/// Heartbeats for `agent_id` every 500 ms while `alive` holds.
fn heartbeats(
    plane: &Plane,
    token: &str,
    agent_id: &'static str,
    zone: &'static str,
    alive: Arc<AtomicBool>,
) {
    let (url, token) = (plane.endpoints.http_url(), token.to_owned());
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        loop {
            if alive.load(Ordering::Relaxed) {
                let _ = client
                    .post(format!("{url}/api/v1/nodes/heartbeat"))
                    .bearer_auth(&token)
                    .json(&heartbeat(agent_id, zone))
                    .send()
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

/// Slot index → node of a service (unplaced slots as `-`).
async fn placements(plane: &Plane, token: &str, service: &str) -> Result<BTreeMap<u64, String>> {
    let (status, body) = plane
        .api_get(&format!("/api/v1/services/{service}"), token)
        .await?;
    ensure!(status == 200, "{status} {body}");
    Ok(body["instances"]
        .as_array()
        .context("instances")?
        .iter()
        .map(|i| {
            (
                i["slot"].as_u64().unwrap_or(u64::MAX),
                i["node"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect())
}

async fn apply(plane: &Plane, token: &str, spec: &str) -> Result<()> {
    let (status, body) = plane
        .api_send(
            reqwest::Method::POST,
            "/api/v1/apply",
            Some(json!({"file": "platform.yaml", "content": spec})),
            token,
        )
        .await?;
    ensure!(status == 200, "apply: {status} {body}");
    Ok(())
}

const SPEC: &str = "services:
  api:
    runtime: {process: {command: /bin/true, env: {TOKEN: '${secret:api-token}'}}}
    port: 9300
    replicas: 3
    resources: {cpu: 500m, memory: 64Mi}
  db:
    runtime: {process: {command: /bin/true}}
    replicas: 2
    constraints: {zone: a}
  huge:
    runtime: {process: {command: /bin/true}}
    resources: {cpu: 64}
";

#[tokio::test]
async fn spread_constraints_node_loss_and_return() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (plane, [deployer, node, ingest]) = start_with_tokens(
        &tmp.path().join("data"),
        &[
            "--node-grace-period-ms",
            "1000",
            "--node-down-after-missed-heartbeats",
            "2",
        ],
        &[],
        ["deployer", "node", "ingest"],
    )
    .await?;
    let alive: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::new(AtomicBool::new(true))).collect();
    for (i, (id, zone)) in [("n1", "a"), ("n2", "a"), ("n3", "b")]
        .into_iter()
        .enumerate()
    {
        heartbeats(&plane, &node, id, zone, alive[i].clone());
    }
    // A node registered with an ingest token ships telemetry but is never given instances (they carry secrets).
    heartbeats(
        &plane,
        &ingest,
        "telemetry-only",
        "a",
        Arc::new(AtomicBool::new(true)),
    );
    wait_until(WAIT, "four nodes up", || async {
        let (_, body) = plane.api_get("/api/v1/nodes", &deployer).await?;
        let up = body["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|n| n["status"] == "up").count());
        Ok((up == 4).then_some(()))
    })
    .await?;

    let (status, _) = plane
        .api_send(
            reqwest::Method::PUT,
            "/api/v1/secrets/api-token",
            Some(json!({"value": "the-secret"})),
            &deployer,
        )
        .await?;
    ensure!(status == 201);
    apply(&plane, &deployer, SPEC).await?;
    let api = placements(&plane, &deployer, "api").await?;
    let mut nodes: Vec<&String> = api.values().collect();
    nodes.sort();
    ensure!(
        nodes == ["n1", "n2", "n3"],
        "one api instance per node: {api:?}"
    );
    let db = placements(&plane, &deployer, "db").await?;
    ensure!(
        db.len() == 2 && db.values().all(|n| n == "n1" || n == "n2"),
        "db only in zone a: {db:?}"
    );
    let (_, huge) = plane.api_get("/api/v1/services/huge", &deployer).await?;
    let reason = huge["instances"][0]["reason"].as_str().unwrap_or_default();
    ensure!(
        huge["instances"][0]["state"] == "unplaced" && reason.contains("64000 millicores"),
        "{huge}"
    );

    // n3 goes silent: once down for longer than the grace period, its api instance goes to n1 or n2.
    alive[2].store(false, Ordering::Relaxed);
    let moved = wait_until(WAIT, "n3's instance to move", || async {
        let api = placements(&plane, &deployer, "api").await?;
        Ok((api.len() == 3 && api.values().all(|n| n == "n1" || n == "n2")).then_some(api))
    })
    .await?;

    // n3 returns: nothing moves back to it.
    alive[2].store(true, Ordering::Relaxed);
    wait_until(WAIT, "n3 up again", || async {
        let (_, node) = plane.api_get("/api/v1/nodes/n3", &deployer).await?;
        Ok((node["status"] == "up").then_some(()))
    })
    .await?;
    tokio::time::sleep(gantry_plane_interval() * 2).await;
    ensure!(
        placements(&plane, &deployer, "api").await? == moved,
        "instances moved back to n3"
    );

    // A fourth replica goes where api has the fewest: n3.
    apply(
        &plane,
        &deployer,
        &SPEC.replacen("replicas: 3", "replicas: 4", 1),
    )
    .await?;
    let api = placements(&plane, &deployer, "api").await?;
    ensure!(api.get(&3).map(String::as_str) == Some("n3"), "{api:?}");

    // n3's agent pulls what it should run: its api instance, the secret resolved.
    let (status, work) = plane.api_get("/api/v1/nodes/n3/assignments", &node).await?;
    ensure!(status == 200, "{status} {work}");
    let instances = work["instances"].as_array().context("instances")?;
    ensure!(
        instances.len() == 1 && instances[0]["instance_id"] == "api-3-r1",
        "{work}"
    );
    ensure!(
        instances[0]["process"]["env"]["TOKEN"] == "the-secret",
        "{work}"
    );
    let (status, _) = plane
        .api_get("/api/v1/nodes/n3/assignments", &ingest)
        .await?;
    ensure!(
        status == 403,
        "an ingest token may not pull a node's work: {status}"
    );
    let (status, _) = plane
        .api_get("/api/v1/nodes/telemetry-only/assignments", &deployer)
        .await?;
    ensure!(
        status == 403,
        "a deployer token may not pull a node's work: {status}"
    );

    // A long poll answers when a report makes an instance ready, and the routes then list it.
    let generation = work["generation"].as_u64().context("generation")?;
    let poll_path = format!("/api/v1/nodes/n3/assignments?generation={generation}&wait_ms=20000");
    let poll = plane.api_get(&poll_path, &node);
    let report = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let state = json!({"instances": [{
            "instance_id": "api-3-r1", "phase": "healthy", "pid": 4242, "address": "127.0.0.3:41000",
            "restarts": 1, "last_exit": {"code": 137, "signal": null, "at": "2026-11-29T17:00:00Z"},
            "reason": "", "last_lines": ["boom"], "since": "2026-11-29T17:00:01Z"
        }]});
        plane
            .api_send(
                reqwest::Method::POST,
                "/api/v1/nodes/n3/instances",
                Some(state),
                &node,
            )
            .await
    };
    let ((status, polled), reported) = tokio::join!(async { poll.await.unwrap() }, report);
    ensure!(reported?.0 == 204);
    ensure!(
        status == 200 && polled["generation"].as_u64() > Some(generation),
        "{polled}"
    );
    let route = polled["routes"]
        .as_array()
        .and_then(|routes| routes.iter().find(|r| r["service"] == "api"))
        .context("api route")?;
    ensure!(
        route["port"] == 9300
            && route["endpoints"]
                == json!([{"instance_id": "api-3-r1", "version": "r1", "address": "127.0.0.3:41000"}]),
        "{route}"
    );

    let url = plane.endpoints.http_url();
    let out = gantry_cli(&["status", "api", "--plane", &url, "--token", &deployer]).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success()
            && stdout.contains("4/4 placed")
            && stdout.contains("n3.example")
            && stdout.contains("healthy")
            && stdout.contains("last exit: exit code 137"),
        "{stdout}"
    );
    Ok(())
}

/// The plane's placement round interval (`scheduler::INTERVAL`).
fn gantry_plane_interval() -> Duration {
    Duration::from_secs(5)
}

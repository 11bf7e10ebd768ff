//! The node registry end to end: heartbeats sent as an agent sends them (ingest token) register nodes that readers
//! list with their facts and shipping figures; a silent node turns down and a heartbeat brings it back; the registry
//! survives restarts; bad heartbeats get a 400 naming the field.

use anyhow::{Context, Result, ensure};
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::api::{CT_JSON, Port, SEARCH_TIMEOUT, json_response, wait_until};
use crate::harness::process::{Plane, create_token, revoke_token, start_with_tokens};
use crate::harness::unique;

const HEARTBEAT: &str = "/api/v1/nodes/heartbeat";

/// Settings of every plane here: a node is down after 2 missed heartbeats; info logs on stderr.
const ENV: [(&str, &str); 2] = [
    ("GANTRY_NODE_DOWN_AFTER_MISSED_HEARTBEATS", "2"),
    ("RUST_LOG", "info"),
];

/// A heartbeat body as an agent sends it.
fn heartbeat(agent_id: &str, hostname: &str, interval_ms: u64) -> Value {
    json!({
        "facts": {
            "agent_id": agent_id,
            "hostname": hostname,
            "addresses": ["10.1.2.3", "fd00::7"],
            "cpus": 4,
            "memory_bytes": 8_589_934_592_u64,
            "os": "linux 6.1.0 (Debian GNU/Linux 12)",
            "agent_version": "0.1.0",
            "labels": {"zone": "eu-1", "role": "web"},
            "runtimes": ["process", "docker"]
        },
        "shipping": {
            "sent_records": 1500,
            "sent_bytes": 64_000,
            "records_per_sec": 25.5,
            "bytes_per_sec": 1024.0,
            "buffer_bytes": 4096,
            "buffer_max_bytes": 268_435_456,
            "oldest_unshipped_secs": 0.5,
            "dropped_records": 2
        },
        "interval_ms": interval_ms
    })
}

async fn send(plane: &Plane, token: &str, body: &Value) -> Result<(u16, Value)> {
    plane
        .api_send(Method::POST, HEARTBEAT, Some(body.clone()), token)
        .await
}

/// Sends a heartbeat that must be accepted; returns `registered` from the ack.
async fn beat(plane: &Plane, token: &str, body: &Value) -> Result<bool> {
    let (status, ack) = send(plane, token, body).await?;
    ensure!(status == 200, "POST {HEARTBEAT} -> {status}: {ack}");
    ack["registered"]
        .as_bool()
        .with_context(|| format!("the ack has no boolean `registered`: {ack}"))
}

/// `GET /api/v1/nodes`, required to answer 200; returns the node array.
async fn list(plane: &Plane, token: &str) -> Result<Vec<Value>> {
    let (status, body) = plane.api_get("/api/v1/nodes", token).await?;
    ensure!(status == 200, "GET /api/v1/nodes -> {status}: {body}");
    body["nodes"]
        .as_array()
        .cloned()
        .with_context(|| format!("GET /api/v1/nodes has no nodes array: {body}"))
}

/// The listed node with this agent id.
async fn listed(plane: &Plane, token: &str, agent_id: &str) -> Result<Value> {
    let nodes = list(plane, token).await?;
    nodes
        .iter()
        .find(|node| node["facts"]["agent_id"] == json!(agent_id))
        .cloned()
        .with_context(|| format!("node {agent_id} is not listed: {nodes:?}"))
}

/// Waits until the node's listed status is `status`.
async fn wait_status(plane: &Plane, token: &str, agent_id: &str, status: &str) -> Result<Value> {
    wait_until(
        SEARCH_TIMEOUT,
        &format!("node {agent_id} to be {status}"),
        || async {
            let node = listed(plane, token, agent_id).await?;
            Ok((node["status"] == json!(status)).then_some(node))
        },
    )
    .await
}

/// Waits until the plane's stderr has a line holding every one of `parts`.
async fn wait_log(plane: &Plane, parts: &[&str]) -> Result<()> {
    wait_until(
        SEARCH_TIMEOUT,
        &format!("a plane log line with {parts:?}"),
        || async {
            let text = std::fs::read_to_string(&plane.stderr_path)?;
            Ok(text
                .lines()
                .any(|line| parts.iter().all(|part| line.contains(part)))
                .then_some(()))
        },
    )
    .await
    .with_context(|| plane.stderr_tail(20))
}

fn is_rfc3339(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|text| chrono::DateTime::parse_from_rfc3339(text).is_ok())
}

/// Heartbeats register (then refresh) nodes; readers see them up with the facts and shipping figures sent; the
/// routes check roles.
#[tokio::test]
async fn heartbeats_register_nodes_that_readers_list() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (plane, [ingest, viewer, deployer, admin]) = start_with_tokens(
        &tmp.path().join("data"),
        &[],
        &ENV,
        ["ingest", "viewer", "deployer", "admin"],
    )
    .await?;
    let web = unique("web-");
    // A long interval: the node stays up however slow the machine running the test is.
    let sent = heartbeat(&web, "web-2.eu1.example", 60_000);
    ensure!(
        beat(&plane, &ingest, &sent).await?,
        "the first heartbeat registers"
    );
    ensure!(
        !beat(&plane, &ingest, &sent).await?,
        "the second heartbeat does not register again"
    );
    wait_log(&plane, &["node registered", &web]).await?;

    let node = listed(&plane, &viewer, &web).await?;
    ensure!(
        node["status"] == "up",
        "a node that heartbeats is up: {node}"
    );
    ensure!(node["facts"] == sent["facts"], "facts as sent: {node}");
    ensure!(
        node["shipping"] == sent["shipping"],
        "shipping as sent: {node}"
    );
    ensure!(node["interval_ms"] == 60_000, "interval as sent: {node}");
    ensure!(
        is_rfc3339(&node["registered"]) && is_rfc3339(&node["last_seen"]),
        "registered and last_seen are RFC 3339: {node}"
    );

    let (status, one) = plane
        .api_get(&format!("/api/v1/nodes/{web}"), &deployer)
        .await?;
    ensure!(status == 200, "GET /api/v1/nodes/{web} -> {status}: {one}");
    ensure!(
        one["facts"] == sent["facts"] && one["status"] == "up",
        "{one}"
    );
    let (status, missing) = plane.api_get("/api/v1/nodes/no-such-node", &viewer).await?;
    ensure!(
        status == 404
            && missing["error"]
                .as_str()
                .is_some_and(|e| e.contains("no-such-node")),
        "an unknown node -> 404 naming it, got {status}: {missing}"
    );

    // An admin may heartbeat too; the list is by host name, then agent id.
    let db = unique("db-");
    ensure!(beat(&plane, &admin, &heartbeat(&db, "db-1.eu1.example", 60_000)).await?);
    let hosts: Vec<Value> = list(&plane, &viewer)
        .await?
        .iter()
        .map(|node| node["facts"]["hostname"].clone())
        .collect();
    ensure!(
        hosts == [json!("db-1.eu1.example"), json!("web-2.eu1.example")],
        "nodes by host name: {hosts:?}"
    );

    // Roles: readers may not heartbeat, agents may not read, and nobody without a token.
    for (who, token) in [("viewer", &viewer), ("deployer", &deployer)] {
        let (status, body) = send(&plane, token, &sent).await?;
        ensure!(status == 403, "a {who} heartbeat -> {status}: {body}");
    }
    let (status, body) = send(&plane, "", &sent).await?;
    ensure!(
        status == 401,
        "a heartbeat without a token -> {status}: {body}"
    );
    for path in ["/api/v1/nodes".to_owned(), format!("/api/v1/nodes/{web}")] {
        let (status, body) = plane.api_get(&path, &ingest).await?;
        ensure!(
            status == 403,
            "GET {path} with an ingest token -> {status}: {body}"
        );
    }
    Ok(())
}

/// With `interval_ms` 200 and 2 missed heartbeats allowed, a node that stops heartbeating turns down (logged once)
/// and the next heartbeat brings it back up.
#[tokio::test]
async fn a_silent_node_turns_down_and_a_heartbeat_brings_it_up() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (plane, [ingest, viewer]) =
        start_with_tokens(&tmp.path().join("data"), &[], &ENV, ["ingest", "viewer"]).await?;
    let id = unique("flaky-");
    let fast = heartbeat(&id, "flaky.eu1.example", 200);
    // Heartbeating at its own pace, the node is up (each try sends one, so a slow machine only takes more tries).
    wait_until(SEARCH_TIMEOUT, "the heartbeating node to be up", || async {
        beat(&plane, &ingest, &fast).await?;
        let node = listed(&plane, &viewer, &id).await?;
        Ok((node["status"] == "up").then_some(()))
    })
    .await?;

    // Silence.
    let down = wait_status(&plane, &viewer, &id, "down").await?;
    ensure!(
        down["facts"] == fast["facts"],
        "a down node keeps its facts: {down}"
    );
    wait_log(&plane, &["node down", &id]).await?;

    // One heartbeat, announcing a long interval so that the node stays up while we look.
    ensure!(
        !beat(
            &plane,
            &ingest,
            &heartbeat(&id, "flaky.eu1.example", 60_000)
        )
        .await?,
        "a node that was down is known: not registered again"
    );
    let node = listed(&plane, &viewer, &id).await?;
    ensure!(
        node["status"] == "up",
        "a heartbeat brings the node up: {node}"
    );
    wait_log(&plane, &["node back up", &id]).await?;
    let text = std::fs::read_to_string(&plane.stderr_path)?;
    let downs = text
        .lines()
        .filter(|line| line.contains("node down") && line.contains(&id))
        .count();
    ensure!(downs == 1, "`node down` is logged once, got {downs}");
    Ok(())
}

/// Nodes and their facts survive restarts: after a SIGKILL as of their registration, after a SIGTERM with their last
/// heartbeat. Loaded nodes are down until they heartbeat again, which does not register them again.
#[tokio::test]
async fn the_registry_survives_restarts() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (mut plane, [ingest, viewer]) =
        start_with_tokens(&tmp.path().join("data"), &[], &ENV, ["ingest", "viewer"]).await?;
    let (a, b) = (unique("keep-a-"), unique("keep-b-"));
    let first_a = heartbeat(&a, "keep-a.eu1.example", 60_000);
    let first_b = heartbeat(&b, "keep-b.eu1.example", 60_000);
    beat(&plane, &ingest, &first_a).await?;
    beat(&plane, &ingest, &first_b).await?;
    let before = listed(&plane, &viewer, &a).await?;

    plane.restart().await?; // SIGKILL
    for (id, sent) in [(&a, &first_a), (&b, &first_b)] {
        let node = listed(&plane, &viewer, id).await?;
        ensure!(
            node["facts"] == sent["facts"],
            "facts after SIGKILL: {node}"
        );
        ensure!(
            node["status"] == "down",
            "a node not heard since the restart is down: {node}"
        );
    }
    ensure!(
        listed(&plane, &viewer, &a).await?["registered"] == before["registered"],
        "the registration time is kept"
    );

    // New facts and figures; a SIGTERM saves the last heartbeat.
    let mut second_a = heartbeat(&a, "keep-a.eu1.example", 60_000);
    second_a["facts"]["labels"]["zone"] = json!("eu-2");
    second_a["shipping"]["sent_records"] = json!(987_654);
    ensure!(
        !beat(&plane, &ingest, &second_a).await?,
        "a loaded node is known: not registered again"
    );
    let sent_at = listed(&plane, &viewer, &a).await?;
    ensure!(
        sent_at["status"] == "up",
        "a heartbeat brings a loaded node up: {sent_at}"
    );
    let status = plane.terminate().await?;
    ensure!(status.success(), "SIGTERM -> {status}");
    plane.restart().await?;
    let node = listed(&plane, &viewer, &a).await?;
    ensure!(
        node["facts"] == second_a["facts"] && node["shipping"] == second_a["shipping"],
        "the last heartbeat after SIGTERM: {node}"
    );
    ensure!(
        node["last_seen"] == sent_at["last_seen"],
        "last_seen is kept by a clean stop: {node} vs {sent_at}"
    );
    ensure!(
        listed(&plane, &viewer, &b).await?["facts"] == first_b["facts"],
        "the other node is kept"
    );
    Ok(())
}

/// Every out-of-bounds field gets a 400 whose message names it, and nothing is registered.
#[tokio::test]
async fn bad_heartbeats_get_400_naming_the_field() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (plane, [ingest, viewer]) =
        start_with_tokens(&tmp.path().join("data"), &[], &ENV, ["ingest", "viewer"]).await?;
    let good = heartbeat("good-node", "good.eu1.example", 5_000);
    let many_labels: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    // (JSON pointer to the field, bad value); the error must name the pointer's last segment.
    let cases = [
        ("/facts/agent_id", json!("")),
        ("/facts/agent_id", json!("a/b")),
        ("/facts/agent_id", json!("x".repeat(65))),
        ("/facts/hostname", json!("")),
        ("/facts/hostname", json!("h".repeat(256))),
        ("/facts/labels", json!(many_labels)),
        ("/facts/addresses", json!(vec!["10.0.0.1"; 1001])),
        ("/interval_ms", json!(99)),
        ("/interval_ms", json!(600_001)),
        ("/interval_ms", json!("soon")),
    ];
    let mut failures = Vec::new();
    let mut check = |field: &str, bad: Value, (status, body): (u16, Value)| {
        let named = body["error"].as_str().is_some_and(|e| e.contains(field));
        if status != 400 || !named {
            failures.push(format!("{field} in {bad}: {status} {body}"));
        }
    };
    for (pointer, value) in cases {
        let mut bad = good.clone();
        *bad.pointer_mut(pointer)
            .context("a field of the heartbeat")? = value.clone();
        let field = pointer.rsplit('/').next().unwrap_or(pointer);
        check(field, value, send(&plane, &ingest, &bad).await?);
    }
    for missing in ["facts", "interval_ms"] {
        let mut bad = good.clone();
        bad.as_object_mut().context("an object")?.remove(missing);
        check(missing, Value::Null, send(&plane, &ingest, &bad).await?);
    }
    ensure!(
        failures.is_empty(),
        "bad heartbeats must get 400 naming the field:\n{}",
        failures.join("\n")
    );

    // Not JSON, and not declared JSON.
    let url = plane.url(Port::Http, HEARTBEAT);
    let response = plane
        .client
        .post(&url)
        .bearer_auth(&ingest)
        .header("Content-Type", CT_JSON)
        .body("{\"facts\": ")
        .send()
        .await?;
    let (status, body) = json_response(response).await?;
    ensure!(
        status == 400 && body["error"].is_string(),
        "truncated JSON -> {status}: {body}"
    );
    let response = plane
        .client
        .post(&url)
        .bearer_auth(&ingest)
        .body(serde_json::to_vec(&good)?)
        .send()
        .await?;
    let (status, body) = json_response(response).await?;
    ensure!(
        status == 400
            && body["error"]
                .as_str()
                .is_some_and(|e| e.contains("Content-Type")),
        "no Content-Type -> {status}: {body}"
    );
    // The token is checked before the body.
    let (status, body) = send(&plane, "", &json!({"nonsense": true})).await?;
    ensure!(
        status == 401,
        "a bad heartbeat without a token -> {status}: {body}"
    );

    let nodes = list(&plane, &viewer).await?;
    ensure!(
        nodes.is_empty(),
        "refused heartbeats register nothing: {nodes:?}"
    );
    Ok(())
}

/// An agent id belongs to the token that registered it: another ingest token (every app holds one) gets 409 and the
/// node's facts stay; once the first token is revoked, the node moves to the next token that heartbeats for it.
#[tokio::test]
async fn an_agent_id_belongs_to_the_token_that_registered_it() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let (plane, [viewer]) = start_with_tokens(&data, &[], &ENV, ["viewer"]).await?;
    let agent = create_token(&data, "ingest", "node-agent").await?;
    let app = create_token(&data, "ingest", "some-app").await?;
    plane.wait_token_known(&agent).await?;
    plane.wait_token_known(&app).await?;
    let id = unique("owned-");
    ensure!(beat(&plane, &agent, &heartbeat(&id, "real-host", 60_000)).await?);

    let (status, body) = send(&plane, &app, &heartbeat(&id, "spoofed-host", 60_000)).await?;
    ensure!(
        status == 409
            && body["error"]
                .as_str()
                .is_some_and(|e| e.contains(&id) && e.contains("another token")),
        "a heartbeat for another token's node -> {status}: {body}"
    );
    let node = listed(&plane, &viewer, &id).await?;
    ensure!(node["facts"]["hostname"] == "real-host", "{node}");

    revoke_token(&data, "node-agent").await?;
    wait_until(
        SEARCH_TIMEOUT,
        "the node to move to the new token",
        || async {
            let (status, _) = send(&plane, &app, &heartbeat(&id, "moved-host", 60_000)).await?;
            Ok((status == 200).then_some(()))
        },
    )
    .await?;
    let node = listed(&plane, &viewer, &id).await?;
    ensure!(node["facts"]["hostname"] == "moved-host", "{node}");
    Ok(())
}

/// Writes follow what changed, and what one token may do is bounded: a token registers at most
/// `max_nodes_per_token` nodes, a node beating faster than its interval allows gets 429 with `Retry-After`, labels
/// are capped in size, and 50 label flips on a node grow the state database by little.
#[tokio::test]
async fn registrations_and_heartbeats_are_bounded() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    let (plane, [ingest, admin]) = start_with_tokens(
        &dir,
        &["--max-nodes-per-token", "20"],
        &ENV,
        ["ingest", "admin"],
    )
    .await?;
    // Fresh agent ids from one token: 20 register, the rest are refused with the setting named.
    for i in 0..25 {
        let (status, body) = send(
            &plane,
            &ingest,
            &heartbeat(&format!("fresh-{i}"), "h", 5000),
        )
        .await?;
        if i < 20 {
            ensure!(status == 200, "node {i}: {status} {body}");
        } else {
            ensure!(
                status == 400
                    && body["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("max_nodes_per_token")),
                "node {i} past the cap: {status} {body}"
            );
        }
    }
    // An admin token is not bound by it.
    let (status, body) = send(&plane, &admin, &heartbeat("admin-node", "h", 5000)).await?;
    ensure!(status == 200, "admin: {status} {body}");

    // A flood of heartbeats for one node: past a burst, 429 with Retry-After.
    let mut refused = 0;
    for _ in 0..30 {
        let response = plane
            .client
            .post(plane.url(Port::Http, HEARTBEAT))
            .bearer_auth(&ingest)
            .header("content-type", CT_JSON)
            .body(heartbeat("fresh-0", "h", 5000).to_string())
            .send()
            .await?;
        if response.status() == 429 {
            ensure!(
                response.headers().get("retry-after").is_some(),
                "a 429 without Retry-After"
            );
            refused += 1;
        }
    }
    ensure!(
        refused > 0,
        "30 heartbeats at once for one node were all accepted"
    );

    // Labels are capped in size.
    let mut big = heartbeat("fresh-1", "h", 5000);
    for i in 0..40 {
        big["facts"]["labels"][format!("k{i}")] = json!("v".repeat(1000));
    }
    let (status, body) = send(&plane, &ingest, &big).await?;
    ensure!(
        status == 400
            && body["error"]
                .as_str()
                .is_some_and(|e| e.contains("facts.labels")),
        "oversized labels: {status} {body}"
    );

    // 50 label flips on one node (paced as an agent with a 100 ms interval may send them) write that node's row
    // each time, not the registry: the database stays small.
    let size = || -> Result<u64> {
        let mut total = 0;
        for name in ["state.db", "state.db-wal"] {
            total += std::fs::metadata(dir.join(name))
                .map(|m| m.len())
                .unwrap_or(0);
        }
        Ok(total)
    };
    let before = size()?;
    for flip in 0..50 {
        // fresh-2 is one of the token's 20 nodes.
        let mut body = heartbeat("fresh-2", "h", 100);
        body["facts"]["labels"]["flip"] = json!(flip.to_string());
        let mut answered = 0;
        while answered != 200 {
            let (status, reply) = send(&plane, &ingest, &body).await?;
            ensure!(
                status == 200 || status == 429,
                "flip {flip}: {status} {reply}"
            );
            answered = status;
            if status == 429 {
                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            }
        }
    }
    let grown = size()?.saturating_sub(before);
    ensure!(
        grown < 4 << 20,
        "50 label flips grew the state database by {grown} bytes"
    );
    Ok(())
}

//! The agent registers its node with the real plane and heartbeats; the node turns down when the agent dies and
//! comes back up under the same agent id.

use anyhow::{Result, ensure};

use super::{
    DELIVERY_TIMEOUT, append, host_name, log_dir, mem_total_bytes, numbered, wait_for_at_least,
};
use crate::harness::api::wait_until;
use crate::harness::process::{Agent, start_with_tokens};
use crate::harness::unique;

/// The agent registers its node with the plane and heartbeats: the node list shows its facts, its labels and its
/// shipping figures; SIGKILLed, it turns down; restarted, it is up again under the same agent id.
#[tokio::test]
async fn agent_registers_its_node_and_heartbeats() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (plane, [ingest, viewer]) = start_with_tokens(
        &tmp.path().join("data"),
        &[],
        &[("GANTRY_NODE_DOWN_AFTER_MISSED_HEARTBEATS", "2")],
        ["ingest", "viewer"],
    )
    .await?;
    let (logs, glob) = log_dir(tmp.path())?;
    let run = unique("node");
    append(&logs.join("a.log"), &numbered(&run, "n", 0..10))?;
    let config = tmp.path().join("agent.toml");
    std::fs::write(
        &config,
        "heartbeat_interval_ms = 200\n[labels]\nzone = \"eu-1\"\n",
    )?;
    let config = config.display().to_string();
    let mut args: Vec<&str> = Agent::QUIET.to_vec();
    args.extend(["--config", &config, "--label", "rack=r7"]);
    let mut agent = Agent::start_with(
        &tmp.path().join("agent"),
        &format!("http://{}", plane.endpoints.http),
        &ingest,
        &[glob],
        &args,
    )
    .await?;
    let agent_id = std::fs::read_to_string(tmp.path().join("agent/agent-id"))?
        .trim()
        .to_owned();
    wait_for_at_least(&plane, &viewer, &run, 10).await?;
    let node_path = format!("/api/v1/nodes/{agent_id}");
    let node = wait_until(
        DELIVERY_TIMEOUT,
        "the node up with its shipped records",
        || async {
            let (status, node) = plane.api_get(&node_path, &viewer).await?;
            Ok((status == 200
                && node["status"] == "up"
                && node["shipping"]["sent_records"].as_u64() >= Some(10))
            .then_some(node))
        },
    )
    .await?;
    let facts = &node["facts"];
    ensure!(facts["hostname"] == host_name()?, "{node}");
    ensure!(
        facts["labels"]["zone"] == "eu-1" && facts["labels"]["rack"] == "r7",
        "{node}"
    );
    ensure!(facts["cpus"].as_u64() >= Some(1), "{node}");
    ensure!(
        facts["memory_bytes"].as_u64() == Some(mem_total_bytes()?),
        "{node}"
    );
    ensure!(
        facts["os"]
            .as_str()
            .is_some_and(|os| os.starts_with("linux ")),
        "{node}"
    );
    ensure!(node["interval_ms"] == 200, "{node}");
    ensure!(
        node["shipping"]["buffer_max_bytes"].as_u64() > Some(0),
        "{node}"
    );

    agent.kill9()?;
    wait_until(DELIVERY_TIMEOUT, "the node to turn down", || async {
        let (_, list) = plane.api_get("/api/v1/nodes", &viewer).await?;
        Ok(list["nodes"]
            .as_array()
            .is_some_and(|nodes| {
                nodes
                    .iter()
                    .any(|n| n["facts"]["agent_id"] == agent_id.as_str() && n["status"] == "down")
            })
            .then_some(()))
    })
    .await?;
    agent.spawn().await?;
    wait_until(DELIVERY_TIMEOUT, "the node up again", || async {
        let (_, list) = plane.api_get("/api/v1/nodes", &viewer).await?;
        let nodes = list["nodes"].as_array().cloned().unwrap_or_default();
        Ok((nodes.len() == 1
            && nodes[0]["facts"]["agent_id"] == agent_id.as_str()
            && nodes[0]["status"] == "up")
            .then_some(()))
    })
    .await?;
    Ok(())
}

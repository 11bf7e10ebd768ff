//! A real node lost and back: two agents (127.0.0.2 and .3) run a service's two instances, one each. The first
//! agent stops (its instance keeps running: agents leave instances be); once its node has been down for longer than
//! the grace period, the plane places the slot on the other node, whose agent starts it. When the first agent
//! returns, it is no longer assigned the instance, and stops the one it left running: the surplus.

use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::harness::api::wait_until;
use crate::harness::process::start_with_tokens;
use crate::harness::unique;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_lost_nodes_instances_move_and_its_surplus_stops_when_it_returns() -> Result<()> {
    let suffix = unique("")
        .replace(|c: char| !c.is_ascii_alphanumeric(), "")
        .to_ascii_lowercase();
    let service = format!("moved{suffix}");
    let tmp = tempfile::tempdir()?;
    let (plane, [deployer, node]) = start_with_tokens(
        &tmp.path().join("data"),
        &[
            "--node-grace-period-ms",
            "1500",
            "--node-down-after-missed-heartbeats",
            "2",
        ],
        &[],
        ["deployer", "node"],
    )
    .await?;
    let mut agents = super::start_nodes_with(&plane, &node, &deployer, tmp.path(), 2, true).await?;
    let spec = format!(
        "services:\n  {service}:\n    runtime: {{process: {{command: /bin/sh, args: [-c, 'sleep 600']}}}}\n    replicas: 2\n    kill_timeout: 1s\n"
    );
    super::apply(&plane, &deployer, &spec).await?;
    let placed = |instances: &[serde_json::Value]| -> Vec<(String, String)> {
        instances
            .iter()
            .filter(|i| i["actual"]["phase"] == "healthy")
            .filter_map(|i| {
                Some((
                    i["instance_id"].as_str()?.to_owned(),
                    i["node"].as_str()?.to_owned(),
                ))
            })
            .collect()
    };
    let before = wait_until(WAIT, "one instance on each node", || async {
        let now = placed(&super::instances(&plane, &deployer, &service).await?);
        let nodes: std::collections::BTreeSet<&String> = now.iter().map(|(_, n)| n).collect();
        Ok((now.len() == 2 && nodes.len() == 2).then_some(now))
    })
    .await?;
    let first_agent_id = std::fs::read_to_string(tmp.path().join("agent2/agent-id"))?
        .trim()
        .to_owned();
    let (lost_instance, _) = before
        .iter()
        .find(|(_, n)| *n == first_agent_id)
        .cloned()
        .context("an instance on the first node")?;
    let pid_of = |instance: &str| -> Option<u32> {
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .find_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
                let wanted = format!("GANTRY_INSTANCE={instance}");
                environ
                    .split(|b| *b == 0)
                    .any(|v| v == wanted.as_bytes())
                    .then_some(pid)
            })
    };
    let left_running = pid_of(&lost_instance).context("the first node's instance runs")?;

    // The first agent stops; its instance keeps running; past the grace period the slot runs on the second node.
    agents[0].terminate().await?;
    ensure!(
        pid_of(&lost_instance) == Some(left_running),
        "an agent that stops leaves its instances running"
    );
    let second_agent_id = std::fs::read_to_string(tmp.path().join("agent3/agent-id"))?
        .trim()
        .to_owned();
    wait_until(WAIT, "both instances on the second node", || async {
        let now = placed(&super::instances(&plane, &deployer, &service).await?);
        Ok((now.len() == 2 && now.iter().all(|(_, n)| *n == second_agent_id)).then_some(()))
    })
    .await?;

    // The first agent returns: the instance it left running is no longer its own, and stops.
    agents[0].spawn().await?;
    let still_running = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|e| {
            e.split(|b| *b == 0)
                .any(|v| v == format!("GANTRY_INSTANCE={lost_instance}").as_bytes())
        })
    };
    wait_until(WAIT, "the surplus instance stopped", || async {
        Ok((!still_running(left_running)).then_some(()))
    })
    .await
    .with_context(|| agents[0].stderr())?;
    let now = placed(&super::instances(&plane, &deployer, &service).await?);
    ensure!(
        now.len() == 2 && now.iter().all(|(_, n)| *n == second_agent_id),
        "nothing moved back: {now:?}"
    );
    for agent in &mut agents {
        agent.terminate().await?;
    }
    Ok(())
}

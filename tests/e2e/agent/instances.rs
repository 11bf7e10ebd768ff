//! The process runtime end to end: the real plane places a service on a real agent (`node` token), which starts
//! the instances in sessions of their own with their environment and port, checks their health, restarts one
//! killed with SIGKILL, keeps them running across a SIGKILL of the agent and re-adopts them without duplicates,
//! restarts one that died while it was away, keeps running through a SIGKILL of the plane, ships their output tagged
//! with service and instance, and stops a removed instance with everything it started.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::harness::api::wait_until;
use crate::harness::process::{Agent, Plane, start_with_tokens};
use crate::harness::unique;

const WAIT: Duration = Duration::from_secs(60);

/// Pids of the processes whose environment holds `GANTRY_INSTANCE=<prefix>...`.
pub(super) fn instance_processes(prefix: &str) -> BTreeMap<u32, String> {
    let wanted = format!("GANTRY_INSTANCE={prefix}");
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if zombie {
            continue;
        }
        for var in environ.split(|b| *b == 0) {
            if let Some(rest) = var.strip_prefix(b"GANTRY_INSTANCE=")
                && var.starts_with(wanted.as_bytes())
            {
                found.insert(pid, String::from_utf8_lossy(rest).into_owned());
            }
        }
    }
    found
}

/// Kills what a failed test left running.
pub(super) struct Cleanup(pub(super) String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in instance_processes(&self.0).keys() {
            // SAFETY: kill(2) on a pid this test's services started.
            unsafe {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// Each instance's reported state (`actual`) of a service, by instance id.
async fn actual(plane: &Plane, token: &str, service: &str) -> Result<BTreeMap<String, Value>> {
    Ok(super::instances(plane, token, service)
        .await?
        .iter()
        .filter(|i| !i["actual"].is_null())
        .map(|i| {
            (
                i["instance_id"].as_str().unwrap_or("").to_owned(),
                i["actual"].clone(),
            )
        })
        .collect())
}

/// Waits until every one of `n` instances of `service` is healthy; returns their pids by instance id.
async fn healthy(
    plane: &Plane,
    token: &str,
    service: &str,
    n: usize,
) -> Result<BTreeMap<String, u64>> {
    wait_until(
        WAIT,
        &format!("{n} healthy {service} instances"),
        || async {
            let states = actual(plane, token, service).await?;
            let pids: BTreeMap<String, u64> = states
                .iter()
                .filter(|(_, s)| s["phase"] == "healthy")
                .filter_map(|(id, s)| Some((id.clone(), s["pid"].as_u64()?)))
                .collect();
            Ok((pids.len() == n && states.len() == n).then_some(pids))
        },
    )
    .await
}

use super::apply;

fn spec(web: &str, sleeper: &str, sleepers: u32) -> String {
    format!(
        "services:
  {web}:
    runtime:
      process:
        command: python3
        args: [-m, http.server, '${{PORT}}', --bind, '${{GANTRY_HOST}}']
        env: {{GREETING: '${{secret:greeting}}'}}
    replicas: 2
    health: {{http: {{path: /}}, interval: 500ms, timeout: 400ms}}
    kill_timeout: 2s
  {sleeper}:
    runtime: {{process: {{command: /bin/sh, args: [-c, 'sleep 600 & wait']}}}}
    replicas: {sleepers}
    kill_timeout: 1s
"
    )
}

fn environ(pid: u64) -> BTreeMap<String, String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|var| {
            let text = String::from_utf8_lossy(var);
            let (key, value) = text.split_once('=')?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

fn alive(pid: u64) -> bool {
    instance_processes("").contains_key(&(pid as u32))
}

#[tokio::test]
async fn instances_run_restart_survive_the_agent_and_stop_with_their_group() -> Result<()> {
    let suffix = unique("")
        .replace(|c: char| !c.is_ascii_alphanumeric(), "")
        .to_ascii_lowercase();
    let (web, sleeper) = (format!("web{suffix}"), format!("sleeper{suffix}"));
    let _cleanup = (Cleanup(format!("{web}-")), Cleanup(format!("{sleeper}-")));
    let tmp = tempfile::tempdir()?;
    // A fixed API address, so that the agent finds the plane again after it restarts.
    let api = format!("127.0.0.1:{}", crate::harness::process::free_port()?);
    let (mut plane, [deployer, node]) = start_with_tokens(
        &tmp.path().join("data"),
        &["--http-addr", &api],
        &[],
        ["deployer", "node"],
    )
    .await?;
    let mut args: Vec<&str> = Agent::QUIET.to_vec();
    args.extend(["--heartbeat-interval-ms", "500"]);
    let mut agent = Agent::start_with(
        &tmp.path().join("agent"),
        &plane.endpoints.http_url(),
        &node,
        &[],
        &args,
    )
    .await?;
    let (status, _) = plane
        .api_send(
            reqwest::Method::PUT,
            "/api/v1/secrets/greeting",
            Some(json!({"value": "hello-secret"})),
            &deployer,
        )
        .await?;
    ensure!(status == 201);
    wait_until(WAIT, "the node to offer the process runtime", || async {
        let (_, nodes) = plane.api_get("/api/v1/nodes", &deployer).await?;
        let ready = nodes["nodes"].as_array().is_some_and(|n| {
            n.iter().any(|n| {
                n["status"] == "up" && n["facts"]["runtimes"].to_string().contains("process")
            })
        });
        Ok(ready.then_some(()))
    })
    .await?;
    apply(&plane, &deployer, &spec(&web, &sleeper, 1)).await?;

    // Started, healthy, with their environment; a request reaches one.
    let pids = healthy(&plane, &deployer, &web, 2)
        .await
        .with_context(|| agent.stderr())?;
    healthy(&plane, &deployer, &sleeper, 1).await?;
    let first = format!("{web}-0-r1");
    let env = environ(pids[&first]);
    ensure!(env.get("GANTRY_INSTANCE") == Some(&first), "{env:?}");
    ensure!(
        env.get("GREETING").map(String::as_str) == Some("hello-secret"),
        "the secret reaches the instance"
    );
    ensure!(
        env.get("GANTRY_SERVICE") == Some(&web)
            && env.get("GANTRY_VERSION").map(String::as_str) == Some("r1")
    );
    ensure!(
        env.get("OTEL_RESOURCE_ATTRIBUTES")
            .is_some_and(|a| a.contains(&format!("service.instance.id={first}"))),
        "{env:?}"
    );
    let states = actual(&plane, &deployer, &web).await?;
    let address = states[&first]["address"]
        .as_str()
        .context("address")?
        .to_owned();
    let response = reqwest::get(format!("http://{address}/")).await?;
    ensure!(response.status() == 200, "{}", response.status());

    // Its output reaches the plane, tagged with its service and instance.
    let query =
        format!("service:{web} AND service.instance.id:{first} AND log.iostream:stderr AND GET");
    wait_until(WAIT, "python's access log lines in the plane", || async {
        let body = plane.search_logs(&deployer, &query, 5).await?;
        Ok(body["hits"]
            .as_array()
            .is_some_and(|h| !h.is_empty())
            .then_some(()))
    })
    .await?;

    // SIGKILL an instance: restarted with backoff, the crash visible.
    // SAFETY: kill(2) on the instance's pid.
    unsafe {
        libc::kill(pids[&first] as i32, libc::SIGKILL);
    }
    let restarted = wait_until(WAIT, "the killed instance to be restarted", || async {
        let state = actual(&plane, &deployer, &web)
            .await?
            .remove(&first)
            .unwrap_or_default();
        let ok = state["phase"] == "healthy"
            && state["restarts"].as_u64() >= Some(1)
            && state["pid"].as_u64().is_some_and(|pid| pid != pids[&first]);
        Ok(ok.then_some(state))
    })
    .await?;
    ensure!(
        restarted["last_exit"]["signal"] == libc::SIGKILL,
        "{restarted}"
    );

    // SIGKILL the agent: the instances keep running; one more dies while it is away.
    let before = healthy(&plane, &deployer, &web, 2).await?;
    agent.kill9()?;
    let second = format!("{web}-1-r1");
    // SAFETY: kill(2) on the instance's pid.
    unsafe {
        libc::kill(before[&second] as i32, libc::SIGKILL);
    }
    ensure!(alive(before[&first]), "an instance died with the agent");
    agent.spawn().await?;
    let after = wait_until(WAIT, "the restarted agent to adopt and restart", || async {
        let pids = healthy(&plane, &deployer, &web, 2).await?;
        Ok((pids[&second] != before[&second]).then_some(pids))
    })
    .await
    .with_context(|| agent.stderr())?;
    ensure!(
        after[&first] == before[&first],
        "the surviving instance was re-adopted, not restarted"
    );
    let running = instance_processes(&format!("{web}-"));
    ensure!(
        running.len() == 2,
        "exactly one process per instance, no duplicates: {running:?}"
    );

    // The plane SIGKILLed and restarted: agents pull again, instances run on untouched, their state comes back.
    plane.restart().await?;
    let again = healthy(&plane, &deployer, &web, 2).await?;
    ensure!(
        again == after,
        "the instances ran on through the plane's restart: {again:?} {after:?}"
    );
    ensure!(
        instance_processes(&format!("{web}-")) == running,
        "no instance started or stopped"
    );

    // Removing the sleeper stops its whole process group, its child included.
    let group = instance_processes(&format!("{sleeper}-"));
    ensure!(group.len() == 2, "the shell and its sleep: {group:?}");
    apply(&plane, &deployer, &spec(&web, &sleeper, 0)).await?;
    wait_until(WAIT, "the sleeper and its child to be gone", || async {
        Ok(instance_processes(&format!("{sleeper}-"))
            .is_empty()
            .then_some(()))
    })
    .await?;

    // Scaling web to nothing stops them; the agent stops cleanly, leaving nothing behind.
    apply(
        &plane,
        &deployer,
        &spec(&web, &sleeper, 0).replace("replicas: 2", "replicas: 0"),
    )
    .await?;
    wait_until(WAIT, "web instances stopped", || async {
        Ok(instance_processes(&format!("{web}-"))
            .is_empty()
            .then_some(()))
    })
    .await?;
    agent.terminate().await?;
    Ok(())
}

//! Service routing across three agents standing for three nodes (service addresses 127.0.0.2, .3 and .4): a
//! request to any node's routed port reaches a healthy instance on any node; a service with no instrumentation gets
//! RED rows from the routers' spans alone; a caller's trace context is continued; a service with no healthy
//! instance answers 503 with a clear body; scaling down and up under steady requests fails none of them; `gantry
//! logs`, `stop` and `start` work and are audited.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::harness::api::wait_until;
use crate::harness::process::{Plane, free_port, gantry_cli, start_with_tokens};
use crate::harness::unique;

const WAIT: Duration = Duration::from_secs(60);

use super::apply;

fn spec(web: &str, port: u16, replicas: u32, down: &str, down_port: u16) -> String {
    format!(
        "services:
  {web}:
    runtime:
      process:
        command: python3
        args: [-m, http.server, '${{PORT}}', --bind, '${{GANTRY_HOST}}']
    replicas: {replicas}
    port: {port}
    routing: {{sticky: {{header: x-user}}}}
    health: {{http: {{path: /}}, interval: 300ms, timeout: 250ms}}
    kill_timeout: 2s
  {down}:
    runtime: {{process: {{command: /bin/sh, args: [-c, 'sleep 600']}}}}
    port: {down_port}
    health: {{command: [/bin/false], interval: 300ms}}
"
    )
}

/// Healthy instances of a service, from the plane.
async fn healthy(plane: &Plane, token: &str, service: &str) -> Result<usize> {
    let instances = super::instances(plane, token, service).await?;
    Ok(instances
        .iter()
        .filter(|i| i["actual"]["phase"] == "healthy")
        .count())
}

#[tokio::test]
async fn routers_balance_trace_and_drain_across_three_nodes() -> Result<()> {
    let suffix = unique("")
        .replace(|c: char| !c.is_ascii_alphanumeric(), "")
        .to_ascii_lowercase();
    let (web, down) = (format!("routed{suffix}"), format!("down{suffix}"));
    let tmp = tempfile::tempdir()?;
    let (plane, [deployer, node]) =
        start_with_tokens(&tmp.path().join("data"), &[], &[], ["deployer", "node"]).await?;
    let mut agents = super::start_nodes(&plane, &node, &deployer, tmp.path(), 3).await?;
    let (port, down_port) = (free_port()?, free_port()?);
    apply(&plane, &deployer, &spec(&web, port, 3, &down, down_port)).await?;
    wait_until(WAIT, "three healthy instances", || async {
        Ok((healthy(&plane, &deployer, &web).await? == 3).then_some(()))
    })
    .await
    .with_context(|| agents[0].stderr())?;

    // Every node routes; requests spread over the three instances.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    wait_until(WAIT, "every router to know the instances", || async {
        for n in 2..=4 {
            let response = client
                .get(format!("http://127.0.0.{n}:{port}/"))
                .send()
                .await?;
            if response.status() != 200 {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;

    // A caller's trace context is continued: the router's span is a child of the caller's.
    let trace = "5b8efff798038103d269b633813fc60c";
    let response = client
        .get(format!("http://127.0.0.2:{port}/"))
        .header("traceparent", format!("00-{trace}-eee19b7ec3c1b174-01"))
        .send()
        .await?;
    ensure!(response.status() == 200);
    let found = plane.wait_for_trace(&deployer, trace, 1).await?;
    let span = &found["spans"][0];
    ensure!(
        span["parent_span_id"] == "eee19b7ec3c1b174" && span["kind"] == "server",
        "the router's span: {found}"
    );
    ensure!(
        span["resource"]["service.name"] == web.as_str()
            && span["attributes"]["gantry.router"] == true,
        "{span}"
    );

    // Stickiness by header: one user's requests land on one instance, whichever node they enter by.
    let mut served = std::collections::BTreeSet::new();
    for n in 0..6u8 {
        let trace = format!("{n:02x}{}", "ab".repeat(15));
        let response = client
            .get(format!("http://127.0.0.{}:{port}/", 2 + n % 3))
            .header("x-user", "alice")
            .header("traceparent", format!("00-{trace}-eee19b7ec3c1b174-01"))
            .send()
            .await?;
        ensure!(response.status() == 200);
        let found = plane.wait_for_trace(&deployer, &trace, 1).await?;
        served.insert(
            found["spans"][0]["resource"]["service.instance.id"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        );
    }
    ensure!(served.len() == 1, "alice's requests went to {served:?}");

    // RED for a service with no instrumentation at all.
    let red = wait_until(WAIT, "RED rows from the routers", || async {
        let (_, services) = plane
            .api_get("/api/v1/services?from=-5m", &deployer)
            .await?;
        let row = services["services"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["service"] == web.as_str()).cloned());
        Ok(row.filter(|r| r["requests"].as_u64() >= Some(4)))
    })
    .await?;
    ensure!(red["version"] == "r1" && red["errors"] == 0, "{red}");

    // No healthy instance: 503 with a body that says so.
    let response = client
        .get(format!("http://127.0.0.3:{down_port}/"))
        .send()
        .await?;
    ensure!(response.status() == 503, "{}", response.status());
    let body = response.text().await?;
    ensure!(
        body.contains("no healthy instance") && body.contains(&down),
        "{body}"
    );

    // Scale down to one under steady requests: none fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed, client) = (stop.clone(), ok.clone(), failed.clone(), client.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            let mut failures: Vec<String> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let url = format!("http://127.0.0.{}:{port}/", 2 + n % 3);
                match client.get(&url).send().await {
                    Ok(response) if response.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(response) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("{url}: {}", response.status()));
                    }
                    Err(error) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("{url}: {error}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failures
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = plane.endpoints.http_url();
    let gantry = |args: Vec<String>| {
        let mut all = args;
        all.extend([
            "--plane".to_owned(),
            url.clone(),
            "--token".to_owned(),
            deployer.clone(),
        ]);
        async move {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            gantry_cli(&args).await
        }
    };
    let out = gantry(vec!["scale".into(), web.clone(), "1".into()]).await?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(WAIT, "two instances gone", || async {
        let (_, body) = plane
            .api_get(&format!("/api/v1/services/{web}"), &deployer)
            .await?;
        let reported = body["instances"]
            .as_array()
            .map_or(0, |i| i.iter().filter(|i| !i["actual"].is_null()).count());
        Ok((reported == 1 && healthy(&plane, &deployer, &web).await? == 1).then_some(()))
    })
    .await?;
    let (_, service) = plane
        .api_get(&format!("/api/v1/services/{web}"), &deployer)
        .await?;
    ensure!(
        service["service"]["revision"] == 1,
        "scaling makes no revision: {service}"
    );
    let out = gantry(vec!["scale".into(), web.clone(), "3".into()]).await?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(WAIT, "three instances again", || async {
        Ok((healthy(&plane, &deployer, &web).await? == 3).then_some(()))
    })
    .await?;

    // A rolling restart under the same load: every instance replaced, each new one healthy before the old one goes.
    let ids = |instances: Vec<serde_json::Value>| -> Vec<(String, String)> {
        instances
            .iter()
            .filter(|i| i["actual"]["phase"] == "healthy" && i["replacement"].is_null())
            .filter_map(|i| {
                Some((
                    i["instance_id"].as_str()?.to_owned(),
                    i["node"].as_str()?.to_owned(),
                ))
            })
            .collect()
    };
    let out = gantry(vec!["restart".into(), web.clone()]).await?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(WAIT, "every instance replaced", || async {
        let now = ids(super::instances(&plane, &deployer, &web).await?);
        Ok((now.len() == 3 && now.iter().all(|(id, _)| id.ends_with("-e1"))).then_some(()))
    })
    .await?;

    // Draining the first node under the same load: its instance moves to the others, new first.
    let first_node = std::fs::read_to_string(tmp.path().join("agent2/agent-id"))?
        .trim()
        .to_owned();
    let out = gantry(vec!["nodes".into(), "drain".into(), first_node.clone()]).await?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(WAIT, "nothing left on the drained node", || async {
        let now = ids(super::instances(&plane, &deployer, &web).await?);
        Ok((now.len() == 3 && now.iter().all(|(_, node)| *node != first_node)).then_some(()))
    })
    .await?;
    let listing = gantry(vec!["nodes".into()]).await?;
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    ensure!(
        listing
            .lines()
            .any(|l| l.starts_with(&first_node) && l.contains("draining")),
        "{listing}"
    );
    ensure!(
        gantry(vec!["nodes".into(), "activate".into(), first_node.clone()])
            .await?
            .status
            .success()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let failures = load.await?;
    ensure!(
        failed.load(Ordering::Relaxed) == 0 && ok.load(Ordering::Relaxed) > 50,
        "{} ok, {} failed: {failures:?}",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );

    // Its output, through `gantry logs`.
    let out = gantry(vec![
        "logs".into(),
        web.clone(),
        "--tail".into(),
        "5".into(),
    ])
    .await?;
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success()
            && lines.contains("GET / HTTP/1.1")
            && lines.contains(&format!("{web}-")),
        "{lines}"
    );

    // Stopped: nothing runs, and the routed port says so; started again: it serves.
    ensure!(
        gantry(vec!["stop".into(), web.clone()])
            .await?
            .status
            .success()
    );
    wait_until(WAIT, "no instance left", || async {
        let response = client
            .get(format!("http://127.0.0.2:{port}/"))
            .send()
            .await?;
        Ok((response.status() == 503).then_some(()))
    })
    .await?;
    ensure!(
        gantry(vec!["start".into(), web.clone()])
            .await?
            .status
            .success()
    );
    wait_until(WAIT, "serving again", || async {
        let response = client
            .get(format!("http://127.0.0.4:{port}/"))
            .send()
            .await?;
        Ok((response.status() == 200).then_some(()))
    })
    .await?;
    let (_, audit) = plane.api_get("/api/v1/audit", &deployer).await?;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    ensure!(
        actions.starts_with(&[
            "start",
            "stop",
            "node.activate",
            "node.drain",
            "restart",
            "scale",
            "scale"
        ]),
        "{actions:?}"
    );
    for agent in &mut agents {
        agent.terminate().await?;
    }
    Ok(())
}

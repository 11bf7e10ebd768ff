//! Rollouts with the real binaries on two nodes, under steady load through the routers: a good canary release rolls
//! through (`gantry deploy --wait` exits 0); a second deploy while one runs is refused (exit 4); a release with 30%
//! errors is failed by the canary judge and rolled back by itself (exit 1, with a decision record naming both
//! versions' error ratios and the time from the canary's first request to its weight at 0); the same settings again
//! are refused without `--force`; a plane SIGKILLed during a canary step resumes it, with no instance started
//! twice or missing and no step repeated or skipped; a release that crash-loops is rolled back for health (exit 5);
//! a rollback by hand is in the history and the audit log.
//!
//! Blue-green on one node: the new version is judged on mirrored requests before the switch (a good one switches,
//! exit 0; one with 30% errors is rolled back by the judge, exit 1, and no live request ever failed), and a deploy
//! with `--queue` waits in line behind the running one, then rolls out with `--wait` following it through.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::instances::{Cleanup, instance_processes};
use crate::harness::api::wait_until;
use crate::harness::process::{Plane, binary, free_port, gantry_cli, start_with_tokens};
use crate::harness::unique;

const WAIT: Duration = Duration::from_secs(90);

fn spec(service: &str, port: u16, gantry: &str, version: &str, first_step: &str) -> String {
    format!(
        "services:
  {service}:
    version: '{version}'
    runtime:
      process:
        command: {gantry}
        args: [demo-service, --role, echo]
        env: {{ERROR_RATE: '0'}}
    replicas: 2
    port: {port}
    health: {{http: {{path: /}}, interval: 300ms, timeout: 250ms}}
    kill_timeout: 2s
    rollout:
      strategy: canary
      min_healthy_time: 500ms
      steps:
        - {{weight: 20, min_requests: 40, min_duration: {first_step}}}
        - {{weight: 50, min_requests: 40, min_duration: 2s}}
      judge: {{max_latency_increase: 50%}}
"
    )
}

/// `gantry ARGS --plane URL --token TOKEN`: (exit code, stdout, stderr).
async fn cli(plane: &Plane, token: &str, args: &[&str]) -> Result<(i32, String, String)> {
    let url = plane.endpoints.http_url();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--plane", &url, "--token", token]);
    let out = gantry_cli(&all).await?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `gantry deploy SERVICE ARGS --wait --timeout 3m` on a task of its own: its output once it ends.
fn waiting_deploy(
    plane: &Plane,
    token: &str,
    service: &str,
    args: &[&str],
) -> tokio::task::JoinHandle<Result<std::process::Output>> {
    let url = plane.endpoints.http_url();
    let mut all: Vec<String> = vec!["deploy".into(), service.to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all.extend(
        [
            "--wait",
            "--timeout",
            "3m",
            "--plane",
            &url,
            "--token",
            token,
        ]
        .map(str::to_owned),
    );
    tokio::spawn(async move {
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        gantry_cli(&all).await
    })
}

/// `gantry deploy SERVICE --version 1.1.0 --set ERROR_RATE=0.3` with `extra` arguments: a bad release.
async fn bad_release(
    plane: &Plane,
    token: &str,
    service: &str,
    extra: &[&str],
) -> Result<(i32, String, String)> {
    let mut args = vec![
        "deploy",
        service,
        "--version",
        "1.1.0",
        "--set",
        "ERROR_RATE=0.3",
    ];
    args.extend(extra);
    cli(plane, token, &args).await
}

/// The versions the running processes of `service` carry (`GANTRY_VERSION`), sorted.
fn running_versions(service: &str) -> Vec<String> {
    let mut versions: Vec<String> = instance_processes(&format!("{service}-"))
        .keys()
        .filter_map(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            environ.split(|b| *b == 0).find_map(|var| {
                var.strip_prefix(b"GANTRY_VERSION=")
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        })
        .collect();
    versions.sort();
    versions
}

/// Waits until the processes of `service` are two of `version` (the old ones drain, then stop).
async fn stable_only(service: &str, version: &str) -> Result<()> {
    wait_until(
        WAIT,
        &format!("two instances of {version} only"),
        || async { Ok((running_versions(service) == [version, version]).then_some(())) },
    )
    .await
    .with_context(|| format!("{:?}", running_versions(service)))
}

async fn deployment(plane: &Plane, token: &str, id: u64) -> Result<Value> {
    let (status, body) = plane
        .api_get(&format!("/api/v1/deployments/{id}"), token)
        .await?;
    ensure!(status == 200, "{status} {body}");
    Ok(body)
}

async fn latest(plane: &Plane, token: &str, service: &str) -> Result<Value> {
    let (status, body) = plane
        .api_get(
            &format!("/api/v1/deployments?service={service}&limit=1"),
            token,
        )
        .await?;
    ensure!(status == 200, "{status} {body}");
    body["deployments"][0]
        .as_object()
        .cloned()
        .map(Value::Object)
        .context("no deployment")
}

#[tokio::test]
async fn canary_rollouts_roll_through_roll_back_and_survive_a_plane_kill() -> Result<()> {
    let suffix = unique("")
        .replace(|c: char| !c.is_ascii_alphanumeric(), "")
        .to_ascii_lowercase();
    let service = format!("pay{suffix}");
    let _cleanup = Cleanup(format!("{service}-"));
    let tmp = tempfile::tempdir()?;
    // A fixed API address, so that agents and the waiting CLI find the plane again after it restarts.
    let api = format!("127.0.0.1:{}", free_port()?);
    let (mut plane, [deployer, node]) = start_with_tokens(
        &tmp.path().join("data"),
        &["--http-addr", &api],
        &[],
        ["deployer", "node"],
    )
    .await?;
    let agents = super::start_nodes_with(&plane, &node, &deployer, tmp.path(), 2, true).await?;
    let port = free_port()?;
    let gantry = binary("GANTRY_BIN", "gantry", "gantry-plane")?;
    let gantry = gantry.display().to_string();
    super::apply(
        &plane,
        &deployer,
        &spec(&service, port, &gantry, "1.0.0", "2s"),
    )
    .await?;
    wait_until(WAIT, "two healthy instances", || async {
        let instances = super::instances(&plane, &deployer, &service).await?;
        Ok(
            (instances.len() == 2 && instances.iter().all(|i| i["actual"]["phase"] == "healthy"))
                .then_some(()),
        )
    })
    .await
    .with_context(|| agents[0].stderr())?;

    // Steady load through both nodes' routers.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, sent) = (stop.clone(), sent.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let url = format!("http://127.0.0.{}:{port}/", 2 + n % 2);
                let _ = client
                    .get(&url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        })
    };

    // A good release rolls through to 100%.
    let (code, out, err) = cli(
        &plane,
        &deployer,
        &["deploy", &service, "--version", "1.0.1", "--wait"],
    )
    .await?;
    ensure!(code == 0, "good release: exit {code}\n{out}\n{err}");
    ensure!(
        out.contains("step 1 of 2") && out.contains("step 2 of 2") && out.contains("succeeded"),
        "{out}"
    );
    stable_only(&service, "1.0.1").await?;

    // A deploy while one runs is refused, naming the running one; an abort rolls it back.
    let (code, out, err) = cli(
        &plane,
        &deployer,
        &["deploy", &service, "--version", "1.0.2"],
    )
    .await?;
    ensure!(code == 0, "{out}{err}");
    let running = latest(&plane, &deployer, &service).await?;
    let (code, _, err) = cli(
        &plane,
        &deployer,
        &["deploy", &service, "--version", "1.0.3", "--wait"],
    )
    .await?;
    ensure!(code == 4, "a second deploy: exit {code}: {err}");
    ensure!(
        err.contains(&format!("deployment {}", running["id"])),
        "names the running one: {err}"
    );
    let (code, out, err) = cli(&plane, &deployer, &["abort", &service]).await?;
    ensure!(code == 0, "abort: {out}{err}");
    let id = running["id"].as_u64().context("id")?;
    wait_until(WAIT, "the aborted deployment rolled back", || async {
        let d = deployment(&plane, &deployer, id).await?;
        Ok((d["status"] == "rolled_back").then_some(()))
    })
    .await?;
    stable_only(&service, "1.0.1").await?;

    // A bad release: the judge fails it and Gantry rolls back by itself.
    let (code, out, err) = bad_release(&plane, &deployer, &service, &["--wait"]).await?;
    ensure!(code == 1, "bad release: exit {code}\n{out}\n{err}");
    ensure!(
        out.contains("errors   stable 1.0.1") && out.contains("canary 1.1.0"),
        "the decision record names both versions' error ratios:\n{out}"
    );
    ensure!(
        out.contains("the canary's first request to its weight at 0"),
        "{out}"
    );
    println!("{out}");
    let bad = latest(&plane, &deployer, &service).await?;
    ensure!(bad["outcome"] == "rolled_back_by_judge", "{bad}");
    ensure!(bad["decisions"][0]["verdict"] == "fail", "{bad}");
    stable_only(&service, "1.0.1").await?;
    let (code, _, err) = bad_release(&plane, &deployer, &service, &[]).await?;
    ensure!(
        code == 4 && err.contains("--force"),
        "the rejected settings again: exit {code}: {err}"
    );

    // The plane SIGKILLed during a canary step resumes it: no instance twice, none missing, no step repeated. A
    // longer first step first (a change of the rollout policy alone starts no instance).
    super::apply(
        &plane,
        &deployer,
        &spec(&service, port, &gantry, "1.0.1", "8s"),
    )
    .await?;
    ensure!(
        latest(&plane, &deployer, &service).await?["to_version"] == "1.1.0",
        "no deployment for a policy change"
    );
    let waiter = waiting_deploy(&plane, &deployer, &service, &["--version", "1.2.0"]);
    wait_until(WAIT, "the canary judged at its first step", || async {
        let d = latest(&plane, &deployer, &service).await?;
        Ok((d["to_version"] == "1.2.0" && d["phase"] == "judging").then_some(()))
    })
    .await?;
    let before = instance_processes(&format!("{service}-"));
    plane.kill9()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        instance_processes(&format!("{service}-")) == before,
        "instances run on while the plane is down"
    );
    plane.restart().await?;
    let out = waiter.await??;
    ensure!(
        out.status.code() == Some(0),
        "the resumed deployment: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let resumed = latest(&plane, &deployer, &service).await?;
    let id = resumed["id"].as_u64().context("id")?;
    let (_, events) = plane
        .api_get(&format!("/api/v1/deployments/{id}/events"), &deployer)
        .await?;
    let steps: Vec<&str> = events["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "weight")
        .filter_map(|e| e["message"].as_str())
        .collect();
    ensure!(
        steps.len() == 2 && steps[0].starts_with("step 1") && steps[1].starts_with("step 2"),
        "{steps:?}"
    );
    wait_until(WAIT, "exactly the two new instances", || async {
        let processes = instance_processes(&format!("{service}-"));
        let distinct: std::collections::BTreeSet<&String> = processes.values().collect();
        Ok((processes.len() == 2
            && distinct.len() == 2
            && running_versions(&service) == ["1.2.0", "1.2.0"])
        .then_some(()))
    })
    .await?;
    for instance in super::instances(&plane, &deployer, &service).await? {
        ensure!(
            instance["actual"]["restarts"] == 0,
            "no instance started twice: {instance}"
        );
    }

    // A release whose instances crash-loop is rolled back for health (exit 5); the stable ones never stopped.
    let (code, out, err) = cli(
        &plane,
        &deployer,
        &[
            "deploy",
            &service,
            "--version",
            "1.3.0",
            "--command",
            "/bin/false",
            "--wait",
        ],
    )
    .await?;
    ensure!(
        code == 5,
        "a crash-looping release: exit {code}\n{out}\n{err}"
    );
    ensure!(err.contains("crash-looping"), "{err}");
    stable_only(&service, "1.2.0").await?;

    // A rollback by hand: a new revision in the history, an entry in the audit log.
    let (code, out, err) = cli(&plane, &deployer, &["rollback", &service, "--wait"]).await?;
    ensure!(code == 0, "rollback: exit {code}\n{out}\n{err}");
    stable_only(&service, "1.0.1").await?;
    let (_, revisions) = plane
        .api_get(&format!("/api/v1/services/{service}/revisions"), &deployer)
        .await?;
    ensure!(
        revisions[0]["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("gantry rollback")),
        "{}",
        revisions[0]
    );
    let (_, audit) = plane
        .api_get(&format!("/api/v1/audit?target={service}"), &deployer)
        .await?;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "rollback",
        "deploy",
        "deployment.verdict",
        "deployment.rollback",
        "deployment.abort",
    ] {
        ensure!(actions.contains(&action), "audit has {action}: {actions:?}");
    }

    stop.store(true, Ordering::Relaxed);
    load.await?;
    ensure!(sent.load(Ordering::Relaxed) > 100);
    drop(agents);
    Ok(())
}

fn blue_green_spec(service: &str, port: u16, gantry: &str) -> String {
    format!(
        "services:
  {service}:
    version: '1.0.0'
    runtime:
      process:
        command: {gantry}
        args: [demo-service, --role, echo]
        env: {{ERROR_RATE: '0'}}
    replicas: 2
    port: {port}
    health: {{http: {{path: /}}, interval: 300ms, timeout: 250ms}}
    kill_timeout: 2s
    rollout:
      strategy: blue-green
      min_healthy_time: 500ms
      preview: {{mirror: 100%, min_requests: 40, min_duration: 2s}}
      scale_down_delay: 1s
      judge: {{max_latency_increase: 50%}}
"
    )
}

#[tokio::test]
async fn blue_green_is_judged_on_mirrored_requests_and_deploys_queue() -> Result<()> {
    let suffix = unique("")
        .replace(|c: char| !c.is_ascii_alphanumeric(), "")
        .to_ascii_lowercase();
    let service = format!("bg{suffix}");
    let _cleanup = Cleanup(format!("{service}-"));
    let tmp = tempfile::tempdir()?;
    let (plane, [deployer, node]) =
        start_with_tokens(&tmp.path().join("data"), &[], &[], ["deployer", "node"]).await?;
    let agents = super::start_nodes(&plane, &node, &deployer, tmp.path(), 1).await?;
    let port = free_port()?;
    let gantry = binary("GANTRY_BIN", "gantry", "gantry-plane")?;
    super::apply(
        &plane,
        &deployer,
        &blue_green_spec(&service, port, &gantry.display().to_string()),
    )
    .await?;
    stable_only(&service, "1.0.0").await?;
    wait_until(WAIT, "two healthy instances", || async {
        let instances = super::instances(&plane, &deployer, &service).await?;
        Ok(
            (instances.len() == 2 && instances.iter().all(|i| i["actual"]["phase"] == "healthy"))
                .then_some(()),
        )
    })
    .await?;

    // Steady GETs through the router; every live answer that is not a 200 is counted.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, failed) = (stop.clone(), failed.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let answer = client
                    .get(format!("http://127.0.0.2:{port}/"))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                if !answer.is_ok_and(|a| a.status().is_success()) {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        })
    };

    // A good release: judged on mirrored requests, then switched.
    let (code, out, err) = cli(
        &plane,
        &deployer,
        &["deploy", &service, "--version", "1.0.1", "--wait"],
    )
    .await?;
    ensure!(
        code == 0,
        "good blue-green release: exit {code}\n{out}\n{err}"
    );
    ensure!(
        out.contains("preview") && out.contains("mirrored requests") && out.contains("switched"),
        "{out}"
    );
    stable_only(&service, "1.0.1").await?;

    // A deploy with --queue waits behind the running one; one without is refused, naming it.
    let (code, out, err) = cli(
        &plane,
        &deployer,
        &["deploy", &service, "--version", "1.0.2"],
    )
    .await?;
    ensure!(code == 0, "{out}{err}");
    let first = latest(&plane, &deployer, &service).await?;
    let waiter = waiting_deploy(
        &plane,
        &deployer,
        &service,
        &["--version", "1.0.3", "--queue"],
    );
    wait_until(WAIT, "the second deployment queued", || async {
        let d = latest(&plane, &deployer, &service).await?;
        Ok((d["to_version"] == "1.0.3" && d["status"] == "queued").then_some(()))
    })
    .await?;
    let (code, _, err) = cli(
        &plane,
        &deployer,
        &["deploy", &service, "--version", "1.0.4"],
    )
    .await?;
    ensure!(
        code == 4 && err.contains(&format!("deployment {}", first["id"])),
        "a third deploy without --queue: exit {code}: {err}"
    );
    // A third in line, cancelled by id before its turn.
    let (code, out, err) = cli(
        &plane,
        &deployer,
        &[
            "deploy",
            &service,
            "--version",
            "1.0.5",
            "--queue",
            "--json",
        ],
    )
    .await?;
    ensure!(code == 0, "{out}{err}");
    let third: Value = serde_json::from_str(out.trim())?;
    ensure!(third["status"] == "queued", "{third}");
    let third_id = third["id"].as_u64().context("id")?.to_string();
    let (code, out, err) = cli(&plane, &deployer, &["abort", &service, "--id", &third_id]).await?;
    ensure!(code == 0, "abort --id: {out}{err}");
    let third = deployment(&plane, &deployer, third_id.parse()?).await?;
    ensure!(
        third["status"] == "cancelled" && third["to_version"] == "1.0.5",
        "{third}"
    );
    let out = waiter.await??;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(0) && text.contains("queued") && text.contains("succeeded"),
        "the queued deployment: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let first = deployment(&plane, &deployer, first["id"].as_u64().context("id")?).await?;
    ensure!(
        first["status"] == "succeeded",
        "the first ran to its end: {first}"
    );
    stable_only(&service, "1.0.3").await?;

    // A bad release: the judge fails it on mirrored requests; no live request saw it.
    let before = failed.load(Ordering::Relaxed);
    let (code, out, err) = bad_release(&plane, &deployer, &service, &["--wait"]).await?;
    ensure!(
        code == 1,
        "bad blue-green release: exit {code}\n{out}\n{err}"
    );
    ensure!(
        out.contains("mirrored requests")
            && out.contains("errors   live 1.0.3")
            && out.contains("new 1.1.0"),
        "the decision record: {out}"
    );
    println!("{out}");
    stable_only(&service, "1.0.3").await?;
    ensure!(
        failed.load(Ordering::Relaxed) == before,
        "a live request failed during the bad preview"
    );
    stop.store(true, Ordering::Relaxed);
    load.await?;
    drop(agents);
    Ok(())
}

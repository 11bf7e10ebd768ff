//! The demo bank (`demo/platform.yaml`, instrumented with the OpenTelemetry Rust SDK) on three nodes: every
//! instance placed, spread and healthy, dependencies started first; RED rows for all four services; and the trace of
//! one gateway request holds spans of all four services and of the routers between them; and the README's bad release
//! of payments is rolled back by the canary judge (exit 1) while a good one rolls through (exit 0).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::harness::api::wait_until;
use crate::harness::process::{binary, repo_root, start_with_tokens};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn the_demo_bank_runs_on_three_nodes_with_red_and_whole_traces() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (plane, [deployer, node]) =
        start_with_tokens(&tmp.path().join("data"), &[], &[], ["deployer", "node"]).await?;
    let mut agents = super::start_nodes(&plane, &node, &deployer, tmp.path(), 3).await?;
    // The demo's own file, with this build's binary and ports of its own.
    let ports: Vec<u16> = (0..4)
        .map(|_| crate::harness::process::free_port())
        .collect::<Result<_>>()?;
    let gantry = binary("GANTRY_BIN", "gantry", "gantry-plane")?;
    let mut content = std::fs::read_to_string(repo_root().join("demo/platform.yaml"))?
        .replace("GANTRY_BINARY", &gantry.display().to_string());
    for (i, port) in ports.iter().enumerate() {
        content = content.replace(&format!("910{}", i + 1), &port.to_string());
    }
    super::apply(&plane, &deployer, &content).await?;

    // Every instance placed, healthy, spread.
    let services = ["gateway", "accounts", "payments", "ledger"];
    let placement = wait_until(WAIT, "every demo instance healthy", || async {
        let mut nodes: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for service in services {
            let instances = super::instances(&plane, &deployer, service).await?;
            if instances.is_empty() || instances.iter().any(|i| i["actual"]["phase"] != "healthy") {
                return Ok(None);
            }
            nodes.insert(
                service,
                instances
                    .iter()
                    .filter_map(|i| i["node"].as_str().map(str::to_owned))
                    .collect(),
            );
        }
        Ok(Some(nodes))
    })
    .await
    .with_context(|| agents[0].stderr())?;
    for (service, nodes) in &placement {
        let distinct: BTreeSet<&String> = nodes.iter().collect();
        ensure!(
            distinct.len() == nodes.len(),
            "{service} spread one per node: {placement:?}"
        );
    }

    // Requests through any node's gateway address; one with a trace of our own.
    let client = reqwest::Client::new();
    for n in 0..30 {
        let url = format!("http://127.0.0.{}:{}/transfer", 2 + n % 3, ports[0]);
        let response = client.get(&url).send().await?;
        ensure!(response.status() == 200, "{url}: {}", response.status());
    }
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = client
        .get(format!("http://127.0.0.3:{}/transfer", ports[0]))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await?;
    ensure!(response.status() == 200);
    let spans = wait_until(WAIT, "the whole trace of one gateway request", || async {
        let (status, body) = plane
            .api_get(&format!("/api/v1/traces/{trace}"), &deployer)
            .await?;
        if status != 200 {
            return Ok(None);
        }
        let spans = body["spans"].as_array().cloned().unwrap_or_default();
        let own: BTreeSet<String> = spans
            .iter()
            .filter(|s| s["attributes"]["gantry.router"].is_null() && s["kind"] == "server")
            .filter_map(|s| s["resource"]["service.name"].as_str().map(str::to_owned))
            .collect();
        let routed: BTreeSet<String> = spans
            .iter()
            .filter(|s| s["attributes"]["gantry.router"] == true)
            .filter_map(|s| s["resource"]["service.name"].as_str().map(str::to_owned))
            .collect();
        Ok((own.len() == 4 && routed.len() == 4).then_some(spans))
    })
    .await?;
    ensure!(
        spans.len() >= 10,
        "router + server spans per service and client spans: {}",
        spans.len()
    );

    // RED rows for all four.
    wait_until(WAIT, "RED rows for the four services", || async {
        let (_, body) = plane
            .api_get("/api/v1/services?from=-10m", &deployer)
            .await?;
        let rows = body["services"].as_array().cloned().unwrap_or_default();
        let all = services.iter().all(|service| {
            rows.iter().any(|r| {
                r["service"] == *service
                    && r["version"] == "1.0.0"
                    && r["requests"].as_u64() > Some(0)
            })
        });
        Ok(all.then_some(()))
    })
    .await?;

    // The bad release, shown (as the README tells): under load, a payments release with 20% errors is failed by the
    // canary judge and rolled back (exit 1, the decision record printed); a good one rolls through (exit 0).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, client, gateway) = (stop.clone(), client.clone(), ports[0]);
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let url = format!("http://127.0.0.{}:{gateway}/transfer", 2 + n % 3);
                let _ = client
                    .get(&url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let url = plane.endpoints.http_url();
    let deploy = |version: &'static str, set: &'static [&'static str]| {
        let (url, deployer) = (url.clone(), deployer.clone());
        async move {
            let mut args = vec![
                "deploy",
                "payments",
                "--version",
                version,
                "--wait",
                "--timeout",
                "3m",
            ];
            args.extend(set.iter().flat_map(|kv| ["--set", kv]));
            args.extend(["--plane", &url, "--token", &deployer]);
            let out = crate::harness::process::gantry_cli(&args).await?;
            Ok::<_, anyhow::Error>((
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    };
    let (code, out, err) = deploy("1.1.0", &["ERROR_RATE=0.2"]).await?;
    ensure!(code == Some(1), "the bad release: {code:?}\n{out}\n{err}");
    ensure!(
        out.contains("stable 1.0.0")
            && out.contains("canary 1.1.0")
            && out.contains("rolling back"),
        "{out}"
    );
    println!("{out}");
    let (code, out, err) = deploy("1.0.1", &[]).await?;
    ensure!(code == Some(0), "the good release: {code:?}\n{out}\n{err}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await?;
    for agent in &mut agents {
        agent.terminate().await?;
    }
    Ok(())
}

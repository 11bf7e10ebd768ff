//! `gantry demo`: a plane and this machine's node agent in one process, a fresh admin token, the demo bank
//! (`demo/platform.yaml`) launched on the node, and a steady load on its gateway.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gantry_plane::config::RawConfig;
use gantry_plane::state::StateDb;
use gantry_plane::state::tokens::TokenStore;
use gantry_proto::Role;
use gantry_support::CancellationToken;

use super::runtime;

/// How long the demo's agent gets to hand what it holds to the plane at Ctrl-C.
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `gantry demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its state.
    #[arg(long, default_value = "gantry-demo-data")]
    data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:8700")]
    http_addr: String,
    /// Requests per second the load generator sends to the demo bank's gateway (0: none).
    #[arg(long, default_value_t = 20.0)]
    load_rate: f64,
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let DemoArgs {
        data_dir,
        http_addr,
        load_rate,
    } = args;
    // The agent takes absolute paths only (its file patterns are matched against absolute paths).
    let data_dir = std::path::absolute(&data_dir).with_context(|| {
        format!(
            "cannot resolve the demo's data directory {}",
            data_dir.display()
        )
    })?;
    let config = RawConfig {
        data_dir: Some(data_dir.clone()),
        http_addr: Some(http_addr),
        otlp_grpc_addr: Some("127.0.0.1:4317".to_owned()),
        otlp_http_addr: Some("127.0.0.1:4318".to_owned()),
        ..RawConfig::default()
    }
    .validate()?;
    let tokens = TokenStore::new(Arc::new(
        StateDb::open(&data_dir).context("cannot open the demo's state database")?,
    ));
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let name = format!("demo-admin-{stamp}");
    let admin = tokens.create(&name, Role::Admin)?;
    let users = gantry_plane::state::users::UserStore::new(tokens.db().clone());
    let password = {
        use rand::RngCore;
        let mut bytes = [0u8; 12];
        rand::rng().fill_bytes(&mut bytes);
        hex::encode(bytes)
    };
    let dashboard_user = format!("admin-{stamp}");
    users.create(&dashboard_user, Role::Admin, &password)?;
    let agent_token = tokens.create(&format!("demo-agent-{stamp}"), Role::Node)?;
    runtime()?.block_on(async {
        let bound = gantry_plane::server::bind_all(&config).await?;
        let endpoints = bound.endpoints.clone();
        let agent_config = gantry_agent::config::RawConfig {
            plane: Some(format!("http://{}", endpoints.http)),
            token: Some(agent_token.token.clone()),
            data_dir: Some(data_dir.join("agent")),
            http_addr: Some("127.0.0.1:8701".to_owned()),
            // Ctrl-C ends the demo and every instance it started.
            stop_instances_on_exit: Some(true),
            ..Default::default()
        }
        .validate()?;
        let agent_otlp_http = agent_config
            .otlp_http_addr
            .context("the demo agent needs its OTLP/HTTP receiver")?;
        let plane_stop = CancellationToken::new();
        let agent_stop = CancellationToken::new();
        let plane = tokio::spawn(gantry_plane::server::serve(
            config,
            bound,
            plane_stop.clone(),
        ));
        let agent = {
            let stop = agent_stop.clone();
            tokio::spawn(async move {
                let result = gantry_agent::run(agent_config, stop).await;
                if let Err(error) = &result {
                    tracing::error!(error = %format!("{error:#}"), "the demo's node agent stopped");
                }
                result
            })
        };
        let base = format!("http://{}", endpoints.http);
        let load_stop = CancellationToken::new();
        let counts = std::sync::Arc::new(gantry_demo::load::Counts::default());
        let launched = launch_bank(&base, &admin.token).await;
        let load = tokio::spawn(gantry_demo::load::run(
            format!("http://127.0.0.1:{GATEWAY_PORT}/transfer"),
            load_rate,
            counts.clone(),
            load_stop.clone().cancelled_owned(),
        ));
        println!();
        println!(
            "Gantry is running (embedded store in {}).",
            data_dir.display()
        );
        println!("  Dashboard:          {base}/   user {dashboard_user}, password {password} (shown once)");
        println!("  HTTP API:           {base}");
        println!(
            "  OTLP/HTTP:          http://{}   (also at {base}/v1/...)",
            endpoints.otlp_http
        );
        println!("  OTLP/gRPC:          {}", endpoints.otlp_grpc);
        println!(
            "  Node agent:         http://127.0.0.1:8701/metrics; local OTLP at 127.0.0.1:4319 (gRPC), http://{agent_otlp_http} (HTTP)"
        );
        println!("  Admin token ({name}), shown once:");
        println!("{}", admin.token);
        match &launched {
            Ok(()) => {
                println!(
                    "  The demo bank (demo/platform.yaml: gateway -> accounts, payments -> ledger) runs on this node,"
                );
                println!(
                    "  with {load_rate} requests/s to http://127.0.0.1:{GATEWAY_PORT}/transfer (--load-rate). Try:"
                );
                println!("    export GANTRY_PLANE={base} GANTRY_TOKEN={}", admin.token);
                println!("    gantry status                 # where each instance runs, and its health");
                println!("    gantry services               # RED per service and version");
                println!("    gantry logs gateway -f");
                println!("    gantry deploy payments --version 1.1.0 --set ERROR_RATE=0.2 --wait   # a bad release: the canary judge rolls it back (exit 1)");
                println!("    gantry deploy payments --version 1.0.1 --wait                        # a good one rolls through (exit 0)");
                println!("    gantry deploy accounts --version 1.0.1 --wait                        # blue-green: judged on mirrored requests, then switched");
                println!("    curl -H \"Authorization: Bearer $GANTRY_TOKEN\" '{base}/api/v1/traces?service=gateway&from=-5m'");
            }
            Err(error) => {
                println!("  The demo bank could not be launched: {error:#}");
                if agent.is_finished() {
                    println!("  (the node agent stopped; its log lines above say why)");
                }
            }
        }
        println!("Press Ctrl-C to stop (every instance the demo started stops with it).");
        println!();
        tokio::select! {
            () = gantry_support::shutdown::termination() => {}
            // The plane stopped on its own (its store failed to start): stop the rest.
            () = plane_stop.cancelled() => {}
        }
        load_stop.cancel();
        let _ = load.await;
        tracing::info!(
            ok = counts.ok.load(std::sync::atomic::Ordering::Relaxed),
            failed = counts.failed.load(std::sync::atomic::Ordering::Relaxed),
            "demo load generator stopped"
        );
        // The agent stops first (and its instances with it), so that what it holds reaches the plane before the plane drains.
        agent_stop.cancel();
        match tokio::time::timeout(AGENT_STOP_TIMEOUT, agent).await {
            Ok(Ok(Err(error))) => tracing::error!(error = %format!("{error:#}"), "the demo's node agent failed"),
            Ok(Err(error)) => tracing::error!(error = %error, "the demo agent task failed"),
            Err(_) => tracing::warn!("the demo agent did not stop within 10 s"),
            Ok(Ok(Ok(()))) => {}
        }
        plane_stop.cancel();
        plane.await.context("the plane task failed")?
    })
}

/// The demo bank's spec; `GANTRY_BINARY` stands for this binary's path.
const PLATFORM: &str = include_str!("../../../demo/platform.yaml");
/// Where `gateway` is routed on the demo's node.
const GATEWAY_PORT: u16 = 9101;

/// Waits for the demo's node to offer the process runtime, then applies the demo bank through the API.
async fn launch_bank(base: &str, token: &str) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find this gantry binary")?;
    let content = PLATFORM.replace("GANTRY_BINARY", &exe.display().to_string());
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let nodes: serde_json::Value = client
            .get(format!("{base}/api/v1/nodes"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        let ready = nodes["nodes"].as_array().is_some_and(|nodes| {
            nodes.iter().any(|n| {
                n["status"] == "up" && n["facts"]["runtimes"].to_string().contains("process")
            })
        });
        if ready {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the demo's node agent did not come up within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let request = gantry_proto::platform::ApplyRequest {
        file: "demo/platform.yaml".to_owned(),
        content,
        dry_run: false,
        force: false,
    };
    let response = client
        .post(format!("{base}/api/v1/apply"))
        .bearer_auth(token)
        .json(&request)
        .send()
        .await?;
    let status = response.status();
    anyhow::ensure!(
        status.is_success(),
        "applying demo/platform.yaml: {status} {}",
        response.text().await.unwrap_or_default()
    );
    // The load starts once the gateway answers, so that the first requests find it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let gateway: serde_json::Value = client
            .get(format!("{base}/api/v1/services/gateway"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        let healthy = gateway["instances"]
            .as_array()
            .is_some_and(|i| i.iter().any(|i| i["actual"]["phase"] == "healthy"));
        if healthy {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the demo bank's gateway did not become healthy within 60 s: `gantry status` tells why"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

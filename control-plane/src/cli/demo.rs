//! `gantry demo`: a plane and this machine's node agent in one process, a fresh admin token, and sample telemetry
//! sent through the agent (app → agent → plane, as on a real node).

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
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let DemoArgs {
        data_dir,
        http_addr,
    } = args;
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
        let agent = tokio::spawn(gantry_agent::run(agent_config, agent_stop.clone()));
        let feeder = tokio::spawn(feed_sample_telemetry(format!("http://{agent_otlp_http}")));
        println!();
        println!(
            "Gantry is running (embedded store in {}).",
            data_dir.display()
        );
        println!("  HTTP API:           http://{}", endpoints.http);
        println!(
            "  OTLP/HTTP:          http://{}   (also at http://{}/v1/...)",
            endpoints.otlp_http, endpoints.http
        );
        println!("  OTLP/gRPC:          {}", endpoints.otlp_grpc);
        println!(
            "  Node agent:         http://127.0.0.1:8701/metrics; local OTLP at 127.0.0.1:4319 (gRPC), http://{agent_otlp_http} (HTTP)"
        );
        println!("  Admin token ({name}), shown once:");
        println!("{}", admin.token);
        println!(
            "  Try:  curl -H 'Authorization: Bearer {}' 'http://{}/api/v1/services?from=-1h'",
            admin.token, endpoints.http
        );
        println!(
            "        curl -H 'Authorization: Bearer {}' 'http://{}/api/v1/nodes'",
            admin.token, endpoints.http
        );
        println!("  Sample logs and traces of 12 generated services go through the agent every second, with this");
        println!("  machine's host metrics (until the demo platform lands).");
        println!("Press Ctrl-C to stop.");
        println!();
        tokio::select! {
            () = gantry_support::shutdown::termination() => {}
            // The plane stopped on its own (its store failed to start): stop the rest.
            () = plane_stop.cancelled() => {}
        }
        feeder.abort();
        // The agent stops first, so that what it holds reaches the plane before the plane drains.
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

/// Sends generated logs and traces over OTLP/HTTP to `base` (the demo's agent), once a second, so there is something
/// to search.
async fn feed_sample_telemetry(base: String) {
    use prost::Message;
    let client = reqwest::Client::new();
    let mut generator = gantry_bench::generate::Generator::new(42, 12);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        let batches = [
            ("logs", generator.logs(40, now).encode_to_vec()),
            ("traces", generator.traces(3, now).encode_to_vec()),
        ];
        for (path, body) in batches {
            let sent = client
                .post(format!("{base}/v1/{path}"))
                .header("content-type", "application/x-protobuf")
                .body(body)
                .send()
                .await;
            if let Err(error) = sent {
                tracing::debug!(error = %error, "demo feeder could not send");
            }
        }
    }
}

//! The `gantry` command: `plane` runs the control plane, `token` manages API tokens, `demo` runs a plane to try.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gantry_plane::auth::TokenStore;
use gantry_plane::config::{Overrides, RawConfig};
use gantry_proto::{CreateTokenRequest, CreatedToken, Role, TokenInfo};

#[derive(Parser)]
#[command(
    name = "gantry",
    version,
    about = "Gantry: run a distributed platform and watch it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: OTLP ingest, the telemetry store and the HTTP API.
    Plane(PlaneArgs),
    /// Create, list or revoke API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Benchmarks: `gantry bench ingest` measures ingest, search and disk use against a plane it starts.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Run a plane on this machine to try Gantry, and print where to reach it with a fresh admin token.
    Demo {
        /// Where the demo keeps its state.
        #[arg(long, default_value = "gantry-demo-data")]
        data_dir: PathBuf,
        /// Address of the HTTP API.
        #[arg(long, default_value = "127.0.0.1:8700")]
        http_addr: String,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// OTLP/HTTP ingest to searchable, query latency, disk per raw byte, against the raw tantivy rate.
    Ingest(gantry_plane::bench::IngestBench),
}

#[derive(Args)]
struct PlaneArgs {
    /// A TOML configuration file; `GANTRY_*` variables override it, flags override both.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where all state lives (default ./gantry-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP API address, host:port (default 0.0.0.0:8700; port 0 picks one).
    #[arg(long)]
    http_addr: Option<String>,
    /// OTLP/gRPC address (default 0.0.0.0:4317).
    #[arg(long)]
    otlp_grpc_addr: Option<String>,
    /// OTLP/HTTP address (default 0.0.0.0:4318).
    #[arg(long)]
    otlp_http_addr: Option<String>,
}

#[derive(Args)]
struct Target {
    /// The plane's data directory (works whether or not the plane runs).
    #[arg(long, conflicts_with = "plane")]
    data_dir: Option<PathBuf>,
    /// A running plane's URL, e.g. http://127.0.0.1:8700 (needs --token of an admin).
    #[arg(long, requires = "token")]
    plane: Option<String>,
    /// An admin token for --plane (or GANTRY_TOKEN).
    #[arg(long, env = "GANTRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it on a line of its own; it is shown this once.
    Create {
        #[command(flatten)]
        target: Target,
        /// ingest, viewer, deployer or admin.
        #[arg(long)]
        role: Role,
        /// A name to recognise it by.
        #[arg(long)]
        name: String,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a token by id or name.
    Revoke {
        #[command(flatten)]
        target: Target,
        /// The token's id or name.
        id: String,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tantivy=warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Plane(args) => {
            init_logging();
            let raw = match &args.config {
                Some(path) => RawConfig::from_file(path)?,
                None => RawConfig::default(),
            };
            let config = raw
                .with_env(std::env::vars())?
                .with_overrides(Overrides {
                    data_dir: args.data_dir,
                    http_addr: args.http_addr,
                    otlp_grpc_addr: args.otlp_grpc_addr,
                    otlp_http_addr: args.otlp_http_addr,
                })
                .validate()?;
            runtime()?.block_on(async {
                let bound = gantry_plane::server::bind_all(&config).await?;
                gantry_plane::server::serve(config, bound, gantry_plane::server::termination())
                    .await
            })
        }
        Command::Token { command } => token(command),
        Command::Bench {
            command: BenchCommand::Ingest(options),
        } => gantry_plane::bench::run_ingest(options),
        Command::Demo {
            data_dir,
            http_addr,
        } => {
            init_logging();
            demo(data_dir, http_addr)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn demo(data_dir: PathBuf, http_addr: String) -> anyhow::Result<()> {
    let config = RawConfig::default()
        .with_overrides(Overrides {
            data_dir: Some(data_dir.clone()),
            http_addr: Some(http_addr),
            otlp_grpc_addr: Some("127.0.0.1:4317".to_owned()),
            otlp_http_addr: Some("127.0.0.1:4318".to_owned()),
        })
        .validate()?;
    std::fs::create_dir_all(&data_dir)?;
    let tokens = TokenStore::open(&data_dir)?;
    let name = format!("demo-admin-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S"));
    let admin = tokens.create(&name, Role::Admin)?;
    let feeder = tokens.create(
        &format!("demo-feeder-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S")),
        Role::Ingest,
    )?;
    runtime()?.block_on(async {
        let bound = gantry_plane::server::bind_all(&config).await?;
        let endpoints = bound.endpoints.clone();
        // The node agent of this machine, in-process: host metrics, Docker containers when a daemon answers, and
        // the local OTLP receiver that the sample feeder sends to (app → agent → plane, as on a real node).
        let agent_config = gantry_agent::config::RawConfig::default()
            .with_overrides(gantry_agent::config::Overrides {
                plane: Some(format!("http://{}", endpoints.http)),
                token: Some(feeder.token.clone()),
                data_dir: Some(data_dir.join("agent")),
                http_addr: Some("127.0.0.1:8701".to_owned()),
                ..Default::default()
            })
            .validate()?;
        let agent_otlp_http = agent_config
            .otlp_http_addr
            .context("the demo agent needs its OTLP/HTTP receiver")?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let (agent_done, agent_finished) = tokio::sync::oneshot::channel::<()>();
        let agent = tokio::spawn(async move {
            let result = gantry_agent::run(agent_config, until_stopped(stopped)).await;
            let _ = agent_done.send(());
            result
        });
        tokio::spawn(feed_sample_telemetry(format!("http://{agent_otlp_http}")));
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
        let signal = tokio::spawn(async move {
            gantry_plane::server::termination().await;
            let _ = stop.send(true);
        });
        // The agent stops first so that what it holds reaches the plane before the plane drains.
        let plane = gantry_plane::server::serve(config, bound, async {
            let _ = agent_finished.await;
        })
        .await;
        // If the plane stopped on its own, dropping the signal task's sender stops the agent too.
        signal.abort();
        let agent_result = tokio::time::timeout(std::time::Duration::from_secs(10), agent).await;
        match agent_result {
            Ok(Ok(Err(error))) => return Err(error.context("the demo's node agent failed")),
            Ok(Err(error)) => tracing::error!(error = %error, "the demo agent task failed"),
            Err(_) => tracing::warn!("the demo agent did not stop within 10 s"),
            Ok(Ok(Ok(()))) => {}
        }
        plane
    })
}

/// Sends generated logs and traces over OTLP/HTTP to `base` (the demo's agent), once a second, so there is something
/// to search.
async fn feed_sample_telemetry(base: String) {
    use prost::Message;
    let client = reqwest::Client::new();
    let mut generator = gantry_plane::bench::generate::Generator::new(42, 12);
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
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

fn token(command: TokenCommand) -> anyhow::Result<()> {
    let (target, action) = match command {
        TokenCommand::Create { target, role, name } => (target, TokenAction::Create(name, role)),
        TokenCommand::List { target } => (target, TokenAction::List),
        TokenCommand::Revoke { target, id } => (target, TokenAction::Revoke(id)),
    };
    match (target.plane, target.data_dir) {
        (Some(plane), _) => remote_token(&plane, target.token.as_deref().unwrap_or(""), action),
        (None, data_dir) => {
            let data_dir = data_dir.unwrap_or_else(|| PathBuf::from("gantry-data"));
            let tokens = TokenStore::open(&data_dir)?;
            match action {
                TokenAction::Create(name, role) => {
                    let created = tokens.create(&name, role)?;
                    eprintln!(
                        "created {} token `{}` (id {}); it is shown this once:",
                        role, name, created.info.id
                    );
                    println!("{}", created.token);
                }
                TokenAction::List => print_tokens(&tokens.list()?),
                TokenAction::Revoke(id) => {
                    let revoked = tokens.revoke(&id)?;
                    eprintln!("revoked token `{}` (id {})", revoked.name, revoked.id);
                }
            }
            Ok(())
        }
    }
}

enum TokenAction {
    Create(String, Role),
    List,
    Revoke(String),
}

fn print_tokens(tokens: &[TokenInfo]) {
    println!("{:<14} {:<24} {:<9} CREATED", "ID", "NAME", "ROLE");
    for token in tokens {
        println!(
            "{:<14} {:<24} {:<9} {}",
            token.id, token.name, token.role, token.created
        );
    }
}

fn remote_token(plane: &str, admin: &str, action: TokenAction) -> anyhow::Result<()> {
    let base = plane.trim_end_matches('/');
    runtime()?.block_on(async {
        let client = reqwest::Client::new();
        let check = |response: reqwest::Response| async move {
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            let body = response.text().await.unwrap_or_default();
            anyhow::bail!("the plane answered {status}: {body}")
        };
        match action {
            TokenAction::Create(name, role) => {
                let response = client
                    .post(format!("{base}/api/v1/tokens"))
                    .bearer_auth(admin)
                    .json(&CreateTokenRequest { name, role })
                    .send()
                    .await
                    .context("cannot reach the plane")?;
                let created: CreatedToken = check(response).await?.json().await?;
                eprintln!(
                    "created {} token `{}` (id {}); it is shown this once:",
                    role, created.info.name, created.info.id
                );
                println!("{}", created.token);
            }
            TokenAction::List => {
                let response = client
                    .get(format!("{base}/api/v1/tokens"))
                    .bearer_auth(admin)
                    .send()
                    .await
                    .context("cannot reach the plane")?;
                let tokens: Vec<TokenInfo> = check(response).await?.json().await?;
                print_tokens(&tokens);
            }
            TokenAction::Revoke(id) => {
                let response = client
                    .delete(format!("{base}/api/v1/tokens/{id}"))
                    .bearer_auth(admin)
                    .send()
                    .await
                    .context("cannot reach the plane")?;
                check(response).await?;
                eprintln!("revoked token `{id}`");
            }
        }
        Ok(())
    })
}

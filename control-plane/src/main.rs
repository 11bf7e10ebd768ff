//! The `gantry` command: `plane` runs the control plane, `token` manages API tokens, `demo` runs a plane and this
//! machine's agent to try Gantry, `bench` measures; `apply`, `services`, `secret` and `audit` talk to a running
//! plane.

mod cli;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use gantry_plane::config::RawConfig;

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
    Plane(Box<PlaneArgs>),
    /// Create, list or revoke API tokens.
    Token {
        #[command(subcommand)]
        command: cli::token::TokenCommand,
    },
    /// Create, list or delete dashboard users (`gantry user create --name NAME --role admin` reads the password
    /// from standard input).
    User {
        #[command(subcommand)]
        command: cli::user::UserCommand,
    },
    /// Benchmarks against a plane they start: `gantry bench ingest` (ingest, search and disk use), `gantry bench
    /// queries` (what expensive queries cost ingest and cheap queries).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Run a plane and this machine's node agent to try Gantry, and print where to reach them with a fresh admin
    /// token.
    Demo(cli::demo::DemoArgs),
    /// One service of the demo bank (what `gantry demo` runs on its node): gateway, accounts, payments or ledger.
    #[command(hide = true)]
    DemoService {
        /// gateway, accounts, payments or ledger.
        #[arg(long)]
        role: gantry_demo::Role,
    },
    /// Plan (`--dry-run`) or apply a platform spec: a new revision for each changed service.
    Apply(cli::platform::ApplyArgs),
    /// The platform's services with their revision and RED, or one service's revisions.
    Services(cli::platform::ServicesArgs),
    /// Each service's revision and where its instances are placed, with what their agents report.
    Status(cli::platform::StatusArgs),
    /// Set a service's desired instances (no new revision).
    Scale(cli::platform::ScaleArgs),
    /// Stop every instance of a service (drained first) until `gantry start`.
    Stop(cli::platform::ServiceArgs),
    /// Run a stopped service's replicas again.
    Start(cli::platform::ServiceArgs),
    /// Replace every instance of a service, a few at a time, each new one healthy before the old one stops.
    Restart(cli::platform::ServiceArgs),
    /// The nodes, or drain one (its instances move elsewhere) or activate it again.
    Nodes(cli::platform::NodesArgs),
    /// A service's log lines, oldest first; `-f` keeps following.
    Logs(cli::platform::LogsArgs),
    /// Set, list or delete the secrets specs reference as `${secret:NAME}`.
    Secret {
        #[command(subcommand)]
        command: cli::platform::SecretCommand,
    },
    /// Who changed what, when, with which outcome.
    Audit(cli::platform::AuditArgs),
    /// Roll out a new version of a service (its rollout policy's strategy, or `--strategy`); `--wait` follows it
    /// and exits 0 succeeded, 1 rolled back by the canary judge, 2 bad usage or auth, 3 timed out waiting (the
    /// rollout goes on) or plane unreachable, 4 refused (another rollout running, invalid change, settings rolled
    /// back before), 5 rolled back for health, progress deadline or by hand, 6 paused waiting for a human.
    Deploy(cli::deploy::DeployArgs),
    /// Roll a service back: abort its rollout under way, or roll out an earlier revision again (fast-tracked).
    Rollback(cli::deploy::RollbackArgs),
    /// Hold a service's rollout where it is.
    Pause(cli::deploy::ControlArgs),
    /// Go on with a paused rollout (an inconclusive step is judged again).
    Resume(cli::deploy::ControlArgs),
    /// Skip a rollout to its next step, or with `--full` to 100%.
    Promote(cli::deploy::ControlArgs),
    /// Stop a rollout and roll back to the stable revision.
    Abort(cli::deploy::ControlArgs),
    /// The deployment history (deploy markers), or one deployment with its decision records (`--id`).
    Deployments(cli::deploy::DeploymentsArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// OTLP/HTTP ingest to searchable, query latency, disk per raw byte, against the raw tantivy rate.
    Ingest(gantry_bench::IngestBench),
    /// A cheap query's and an ingest batch's latency while expensive queries run, with and without the gate.
    Queries(gantry_bench::QueryBench),
    /// A node's service router against a direct connection: added latency per hop, requests/s, agent CPU and RSS.
    Router(gantry_bench::RouterBench),
    /// A rolling rollout's wall time against its inherent time, and how fast a bad canary is caught and cut off.
    Rollout(gantry_bench::RolloutBench),
    /// The canary judge's simulation study: false rollbacks of identical versions, requests to catch regressions.
    Judge,
    /// The dashboard at 2,300 services and 10,000 instances: the overview's and the logs page's time and weight,
    /// beside the API calls that read the same data.
    Dashboard(gantry_bench::DashboardBench),
}

/// `gantry plane`: every setting is a flag, a `GANTRY_*` variable and a key of the TOML file, in that order of
/// precedence.
#[derive(Args)]
struct PlaneArgs {
    /// A TOML configuration file; `GANTRY_*` variables override it, flags override both.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: RawConfig,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cli::remote::exit_code(run(cli.command))
}

/// Runs a command (`deploy` and `rollback` end the process with exit codes of their own).
fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Plane(args) => {
            gantry_support::logging::init(cli::LOG_FILTER);
            let open_files = gantry_support::process::raise_open_files_limit();
            tracing::debug!(open_files, "open-files limit");
            let config = RawConfig::layered(args.config.as_deref(), &args.settings)?.validate()?;
            cli::runtime()?.block_on(async {
                let shutdown = gantry_support::shutdown::cancel_on_termination();
                let bound = gantry_plane::server::bind_all(&config).await?;
                gantry_plane::server::serve(config, bound, shutdown).await
            })
        }
        Command::Token { command } => cli::token::run(command),
        Command::User { command } => cli::user::run(command),
        Command::Bench {
            command: BenchCommand::Ingest(options),
        } => gantry_bench::run_ingest(options),
        Command::Bench {
            command: BenchCommand::Queries(options),
        } => gantry_bench::run_queries(options),
        Command::Bench {
            command: BenchCommand::Router(options),
        } => gantry_bench::run_router(options),
        Command::Bench {
            command: BenchCommand::Rollout(options),
        } => gantry_bench::run_rollout(options),
        Command::Bench {
            command: BenchCommand::Judge,
        } => gantry_bench::run_judge(),
        Command::Bench {
            command: BenchCommand::Dashboard(options),
        } => gantry_bench::run_dashboard(options),
        Command::Demo(args) => {
            gantry_support::logging::init(cli::LOG_FILTER);
            gantry_support::process::raise_open_files_limit();
            cli::demo::run(args)
        }
        Command::DemoService { role } => cli::runtime()?.block_on(gantry_demo::serve(role)),
        Command::Apply(args) => cli::platform::apply(args),
        Command::Services(args) => cli::platform::services(args),
        Command::Status(args) => cli::platform::status(args),
        Command::Scale(args) => cli::platform::scale(args),
        Command::Stop(args) => cli::platform::stop_start(args, true),
        Command::Start(args) => cli::platform::stop_start(args, false),
        Command::Logs(args) => cli::platform::logs(args),
        Command::Restart(args) => cli::platform::restart(args),
        Command::Nodes(args) => cli::platform::nodes(args),
        Command::Secret { command } => cli::platform::secret(command),
        Command::Audit(args) => cli::platform::audit(args),
        Command::Pause(args) => cli::deploy::control("pause", args),
        Command::Resume(args) => cli::deploy::control("resume", args),
        Command::Promote(args) => cli::deploy::control("promote", args),
        Command::Abort(args) => cli::deploy::control("abort", args),
        Command::Deployments(args) => cli::deploy::list(args),
        Command::Deploy(args) => std::process::exit(cli::deploy::deploy(args).into()),
        Command::Rollback(args) => std::process::exit(cli::deploy::rollback(args).into()),
    }
}

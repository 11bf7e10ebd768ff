//! `gantry apply`, `gantry services`, `gantry secret` and `gantry audit`: the platform's desired state, through a
//! running plane's API (see `remote` for `--plane`, `--token`, `--json` and the exit codes).

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use gantry_proto::ServicesResponse;
use gantry_proto::platform::{
    ApplyRequest, ApplyResponse, AuditResponse, Change, Revision, SecretInfo, ServiceStatus,
    SetSecretRequest,
};
use reqwest::Method;

use super::remote::Remote;
use super::runtime;

/// `gantry apply FILE`.
#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The platform spec (YAML); `-` reads standard input.
    file: PathBuf,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Roll out a service's settings even when a rollout of the same settings was rolled back before.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    remote: Remote,
}

/// `gantry services [SERVICE]`.
#[derive(Args, Debug)]
pub struct ServicesArgs {
    /// A service: list its revisions, newest first, with what changed in each.
    service: Option<String>,
    /// The RED window: a duration back from now (`-1h`) or an RFC 3339 time.
    #[arg(long, default_value = "-15m", allow_hyphen_values = true)]
    from: String,
    #[command(flatten)]
    remote: Remote,
}

/// `gantry status [SERVICE]`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// One service; all of them when absent.
    service: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

/// `gantry scale SERVICE N`.
#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// The service.
    service: String,
    /// Desired instances (0 to 1000).
    replicas: u32,
    #[command(flatten)]
    remote: Remote,
}

/// `gantry stop SERVICE` and `gantry start SERVICE`.
#[derive(Args, Debug)]
pub struct ServiceArgs {
    /// The service.
    service: String,
    #[command(flatten)]
    remote: Remote,
}

/// `gantry nodes [drain|activate NODE]`.
#[derive(Args, Debug)]
pub struct NodesArgs {
    #[command(subcommand)]
    command: Option<NodesCommand>,
    #[command(flatten)]
    remote: Remote,
}

/// What `gantry nodes` does to a node.
#[derive(Subcommand, Debug)]
pub enum NodesCommand {
    /// Move a node's instances elsewhere (each replacement healthy before the old one stops); it takes no new ones.
    Drain {
        /// The node's agent id.
        node: String,
    },
    /// Let a drained node take instances again.
    Activate {
        /// The node's agent id.
        node: String,
    },
}

/// `gantry logs SERVICE`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The service.
    service: String,
    /// Keep printing new lines as they arrive.
    #[arg(short, long)]
    follow: bool,
    /// From when: a duration back from now (`-15m`) or an RFC 3339 time.
    #[arg(long, default_value = "-15m", allow_hyphen_values = true)]
    since: String,
    /// At most this many of the latest lines first.
    #[arg(long, default_value_t = 100)]
    tail: usize,
    /// Also a query (`severity:>=warn`, `instance:...`), ANDed with the service.
    #[arg(long, short)]
    query: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

/// `gantry secret ...`.
#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Set a secret from standard input (one trailing newline is dropped), e.g. `printf %s "$PW" | gantry secret
    /// set db-password`. Specs reference it as `${secret:NAME}`.
    Set {
        /// The secret's name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List secrets (names and who set them; never values).
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a secret no current revision uses.
    Delete {
        /// The secret's name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `gantry audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only entries about this file, service, secret or token name.
    #[arg(long)]
    target: Option<String>,
    /// How many entries, newest first.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    #[command(flatten)]
    remote: Remote,
}

/// Runs `gantry apply`.
pub fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let (file, content) = if args.file.as_os_str() == "-" {
        let mut content = String::new();
        std::io::stdin()
            .read_to_string(&mut content)
            .context("cannot read the spec from standard input")?;
        ("<stdin>".to_owned(), content)
    } else {
        let content = std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?;
        (args.file.display().to_string(), content)
    };
    let request = ApplyRequest {
        file,
        content,
        dry_run: args.dry_run,
        force: args.force,
    };
    let response: ApplyResponse = runtime()?.block_on(args.remote.call(
        Method::POST,
        &["api", "v1", "apply"],
        &[],
        Some(&request),
    ))?;
    if args.remote.json {
        return Remote::print_json(&response);
    }
    print!("{}", render_plan(&response));
    Ok(())
}

/// The plan as `nomad job plan` shows one: a line per service, its changed fields under it, and a summary.
pub fn render_plan(response: &ApplyResponse) -> String {
    let mut out = String::new();
    let (mut created, mut updated, mut unchanged) = (0, 0, 0);
    for plan in &response.services {
        let revision = plan.revision.unwrap_or_default();
        let line = match plan.change {
            Change::Create => {
                created += 1;
                format!("+ {}: create, revision {revision}", plan.service)
            }
            Change::Update => {
                updated += 1;
                format!(
                    "~ {}: update, revision {} -> {revision}",
                    plan.service,
                    plan.previous_revision.unwrap_or_default()
                )
            }
            Change::Unchanged => {
                unchanged += 1;
                format!("= {}: unchanged, revision {revision}", plan.service)
            }
            Change::NotInFile => format!(
                "  {}: not in this file, kept at revision {revision}",
                plan.service
            ),
        };
        out.push_str(&line);
        out.push('\n');
        for change in &plan.diff {
            out.push_str(&format!("    {change}\n"));
        }
    }
    out.push_str(&format!(
        "\n{created} to create, {updated} to update, {unchanged} unchanged{}\n",
        if response.dry_run {
            " (dry run: nothing was changed)"
        } else {
            ""
        }
    ));
    out
}

/// Runs `gantry services`.
pub fn services(args: ServicesArgs) -> anyhow::Result<()> {
    let remote = &args.remote;
    runtime()?.block_on(async {
        if let Some(service) = &args.service {
            let revisions: Vec<Revision> = remote
                .call(Method::GET, &["api", "v1", "services", service, "revisions"], &[], None::<&()>)
                .await?;
            if remote.json {
                return Remote::print_json(&revisions);
            }
            for revision in &revisions {
                println!(
                    "revision {}  version {}  by {}  at {}  from {}",
                    revision.revision, revision.version, revision.author, revision.created, revision.source
                );
                for change in &revision.diff {
                    println!("    {change}");
                }
            }
            return Ok(());
        }
        let response: ServicesResponse = remote
            .call(Method::GET, &["api", "v1", "services"], &[("from", args.from.clone())], None::<&()>)
            .await?;
        if remote.json {
            return Remote::print_json(&response);
        }
        println!(
            "{:<24} {:>8} {:<12} {:>8} {:>6} {:>9} {:>7} {:>8} {:>8}",
            "SERVICE", "REVISION", "VERSION", "REPLICAS", "PORT", "REQ/S", "ERR%", "P50 MS", "P99 MS"
        );
        let mut names: Vec<&str> = response
            .deployed
            .iter()
            .map(|d| d.service.as_str())
            .chain(response.services.iter().map(|r| r.service.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let deployed = response.deployed.iter().find(|d| d.service == name);
            let rows: Vec<_> = response.services.iter().filter(|r| r.service == name).collect();
            let dash = || "-".to_owned();
            let (revision, replicas, port) = deployed.map_or((dash(), dash(), dash()), |d| {
                (
                    d.revision.to_string(),
                    d.replicas.to_string(),
                    d.port.map_or_else(dash, |p| p.to_string()),
                )
            });
            if rows.is_empty() {
                let version = deployed.map_or_else(dash, |d| d.version.clone());
                println!(
                    "{name:<24} {revision:>8} {version:<12} {replicas:>8} {port:>6} {:>9} {:>7} {:>8} {:>8}",
                    "-", "-", "-", "-"
                );
            }
            for row in rows {
                println!(
                    "{name:<24} {revision:>8} {:<12} {replicas:>8} {port:>6} {:>9.2} {:>7.2} {:>8.1} {:>8.1}",
                    if row.version.is_empty() { "-" } else { &row.version },
                    row.request_rate,
                    row.error_ratio * 100.0,
                    row.p50_ms,
                    row.p99_ms
                );
            }
        }
        Ok(())
    })
}

/// Runs `gantry status`: each service's revision and where each of its instances runs.
pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let remote = &args.remote;
    runtime()?.block_on(async {
        let names = match &args.service {
            Some(service) => vec![service.clone()],
            None => {
                let response: ServicesResponse = remote
                    .call(
                        Method::GET,
                        &["api", "v1", "services"],
                        &[("from", "-1m".to_owned())],
                        None::<&()>,
                    )
                    .await?;
                response.deployed.into_iter().map(|d| d.service).collect()
            }
        };
        let mut all = Vec::with_capacity(names.len());
        for name in &names {
            let status: ServiceStatus = remote
                .call(
                    Method::GET,
                    &["api", "v1", "services", name],
                    &[],
                    None::<&()>,
                )
                .await?;
            all.push(status);
        }
        if remote.json {
            return Remote::print_json(&all);
        }
        for status in &all {
            let service = &status.service;
            let placed = status.instances.iter().filter(|i| i.node.is_some()).count();
            println!(
                "{}  revision {}  version {}  {placed}/{} placed",
                service.service, service.revision, service.version, service.replicas
            );
            println!(
                "    {:<28} {:<18} {:<20} {:<6} {:<14} {:>8} SINCE",
                "INSTANCE", "NODE", "HOST", "NODE", "PHASE", "RESTARTS"
            );
            for instance in &status.instances {
                let dash = || "-".to_owned();
                let node_status = instance.node_status.map_or_else(dash, |s| {
                    serde_json::to_value(s)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(dash)
                });
                let (phase, restarts, since) = match (&instance.actual, instance.node.is_some()) {
                    (Some(actual), _) => (
                        actual.phase.as_str().to_owned(),
                        actual.restarts.to_string(),
                        actual.since.clone(),
                    ),
                    (None, true) => ("assigned".to_owned(), dash(), instance.since.clone()),
                    (None, false) => ("unplaced".to_owned(), dash(), instance.since.clone()),
                };
                println!(
                    "    {:<28} {:<18} {:<20} {:<6} {:<14} {:>8} {}",
                    instance.instance_id,
                    instance.node.clone().unwrap_or_else(dash),
                    instance.hostname.clone().unwrap_or_else(dash),
                    node_status,
                    phase,
                    restarts,
                    since
                );
                if !instance.reason.is_empty() {
                    println!("        {}", instance.reason);
                }
                if let Some(actual) = &instance.actual {
                    if !actual.reason.is_empty() {
                        println!("        {}", actual.reason);
                    }
                    if let Some(exit) = &actual.last_exit {
                        println!("        last exit: {exit} at {}", exit.at);
                    }
                    for line in &actual.last_lines {
                        println!("        | {line}");
                    }
                }
            }
        }
        Ok(())
    })
}

/// Runs `gantry scale`.
pub fn scale(args: ScaleArgs) -> anyhow::Result<()> {
    let request = gantry_proto::platform::ScaleRequest {
        replicas: args.replicas,
    };
    let status: ServiceStatus = runtime()?.block_on(args.remote.call(
        Method::POST,
        &["api", "v1", "services", &args.service, "scale"],
        &[],
        Some(&request),
    ))?;
    if args.remote.json {
        return Remote::print_json(&status);
    }
    eprintln!(
        "{} scaled to {} replicas",
        args.service, status.service.replicas
    );
    Ok(())
}

/// Runs `gantry stop` (`stopped`) or `gantry start`.
pub fn stop_start(args: ServiceArgs, stopped: bool) -> anyhow::Result<()> {
    let verb = if stopped { "stop" } else { "start" };
    let status: ServiceStatus = runtime()?.block_on(args.remote.call(
        Method::POST,
        &["api", "v1", "services", &args.service, verb],
        &[],
        None::<&()>,
    ))?;
    if args.remote.json {
        return Remote::print_json(&status);
    }
    if stopped {
        eprintln!(
            "{} stopped: its instances are being drained and stopped",
            args.service
        );
    } else {
        eprintln!(
            "{} started: {} replicas",
            args.service, status.service.replicas
        );
    }
    Ok(())
}

/// Runs `gantry restart`: every instance replaced a few at a time, each new one healthy before the old one stops.
pub fn restart(args: ServiceArgs) -> anyhow::Result<()> {
    let status: ServiceStatus = runtime()?.block_on(args.remote.call(
        Method::POST,
        &["api", "v1", "services", &args.service, "restart"],
        &[],
        None::<&()>,
    ))?;
    if args.remote.json {
        return Remote::print_json(&status);
    }
    eprintln!(
        "{} restarting: each of its {} instances is replaced once its successor is healthy (`gantry status {}`)",
        args.service, status.service.replicas, args.service
    );
    Ok(())
}

/// Runs `gantry nodes`: the list, or a drain or an activation.
pub fn nodes(args: NodesArgs) -> anyhow::Result<()> {
    let remote = &args.remote;
    runtime()?.block_on(async {
        match &args.command {
            Some(NodesCommand::Drain { node }) | Some(NodesCommand::Activate { node }) => {
                let drain = matches!(args.command, Some(NodesCommand::Drain { .. }));
                let verb = if drain { "drain" } else { "activate" };
                let () = remote
                    .call(
                        Method::POST,
                        &["api", "v1", "nodes", node, verb],
                        &[],
                        None::<&()>,
                    )
                    .await?;
                if drain {
                    eprintln!("{node} draining: its instances move elsewhere, new ones first");
                } else {
                    eprintln!("{node} takes instances again");
                }
                Ok(())
            }
            None => {
                let list: gantry_proto::NodesResponse = remote
                    .call(Method::GET, &["api", "v1", "nodes"], &[], None::<&()>)
                    .await?;
                if remote.json {
                    return Remote::print_json(&list);
                }
                println!(
                    "{:<18} {:<24} {:<6} {:<10} {:>5} {:>9}  LABELS",
                    "NODE", "HOST", "STATUS", "SCHEDULING", "CPUS", "MEMORY"
                );
                for node in &list.nodes {
                    let facts = &node.facts;
                    let scheduling = if list.drained.contains(&facts.agent_id) {
                        "draining"
                    } else {
                        "eligible"
                    };
                    let status = serde_json::to_value(node.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    let labels: Vec<String> = facts
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    println!(
                        "{:<18} {:<24} {:<6} {:<10} {:>5} {:>6} MiB  {}",
                        facts.agent_id,
                        facts.hostname,
                        status,
                        scheduling,
                        facts.cpus,
                        facts.memory_bytes >> 20,
                        labels.join(",")
                    );
                }
                Ok(())
            }
        }
    })
}

/// Runs `gantry logs`: the service's latest lines, oldest first, then (with `--follow`) new ones each second.
pub fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let remote = &args.remote;
    let query = match &args.query {
        Some(extra) => format!("service:{} AND ({extra})", args.service),
        None => format!("service:{}", args.service),
    };
    runtime()?.block_on(async {
        let mut from = args.since.clone();
        let mut seen: std::collections::HashSet<(i64, String)> = std::collections::HashSet::new();
        let mut limit = args.tail.clamp(1, 10_000);
        loop {
            let page: serde_json::Value = remote
                .call(
                    Method::GET,
                    &["api", "v1", "logs"],
                    &[
                        ("q", query.clone()),
                        ("from", from.clone()),
                        ("limit", limit.to_string()),
                    ],
                    None::<&()>,
                )
                .await?;
            let mut hits: Vec<&serde_json::Value> =
                page["hits"].as_array().into_iter().flatten().collect();
            hits.reverse();
            for hit in hits {
                let at = hit["timestamp_unix_nano"].as_i64().unwrap_or(0);
                let body = hit["body"]
                    .as_str()
                    .map_or_else(|| hit["body"].to_string(), str::to_owned);
                if !seen.insert((at, body.clone())) {
                    continue;
                }
                if remote.json {
                    println!("{hit}");
                } else {
                    let instance = hit["resource"]["service.instance.id"]
                        .as_str()
                        .unwrap_or("-");
                    let stream = hit["resource"]["log.iostream"].as_str().unwrap_or("");
                    println!(
                        "{} {instance} {stream} {body}",
                        hit["timestamp"].as_str().unwrap_or("")
                    );
                }
                if let Some(time) = hit["timestamp"].as_str() {
                    from = time.to_owned();
                }
            }
            if !args.follow {
                return Ok(());
            }
            limit = 1000;
            if seen.len() > 100_000 {
                seen.clear();
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    })
}

/// Runs `gantry secret ...`.
pub fn secret(command: SecretCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match command {
            SecretCommand::Set { name, remote } => {
                let mut value = String::new();
                std::io::stdin()
                    .read_to_string(&mut value)
                    .context("cannot read the secret from standard input")?;
                if value.ends_with('\n') {
                    value.pop();
                    if value.ends_with('\r') {
                        value.pop();
                    }
                }
                let () = remote
                    .call(
                        Method::PUT,
                        &["api", "v1", "secrets", &name],
                        &[],
                        Some(&SetSecretRequest { value }),
                    )
                    .await?;
                eprintln!("secret `{name}` set");
            }
            SecretCommand::List { remote } => {
                let secrets: Vec<SecretInfo> = remote
                    .call(Method::GET, &["api", "v1", "secrets"], &[], None::<&()>)
                    .await?;
                if remote.json {
                    return Remote::print_json(&secrets);
                }
                println!("{:<32} {:<26} UPDATED BY", "NAME", "UPDATED");
                for secret in secrets {
                    println!(
                        "{:<32} {:<26} {}",
                        secret.name, secret.updated, secret.updated_by
                    );
                }
            }
            SecretCommand::Delete { name, remote } => {
                let () = remote
                    .call(
                        Method::DELETE,
                        &["api", "v1", "secrets", &name],
                        &[],
                        None::<&()>,
                    )
                    .await?;
                eprintln!("secret `{name}` deleted");
            }
        }
        Ok(())
    })
}

/// Runs `gantry audit`.
pub fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let mut query = vec![("limit", args.limit.to_string())];
    if let Some(target) = &args.target {
        query.push(("target", target.clone()));
    }
    let response: AuditResponse = runtime()?.block_on(args.remote.call(
        Method::GET,
        &["api", "v1", "audit"],
        &query,
        None::<&()>,
    ))?;
    if args.remote.json {
        return Remote::print_json(&response);
    }
    println!(
        "{:<25} {:<20} {:<14} {:<24} OUTCOME",
        "TIME", "WHO", "ACTION", "TARGET"
    );
    for entry in response.entries {
        let detail = if entry.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", entry.detail)
        };
        println!(
            "{:<25} {:<20} {:<14} {:<24} {}{detail}",
            entry.time, entry.actor, entry.action, entry.target, entry.outcome
        );
    }
    Ok(())
}

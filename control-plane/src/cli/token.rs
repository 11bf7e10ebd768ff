//! `gantry token create|list|revoke`: against the data directory (the state database, whether or not the plane
//! runs: SQLite's locking orders the writes) or a running plane's API with an admin token.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use gantry_plane::state::StateDb;
use gantry_plane::state::tokens::TokenStore;
use gantry_proto::{CreateTokenRequest, CreatedToken, Role, TokenInfo};

use super::runtime;

/// Where a token or user command acts: a data directory, or a running plane's API.
#[derive(Args)]
pub struct Target {
    /// The plane's data directory (works whether or not the plane runs).
    #[arg(long, conflicts_with = "plane")]
    pub data_dir: Option<PathBuf>,
    /// A running plane's URL, e.g. http://127.0.0.1:8700 (needs --token of an admin).
    #[arg(long, requires = "token")]
    pub plane: Option<String>,
    /// An admin token for --plane (or GANTRY_TOKEN).
    #[arg(long, env = "GANTRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it on a line of its own; it is shown this once.
    Create {
        #[command(flatten)]
        target: Target,
        /// ingest (SDKs, collectors), node (node agents), viewer, deployer or admin.
        #[arg(long)]
        role: Role,
        /// A name to recognise it by.
        #[arg(long)]
        name: String,
        /// A deployer token limited to these services (comma-separated): it may deploy, roll back, scale and
        /// apply only them.
        #[arg(long, value_delimiter = ',')]
        services: Option<Vec<String>>,
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

/// Runs a token subcommand.
pub fn run(command: TokenCommand) -> anyhow::Result<()> {
    let (target, action) = match command {
        TokenCommand::Create {
            target,
            role,
            name,
            services,
        } => (target, TokenAction::Create(name, role, services)),
        TokenCommand::List { target } => (target, TokenAction::List),
        TokenCommand::Revoke { target, id } => (target, TokenAction::Revoke(id)),
    };
    match (target.plane, target.data_dir) {
        (Some(plane), _) => remote_token(&plane, target.token.as_deref().unwrap_or(""), action),
        (None, data_dir) => {
            let data_dir = data_dir.unwrap_or_else(|| PathBuf::from("gantry-data"));
            let db = StateDb::open(&data_dir)
                .with_context(|| format!("cannot open the state of {}", data_dir.display()))?;
            let tokens = TokenStore::new(Arc::new(db));
            match action {
                TokenAction::Create(name, role, services) => {
                    let created = tokens.create_limited(&name, role, services)?;
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
    Create(String, Role, Option<Vec<String>>),
    List,
    Revoke(String),
}

fn print_tokens(tokens: &[TokenInfo]) {
    println!(
        "{:<14} {:<24} {:<9} {:<21} SERVICES",
        "ID", "NAME", "ROLE", "CREATED"
    );
    for token in tokens {
        println!(
            "{:<14} {:<24} {:<9} {:<21} {}",
            token.id,
            token.name,
            token.role,
            token.created,
            token
                .services
                .as_ref()
                .map_or_else(|| "all".to_owned(), |s| s.join(","))
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
            TokenAction::Create(name, role, services) => {
                let response = client
                    .post(format!("{base}/api/v1/tokens"))
                    .bearer_auth(admin)
                    .json(&CreateTokenRequest {
                        name,
                        role,
                        services,
                    })
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

//! `gantry user create|list|delete`: dashboard users, against the data directory (whether or not the plane runs)
//! or a running plane's API with an admin token. `create` reads the password from standard input (one line), so
//! that it appears in no process list or shell history.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use gantry_plane::state::StateDb;
use gantry_plane::state::users::UserStore;
use gantry_proto::{CreateUserRequest, Role, UserInfo};

use super::runtime;
use super::token::Target;

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a dashboard user; the password is read from standard input (at least 12 characters).
    Create {
        #[command(flatten)]
        target: Target,
        /// The login name.
        #[arg(long)]
        name: String,
        /// viewer (reads), deployer (also deploys, rolls back, pauses) or admin (also users, tokens, nodes).
        #[arg(long)]
        role: Role,
    },
    /// List users (never their passwords).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Delete a user; its sessions end at once.
    Delete {
        #[command(flatten)]
        target: Target,
        /// The user's name.
        name: String,
    },
}

fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    anyhow::ensure!(
        !password.is_empty(),
        "no password on standard input: e.g. `printf '%s\\n' \"$PASSWORD\" | gantry user create ...`"
    );
    Ok(password)
}

fn print_users(users: &[UserInfo]) {
    println!("{:<14} {:<24} {:<9} CREATED", "ID", "NAME", "ROLE");
    for user in users {
        println!(
            "{:<14} {:<24} {:<9} {}",
            user.id, user.name, user.role, user.created
        );
    }
}

/// Runs a user subcommand.
pub fn run(command: UserCommand) -> anyhow::Result<()> {
    let target = match &command {
        UserCommand::Create { target, .. }
        | UserCommand::List { target }
        | UserCommand::Delete { target, .. } => target,
    };
    if let Some(plane) = target.plane.clone() {
        let token = target.token.clone().unwrap_or_default();
        return remote(&plane, &token, command);
    }
    let data_dir = target
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("gantry-data"));
    let db = StateDb::open(&data_dir)
        .with_context(|| format!("cannot open the state of {}", data_dir.display()))?;
    let users = UserStore::new(Arc::new(db));
    match command {
        UserCommand::Create { name, role, .. } => {
            let password = read_password()?;
            let user = users.create(&name, role, &password)?;
            eprintln!(
                "created {} user `{}` (id {})",
                user.role, user.name, user.id
            );
        }
        UserCommand::List { .. } => print_users(&users.list()?),
        UserCommand::Delete { name, .. } => {
            let user = users.delete(&name)?;
            eprintln!("deleted user `{}`; its sessions ended", user.name);
        }
    }
    Ok(())
}

fn remote(plane: &str, admin: &str, command: UserCommand) -> anyhow::Result<()> {
    let base = plane.trim_end_matches('/');
    let password = match &command {
        UserCommand::Create { .. } => Some(read_password()?),
        _ => None,
    };
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
        match command {
            UserCommand::Create { name, role, .. } => {
                let response = client
                    .post(format!("{base}/api/v1/users"))
                    .bearer_auth(admin)
                    .json(&CreateUserRequest {
                        name,
                        role,
                        password: password.unwrap_or_default(),
                    })
                    .send()
                    .await
                    .context("cannot reach the plane")?;
                let user: UserInfo = check(response).await?.json().await?;
                eprintln!(
                    "created {} user `{}` (id {})",
                    user.role, user.name, user.id
                );
            }
            UserCommand::List { .. } => {
                let response = client
                    .get(format!("{base}/api/v1/users"))
                    .bearer_auth(admin)
                    .send()
                    .await
                    .context("cannot reach the plane")?;
                let users: Vec<UserInfo> = check(response).await?.json().await?;
                print_users(&users);
            }
            UserCommand::Delete { name, .. } => {
                anyhow::ensure!(
                    gantry_plane::state::users::valid_name(&name),
                    "`{name}` is not a user name (1-64 letters, digits, `-`, `_`, `.` or `@`)"
                );
                let response = client
                    .delete(format!("{base}/api/v1/users/{name}"))
                    .bearer_auth(admin)
                    .send()
                    .await
                    .context("cannot reach the plane")?;
                check(response).await?;
                eprintln!("deleted user `{name}`; its sessions ended");
            }
        }
        Ok(())
    })
}

//! Who may do what: token roles, the kinds of access routes need, and the token API's bodies.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Prefix of every Gantry API token, so that secret scanners can find leaked ones.
pub const TOKEN_PREFIX: &str = "gty_";

/// What a token may do. Roles are ordered by power, but `Ingest` is separate: it may only write telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Writes telemetry (OTLP) and nothing else: what SDKs and collectors hold.
    Ingest,
    /// A node agent: writes telemetry, heartbeats, and is given instances to run (with their secrets).
    Node,
    /// Reads telemetry and state.
    Viewer,
    /// Reads, and triggers deployments.
    Deployer,
    /// Everything, including token management.
    Admin,
}

impl Role {
    /// All roles, in the order they are listed to users.
    pub const ALL: [Role; 5] = [
        Role::Ingest,
        Role::Node,
        Role::Viewer,
        Role::Deployer,
        Role::Admin,
    ];

    /// The role's name as users write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Node => "node",
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }

    /// Whether a token of this role may perform an action of the given kind.
    ///
    /// ```
    /// use gantry_proto::{Access, Role};
    /// assert!(Role::Ingest.allows(Access::Ingest));
    /// assert!(!Role::Ingest.allows(Access::Read));
    /// assert!(Role::Deployer.allows(Access::Read));
    /// assert!(!Role::Deployer.allows(Access::Admin));
    /// ```
    pub fn allows(self, access: Access) -> bool {
        match access {
            Access::Ingest => matches!(self, Role::Ingest | Role::Node | Role::Admin),
            Access::Node => matches!(self, Role::Node | Role::Admin),
            Access::Read => matches!(self, Role::Viewer | Role::Deployer | Role::Admin),
            Access::Deploy => matches!(self, Role::Deployer | Role::Admin),
            Access::Admin => self == Role::Admin,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role `{s}`: use one of ingest, node, viewer, deployer, admin")
            })
    }
}

/// The kind of action a route performs, checked against the caller's [`Role`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Writing telemetry.
    Ingest,
    /// What only node agents do: run the instances placed on their node.
    Node,
    /// Reading telemetry and state.
    Read,
    /// Changing what runs.
    Deploy,
    /// Managing tokens and settings.
    Admin,
}

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// A name for people to recognise the token by (unique).
    pub name: String,
    /// What the token may do.
    pub role: Role,
    /// A `deployer` token's services: it may change only these (deploy, roll back, scale, apply); `None`: all.
    #[serde(default)]
    pub services: Option<Vec<String>>,
}

/// A token as listed: never the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenInfo {
    /// Stable id, used to revoke.
    pub id: String,
    /// Name given at creation.
    pub name: String,
    /// What the token may do.
    pub role: Role,
    /// Creation time, RFC 3339.
    pub created: String,
    /// The services a `deployer` token is limited to; `None`: every service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<String>>,
}

impl TokenInfo {
    /// Whether this token may change `service` (its role permitting): a token limited to services only changes
    /// those.
    pub fn may_change(&self, service: &str) -> bool {
        self.services
            .as_ref()
            .is_none_or(|services| services.iter().any(|s| s == service))
    }

    /// Whether the token is limited to some services (it may then change nothing that is not a service's: secrets,
    /// nodes).
    pub fn limited(&self) -> bool {
        self.services.is_some()
    }
}

/// The answer to a token creation: the only time the secret is shown.
#[derive(Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The token's listing entry.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The secret, `gty_...`; store it now, it cannot be shown again.
    pub token: String,
}

impl fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedToken")
            .field("info", &self.info)
            .field("token", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_round_trips_through_text() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().unwrap_err().contains("`root`"));
    }

    #[test]
    fn created_token_debug_hides_the_secret() {
        let created = CreatedToken {
            info: TokenInfo {
                services: None,
                id: "1".into(),
                name: "ci".into(),
                role: Role::Viewer,
                created: String::new(),
            },
            token: "gty_secret".into(),
        };
        assert!(!format!("{created:?}").contains("gty_secret"));
    }
}

/// `POST /api/v1/users`: a dashboard user with a password and a role (`viewer`, `deployer` or `admin`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// The login name: 1-64 letters, digits, `-`, `_`, `.` or `@`.
    pub name: String,
    /// `viewer`, `deployer` or `admin`.
    pub role: Role,
    /// The password, at least 12 characters; stored only as an argon2id hash.
    pub password: String,
}

impl std::fmt::Debug for CreateUserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateUserRequest")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A dashboard user, never with its password hash (`GET /api/v1/users`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// 12 hex digits.
    pub id: String,
    /// The login name.
    pub name: String,
    /// `viewer`, `deployer` or `admin`.
    pub role: Role,
    /// When it was created, RFC 3339.
    pub created: String,
}

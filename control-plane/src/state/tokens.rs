//! The `tokens` table: API tokens created with a role, shown once, stored as SHA-256 hashes of their secret.
//!
//! A token is looked up by the hash of the presented secret. The secret has 192 random bits, so neither the lookup's
//! timing nor the hash tells anything useful about another token. A token created or revoked by any process (the
//! CLI with `--data-dir`, or the API) counts at once: every check reads the database.

use std::path::Path;
use std::sync::Arc;

use gantry_proto::{CreatedToken, Role, TOKEN_PREFIX, TokenInfo};
use rand::RngCore;
use rusqlite::{OptionalExtension, Row, params};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{StateDb, StateError, retire};

/// A token problem.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The state database failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A token with this name exists.
    #[error("a token named `{0}` already exists: revoke it first or pick another name")]
    NameTaken(String),
    /// Names must be non-empty and printable.
    #[error("token name must be 1-64 characters of letters, digits, `-`, `_` or `.`")]
    BadName,
    /// No such token.
    #[error("no token with id or name `{0}`")]
    NotFound(String),
    /// A limit to services that does not apply.
    #[error("{0}")]
    BadServices(String),
}

/// The tokens of one plane.
#[derive(Debug, Clone)]
pub struct TokenStore {
    db: Arc<StateDb>,
}

const COLUMNS: &str = "id, name, role, created, services";

/// The token with this id as it stands now (`None`: revoked or never existed); for a user acting as `user:ID`,
/// the user's, with its role now.
///
/// # Errors
/// SQLite failed.
pub fn current(connection: &rusqlite::Connection, id: &str) -> rusqlite::Result<Option<TokenInfo>> {
    if let Some(user) = id.strip_prefix("user:") {
        return Ok(super::users::by_id(connection, user)?.map(|user| super::users::actor(&user)));
    }
    connection
        .query_row(
            &format!("SELECT {COLUMNS} FROM tokens WHERE id = ?1"),
            [id],
            info,
        )
        .optional()
}

fn info(row: &Row<'_>) -> rusqlite::Result<TokenInfo> {
    let role: String = row.get(2)?;
    Ok(TokenInfo {
        id: row.get(0)?,
        name: row.get(1)?,
        role: role.parse().map_err(|message: String| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Text,
                message.into(),
            )
        })?,
        created: row.get(3)?,
        services: row
            .get::<_, Option<String>>(4)?
            .map(|text| {
                serde_json::from_str(&text).map_err(|error| {
                    rusqlite::Error::FromSqlConversionFailure(
                        4,
                        rusqlite::types::Type::Text,
                        Box::new(error),
                    )
                })
            })
            .transpose()?,
    })
}

impl TokenStore {
    /// The tokens in `db`.
    pub fn new(db: Arc<StateDb>) -> TokenStore {
        TokenStore { db }
    }

    /// The state database the tokens live in.
    pub fn db(&self) -> &Arc<StateDb> {
        &self.db
    }

    /// Creates a token; the returned secret is the only copy. Blocking (a committed write).
    ///
    /// # Errors
    /// [`TokenError::BadName`], [`TokenError::NameTaken`], or the database failed.
    pub fn create(&self, name: &str, role: Role) -> Result<CreatedToken, TokenError> {
        self.create_limited(name, role, None)
    }

    /// Creates a token, a `deployer` one limited to `services` when given. Blocking (a committed write).
    ///
    /// # Errors
    /// [`TokenError::BadName`], [`TokenError::NameTaken`], [`TokenError::BadServices`] (a limit on another role,
    /// an empty list, a name that is not a service name), or the database failed.
    pub fn create_limited(
        &self,
        name: &str,
        role: Role,
        services: Option<Vec<String>>,
    ) -> Result<CreatedToken, TokenError> {
        let valid = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if name.is_empty() || name.len() > 64 || !name.chars().all(valid) {
            return Err(TokenError::BadName);
        }
        if let Some(services) = &services {
            if role != Role::Deployer {
                return Err(TokenError::BadServices(format!(
                    "only a `deployer` token is limited to services, not a `{role}` one"
                )));
            }
            if services.is_empty() {
                return Err(TokenError::BadServices(
                    "a token limited to services needs at least one".to_owned(),
                ));
            }
            if let Some(bad) = services
                .iter()
                .find(|s| !crate::spec::valid_service_name(s))
            {
                return Err(TokenError::BadServices(format!(
                    "`{bad}` is not a service name (1-63 lowercase letters, digits and `-`, starting with a letter)"
                )));
            }
        }
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        let secret = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
        let mut id_bytes = [0u8; 6];
        rand::rng().fill_bytes(&mut id_bytes);
        let info = TokenInfo {
            id: hex::encode(id_bytes),
            name: name.to_owned(),
            role,
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            services,
        };
        self.db.write(|t| {
            let taken: bool = t
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM tokens WHERE name = ?1)",
                    [name],
                    |row| row.get(0),
                )
                .map_err(|e| self.db.error(e))?;
            if taken {
                return Err(TokenError::NameTaken(name.to_owned()));
            }
            t.execute(
                "INSERT INTO tokens (id, name, role, hash, created, services) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    info.id,
                    info.name,
                    role.as_str(),
                    &hash(&secret)[..],
                    info.created,
                    info.services
                        .as_ref()
                        .map(|s| serde_json::to_string(s).unwrap_or_default())
                ],
            )
            .map_err(|e| self.db.error(e))?;
            Ok(())
        })?;
        Ok(CreatedToken {
            info,
            token: secret,
        })
    }

    /// Every token, oldest first, never their secrets.
    ///
    /// # Errors
    /// The database failed.
    pub fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        Ok(self.db.read(|c| {
            let mut statement = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tokens ORDER BY created, name"
            ))?;
            let rows = statement.query_map([], info)?;
            rows.collect()
        })?)
    }

    /// Revokes the token with this id or name. Blocking (a committed write).
    ///
    /// # Errors
    /// [`TokenError::NotFound`], or the database failed.
    pub fn revoke(&self, id_or_name: &str) -> Result<TokenInfo, TokenError> {
        self.db.write(|t| {
            let found = t
                .query_row(
                    &format!("SELECT {COLUMNS} FROM tokens WHERE id = ?1 OR name = ?1"),
                    [id_or_name],
                    info,
                )
                .optional()
                .map_err(|e| self.db.error(e))?
                .ok_or_else(|| TokenError::NotFound(id_or_name.to_owned()))?;
            t.execute("DELETE FROM tokens WHERE id = ?1", [&found.id])
                .map_err(|e| self.db.error(e))?;
            Ok(found)
        })
    }

    /// Whether a token with this id exists (not revoked).
    ///
    /// # Errors
    /// The database failed.
    pub fn exists(&self, id: &str) -> Result<bool, TokenError> {
        Ok(self.db.read(|c| {
            c.prepare_cached("SELECT EXISTS (SELECT 1 FROM tokens WHERE id = ?1)")?
                .query_row([id], |row| row.get(0))
        })?)
    }

    /// The token's identity when `secret` is a valid, unrevoked token.
    ///
    /// # Errors
    /// The database failed (the caller answers 503: a retry can succeed).
    pub fn authenticate(&self, secret: &str) -> Result<Option<TokenInfo>, TokenError> {
        if !secret.starts_with(TOKEN_PREFIX) || secret.len() > 128 {
            return Ok(None);
        }
        let presented = hash(secret);
        Ok(self.db.read(|c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM tokens WHERE hash = ?1"))?
                .query_row([&presented[..]], info)
                .optional()
        })?)
    }
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A token as `tokens.json` of earlier versions kept it.
#[derive(Deserialize)]
struct LegacyToken {
    #[serde(flatten)]
    info: TokenInfo,
    /// Hex SHA-256 of the secret.
    hash: String,
}

#[derive(Deserialize)]
struct LegacyFile {
    tokens: Vec<LegacyToken>,
}

/// Imports `DATA_DIR/tokens.json` of an earlier version (its hashes still match the secrets people hold), then
/// renames it `tokens.json.migrated`. Idempotent: a token already there is kept as it is.
pub(super) fn import_legacy(db: &StateDb, data_dir: &Path) -> Result<(), StateError> {
    let path = data_dir.join("tokens.json");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(StateError::Io { path, source }),
    };
    let file: LegacyFile = serde_json::from_slice(&bytes).map_err(|error| StateError::Io {
        path: path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
    })?;
    let imported = db.write(|t| {
        let mut imported = 0;
        for token in &file.tokens {
            let mut digest = [0u8; 32];
            if hex::decode_to_slice(&token.hash, &mut digest).is_err() {
                tracing::warn!(name = %token.info.name, "skipping a legacy token whose hash is not 32 hex bytes");
                continue;
            }
            imported += t
                .execute(
                    "INSERT OR IGNORE INTO tokens (id, name, role, hash, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        token.info.id,
                        token.info.name,
                        token.info.role.as_str(),
                        &digest[..],
                        token.info.created
                    ],
                )
                .map_err(|e| db.error(e))?;
        }
        Ok::<_, StateError>(imported)
    })?;
    tracing::info!(tokens = imported, "legacy tokens imported");
    retire(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> TokenStore {
        TokenStore::new(Arc::new(StateDb::open(dir).unwrap()))
    }

    #[test]
    fn tokens_are_hashed_shown_once_and_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = store(dir.path());
        let created = tokens.create("ci-read", Role::Viewer).unwrap();
        assert!(created.token.starts_with("gty_"));
        let on_disk = std::fs::read(dir.path().join(super::super::FILE_NAME)).unwrap();
        assert!(
            !on_disk
                .windows(created.token.len())
                .any(|w| w == created.token.as_bytes()),
            "the secret must not be stored"
        );
        let found = tokens.authenticate(&created.token).unwrap().unwrap();
        assert_eq!(found.role, Role::Viewer);
        assert!(tokens.exists(&found.id).unwrap());
        assert!(tokens.authenticate("gty_wrong").unwrap().is_none());
        assert!(matches!(
            tokens.create("ci-read", Role::Admin),
            Err(TokenError::NameTaken(_))
        ));
        assert!(matches!(
            tokens.create("bad name", Role::Admin),
            Err(TokenError::BadName)
        ));
        tokens.revoke("ci-read").unwrap();
        assert!(tokens.authenticate(&created.token).unwrap().is_none());
        assert!(matches!(
            tokens.revoke("ci-read"),
            Err(TokenError::NotFound(_))
        ));
    }

    #[test]
    fn a_second_process_sees_changes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let plane = store(dir.path());
        let cli = store(dir.path());
        let created = cli.create("agent", Role::Ingest).unwrap();
        assert_eq!(
            plane.authenticate(&created.token).unwrap().unwrap().name,
            "agent"
        );
        cli.revoke("agent").unwrap();
        assert!(plane.authenticate(&created.token).unwrap().is_none());
    }

    #[test]
    fn legacy_token_files_are_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "gty_0123456789abcdef";
        let legacy = serde_json::json!({"tokens": [{
            "id": "a1b2c3d4e5f6", "name": "old-admin", "role": "admin",
            "created": "2026-11-25T00:00:00Z", "hash": hex::encode(hash(secret)),
        }]});
        std::fs::write(dir.path().join("tokens.json"), legacy.to_string()).unwrap();
        let tokens = store(dir.path());
        assert_eq!(
            tokens.authenticate(secret).unwrap().unwrap().name,
            "old-admin"
        );
        assert!(!dir.path().join("tokens.json").exists());
        assert!(dir.path().join("tokens.json.migrated").exists());
        drop(tokens);
        assert_eq!(store(dir.path()).list().unwrap().len(), 1);
    }
}

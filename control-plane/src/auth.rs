//! API tokens: created with a role, shown once, stored as SHA-256 hashes in `DATA_DIR/tokens.json`, checked in constant time.
//!
//! The file is the source of truth, shared by a running plane and the `gantry token` CLI: the plane re-reads it
//! when it changes, so a token created or revoked from the CLI takes effect without a restart.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use gantry_proto::{CreatedToken, Role, TOKEN_PREFIX, TokenInfo};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How often a running plane looks at the token file's modification time.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// A token problem.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading or writing the token file failed.
    #[error("token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token file is not valid JSON.
    #[error("token file {path} is corrupt: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A token with this name exists.
    #[error("a token named `{0}` already exists: revoke it first or pick another name")]
    NameTaken(String),
    /// Names must be non-empty and printable.
    #[error("token name must be 1-64 characters of letters, digits, `-`, `_` or `.`")]
    BadName,
    /// No such token.
    #[error("no token with id or name `{0}`")]
    NotFound(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredToken {
    #[serde(flatten)]
    info: TokenInfo,
    /// Hex SHA-256 of the whole secret.
    hash: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    tokens: Vec<StoredToken>,
}

struct Loaded {
    tokens: Vec<([u8; 32], TokenInfo)>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// The token registry of one data directory.
pub struct TokenStore {
    path: PathBuf,
    loaded: RwLock<Loaded>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    /// Opens the registry in `data_dir` (the file need not exist yet).
    pub fn open(data_dir: &Path) -> Result<Self, TokenError> {
        let path = data_dir.join("tokens.json");
        let (file, modified) = read_file(&path)?;
        Ok(Self {
            loaded: RwLock::new(Loaded {
                tokens: decode(&file),
                modified,
                checked: Instant::now(),
            }),
            path,
        })
    }

    /// Creates a token; the returned secret is the only copy.
    pub fn create(&self, name: &str, role: Role) -> Result<CreatedToken, TokenError> {
        let valid = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if name.is_empty() || name.len() > 64 || !name.chars().all(valid) {
            return Err(TokenError::BadName);
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
        };
        self.update(|file| {
            if file.tokens.iter().any(|token| token.info.name == name) {
                return Err(TokenError::NameTaken(name.to_owned()));
            }
            file.tokens.push(StoredToken {
                info: info.clone(),
                hash: hex::encode(hash(&secret)),
            });
            Ok(())
        })?;
        Ok(CreatedToken {
            info,
            token: secret,
        })
    }

    /// Lists tokens, never their secrets.
    pub fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        let (file, _) = read_file(&self.path)?;
        Ok(file.tokens.into_iter().map(|token| token.info).collect())
    }

    /// Revokes the token with this id or name.
    pub fn revoke(&self, id_or_name: &str) -> Result<TokenInfo, TokenError> {
        let mut revoked = None;
        self.update(|file| {
            let position = file
                .tokens
                .iter()
                .position(|token| token.info.id == id_or_name || token.info.name == id_or_name)
                .ok_or_else(|| TokenError::NotFound(id_or_name.to_owned()))?;
            revoked = Some(file.tokens.remove(position).info);
            Ok(())
        })?;
        Ok(revoked.expect("set by the update"))
    }

    /// Whether a token with this id exists (not revoked).
    pub fn exists(&self, id: &str) -> bool {
        self.reload_if_changed();
        let loaded = self.loaded.read().expect("token lock poisoned");
        loaded.tokens.iter().any(|(_, info)| info.id == id)
    }

    /// The token's identity when `secret` is a valid, unrevoked token.
    pub fn authenticate(&self, secret: &str) -> Option<TokenInfo> {
        self.reload_if_changed();
        let presented = hash(secret);
        let loaded = self.loaded.read().expect("token lock poisoned");
        // Compare against every token so the time taken does not depend on which one matched.
        let mut found = None;
        for (stored, info) in &loaded.tokens {
            if bool::from(stored.ct_eq(&presented)) {
                found = Some(info.clone());
            }
        }
        found
    }

    fn reload_if_changed(&self) {
        {
            let loaded = self.loaded.read().expect("token lock poisoned");
            if loaded.checked.elapsed() < RELOAD_CHECK {
                return;
            }
        }
        let modified = std::fs::metadata(&self.path)
            .and_then(|meta| meta.modified())
            .ok();
        let mut loaded = self.loaded.write().expect("token lock poisoned");
        loaded.checked = Instant::now();
        if modified == loaded.modified {
            return;
        }
        match read_file(&self.path) {
            Ok((file, modified)) => {
                loaded.tokens = decode(&file);
                loaded.modified = modified;
            }
            Err(error) => tracing::error!(error = %error, "keeping the tokens loaded before"),
        }
    }

    fn update(
        &self,
        change: impl FnOnce(&mut TokenFile) -> Result<(), TokenError>,
    ) -> Result<(), TokenError> {
        let io = |source| TokenError::Io {
            path: self.path.clone(),
            source,
        };
        // Read, change and rewrite under an exclusive lock, so that the CLI and a running plane (or two API calls)
        // never overwrite each other's changes: a revocation cannot be lost.
        let lock = std::fs::File::create(self.path.with_extension("json.lock")).map_err(io)?;
        lock.lock().map_err(io)?;
        let (mut file, _) = read_file(&self.path)?;
        change(&mut file)?;
        let text = serde_json::to_vec_pretty(&file).expect("token file serializes");
        let temporary = self.path.with_extension("json.tmp");
        std::fs::write(&temporary, text).map_err(io)?;
        std::fs::File::open(&temporary)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&temporary, &self.path).map_err(io)?;
        let mut loaded = self.loaded.write().expect("token lock poisoned");
        loaded.tokens = decode(&file);
        loaded.modified = std::fs::metadata(&self.path)
            .and_then(|meta| meta.modified())
            .ok();
        Ok(())
    }
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn decode(file: &TokenFile) -> Vec<([u8; 32], TokenInfo)> {
    file.tokens
        .iter()
        .filter_map(|token| {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(&token.hash, &mut digest).ok()?;
            Some((digest, token.info.clone()))
        })
        .collect()
}

fn read_file(path: &Path) -> Result<(TokenFile, Option<SystemTime>), TokenError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let file = serde_json::from_slice(&bytes).map_err(|error| TokenError::Corrupt {
                path: path.to_owned(),
                message: error.to_string(),
            })?;
            let modified = std::fs::metadata(path)
                .and_then(|meta| meta.modified())
                .ok();
            Ok((file, modified))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Ok((TokenFile::default(), None))
        }
        Err(source) => Err(TokenError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_hashed_shown_once_and_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        let created = store.create("ci-read", Role::Viewer).unwrap();
        assert!(created.token.starts_with("gty_"));
        let on_disk = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        assert!(
            !on_disk.contains(&created.token),
            "the secret must not be stored"
        );
        assert_eq!(
            store.authenticate(&created.token).unwrap().role,
            Role::Viewer
        );
        assert!(store.authenticate("gty_wrong").is_none());
        assert!(matches!(
            store.create("ci-read", Role::Admin),
            Err(TokenError::NameTaken(_))
        ));
        store.revoke("ci-read").unwrap();
        assert!(store.authenticate(&created.token).is_none());
    }

    #[test]
    fn a_second_store_on_the_same_dir_sees_changes() {
        let dir = tempfile::tempdir().unwrap();
        let plane = TokenStore::open(dir.path()).unwrap();
        let cli = TokenStore::open(dir.path()).unwrap();
        let created = cli.create("agent", Role::Ingest).unwrap();
        plane.loaded.write().unwrap().checked = Instant::now() - RELOAD_CHECK;
        assert_eq!(plane.authenticate(&created.token).unwrap().name, "agent");
    }
}

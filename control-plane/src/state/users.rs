//! The `users` and `sessions` tables: dashboard users with a password (an argon2id hash, RFC 9106, in the PHC
//! string format) and a role, and their login sessions.
//!
//! A session is a random 192-bit secret in an HttpOnly cookie; the table keeps its SHA-256, the user, the CSRF
//! token of its forms and an absolute expiry ([`SESSION_TTL`]). A login always starts a new session (the cookie a
//! browser brings to the login is never reused: no session fixation); a logout, a deleted user or a changed role
//! ends the user's sessions at once, since every request reads the table.

use std::sync::Arc;
use std::time::Duration;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use gantry_proto::{Role, TokenInfo, UserInfo};
use rand::RngCore;
use rusqlite::{OptionalExtension, Row, params};
use sha2::{Digest, Sha256};

use super::{StateDb, StateError, now_ms};

/// How long a session lasts after its login, whether used or not.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The shortest password accepted (NIST SP 800-63B, section 3.1.1.2, asks for at least 8; admins of an operations
/// plane get 12).
pub const MIN_PASSWORD_CHARS: usize = 12;

/// A user problem.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The state database failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A user with this name exists.
    #[error("a user named `{0}` already exists")]
    NameTaken(String),
    /// Names must be short and printable.
    #[error("a user name is 1-64 letters, digits, `-`, `_`, `.` or `@`")]
    BadName,
    /// Dashboard users are viewers, deployers or admins.
    #[error("a user's role is viewer, deployer or admin, not `{0}`")]
    BadRole(Role),
    /// Too short a password.
    #[error("a password needs at least {MIN_PASSWORD_CHARS} characters")]
    WeakPassword,
    /// No such user.
    #[error("no user named `{0}`")]
    NotFound(String),
    /// The change would leave the plane without an admin.
    #[error("`{0}` is the last admin: create another admin first")]
    LastAdmin(String),
    /// Hashing failed (it does not, with valid parameters).
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// A session's secret and form token, as the login hands them to the browser.
#[derive(Clone)]
pub struct NewSession {
    /// The cookie's value; only its hash is stored.
    pub secret: String,
    /// When it ends, ms since the Unix epoch.
    pub expires_ms: u64,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSession")
            .field("secret", &"<redacted>")
            .field("expires_ms", &self.expires_ms)
            .finish()
    }
}

/// A live session: whose, and the CSRF token its forms must carry.
#[derive(Clone)]
pub struct Session {
    /// The user.
    pub user: UserInfo,
    /// The synchronizer token of the session's forms (OWASP CSRF Prevention Cheat Sheet).
    pub csrf: String,
    /// When it ends, ms since the Unix epoch.
    pub expires_ms: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("csrf", &"<redacted>")
            .field("expires_ms", &self.expires_ms)
            .finish()
    }
}

impl Session {
    /// The user as an actor of the platform's changes and the audit log: a caller named after the user, with the
    /// user's role and no limit to services.
    pub fn actor(&self) -> TokenInfo {
        actor(&self.user)
    }
}

/// A user as an actor (see [`Session::actor`]): id `user:ID`.
pub fn actor(user: &UserInfo) -> TokenInfo {
    TokenInfo {
        id: format!("user:{}", user.id),
        name: user.name.clone(),
        role: user.role,
        created: user.created.clone(),
        services: None,
    }
}

/// The user with this id, if any.
///
/// # Errors
/// SQLite failed.
pub fn by_id(connection: &rusqlite::Connection, id: &str) -> rusqlite::Result<Option<UserInfo>> {
    connection
        .query_row(
            &format!("SELECT {COLUMNS} FROM users WHERE id = ?1"),
            [id],
            user,
        )
        .optional()
}

/// The users of one plane.
#[derive(Debug, Clone)]
pub struct UserStore {
    db: Arc<StateDb>,
}

const COLUMNS: &str = "id, name, role, created";

fn user(row: &Row<'_>) -> rusqlite::Result<UserInfo> {
    let role: String = row.get(2)?;
    Ok(UserInfo {
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
    })
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    hex::encode(buffer)
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `name` may be a user name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

/// A hash no password matches, verified when a name is unknown so that a login takes as long either way.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        Argon2::default()
            .hash_password(random_hex(16).as_bytes())
            .map(|hash| hash.to_string())
            .unwrap_or_default()
    })
}

impl UserStore {
    /// The users in `db`.
    pub fn new(db: Arc<StateDb>) -> UserStore {
        UserStore { db }
    }

    /// Creates a user. Blocking (argon2id takes tens of milliseconds, then a committed write).
    ///
    /// # Errors
    /// [`UserError::BadName`], [`UserError::BadRole`], [`UserError::WeakPassword`], [`UserError::NameTaken`], or the
    /// database failed.
    pub fn create(&self, name: &str, role: Role, password: &str) -> Result<UserInfo, UserError> {
        if !valid_name(name) {
            return Err(UserError::BadName);
        }
        if !matches!(role, Role::Viewer | Role::Deployer | Role::Admin) {
            return Err(UserError::BadRole(role));
        }
        if password.chars().count() < MIN_PASSWORD_CHARS {
            return Err(UserError::WeakPassword);
        }
        let password_hash = Argon2::default()
            .hash_password(password.as_bytes())
            .map_err(|error| UserError::Hash(error.to_string()))?
            .to_string();
        let info = UserInfo {
            id: random_hex(6),
            name: name.to_owned(),
            role,
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        self.db.write(|t| {
            let taken: bool = t
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1)",
                    [name],
                    |row| row.get(0),
                )
                .map_err(|e| self.db.error(e))?;
            if taken {
                return Err(UserError::NameTaken(name.to_owned()));
            }
            t.execute(
                "INSERT INTO users (id, name, role, password_hash, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![info.id, info.name, role.as_str(), password_hash, info.created],
            )
            .map_err(|e| self.db.error(e))?;
            Ok(())
        })?;
        Ok(info)
    }

    /// Every user, by name.
    ///
    /// # Errors
    /// The database failed.
    pub fn list(&self) -> Result<Vec<UserInfo>, UserError> {
        Ok(self.db.read(|c| {
            let mut statement =
                c.prepare_cached(&format!("SELECT {COLUMNS} FROM users ORDER BY name"))?;
            let rows = statement.query_map([], user)?;
            rows.collect()
        })?)
    }

    /// Deletes a user and ends its sessions. Blocking (a committed write).
    ///
    /// # Errors
    /// [`UserError::NotFound`], [`UserError::LastAdmin`], or the database failed.
    pub fn delete(&self, name: &str) -> Result<UserInfo, UserError> {
        self.db.write(|t| {
            let found = t
                .query_row(
                    &format!("SELECT {COLUMNS} FROM users WHERE name = ?1"),
                    [name],
                    user,
                )
                .optional()
                .map_err(|e| self.db.error(e))?
                .ok_or_else(|| UserError::NotFound(name.to_owned()))?;
            if found.role == Role::Admin {
                let admins: i64 = t
                    .query_row("SELECT COUNT(*) FROM users WHERE role = 'admin'", [], |r| {
                        r.get(0)
                    })
                    .map_err(|e| self.db.error(e))?;
                if admins <= 1 {
                    return Err(UserError::LastAdmin(name.to_owned()));
                }
            }
            t.execute("DELETE FROM sessions WHERE user_id = ?1", [&found.id])
                .and_then(|_| t.execute("DELETE FROM users WHERE id = ?1", [&found.id]))
                .map_err(|e| self.db.error(e))?;
            Ok(found)
        })
    }

    /// Checks a name and password; `None` when either is wrong (which one is not said). An unknown name costs the
    /// same argon2id verification as a known one. Blocking.
    ///
    /// # Errors
    /// The database failed.
    pub fn verify(&self, name: &str, password: &str) -> Result<Option<UserInfo>, UserError> {
        let found = self.db.read(|c| {
            c.query_row(
                &format!("SELECT {COLUMNS}, password_hash FROM users WHERE name = ?1"),
                [name],
                |row| Ok((user(row)?, row.get::<_, String>(4)?)),
            )
            .optional()
        })?;
        let (info, stored) = match found {
            Some((info, stored)) => (Some(info), stored),
            None => (None, dummy_hash().to_owned()),
        };
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), stored.as_str())
            .is_ok();
        Ok(info.filter(|_| matches))
    }

    /// Starts a session for a user who just logged in: a new secret, never one the browser brought. Expired
    /// sessions are removed on the way. Blocking (a committed write).
    ///
    /// # Errors
    /// The database failed.
    pub fn start_session(&self, user_id: &str) -> Result<NewSession, UserError> {
        let secret = random_hex(24);
        let now = now_ms();
        let expires_ms = now + SESSION_TTL.as_millis() as u64;
        self.db.write(|t| {
            t.execute("DELETE FROM sessions WHERE expires_ms <= ?1", [now as i64])
                .and_then(|_| {
                    t.execute(
                        "INSERT INTO sessions (hash, user_id, csrf, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![&hash(&secret)[..], user_id, random_hex(24), now as i64, expires_ms as i64],
                    )
                })
                .map_err(|e| self.db.error(e))
        })?;
        Ok(NewSession { secret, expires_ms })
    }

    /// The live session whose cookie holds `secret`, with its user as the table has it now.
    ///
    /// # Errors
    /// The database failed.
    pub fn session(&self, secret: &str) -> Result<Option<Session>, UserError> {
        if secret.len() != 48 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let now = now_ms() as i64;
        Ok(self.db.read(|c| {
            c.prepare_cached(
                "SELECT u.id, u.name, u.role, u.created, s.csrf, s.expires_ms
                 FROM sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.hash = ?1 AND s.expires_ms > ?2",
            )?
            .query_row(params![&hash(secret)[..], now], |row| {
                Ok(Session {
                    user: user(row)?,
                    csrf: row.get(4)?,
                    expires_ms: row.get::<_, i64>(5)? as u64,
                })
            })
            .optional()
        })?)
    }

    /// Ends the session whose cookie holds `secret` (a logout). Blocking (a committed write).
    ///
    /// # Errors
    /// The database failed.
    pub fn end_session(&self, secret: &str) -> Result<(), UserError> {
        self.db.write(|t| {
            t.execute("DELETE FROM sessions WHERE hash = ?1", [&hash(secret)[..]])
                .map_err(|e| self.db.error(e))
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, UserStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        (dir, UserStore::new(Arc::new(db)))
    }

    #[test]
    fn passwords_are_hashed_and_checked_and_sessions_are_new_at_each_login() {
        let (_dir, users) = store();
        let alice = users
            .create("alice", Role::Admin, "correct horse battery")
            .unwrap();
        let stored: String = users
            .db
            .read(|c| c.query_row("SELECT password_hash FROM users", [], |r| r.get(0)))
            .unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(!stored.contains("correct horse"));
        assert_eq!(
            users.verify("alice", "correct horse battery").unwrap(),
            Some(alice.clone())
        );
        assert_eq!(users.verify("alice", "wrong password!").unwrap(), None);
        assert_eq!(users.verify("bob", "correct horse battery").unwrap(), None);

        let first = users.start_session(&alice.id).unwrap();
        let second = users.start_session(&alice.id).unwrap();
        assert_ne!(first.secret, second.secret);
        let session = users.session(&first.secret).unwrap().unwrap();
        assert_eq!(session.user, alice);
        assert_eq!(session.actor().name, "alice");
        assert!(users.session("0".repeat(48).as_str()).unwrap().is_none());
        users.end_session(&first.secret).unwrap();
        assert!(users.session(&first.secret).unwrap().is_none());
        assert!(users.session(&second.secret).unwrap().is_some());
    }

    #[test]
    fn bad_users_are_refused_and_the_last_admin_stays() {
        let (_dir, users) = store();
        assert!(matches!(
            users.create("a b", Role::Viewer, "long enough password"),
            Err(UserError::BadName)
        ));
        assert!(matches!(
            users.create("ingester", Role::Ingest, "long enough password"),
            Err(UserError::BadRole(Role::Ingest))
        ));
        assert!(matches!(
            users.create("short", Role::Viewer, "short"),
            Err(UserError::WeakPassword)
        ));
        let admin = users
            .create("root", Role::Admin, "long enough password")
            .unwrap();
        assert!(matches!(
            users.create("root", Role::Viewer, "long enough password"),
            Err(UserError::NameTaken(_))
        ));
        assert!(matches!(users.delete("root"), Err(UserError::LastAdmin(_))));
        let viewer = users
            .create("val", Role::Viewer, "long enough password")
            .unwrap();
        let session = users.start_session(&viewer.id).unwrap();
        users.delete("val").unwrap();
        assert!(users.session(&session.secret).unwrap().is_none());
        assert_eq!(users.list().unwrap(), vec![admin]);
    }
}

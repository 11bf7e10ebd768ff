//! The plane's own state in an embedded SQLite database, `DATA_DIR/state.db`: tokens, nodes, the platform's services
//! and their revisions, secrets and the audit log; rollouts, instances, users and alerts as the next features land.
//!
//! This module owns the database: it opens it (WAL journal mode, `synchronous = FULL` so that a committed change
//! survives a power loss, foreign keys on), applies the numbered migrations in `state/migrations/` at start (the
//! schema version is SQLite's `user_version`), and imports the JSON files of earlier versions once. Each table's
//! access lives in one file beside this one. SQL is plain, with parameters always bound.
//!
//! Several processes may open the same database: the running plane and `gantry token create --data-dir` share it
//! through SQLite's locking (a writer waits up to [`BUSY_TIMEOUT`] for another). A process holds two connections:
//! one writer and one reader, so that reads (every request's token check) never wait behind a write's fsync.

pub mod audit;
pub mod deployments;
pub mod nodes;
pub mod placements;
pub mod platform;
pub mod secrets;
pub mod tokens;
pub mod users;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

/// The database's file name inside the data directory.
pub const FILE_NAME: &str = "state.db";

/// How long a connection waits for another process's write lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The migrations, in order; migration `n` (1-based) moves the schema from version `n - 1` to `n`.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_tokens_nodes.sql"),
    include_str!("migrations/0002_platform.sql"),
    include_str!("migrations/0003_placements.sql"),
    include_str!("migrations/0004_node_role.sql"),
    include_str!("migrations/0005_deployments.sql"),
    include_str!("migrations/0006_token_services.sql"),
    include_str!("migrations/0007_users.sql"),
    include_str!("migrations/0008_deploy_queue.sql"),
];

/// A failure of the state database.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite failed.
    #[error("state database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A file could not be read, created or renamed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database was written by a newer Gantry.
    #[error(
        "state database {path} has schema version {found}, newer than this gantry knows ({known}): run the newer gantry, or restore a backup"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// The newest this binary knows.
        known: i64,
    },
}

/// The state database of one data directory.
pub struct StateDb {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDb")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl StateDb {
    /// Opens (creating) `DATA_DIR/state.db`, creating the data directory (mode 0700) and the file (mode 0600) when
    /// missing, applies pending migrations, and imports `tokens.json` and `nodes.json` of earlier versions once
    /// (they are then renamed `*.migrated`). Blocking.
    ///
    /// # Errors
    /// The directory or database cannot be created or opened, a migration failed, or the database is newer than
    /// this binary.
    pub fn open(data_dir: &Path) -> Result<StateDb, StateError> {
        gantry_support::fs::create_private_dir(data_dir).map_err(|source| StateError::Io {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(FILE_NAME);
        create_private_file(&path)?;
        let writer = connect(&path)?;
        let reader = connect(&path)?;
        let db = StateDb {
            path,
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        };
        db.migrate()?;
        tokens::import_legacy(&db, data_dir)?;
        nodes::import_legacy(&db, data_dir)?;
        Ok(db)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `change` in one write transaction (`BEGIN IMMEDIATE`, so it waits for other writers up front instead
    /// of failing on upgrade) and commits. Blocking: it fsyncs.
    ///
    /// # Errors
    /// SQLite failed; nothing of `change` is kept. `change`'s own errors roll back too.
    pub fn write<T, E>(&self, change: impl FnOnce(&Transaction<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StateError>,
    {
        let mut connection = lock(&self.writer);
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| self.error(source))?;
        let value = change(&transaction)?;
        transaction.commit().map_err(|source| self.error(source))?;
        Ok(value)
    }

    /// Runs `query` on the reader connection (it sees every committed change, of any process).
    ///
    /// # Errors
    /// SQLite failed.
    pub fn read<T>(
        &self,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        query(&lock(&self.reader)).map_err(|source| self.error(source))
    }

    /// A [`StateError::Sqlite`] of this database.
    pub fn error(&self, source: rusqlite::Error) -> StateError {
        StateError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The schema version.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn schema_version(&self) -> Result<i64, StateError> {
        self.read(|c| c.query_row("PRAGMA user_version", [], |row| row.get(0)))
    }

    fn migrate(&self) -> Result<(), StateError> {
        let known = MIGRATIONS.len() as i64;
        self.write(|transaction| {
            let found: i64 = transaction
                .query_row("PRAGMA user_version", [], |row| row.get(0))
                .map_err(|source| self.error(source))?;
            if found > known {
                return Err(StateError::TooNew {
                    path: self.path.clone(),
                    found,
                    known,
                });
            }
            for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
                let version = index as i64 + 1;
                transaction
                    .execute_batch(sql)
                    .and_then(|()| transaction.pragma_update(None, "user_version", version))
                    .map_err(|source| self.error(source))?;
                tracing::info!(version, path = %self.path.display(), "state database migrated");
            }
            Ok(())
        })
    }
}

fn connect(path: &Path) -> Result<Connection, StateError> {
    let error = |source| StateError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(error)?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(error)?;
    // WAL: readers never block the writer nor wait for it; FULL: a commit is fsynced before it returns.
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .and_then(|()| connection.pragma_update(None, "synchronous", "FULL"))
        .and_then(|()| connection.pragma_update(None, "foreign_keys", true))
        .map_err(error)?;
    Ok(connection)
}

/// Creates the database file with mode 0600 before SQLite does (SQLite gives its `-wal` and `-shm` files the mode of
/// the database file).
fn create_private_file(path: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|source| StateError::Io {
            path: path.to_owned(),
            source,
        })
}

/// Renames a legacy state file once its content is in the database.
fn retire(path: &Path) -> Result<(), StateError> {
    let mut retired = path.as_os_str().to_owned();
    retired.push(".migrated");
    std::fs::rename(path, &retired).map_err(|source| StateError::Io {
        path: path.to_owned(),
        source,
    })?;
    tracing::info!(from = %path.display(), to = %Path::new(&retired).display(), "imported into the state database");
    Ok(())
}

fn lock(connection: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding a connection leaves no half-done transaction (it rolls back on drop).
    connection
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Now as RFC 3339 with milliseconds, UTC: the timestamps of the state tables.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Now, ms since the Unix epoch.
pub fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

/// `ms` since the Unix epoch as RFC 3339 with milliseconds, UTC.
pub fn rfc3339_ms(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms.min(i64::MAX as u64) as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use super::*;

    #[test]
    fn opens_private_migrates_once_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let db = StateDb::open(&data).unwrap();
        assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join(FILE_NAME)), 0o600);
        drop(db);
        let again = StateDb::open(&data).unwrap();
        again
            .write(|t| {
                t.pragma_update(None, "user_version", 99)
                    .map_err(|e| again.error(e))
            })
            .unwrap();
        drop(again);
        assert!(matches!(
            StateDb::open(&data),
            Err(StateError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn the_node_role_migration_keeps_every_token() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(StateDb::open(dir.path()).unwrap());
        let tokens = tokens::TokenStore::new(db.clone());
        let admin = tokens.create("keep-me", gantry_proto::Role::Admin).unwrap();
        // Back to before the node role (and the later migrations undone): the rebuild runs again over the
        // existing rows.
        db.write(|t| {
            t.execute_batch(
                "DROP TABLE sessions; DROP TABLE users; DROP TABLE deployment_events; DROP TABLE deployments;
                 ALTER TABLE placements DROP COLUMN template; ALTER TABLE placements DROP COLUMN next_template;
                 ALTER TABLE placements DROP COLUMN issued; ALTER TABLE revisions DROP COLUMN rejected;",
            )
            .map_err(|e| db.error(e))?;
            t.pragma_update(None, "user_version", 3)
                .map_err(|e| db.error(e))
        })
        .unwrap();
        drop((tokens, db));
        let db = Arc::new(StateDb::open(dir.path()).unwrap());
        let tokens = tokens::TokenStore::new(db);
        let found = tokens.authenticate(&admin.token).unwrap().unwrap();
        assert_eq!(
            (found.name.as_str(), found.role),
            ("keep-me", gantry_proto::Role::Admin)
        );
        tokens.create("a-node", gantry_proto::Role::Node).unwrap();
    }
}

//! The `secrets` table: values that specs reference as `${secret:NAME}`. A value is read only to start an
//! instance; the API and the CLI show names and who set them, never values.
//!
//! Values are stored as given, in `state.db` (mode 0600 in a 0700 directory); encryption at rest under a key kept
//! outside the data directory is a later step (SECURITY.md).

use std::collections::BTreeSet;

use gantry_proto::platform::SecretInfo;
use rusqlite::{OptionalExtension, Transaction, params};

use super::{StateDb, StateError, now_rfc3339};

/// Every secret's name.
///
/// # Errors
/// SQLite failed.
pub fn names(connection: &rusqlite::Connection) -> rusqlite::Result<BTreeSet<String>> {
    let mut statement = connection.prepare("SELECT name FROM secrets")?;
    let names = statement.query_map([], |row| row.get(0))?;
    names.collect()
}

/// Sets a secret inside the caller's transaction; returns whether it is new.
///
/// # Errors
/// SQLite failed.
pub fn set(
    transaction: &Transaction<'_>,
    name: &str,
    value: &str,
    by: &str,
) -> rusqlite::Result<bool> {
    let existed = transaction
        .query_row("SELECT 1 FROM secrets WHERE name = ?1", [name], |_| Ok(()))
        .optional()?
        .is_some();
    transaction.execute(
        "INSERT INTO secrets (name, value, updated, updated_by) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated = excluded.updated,
         updated_by = excluded.updated_by",
        params![name, value.as_bytes(), now_rfc3339(), by],
    )?;
    Ok(!existed)
}

/// Deletes a secret inside the caller's transaction; returns whether it existed.
///
/// # Errors
/// SQLite failed.
pub fn delete(transaction: &Transaction<'_>, name: &str) -> rusqlite::Result<bool> {
    Ok(transaction.execute("DELETE FROM secrets WHERE name = ?1", [name])? > 0)
}

/// A secret's value read on `connection` (inside a caller's transaction).
///
/// # Errors
/// SQLite failed.
pub fn value_in(connection: &rusqlite::Connection, name: &str) -> rusqlite::Result<Option<String>> {
    connection
        .query_row("SELECT value FROM secrets WHERE name = ?1", [name], |row| {
            row.get::<_, Vec<u8>>(0)
        })
        .optional()
        .map(|value| value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

/// A secret's value, for starting an instance.
///
/// # Errors
/// SQLite failed.
pub fn value(db: &StateDb, name: &str) -> Result<Option<String>, StateError> {
    db.read(|c| {
        c.query_row("SELECT value FROM secrets WHERE name = ?1", [name], |row| {
            row.get::<_, Vec<u8>>(0)
        })
        .optional()
        .map(|value| value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    })
}

/// Every secret's metadata, by name.
///
/// # Errors
/// SQLite failed.
pub fn list(db: &StateDb) -> Result<Vec<SecretInfo>, StateError> {
    db.read(|c| {
        let mut statement =
            c.prepare("SELECT name, updated, updated_by FROM secrets ORDER BY name")?;
        let rows = statement.query_map([], |row| {
            Ok(SecretInfo {
                name: row.get(0)?,
                updated: row.get(1)?,
                updated_by: row.get(2)?,
            })
        })?;
        rows.collect()
    })
}

//! The `audit` table: every change made through the API (who, what, when, outcome), refused ones included, newest
//! first when read. Written in the same transaction as the change it records, so an entry exists exactly when the
//! change does; a refusal is recorded on its own.

use gantry_proto::TokenInfo;
use gantry_proto::platform::AuditEntry;
use rusqlite::{Connection, params};

use super::{StateDb, StateError, now_rfc3339};

/// The most entries one read returns.
pub const MAX_LIMIT: usize = 1000;

/// Who did what, to what, with which outcome.
#[derive(Debug, Clone)]
pub struct Action<'a> {
    /// The caller.
    pub actor: &'a TokenInfo,
    /// `apply`, `secret.set`, ...
    pub action: &'a str,
    /// A file, service, secret or token name.
    pub target: &'a str,
    /// `ok`, `refused: ...` or `failed: ...`.
    pub outcome: &'a str,
    /// What changed, in words.
    pub detail: &'a str,
}

/// Appends an entry inside the caller's transaction.
///
/// # Errors
/// SQLite failed.
pub fn append(connection: &Connection, entry: &Action<'_>) -> rusqlite::Result<()> {
    connection.execute(
        "INSERT INTO audit (time, actor, role, action, target, outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            now_rfc3339(),
            entry.actor.name,
            entry.actor.role.as_str(),
            entry.action,
            entry.target,
            entry.outcome,
            entry.detail
        ],
    )?;
    Ok(())
}

/// Appends an entry in a transaction of its own (for refusals, whose change rolled back).
///
/// # Errors
/// SQLite failed.
pub fn record(db: &StateDb, entry: &Action<'_>) -> Result<(), StateError> {
    db.write(|transaction| append(transaction, entry).map_err(|e| db.error(e)))
}

/// The newest `limit` entries (at most [`MAX_LIMIT`]), newest first; only those whose target is `target` when
/// given, and only those with ids below `before` when given (paging).
///
/// # Errors
/// SQLite failed.
pub fn list(
    db: &StateDb,
    limit: usize,
    target: Option<&str>,
    before: Option<u64>,
) -> Result<Vec<AuditEntry>, StateError> {
    db.read(|c| {
        let mut statement = c.prepare(
            "SELECT id, time, actor, role, action, target, outcome, detail FROM audit
             WHERE (?1 IS NULL OR target = ?1) AND (?2 IS NULL OR id < ?2)
             ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = statement.query_map(
            params![
                target,
                before.map(|b| b as i64),
                limit.min(MAX_LIMIT) as i64
            ],
            |row| {
                Ok(AuditEntry {
                    id: row.get::<_, i64>(0)? as u64,
                    time: row.get(1)?,
                    actor: row.get(2)?,
                    role: row.get(3)?,
                    action: row.get(4)?,
                    target: row.get(5)?,
                    outcome: row.get(6)?,
                    detail: row.get(7)?,
                })
            },
        )?;
        rows.collect()
    })
}
